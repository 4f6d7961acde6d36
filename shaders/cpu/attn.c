/* flash_attn_ext: fused attention softmax(scale q k^T + slope mask) v with an online softmax,
 * numerics as backends/ref/k_attn.py (float32 throughout, K/V widened in the inner loop, never
 * the whole cache).
 *
 * q [D, n_q, H, n_seq] F32; k [D, n_kv, H_kv, n_seq_kv], v [Dv, n_kv, H_kv, n_seq_kv] F32/F16;
 * mask [n_kv, >=n_q, m2, m3] F32/F16 (broadcast over heads / seqs); dst [Dv, H, n_q, n_seq] F32.
 * q head h reads kv head h / (H / H_kv), q seq s reads kv seq s / (n_seq / n_seq_kv).
 *
 * Work: the query rows (iq, h, s) that read the same kv head and seq form a group; a thread takes
 * a tile of up to FA_TILE rows of one group and streams K/V once for the whole tile (a K/V row
 * is read from memory once per tile, not once per query head: GQA decode). K/V go in blocks of
 * FA_BJ positions: the tile's scores for the block (dot kernels over several rows and keys at
 * once), then per row one online-softmax step for the whole block (one rescale, a vector exp, V
 * rows accumulated in registers). Masked (-inf) entries weigh exactly 0 and their V rows are
 * never read; a block masked for every row of the tile is skipped.
 *
 * Every row does the same arithmetic (same kernels, blocks at the same kv positions) whatever
 * tile, batch or thread it lands in: results are batch-invariant.
 */
#include "graphir_cpu.h"

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define GR_X86 1
#endif

#define FA_TILE 8 /* query rows per tile */
#define FA_BJ 16  /* kv positions per block */
#define FA_NR 4   /* rows per dot-kernel call */
#define A16(n) (((n) + 15) & ~(int64_t)15) /* floats: 64-byte aligned blocks */
#define INLINE static inline __attribute__((always_inline))

/* o[c][r os] = q_r . k[c] for rows q_r = q + r qs, r < nr, and keys c < fa_nk(nr) (8 dots in
 * all: 1 x 8, 2 x 4, 3 x 2, 4 x 2); unused key slots repeat a real key */
typedef void (*fa_dots_fn)(const float *q, int64_t qs, int nr, const void *const *k, float *const *o, int64_t os,
                           int64_t n);
static inline int fa_nk(int nr) { return nr == 1 ? 8 : nr == 2 ? 4 : 2; }
/* s[j] = slope m[j] for j < n, m a contiguous F16 mask row (exact conversions: any ISA agrees);
 * returns the bit set of the j with s[j] != -inf */
typedef uint32_t (*fa_mask_f16_fn)(float *s, const uint16_t *m, float slope, int n);
/* p[i] = exp(s[i] - m) for i < n <= FA_BJ; -inf gives exactly 0. Returns the sum of p in a fixed
 * tree (no long add chain) */
typedef float (*fa_exps_fn)(float *p, const float *s, float m, int n);
/* for rows r < nr <= FA_NR: acc[r] = ms[r] acc[r] + sum_j p[r FA_BJ + j] v[j] over the j < nj
 * with p != 0 (in order of j), n elements; a V row is converted once for all the rows */
typedef void (*fa_accum_fn)(float *const *acc, const float *p, const float *ms, int nr, const void *const *v, int nj,
                            int64_t n);

/* ======================================================================================
 * portable
 * ====================================================================================== */

static inline float ld_f16(const void *p, int64_t i) { return gr_f16_to_f32(((const uint16_t *)p)[i]); }
static inline float ld_f32(const void *p, int64_t i) { return ((const float *)p)[i]; }

/* 4 partial sums (lane i % 4) */
#define DOT_SCALAR(NAME, LD)                                                                          \
    static float NAME(const float *q, const void *k, int64_t n) {                                     \
        float s0 = 0, s1 = 0, s2 = 0, s3 = 0;                                                         \
        int64_t i = 0;                                                                                \
        for (; i + 4 <= n; i += 4) {                                                                  \
            s0 += q[i] * LD(k, i), s1 += q[i + 1] * LD(k, i + 1);                                     \
            s2 += q[i + 2] * LD(k, i + 2), s3 += q[i + 3] * LD(k, i + 3);                             \
        }                                                                                             \
        float s[4] = {s0, s1, s2, s3};                                                                \
        for (; i < n; i++) s[i & 3] += q[i] * LD(k, i);                                               \
        return (s[0] + s[1]) + (s[2] + s[3]);                                                         \
    }
DOT_SCALAR(dot_f16_scalar, ld_f16)
DOT_SCALAR(dot_f32_scalar, ld_f32)

