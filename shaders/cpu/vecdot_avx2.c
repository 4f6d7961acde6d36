/* AVX2 (+FMA, F16C) tile kernels, the same canonical order as vecdot.c and vecdot_avx512.c:
 * each 16-lane accumulator of matmul.h is a pair of 8-lane registers (lanes 0-7, 8-15).
 * Integer dot products: vpmaddubsw (unsigned x signed bytes to int16 pairs), then vpmaddwd
 * with ones (or with the sub-block scales for the K-quants) to int32 lanes of 4 elements;
 * signed Q8_0 (and Q4_0 as q - 8) weights use the sign trick (|w| x sign(a, w)), as ggml does.
 *
 * Only called when gr_has_avx2 (gr_mm_kernel_for); the whole file is compiled for that target.
 */
#if defined(__x86_64__) || defined(__i386__)
#pragma GCC target("avx2,fma,f16c")
#pragma GCC optimize("fp-contract=off")
#include <immintrin.h>

#include "matmul.h"

#define INLINE static inline __attribute__((always_inline))
/* the row / token / chunk loops of a tile unrolled completely, so its accumulators live in registers */
#define UNROLL _Pragma("GCC unroll 16")

/* the canonical tree sum of 16 lanes (lo = lanes 0-7, hi = 8-15): h = 8, 4, 2, 1 */
INLINE float tree(__m256 lo, __m256 hi) {
    __m256 h8 = _mm256_add_ps(lo, hi);
    __m128 h4 = _mm_add_ps(_mm256_castps256_ps128(h8), _mm256_extractf128_ps(h8, 1));
    __m128 h2 = _mm_add_ps(h4, _mm_movehl_ps(h4, h4));
    return _mm_cvtss_f32(_mm_add_ss(h2, _mm_movehdup_ps(h2)));
}

/* an accumulator of 16 lanes */
typedef struct {
    __m256 v[2];
} acc16;

#define ZERO_ACC(acc, NR, NC)                                                                           \
    UNROLL for (int r = 0; r < NR; r++) UNROLL for (int c = 0; c < NC; c++)                             \
        acc[r][c].v[0] = acc[r][c].v[1] = _mm256_setzero_ps();
#define STORE_ACC(acc, NR, NC)                                                                          \
    UNROLL for (int r = 0; r < NR; r++) UNROLL for (int c = 0; c < NC; c++)                             \
        out[c][r0 + r] = tree(acc[r][c].v[0], acc[r][c].v[1]);

/* ================= F32 / F16 / BF16 weights, F32 activations ================= */

INLINE __m256 load8_w(int type, const char *p) {
    if (type == GR_F32) return _mm256_loadu_ps((const float *)p);
    __m128i h = _mm_loadu_si128((const __m128i *)p);
    if (type == GR_F16) return _mm256_cvtph_ps(h);
    return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
}

/* 32 lanes as 4 registers (lanes 8q .. 8q + 7) */
typedef struct {
    __m256 v[4];
} acc32;

/* 32 elements: weights at w + r * ws, activations at a[c] */
INLINE void float_step(int type, int NR, int NC, acc32 acc[2][2], const char *w, int64_t ws, const float *const *a) {
    int es = type == GR_F32 ? 4 : 2;
    UNROLL
    for (int q = 0; q < 4; q++) {
        __m256 wv[2];
        UNROLL
        for (int r = 0; r < NR; r++) wv[r] = load8_w(type, w + r * ws + 8 * q * es);
        UNROLL
        for (int c = 0; c < NC; c++) {
            __m256 av = _mm256_loadu_ps(a[c] + 8 * q);
            UNROLL
            for (int r = 0; r < NR; r++) acc[r][c].v[q] = _mm256_fmadd_ps(wv[r], av, acc[r][c].v[q]);
        }
    }
}