#define DOTS_SCALAR(NAME, DOT)                                                                        \
    static void NAME(const float *q, int64_t qs, int nr, const void *const *k, float *const *o,        \
                     int64_t os, int64_t n) {                                                         \
        for (int r = 0; r < nr; r++)                                                                  \
            for (int c = 0; c < fa_nk(nr); c++) o[c][r * os] = DOT(q + r * qs, k[c], n);              \
    }
DOTS_SCALAR(dots_f16_scalar, dot_f16_scalar)
DOTS_SCALAR(dots_f32_scalar, dot_f32_scalar)

static uint32_t live_bits(const float *s, int n) {
    uint32_t live = 0;
    for (int j = 0; j < n; j++) live |= (uint32_t)(s[j] != -INFINITY) << j;
    return live;
}

static uint32_t mask_f16_scalar(float *s, const uint16_t *m, float slope, int n) {
    for (int j = 0; j < n; j++) s[j] = slope * gr_f16_to_f32(m[j]);
    return live_bits(s, n);
}

static float exps_scalar(float *p, const float *s, float m, int n) {
    float t[FA_BJ] = {0};
    for (int i = 0; i < n; i++) t[i] = p[i] = s[i] == -INFINITY ? 0.0f : expf(s[i] - m);
    for (int i = 0; i < 8; i++) t[i] += t[i + 8]; /* the same tree as the vector paths */
    for (int i = 0; i < 4; i++) t[i] = t[2 * i] + t[2 * i + 1];
    return (t[0] + t[1]) + (t[2] + t[3]);
}

#define ACCUM_SCALAR(NAME, LD)                                                                        \
    static void NAME(float *const *acc, const float *p, const float *ms, int nr, const void *const *v,  \
                     int nj, int64_t n) {                                                             \
        for (int r = 0; r < nr; r++)                                                                  \
            for (int64_t i = 0; i < n; i++) {                                                         \
                float a = acc[r][i] * ms[r];                                                          \
                for (int j = 0; j < nj; j++)                                                          \
                    if (p[r * FA_BJ + j] != 0.0f) a += p[r * FA_BJ + j] * LD(v[j], i);                \
                acc[r][i] = a;                                                                        \
            }                                                                                         \
    }
ACCUM_SCALAR(accum_f16_scalar, ld_f16)
ACCUM_SCALAR(accum_f32_scalar, ld_f32)

#ifdef GR_X86
/* ======================================================================================
 * AVX2 + FMA + F16C: 8 lanes; dots keep one chain per (row, key), then a scalar tail
 * ====================================================================================== */
#define T_AVX2 __attribute__((target("avx2,fma,f16c")))

/* The sums of 8 accumulators at once (transposing adds instead of 8 separate horizontal sums).
 * Each one's lanes are added in the same tree wherever it sits, so a (row, key) dot does not
 * depend on which others share the call: ((l0+l1)+(l2+l3)) + ((l4+l5)+(l6+l7)). */
T_AVX2 INLINE __m256 sum8_256(const __m256 *y) {
    const __m256 h01 = _mm256_hadd_ps(y[0], y[1]), h23 = _mm256_hadd_ps(y[2], y[3]);
    const __m256 h45 = _mm256_hadd_ps(y[4], y[5]), h67 = _mm256_hadd_ps(y[6], y[7]);
    const __m256 a = _mm256_hadd_ps(h01, h23), b = _mm256_hadd_ps(h45, h67);
    return _mm256_add_ps(_mm256_permute2f128_ps(a, b, 0x20), _mm256_permute2f128_ps(a, b, 0x31));
}

T_AVX2 INLINE __m256 ld8(const void *p, int64_t i, const int F16) {
    return F16 ? _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)((const uint16_t *)p + i)))
               : _mm256_loadu_ps((const float *)p + i);
}
T_AVX2 INLINE float ld1(const void *p, int64_t i, const int F16) { return F16 ? ld_f16(p, i) : ld_f32(p, i); }

T_AVX2 INLINE void dots_avx2_n(const float *q, int64_t qs, const void *const *k, float *const *o, int64_t os,
                               int64_t n, const int NR, const int NJ, const int F16) {
    __m256 acc[FA_NR][8];
    const int64_t n8 = n & ~(int64_t)7;
    for (int r = 0; r < NR; r++)
        for (int c = 0; c < NJ; c++) acc[r][c] = _mm256_setzero_ps();
    for (int64_t i = 0; i < n8; i += 8) {
        __m256 kv[8];
        for (int c = 0; c < NJ; c++) kv[c] = ld8(k[c], i, F16);
        for (int r = 0; r < NR; r++) {
            const __m256 qv = _mm256_loadu_ps(q + r * qs + i);
            for (int c = 0; c < NJ; c++) acc[r][c] = _mm256_fmadd_ps(qv, kv[c], acc[r][c]);
        }
    }
    __m256 y[8];
    float sum[8];
    for (int x = 0; x < 8; x++) y[x] = x < NR * NJ ? acc[x / NJ][x % NJ] : _mm256_setzero_ps();
    _mm256_storeu_ps(sum, sum8_256(y));
    for (int r = 0; r < NR; r++)
        for (int c = 0; c < NJ; c++) {
            float s = sum[r * NJ + c];
            for (int64_t i = n8; i < n; i++) s += q[r * qs + i] * ld1(k[c], i, F16);
            o[c][r * os] = s;
        }
}

#define DOTS_SWITCH(NAME, KERNEL, F16, TARGET)                                                        \
    TARGET static void NAME(const float *q, int64_t qs, int nr, const void *const *k, float *const *o, \
                            int64_t os, int64_t n) {                                                  \
        switch (nr) {                                                                                 \
        case 1: KERNEL(q, qs, k, o, os, n, 1, 8, F16); break;                                         \
        case 2: KERNEL(q, qs, k, o, os, n, 2, 4, F16); break;                                         \
        case 3: KERNEL(q, qs, k, o, os, n, 3, 2, F16); break;                                         \
        default: KERNEL(q, qs, k, o, os, n, 4, 2, F16); break;                                        \
        }                                                                                             \
    }
DOTS_SWITCH(dots_f16_avx2, dots_avx2_n, 1, T_AVX2)
DOTS_SWITCH(dots_f32_avx2, dots_avx2_n, 0, T_AVX2)

/* exp(x) for x <= ~88: n = round(x / ln2), r = x - n ln2 (two-part ln2), e^r by a degree-6
 * polynomial (Cephes expf coefficients), times 2^n; below -87.3 it flushes to 0 */
#define EXP_C1 1.9875691500E-4f
#define EXP_C2 1.3981999507E-3f
#define EXP_C3 8.3334519073E-3f
#define EXP_C4 4.1665795894E-2f
#define EXP_C5 1.6666665459E-1f
#define EXP_C6 5.0000001201E-1f
T_AVX2 INLINE __m256 exp256(__m256 x) {
    const __m256 tiny = _mm256_cmp_ps(x, _mm256_set1_ps(-87.3f), _CMP_LT_OQ);
    x = _mm256_max_ps(x, _mm256_set1_ps(-87.3f));
    const __m256 n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504088896341f)),
                                     _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693359375f), x);
    r = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.12194440e-4f), r);
    __m256 p = _mm256_set1_ps(EXP_C1);
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(EXP_C2));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(EXP_C3));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(EXP_C4));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(EXP_C5));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(EXP_C6));
    p = _mm256_fmadd_ps(p, _mm256_mul_ps(r, r), _mm256_add_ps(r, _mm256_set1_ps(1.0f)));
    const __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
    return _mm256_andnot_ps(tiny, _mm256_mul_ps(p, _mm256_castsi256_ps(e)));
}

T_AVX2 static uint32_t mask_f16_avx2(float *s, const uint16_t *m, float slope, int n) {
    int j = 0;
    for (; j + 8 <= n; j += 8) _mm256_storeu_ps(s + j, _mm256_mul_ps(_mm256_set1_ps(slope), ld8(m, j, 1)));
    for (; j < n; j++) s[j] = slope * gr_f16_to_f32(m[j]);
    return live_bits(s, n);
}

T_AVX2 static float exps_avx2(float *p, const float *s, float m, int n) {
    float buf[FA_BJ], sum[8];
    for (int i = 0; i < FA_BJ; i++) buf[i] = i < n ? s[i] : -INFINITY;
    __m256 e[2];
    for (int x = 0; x < 2; x++) {
        const __m256 sv = _mm256_loadu_ps(buf + 8 * x);
        const __m256 dead = _mm256_cmp_ps(sv, _mm256_set1_ps(-INFINITY), _CMP_EQ_OQ);
        e[x] = _mm256_andnot_ps(dead, exp256(_mm256_sub_ps(sv, _mm256_set1_ps(m))));
    }
    _mm256_storeu_ps(buf, e[0]);
    _mm256_storeu_ps(buf + 8, e[1]);
    memcpy(p, buf, (size_t)n * sizeof(float));
    const __m256 y[8] = {_mm256_add_ps(e[0], e[1])}; /* lane i + lane i+8, then pairs: one slot of sum8 */
    _mm256_storeu_ps(sum, sum8_256(y));
    return sum[0];
}