INLINE void float_tile(int type, int NR, int NC, int64_t K, const char *w, int64_t ws, const char *const *act,
                       float *const *out, int64_t r0) {
    int es = type == GR_F32 ? 4 : 2;
    acc32 acc[2][2];
    UNROLL
    for (int r = 0; r < NR; r++)
        UNROLL
        for (int c = 0; c < NC; c++)
            UNROLL
            for (int q = 0; q < 4; q++) acc[r][c].v[q] = _mm256_setzero_ps();
    const float *a[2];
    int64_t k = 0;
    for (; k + 32 <= K; k += 32) {
        if (NR == 1 && NC > 1) /* as the AVX-512 tiles (GR_FLOAT_PF_BYTES, matmul.h) */
            gr_prefetch_l2(w + es * k + GR_FLOAT_PF_BYTES, 32 * es);
        UNROLL
        for (int c = 0; c < NC; c++) a[c] = (const float *)act[c] + k;
        float_step(type, NR, NC, acc, w + k * es, ws, a);
    }
    if (k < K) { /* the tail through zero-padded copies: absent elements add +0 */
        int n = (int)(K - k);
        char wt[2][128] = {{0}};
        float at[2][32] = {{0}};
        UNROLL
        for (int r = 0; r < NR; r++) memcpy(wt[r], w + r * ws + k * es, (size_t)(n * es));
        UNROLL
        for (int c = 0; c < NC; c++) {
            memcpy(at[c], (const float *)act[c] + k, (size_t)n * 4);
            a[c] = at[c];
        }
        float_step(type, NR, NC, acc, wt[0], 128, a);
    }
    UNROLL
    for (int r = 0; r < NR; r++)
        UNROLL
        for (int c = 0; c < NC; c++) /* h = 16 first, then the 16-lane tree */
            out[c][r0 + r] = tree(_mm256_add_ps(acc[r][c].v[0], acc[r][c].v[2]), _mm256_add_ps(acc[r][c].v[1], acc[r][c].v[3]));
}

/* ================= Q8_0 / Q4_0 weights, Q8 pairs ================= */

/* int32 lanes of 4 (unsigned x signed byte products) */
INLINE __m256i dot4(__m256i u, __m256i s) { return _mm256_madd_epi16(_mm256_maddubs_epi16(u, s), _mm256_set1_epi16(1)); }

/* one 32-element block j (lanes 8h .. 8h + 7, h = j % 2) */
/* block j into lanes 8h .. 8h + 7 (h = j % 2, a constant at each call) */
INLINE void q8_block(int type, int NR, int NC, acc16 acc[2][2], const char *w, int64_t ws, const char *const *act,
                     int64_t K, int64_t j, int h) {
    int bs = type == GR_Q8_0 ? 34 : 18;
    __m256i wq[2];
    __m256 dw[2];
    UNROLL
    for (int r = 0; r < NR; r++) {
        const char *b = w + r * ws + bs * j;
        dw[r] = _mm256_set1_ps(gr_f16_to_f32(gr_ld16(b)));
        if (type == GR_Q8_0) {
            wq[r] = _mm256_loadu_si256((const __m256i *)(b + 2));
        } else {
            __m128i x = _mm_loadu_si128((const __m128i *)(b + 2)), m = _mm_set1_epi8(15);
            wq[r] = _mm256_sub_epi8(_mm256_set_m128i(_mm_and_si128(_mm_srli_epi16(x, 4), m), _mm_and_si128(x, m)),
                                    _mm256_set1_epi8(8));
        }
    }
    UNROLL
    for (int c = 0; c < NC; c++) {
        __m256i av = _mm256_xor_si256(_mm256_loadu_si256((const __m256i *)(act[c] + 32 * j)), _mm256_set1_epi8((char)0x80));
        __m256 da = _mm256_set1_ps(gr_q8_scales(act[c], K)[j]);
        UNROLL
        for (int r = 0; r < NR; r++) {
            __m256i s = dot4(_mm256_sign_epi8(wq[r], wq[r]), _mm256_sign_epi8(av, wq[r]));
            acc[r][c].v[h] = _mm256_fmadd_ps(_mm256_mul_ps(dw[r], da), _mm256_cvtepi32_ps(s), acc[r][c].v[h]);
        }
    }
}

INLINE void q8_tile(int type, int NR, int NC, int64_t K, const char *w, int64_t ws, const char *const *act,
                    float *const *out, int64_t r0) {
    acc16 acc[2][2];
    ZERO_ACC(acc, NR, NC)
    int64_t j = 0;
    for (; j + 2 <= K / 32; j += 2) {
        q8_block(type, NR, NC, acc, w, ws, act, K, j, 0);
        q8_block(type, NR, NC, acc, w, ws, act, K, j + 1, 1);
    }
    if (j < K / 32) q8_block(type, NR, NC, acc, w, ws, act, K, j, 0);
    STORE_ACC(acc, NR, NC)
}

/* ================= K-quants, Q8K super-blocks ================= */

typedef struct {
    int16_t sc[16]; /* sub-block scales (8 for Q4_K/Q5_K) */
    __m256i m;      /* Q4_K/Q5_K: 8 mins as int32 */
    float d, dmin;
} ksb;

INLINE void k_head(int type, const uint8_t *b, ksb *s) {
    if (type == GR_Q6_K) {
        for (int i = 0; i < 16; i++) s->sc[i] = (int8_t)b[192 + i];
        s->d = gr_f16_to_f32(gr_ld16(b + 208));
        return;
    }
    uint64_t sc, m;
    gr_k4_scales64(b + 4, &sc, &m);
    _mm_storeu_si128((__m128i *)s->sc, _mm_cvtepu8_epi16(_mm_cvtsi64_si128((long long)sc)));
    s->m = _mm256_cvtepu8_epi32(_mm_cvtsi64_si128((long long)m));
    s->d = gr_f16_to_f32(gr_ld16(b));
    s->dmin = gr_f16_to_f32(gr_ld16(b + 2));
}

/* the unsigned quants of half h (32 elements) of chunk c of a super-block at b */
INLINE __m256i k_half(int type, const uint8_t *b, int c, int h) {
    const __m256i m4 = _mm256_set1_epi8(15);
    if (type == GR_Q6_K) {
        int k = 2 * (c % 2) + h; /* element 32k + l of the 128-element half c / 2 */
        __m256i ql = _mm256_loadu_si256((const __m256i *)(b + 64 * (c / 2) + 32 * h));
        __m256i qh = _mm256_loadu_si256((const __m256i *)(b + 128 + 32 * (c / 2)));
        __m256i lo = _mm256_and_si256(c % 2 ? _mm256_srli_epi16(ql, 4) : ql, m4);
        __m256i hi = _mm256_and_si256(_mm256_srli_epi16(qh, 2 * k), _mm256_set1_epi8(3));
        return _mm256_or_si256(lo, _mm256_slli_epi16(hi, 4));
    }
    const uint8_t *qs = b + (type == GR_Q5_K ? 48 : 16);
    __m256i x = _mm256_loadu_si256((const __m256i *)(qs + 32 * c));
    __m256i q = _mm256_and_si256(h ? _mm256_srli_epi16(x, 4) : x, m4);
    if (type == GR_Q5_K) { /* bit 2c + h of qh[l] is the 5th bit */
        __m256i bit = _mm256_set1_epi8((char)(1 << (2 * c + h)));
        __m256i set = _mm256_cmpeq_epi8(_mm256_and_si256(_mm256_loadu_si256((const __m256i *)(b + 16)), bit), bit);
        q = _mm256_or_si256(q, _mm256_and_si256(set, _mm256_set1_epi8(16)));
    }
    return q;
}

/* int16 scales of half h of chunk c: Q4_K/Q5_K one sub-block (2c + h); Q6_K two (4c + 2h, + 1) */
INLINE __m256i k_scales(int type, const ksb *s, int c, int h) {
    if (type == GR_Q6_K)
        return _mm256_set_m128i(_mm_set1_epi16(s->sc[4 * c + 2 * h + 1]), _mm_set1_epi16(s->sc[4 * c + 2 * h]));
    return _mm256_set1_epi16(s->sc[2 * c + h]);
}