/* 32 elements (4 registers) of acc at a time stay in registers over the block's V rows */
T_AVX2 INLINE void accum_avx2_row(float *acc, const void *const *v, const float *p, int nj, float ms, int64_t n,
                                  const int F16) {
    const __m256 msv = _mm256_set1_ps(ms);
    const int64_t n32 = n & ~(int64_t)31, n8 = n & ~(int64_t)7;
    int64_t i = 0;
    for (; i < n32; i += 32) {
        __m256 a0 = _mm256_mul_ps(_mm256_loadu_ps(acc + i), msv), a1 = _mm256_mul_ps(_mm256_loadu_ps(acc + i + 8), msv);
        __m256 a2 = _mm256_mul_ps(_mm256_loadu_ps(acc + i + 16), msv), a3 = _mm256_mul_ps(_mm256_loadu_ps(acc + i + 24), msv);
        for (int j = 0; j < nj; j++) {
            if (p[j] == 0.0f) continue;
            const __m256 pv = _mm256_set1_ps(p[j]);
            a0 = _mm256_fmadd_ps(pv, ld8(v[j], i, F16), a0);
            a1 = _mm256_fmadd_ps(pv, ld8(v[j], i + 8, F16), a1);
            a2 = _mm256_fmadd_ps(pv, ld8(v[j], i + 16, F16), a2);
            a3 = _mm256_fmadd_ps(pv, ld8(v[j], i + 24, F16), a3);
        }
        _mm256_storeu_ps(acc + i, a0), _mm256_storeu_ps(acc + i + 8, a1);
        _mm256_storeu_ps(acc + i + 16, a2), _mm256_storeu_ps(acc + i + 24, a3);
    }
    for (; i < n8; i += 8) {
        __m256 a = _mm256_mul_ps(_mm256_loadu_ps(acc + i), msv);
        for (int j = 0; j < nj; j++)
            if (p[j] != 0.0f) a = _mm256_fmadd_ps(_mm256_set1_ps(p[j]), ld8(v[j], i, F16), a);
        _mm256_storeu_ps(acc + i, a);
    }
    for (; i < n; i++) {
        float a = acc[i] * ms;
        for (int j = 0; j < nj; j++)
            if (p[j] != 0.0f) a = fmaf(p[j], ld1(v[j], i, F16), a);
        acc[i] = a;
    }
}
/* 16 registers only: rows one at a time */
T_AVX2 static void accum_f16_avx2(float *const *acc, const float *p, const float *ms, int nr, const void *const *v,
                                  int nj, int64_t n) {
    for (int r = 0; r < nr; r++) accum_avx2_row(acc[r], v, p + r * FA_BJ, nj, ms[r], n, 1);
}
T_AVX2 static void accum_f32_avx2(float *const *acc, const float *p, const float *ms, int nr, const void *const *v,
                                  int nj, int64_t n) {
    for (int r = 0; r < nr; r++) accum_avx2_row(acc[r], v, p + r * FA_BJ, nj, ms[r], n, 0);
}

/* ======================================================================================
 * AVX-512: 16 lanes, the last chunk masked (any D at full width)
 * ====================================================================================== */
#define T_512 __attribute__((target("avx512f,avx512bw,avx512vl,avx2,fma,f16c")))

T_512 INLINE __mmask16 tail16(int64_t left) {
    return left >= 16 ? 0xffff : left <= 0 ? 0 : (__mmask16)((1u << left) - 1);
}
T_512 INLINE __m512 ld16(const void *p, int64_t i, __mmask16 m, const int F16) {
    return F16 ? _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(m, (const uint16_t *)p + i))
               : _mm512_maskz_loadu_ps(m, (const float *)p + i);
}

T_512 INLINE void dots_512_n(const float *q, int64_t qs, const void *const *k, float *const *o, int64_t os,
                             int64_t n, const int NR, const int NJ, const int F16) {
    __m512 acc[FA_NR][8];
    for (int r = 0; r < NR; r++)
        for (int c = 0; c < NJ; c++) acc[r][c] = _mm512_setzero_ps();
    for (int64_t i = 0; i < n; i += 16) {
        const __mmask16 m = tail16(n - i);
        __m512 kv[8];
        for (int c = 0; c < NJ; c++) kv[c] = ld16(k[c], i, m, F16);
        for (int r = 0; r < NR; r++) {
            const __m512 qv = _mm512_maskz_loadu_ps(m, q + r * qs + i);
            for (int c = 0; c < NJ; c++) acc[r][c] = _mm512_fmadd_ps(qv, kv[c], acc[r][c]);
        }
    }
    __m256 y[8]; /* fold 16 lanes to 8 (lane i + lane i+8), then as the AVX2 kernel */
    float sum[8];
    for (int x = 0; x < 8; x++) {
        const __m512 a = x < NR * NJ ? acc[x / NJ][x % NJ] : _mm512_setzero_ps();
        y[x] = _mm256_add_ps(_mm512_castps512_ps256(a), _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(a), 1)));
    }
    _mm256_storeu_ps(sum, sum8_256(y));
    for (int r = 0; r < NR; r++)
        for (int c = 0; c < NJ; c++) o[c][r * os] = sum[r * NJ + c];
}
DOTS_SWITCH(dots_f16_512, dots_512_n, 1, T_512)
DOTS_SWITCH(dots_f32_512, dots_512_n, 0, T_512)

/* as exp256; scalef takes 2^n down through the subnormals to 0 */
T_512 INLINE __m512 exp512(__m512 x) {
    x = _mm512_max_ps(x, _mm512_set1_ps(-104.0f));
    const __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)),
                                          _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693359375f), x);
    r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.12194440e-4f), r);
    __m512 p = _mm512_set1_ps(EXP_C1);
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(EXP_C2));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(EXP_C3));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(EXP_C4));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(EXP_C5));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(EXP_C6));
    p = _mm512_fmadd_ps(p, _mm512_mul_ps(r, r), _mm512_add_ps(r, _mm512_set1_ps(1.0f)));
    return _mm512_scalef_ps(p, n);
}

T_512 static uint32_t mask_f16_512(float *s, const uint16_t *m, float slope, int n) {
    uint32_t live = 0;
    for (int j = 0; j < n; j += 16) {
        const __mmask16 k = tail16(n - j);
        const __m512 x = _mm512_mul_ps(_mm512_set1_ps(slope), ld16(m, j, k, 1));
        _mm512_mask_storeu_ps(s + j, k, x);
        live |= (uint32_t)(k & _mm512_cmp_ps_mask(x, _mm512_set1_ps(-INFINITY), _CMP_NEQ_UQ)) << j;
    }
    return live;
}

T_512 static float exps_512(float *p, const float *s, float m, int n) {
    const __mmask16 k = tail16(n);
    const __m512 sv = _mm512_maskz_loadu_ps(k, s);
    const __mmask16 live = k & _mm512_cmp_ps_mask(sv, _mm512_set1_ps(-INFINITY), _CMP_NEQ_UQ);
    const __m512 e = _mm512_maskz_mov_ps(live, exp512(_mm512_sub_ps(sv, _mm512_set1_ps(m))));
    _mm512_mask_storeu_ps(p, k, e);
    float sum[8];
    const __m256 y[8] = {_mm256_add_ps(_mm512_castps512_ps256(e), _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(e), 1)))};
    _mm256_storeu_ps(sum, sum8_256(y));
    return sum[0];
}

/* 64 elements (4 registers) of each row's acc stay in registers over the block's V rows; each
 * 64 elements of a V row are converted once for all NR rows */
T_512 INLINE void accum_512_n(float *const *acc, const float *p, const float *ms, const void *const *v, int nj,
                              int64_t n, const int NR, const int F16) {
    for (int64_t i = 0; i < n; i += 64) {
        __mmask16 m[4];
        __m512 a[FA_NR][4];
        for (int x = 0; x < 4; x++) m[x] = tail16(n - i - 16 * x);
        for (int r = 0; r < NR; r++) {
            const __m512 msv = _mm512_set1_ps(ms[r]);
            for (int x = 0; x < 4; x++) a[r][x] = _mm512_mul_ps(_mm512_maskz_loadu_ps(m[x], acc[r] + i + 16 * x), msv);
        }
        for (int j = 0; j < nj; j++) {
            int any = 0;
            for (int r = 0; r < NR; r++) any |= p[r * FA_BJ + j] != 0.0f;
            if (!any) continue;
            __m512 vv[4];
            for (int x = 0; x < 4; x++) vv[x] = ld16(v[j], i + 16 * x, m[x], F16);
            for (int r = 0; r < NR; r++) {
                if (p[r * FA_BJ + j] == 0.0f) continue;
                const __m512 pv = _mm512_set1_ps(p[r * FA_BJ + j]);
                for (int x = 0; x < 4; x++) a[r][x] = _mm512_fmadd_ps(pv, vv[x], a[r][x]);
            }
        }
        for (int r = 0; r < NR; r++)
            for (int x = 0; x < 4; x++) _mm512_mask_storeu_ps(acc[r] + i + 16 * x, m[x], a[r][x]);
    }
}

#define ACCUM_SWITCH(NAME, KERNEL, F16, TARGET)                                                       \
    TARGET static void NAME(float *const *acc, const float *p, const float *ms, int nr,              \
                            const void *const *v, int nj, int64_t n) {                                \
        switch (nr) {                                                                                 \
        case 1: KERNEL(acc, p, ms, v, nj, n, 1, F16); break;                                          \
        case 2: KERNEL(acc, p, ms, v, nj, n, 2, F16); break;                                          \
        case 3: KERNEL(acc, p, ms, v, nj, n, 3, F16); break;                                          \
        default: KERNEL(acc, p, ms, v, nj, n, 4, F16); break;                                         \
        }                                                                                             \
    }