INLINE void k_tile(int type, int NR, int NC, int64_t K, const char *w, int64_t ws, const char *const *act,
                   float *const *out, int64_t r0) {
    int bytes = type == GR_Q4_K ? 144 : type == GR_Q5_K ? 176 : 210;
    acc16 acc[2][2];
    ZERO_ACC(acc, NR, NC)
    for (int64_t i = 0; i < K / 256; i++) {
        if (NR == 1 && NC > 1) /* as the AVX-512 tiles (GR_KQ_PF_BYTES, matmul.h) */
            gr_prefetch_l2(w + bytes * i + GR_KQ_PF_BYTES, bytes);
        ksb s[2];
        __m256i IL[2][2][2];
        UNROLL
        for (int r = 0; r < NR; r++) k_head(type, (const uint8_t *)w + r * ws + bytes * i, &s[r]);
        UNROLL
        for (int c = 0; c < NC; c++) {
            const gr_q8k *ak = (const gr_q8k *)act[c] + i;
            UNROLL
            for (int r = 0; r < NR; r++) {
                IL[r][c][1] = _mm256_setzero_si256();
                if (type == GR_Q6_K) { /* -32 * (sc[2k] bsums[2k] + sc[2k+1] bsums[2k+1]) in lanes k < 8 */
                    __m256i t = _mm256_madd_epi16(_mm256_loadu_si256((const __m256i *)s[r].sc),
                                                  _mm256_loadu_si256((const __m256i *)ak->bsums));
                    IL[r][c][0] = _mm256_sub_epi32(_mm256_setzero_si256(), _mm256_slli_epi32(t, 5));
                } else {
                    IL[r][c][0] = _mm256_setzero_si256();
                }
            }
        }
        UNROLL
        for (int ch = 0; ch < 4; ch++)
            UNROLL
            for (int h = 0; h < 2; h++) {
                __m256i q[2], sc[2];
                UNROLL
                for (int r = 0; r < NR; r++) {
                    q[r] = k_half(type, (const uint8_t *)w + r * ws + bytes * i, ch, h);
                    sc[r] = k_scales(type, &s[r], ch, h);
                }
                UNROLL
                for (int c = 0; c < NC; c++) {
                    __m256i a = _mm256_load_si256((const __m256i *)(((const gr_q8k *)act[c] + i)->qs + 64 * ch + 32 * h));
                    UNROLL
                    for (int r = 0; r < NR; r++)
                        IL[r][c][h] = _mm256_add_epi32(IL[r][c][h], _mm256_madd_epi16(_mm256_maddubs_epi16(q[r], a), sc[r]));
                }
            }
        UNROLL
        for (int c = 0; c < NC; c++) {
            const gr_q8k *ak = (const gr_q8k *)act[c] + i;
            __m256i bw = _mm256_cvtepi16_epi32(_mm_loadu_si128((const __m128i *)ak->bsum32));
            UNROLL
            for (int r = 0; r < NR; r++) {
                __m256 dd = _mm256_set1_ps(ak->d * s[r].d);
                UNROLL
                for (int h = 0; h < 2; h++)
                    acc[r][c].v[h] = _mm256_fmadd_ps(dd, _mm256_cvtepi32_ps(IL[r][c][h]), acc[r][c].v[h]);
                if (type != GR_Q6_K) {
                    __m256 ml = _mm256_cvtepi32_ps(_mm256_mullo_epi32(s[r].m, bw));
                    acc[r][c].v[0] = _mm256_fmadd_ps(_mm256_set1_ps(-(ak->d * s[r].dmin)), ml, acc[r][c].v[0]);
                }
            }
        }
    }
    STORE_ACC(acc, NR, NC)
}

/* ================= instantiation: one function per (type, nr, nc), nr, nc <= 2 ================= */

/* shape (NR, NC): its tiles over nrows weight rows (a multiple of NR) */
#define SHAPE(name, gen, type, NR, NC)                                                                   \
    static void name##_##NR##x##NC(int64_t K, const char *w, int64_t ws, int64_t nrows, const char *const *act, \
                                   float *const *out, int64_t r0) {                                      \
        for (int64_t r = 0; r < nrows; r += NR) gen(type, NR, NC, K, w + r * ws, ws, act, out, r0 + r);    \
    }