ACCUM_SWITCH(accum_f16_512, accum_512_n, 1, T_512)
ACCUM_SWITCH(accum_f32_512, accum_512_n, 0, T_512)
#endif

/* ======================================================================================
 * the driver
 * ====================================================================================== */

/* everything a tile needs, resolved once per op */
typedef struct fa_ctx {
    const gr_tensor *q, *k, *v, *mask, *dst;
    int64_t D, Dv, n_q, n_kv, G, rk3;
    float scale, softcap;
    const float *slopes;
    int k_direct, v_direct; /* rows read in place (F32/F16, unit stride), else gathered as F32 */
    fa_dots_fn dots;
    fa_mask_f16_fn mask_f16;
    fa_exps_fn exps;
    fa_accum_fn accum;
} fa_ctx;

static void fa_pick(fa_ctx *c) {
    const int kh = c->k_direct && c->k->type == GR_F16, vh = c->v_direct && c->v->type == GR_F16;
#ifdef GR_X86
    if (gr_has_avx512) {
        c->dots = kh ? dots_f16_512 : dots_f32_512;
        c->exps = exps_512;
        c->mask_f16 = mask_f16_512;
        c->accum = vh ? accum_f16_512 : accum_f32_512;
        return;
    }
    if (gr_has_avx2) {
        c->dots = kh ? dots_f16_avx2 : dots_f32_avx2;
        c->exps = exps_avx2;
        c->mask_f16 = mask_f16_avx2;
        c->accum = vh ? accum_f16_avx2 : accum_f32_avx2;
        return;
    }
#endif
    c->dots = kh ? dots_f16_scalar : dots_f32_scalar;
    c->exps = exps_scalar;
    c->mask_f16 = mask_f16_scalar;
    c->accum = vh ? accum_f16_scalar : accum_f32_scalar;
}

static int fa_direct(const gr_tensor *t) {
    return (t->type == GR_F32 && t->nb[0] == 4) || (t->type == GR_F16 && t->nb[0] == 2);
}

/* one query row of a tile: its running max M, sum S, accumulator and mask row */
typedef struct fa_row {
    const float *q;
    float *acc;
    const char *mrow;
    float slope, M, S;
    int64_t iq, h, s;
} fa_row;

/* per thread scratch (floats): the tile's q rows and accumulators, one block of gathered K and
 * V rows (used only when they cannot be read in place) */
typedef struct fa_scratch {
    float *q, *acc, *k, *v;
} fa_scratch;

static int64_t fa_thread_floats(int64_t D, int64_t Dv) { return (FA_TILE + FA_BJ) * (A16(D) + A16(Dv)); }

int64_t gr_w_flash_attn_ext(const gr_op *op, int nth) {
    return (int64_t)nth * fa_thread_floats(op->src[0].ne[0], op->src[2].ne[0]) * (int64_t)sizeof(float);
}

/* row j of a K or V cache of (kv head hk, kv seq skv): in place, or gathered into buf as F32 */
static inline const void *fa_kv_row(const gr_tensor *t, int direct, int64_t j, int64_t hk, int64_t skv, float *buf) {
    const char *p = gr_row(t, j, hk, skv);
    if (direct) return p;
    for (int64_t i = 0; i < t->ne[0]; i++) buf[i] = gr_load_f(p + i * t->nb[0], t->type);
    return buf;
}

/* s[j] = slope m[j] for j < nj: one mask row of the block; returns its live bits (s != -inf) */
static uint32_t fa_mask_row(const fa_ctx *c, const char *m, float slope, int nj, float *s) {
    const gr_tensor *mask = c->mask;
    if (mask->type == GR_F16 && mask->nb[0] == 2) return c->mask_f16(s, (const uint16_t *)m, slope, nj);
    if (mask->type == GR_F32 && mask->nb[0] == 4) {
        const float *f = (const float *)m;
        for (int j = 0; j < nj; j++) s[j] = slope * f[j];
    } else {
        for (int j = 0; j < nj; j++) s[j] = slope * gr_load_f(m + j * mask->nb[0], mask->type);
    }
    return live_bits(s, nj);
}

/* s[r][j] = slope_r mask_r[j0 + j] (0 without a mask); returns the bit set of columns that
 * some row does not mask out */
static uint32_t fa_mask_block(const fa_ctx *c, const fa_row *rows, int n, int64_t j0, int nj, float *s) {
    if (!c->mask) {
        for (int r = 0; r < n; r++)
            for (int j = 0; j < nj; j++) s[r * FA_BJ + j] = 0.0f;
        return (uint32_t)((1ull << nj) - 1);
    }
    uint32_t live = 0;
    for (int r = 0; r < n; r++) {
        float *sr = s + r * FA_BJ;
        if (r > 0 && rows[r].mrow == rows[r - 1].mrow && rows[r].slope == rows[r - 1].slope) {
            memcpy(sr, sr - FA_BJ, (size_t)nj * sizeof(float)); /* heads sharing a mask row (decode) */
            continue;
        }
        live |= fa_mask_row(c, rows[r].mrow + j0 * c->mask->nb[0], rows[r].slope, nj, sr);
    }
    return live;
}