#define KERNEL(name, gen, type)                                                                          \
    SHAPE(name, gen, type, 1, 1) SHAPE(name, gen, type, 1, 2) SHAPE(name, gen, type, 2, 1)              \
    SHAPE(name, gen, type, 2, 2)                                                                         \
    static const gr_mm_rows_fn name[GR_MM_MAX_RT][GR_MM_MAX_CT] = {{name##_1x1, name##_1x2}, {name##_2x1, name##_2x2}};

KERNEL(f32_tile, float_tile, GR_F32)
KERNEL(f16_tile, float_tile, GR_F16)
KERNEL(bf16_tile, float_tile, GR_BF16)
KERNEL(q8_0_tile, q8_tile, GR_Q8_0)
KERNEL(q4_0_tile, q8_tile, GR_Q4_0)
KERNEL(q4_k_tile, k_tile, GR_Q4_K)
KERNEL(q5_k_tile, k_tile, GR_Q5_K)
KERNEL(q6_k_tile, k_tile, GR_Q6_K)

/* ================= repacked Q8_0 / Q4_0 (GR_Q8_0_R16, GR_Q4_0_R16), Q8R rows ================= */

/* One half (8 rows at lane offset 32 h bytes of each chunk) of a group of 16 rows x NC tokens.
 * Q8_0: per block and chunk the 8 rows' 4 signed weights (u ^ 0x80) and their magnitudes, shared
 * by the tokens; per token the sign trick gives the exact dot product (no offset to remove).
 * Q4_0: per chunk the low and the high nibbles n = w + 8 (unsigned, at most 15: a maddubs pair
 * sum stays within int16), each a token's unsigned operand as they are; the sum starts at
 * -8 sum(q) = the Q8R meta's -128 sum(q) >> 4. */
INLINE void r16_half(int type, int NC, int64_t K, const char *g, int h, const char *const *act, float *const *out,
                     int64_t r0, int64_t nvalid) {
    const int64_t nblk = K / 32;
    const int qb = gr_r16_qbytes(type), q4 = type == GR_Q4_0_R16;
    const int64_t pair = gr_r16_pair_bytes(qb);
    const __m256i flip = _mm256_set1_epi8((char)0x80), ones = _mm256_set1_epi16(1), low4 = _mm256_set1_epi8(0x0F);
    __m256 acc[4];
    UNROLL
    for (int c = 0; c < NC; c++) acc[c] = _mm256_setzero_ps();
    for (int64_t j = 0; j < nblk; j++) {
        const char *qp = gr_r16_quants(g, nblk, j, qb);
        if (NC > 1 && h == 0 && !(j & 1)) /* the second half reads the group from cache */
            gr_prefetch_l2((const char *)gr_r16_scales(g, j, qb) + GR_R16_PF_PAIRS * pair, pair);
        __m256i I[4];
        if (q4) {
            UNROLL
            for (int c = 0; c < NC; c++) I[c] = _mm256_set1_epi32(((const int32_t *)gr_q8r_meta(act[c], K))[2 * j + 1] >> 4);
            UNROLL
            for (int k = 0; k < 4; k++) {
                __m256i x = _mm256_loadu_si256((const __m256i *)(qp + 64 * k + 32 * h));
                __m256i lo = _mm256_and_si256(x, low4), hi = _mm256_and_si256(_mm256_srli_epi16(x, 4), low4);
                UNROLL
                for (int c = 0; c < NC; c++) {
                    int32_t xl, xh;
                    memcpy(&xl, act[c] + 32 * j + 4 * k, 4);
                    memcpy(&xh, act[c] + 32 * j + 16 + 4 * k, 4);
                    __m256i p = _mm256_add_epi16(_mm256_maddubs_epi16(lo, _mm256_set1_epi32(xl)),
                                                 _mm256_maddubs_epi16(hi, _mm256_set1_epi32(xh)));
                    I[c] = _mm256_add_epi32(I[c], _mm256_madd_epi16(p, ones)); /* |p| <= 4 * 15 * 127 */
                }
            }
        } else {
            UNROLL
            for (int c = 0; c < NC; c++) I[c] = _mm256_setzero_si256();
            UNROLL
            for (int k = 0; k < 8; k++) {
                __m256i w = _mm256_xor_si256(_mm256_loadu_si256((const __m256i *)(qp + 64 * k + 32 * h)), flip);
                __m256i aw = _mm256_abs_epi8(w);
                UNROLL
                for (int c = 0; c < NC; c++) {
                    int32_t x;
                    memcpy(&x, act[c] + 32 * j + 4 * k, 4);
                    __m256i p = _mm256_maddubs_epi16(aw, _mm256_sign_epi8(_mm256_set1_epi32(x), w));
                    I[c] = _mm256_add_epi32(I[c], _mm256_madd_epi16(p, ones));
                }
            }
        }
        const __m256 dw = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(gr_r16_scales(g, j, qb) + 8 * h)));
        UNROLL
        for (int c = 0; c < NC; c++) {
            const __m256 P = _mm256_mul_ps(dw, _mm256_set1_ps(gr_q8r_meta(act[c], K)[2 * j]));
            acc[c] = _mm256_fmadd_ps(P, _mm256_cvtepi32_ps(I[c]), acc[c]);
        }
    }
    UNROLL
    for (int c = 0; c < NC; c++) {
        float v[8];
        _mm256_storeu_ps(v, acc[c]);
        for (int64_t r = 0; r < 8 && 8 * h + r < nvalid; r++) out[c][r0 + 8 * h + r] = v[r];
    }
}