/* scores of the block: s[r][j] = softcap(scale q_r . k_j) + mv for live entries (-inf stays) */
static void fa_scores(const fa_ctx *c, const fa_row *rows, int n, const void *const *kp, uint32_t live, float *s) {
    float dot[FA_TILE * FA_BJ], spill[FA_NR * FA_BJ];
    int cols[FA_BJ], nc = 0;
    for (int j = 0; j < FA_BJ; j++)
        if (live >> j & 1) cols[nc++] = j;
    for (int r0 = 0; r0 < n; r0 += FA_NR) {
        const int nr = n - r0 < FA_NR ? n - r0 : FA_NR, nk = fa_nk(nr);
        for (int i = 0; i < nc; i += nk) {
            const void *k[8];
            float *o[8];
            for (int x = 0; x < nk; x++) { /* slots past the last live key repeat it, into spill */
                k[x] = kp[cols[i + x < nc ? i + x : nc - 1]];
                o[x] = i + x < nc ? dot + r0 * FA_BJ + cols[i + x] : spill + x;
            }
            c->dots(rows[r0].q, A16(c->D), nr, k, o, FA_BJ, c->D);
        }
    }
    for (int r = 0; r < n; r++) {
        for (int i = 0; i < nc; i++) {
            float *sp = &s[r * FA_BJ + cols[i]];
            if (*sp == -INFINITY) continue; /* skipped outright: weighs exactly 0 */
            float x = dot[r * FA_BJ + cols[i]] * c->scale;
            if (c->softcap != 0.0f) x = c->softcap * tanhf(x);
            *sp = c->mask ? x + *sp : x;
        }
    }
}

/* one online-softmax step of a row over a block of nj scores s: the new max and sum, the
 * weights p of the block and the factor ms that rescales what was summed so far */
static void fa_softmax_step(const fa_ctx *c, fa_row *row, const float *s, int nj, float *p, float *ms) {
    float m = -INFINITY;
    for (int j = 0; j < nj; j++) m = s[j] > m ? s[j] : m;
    if (m == -INFINITY) { /* nothing live in this block: acc unchanged */
        for (int j = 0; j < nj; j++) p[j] = 0.0f;
        *ms = 1.0f;
        return;
    }
    const float M = m > row->M ? m : row->M;
    *ms = row->M == -INFINITY ? 0.0f : expf(row->M - M);
    row->S = row->S * *ms + c->exps(p, s, M, nj);
    row->M = M;
}

/* all n_kv positions for the n rows of a tile reading kv head hk of kv seq skv */
static void fa_tile(const fa_ctx *c, fa_row *rows, int n, int64_t hk, int64_t skv, const fa_scratch *w) {
    float s[FA_TILE * FA_BJ], p[FA_TILE * FA_BJ], ms[FA_TILE];
    float *acc[FA_TILE];
    const void *kp[FA_BJ], *vp[FA_BJ];
    const char *kbase = gr_row(c->k, 0, hk, skv), *vbase = gr_row(c->v, 0, hk, skv);
    for (int r = 0; r < n; r++) acc[r] = rows[r].acc;
    for (int64_t j0 = 0; j0 < c->n_kv; j0 += FA_BJ) {
        const int nj = (int)(c->n_kv - j0 < FA_BJ ? c->n_kv - j0 : FA_BJ);
        const uint32_t live = fa_mask_block(c, rows, n, j0, nj, s);
        if (!live) continue; /* masked for every row of the tile: K/V never read */
        if (c->k_direct && c->v_direct) { /* the usual case: rows in place */
            for (int j = 0; j < nj; j++) {
                kp[j] = kbase + (j0 + j) * c->k->nb[1];
                vp[j] = vbase + (j0 + j) * c->v->nb[1];
            }
        } else {
            for (int j = 0; j < nj; j++) {
                kp[j] = vp[j] = NULL;
                if (!(live >> j & 1)) continue;
                kp[j] = fa_kv_row(c->k, c->k_direct, j0 + j, hk, skv, w->k + j * A16(c->D));
                vp[j] = fa_kv_row(c->v, c->v_direct, j0 + j, hk, skv, w->v + j * A16(c->Dv));
            }
        }
        fa_scores(c, rows, n, kp, live, s);
        for (int r = 0; r < n; r++) fa_softmax_step(c, &rows[r], s + r * FA_BJ, nj, p + r * FA_BJ, &ms[r]);
        for (int r0 = 0; r0 < n; r0 += FA_NR)
            c->accum(acc + r0, p + r0 * FA_BJ, ms + r0, n - r0 < FA_NR ? n - r0 : FA_NR, vp, nj, c->Dv);
    }
}

static void fa_init_row(const fa_ctx *c, fa_row *row, int64_t iq, int64_t h, int64_t s, float *qbuf, float *acc) {
    const gr_tensor *q = c->q, *mask = c->mask;
    const char *qp = gr_row(q, iq, h, s);
    for (int64_t i = 0; i < c->D; i++) qbuf[i] = *(const float *)(qp + i * q->nb[0]);
    for (int64_t i = 0; i < c->Dv; i++) acc[i] = 0.0f;
    row->q = qbuf;
    row->acc = acc;
    row->mrow = mask ? gr_row(mask, iq, h % mask->ne[2], s % mask->ne[3]) : NULL;
    row->slope = c->slopes ? c->slopes[h] : 1.0f;
    row->M = -INFINITY;
    row->S = 0.0f;
    row->iq = iq;
    row->h = h;
    row->s = s;
}

/* acc / S into dst (d, h, iq, s); a row that summed nothing (all masked) is zeros, as ggml */
static void fa_store_row(const fa_ctx *c, const fa_row *row) {
    char *p = gr_row(c->dst, row->h, row->iq, row->s);
    const float S = row->S;
    if (c->dst->nb[0] == sizeof(float) && S != 0.0f) { /* the usual case, vectorized */
        float *o = (float *)p;
        for (int64_t d = 0; d < c->Dv; d++) o[d] = row->acc[d] / S;
        return;
    }
    for (int64_t d = 0; d < c->Dv; d++) *(float *)(p + d * c->dst->nb[0]) = S == 0.0f ? 0.0f : row->acc[d] / S;
}

void gr_k_flash_attn_ext(const gr_op *op, const gr_thread *th) {
    const gr_tensor *q = &op->src[0], *k = &op->src[1], *v = &op->src[2];
    fa_ctx c = {
        .q = q, .k = k, .v = v, .mask = op->n_src > 3 && op->src[3].data ? &op->src[3] : NULL, .dst = &op->dst,
        .D = q->ne[0], .Dv = v->ne[0], .n_q = q->ne[1], .n_kv = k->ne[1],
        .G = q->ne[2] / k->ne[2], .rk3 = q->ne[3] / k->ne[3],
        .scale = op->fp[0], .softcap = op->fp[2], .slopes = op->aux,
        .k_direct = fa_direct(k), .v_direct = fa_direct(v),
    };
    if (c.softcap != 0.0f) c.scale /= c.softcap; /* as ggml: scale first, then softcap tanh */
    fa_pick(&c);

    /* groups (kv head, kv seq) of R rows (iq fastest, then q head in the group, then q seq);
     * tiles small enough that every thread gets one when there are few groups */
    const int64_t n_groups = k->ne[2] * k->ne[3], R = c.rk3 * c.G * c.n_q;
    const int64_t per_group = (th->nth + n_groups - 1) / n_groups;
    int64_t T = (R + per_group - 1) / per_group;
    T = T < 1 ? 1 : T > FA_TILE ? FA_TILE : T;
    const int64_t n_tiles = (R + T - 1) / T;

    float *base = (float *)op->wdata + (int64_t)th->ith * fa_thread_floats(c.D, c.Dv);
    const fa_scratch w = {
        .q = base, .acc = base + FA_TILE * A16(c.D),
        .k = base + FA_TILE * (A16(c.D) + A16(c.Dv)), .v = base + FA_TILE * (A16(c.D) + A16(c.Dv)) + FA_BJ * A16(c.D),
    };
    fa_row rows[FA_TILE];

    int64_t b, e;
    gr_chunk(n_groups * n_tiles, th->ith, th->nth, &b, &e);
    for (int64_t u = b; u < e; u++) {
        const int64_t grp = u / n_tiles, r0 = (u % n_tiles) * T;
        const int64_t hk = grp % k->ne[2], skv = grp / k->ne[2];
        const int n = (int)(r0 + T <= R ? T : R - r0);
        for (int i = 0; i < n; i++) {
            const int64_t r = r0 + i, iq = r % c.n_q, hh = (r / c.n_q) % c.G, ss = r / (c.n_q * c.G);
            fa_init_row(&c, &rows[i], iq, hk * c.G + hh, skv * c.rk3 + ss, w.q + i * A16(c.D), w.acc + i * A16(c.Dv));
        }
        fa_tile(&c, rows, n, hk, skv, &w);
        for (int i = 0; i < n; i++) fa_store_row(&c, &rows[i]);
    }
}