#define R16_SHAPE(name, type, NC)                                                                        \
    static void name##_1x##NC(int64_t K, const char *w, int64_t ws, int64_t nrows, const char *const *act,  \
                              float *const *out, int64_t r0) {                                           \
        for (int64_t r = 0; r < nrows; r += GR_R16)                                                      \
            for (int h = 0; h < 2 && 8 * h < nrows - r; h++)                                             \
                r16_half(type, NC, K, w + r * ws, h, act, out, r0 + r, nrows - r);                       \
    }
#define R16_KERNEL(name, type)                                                                           \
    R16_SHAPE(name, type, 1) R16_SHAPE(name, type, 2) R16_SHAPE(name, type, 3) R16_SHAPE(name, type, 4)  \
    static const gr_mm_rows_fn name[GR_MM_MAX_RT][GR_MM_MAX_CT] = {{name##_1x1, name##_1x2, name##_1x3, name##_1x4}};
R16_KERNEL(q8r_tile, GR_Q8_0_R16)
R16_KERNEL(q4r_tile, GR_Q4_0_R16)
#undef R16_KERNEL
#undef R16_SHAPE

gr_mm_kernel gr_mm_avx2(int type) {
    switch (type) {
    case GR_F32: return (gr_mm_kernel){GR_ACT_F32, 1, 2, 2, f32_tile};
    case GR_F16: return (gr_mm_kernel){GR_ACT_F32, 1, 2, 2, f16_tile};
    case GR_BF16: return (gr_mm_kernel){GR_ACT_F32, 1, 2, 2, bf16_tile};
    case GR_Q8_0: return (gr_mm_kernel){GR_ACT_Q8, 2, 2, 2, q8_0_tile};
    case GR_Q4_0: return (gr_mm_kernel){GR_ACT_Q8, 2, 2, 2, q4_0_tile};
    case GR_Q4_K: return (gr_mm_kernel){GR_ACT_Q8K, 1, 2, 2, q4_k_tile};
    case GR_Q5_K: return (gr_mm_kernel){GR_ACT_Q8K, 1, 2, 2, q5_k_tile};
    case GR_Q6_K: return (gr_mm_kernel){GR_ACT_Q8K, 1, 2, 2, q6_k_tile};
    case GR_Q8_0_R16: return (gr_mm_kernel){GR_ACT_Q8R, 1, 4, 4, q8r_tile};
    case GR_Q4_0_R16: return (gr_mm_kernel){GR_ACT_Q8R, 1, 4, 4, q4r_tile};
    default: return (gr_mm_kernel){0, 0, 0, 0, NULL};
    }
}

#else
#include "matmul.h"
gr_mm_kernel gr_mm_avx2(int type) {
    (void)type;
    return (gr_mm_kernel){0, 0, 0, 0, NULL};
}
#endif
