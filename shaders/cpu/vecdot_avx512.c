/* AVX-512 (F, BW, VL, VNNI) tile kernels: nr weight rows x nc activation rows per call, each
 * dot product in the canonical order of matmul.h (bit-identical to vecdot.c).
 *
 * A tile keeps one 16-lane float accumulator per (row, token); weight rows are decoded once per
 * tile and reused by every token of it, activations once and reused by every row.
 * Integer dot products: vpdpbusd (unsigned x signed bytes) for Q8_0/Q4_0: the activations
 * offset by +128 (matmul.h) times the signed weights (Q4_0: nibble - 8), each lane starting at
 * -128 * (its 4 weights' sum), computed once per row and block for all the tokens of a tile.
 * One-row tiles (decode, verify batches: up to 8 tokens) form the scale products of 8 blocks at
 * once; Q8_0 takes a block pair per 512-bit register (q8_pair_row_tile), Q4_0 256-bit halves
 * (q8_row_tile). On Zen 4 a 512-bit vpdpbusd or fma issues as one op and runs as two 256-bit
 * halves (8 independent zmm vpdpbusd: 0.72 TSC cycles each, ymm 0.38; vpdpbusd and fma share
 * two pipes, converts run beside them).
 * K-quants: vpmaddubsw on the unsigned quants, then vpdpwssd with the sub-block scales.
 *
 * Only called when gr_has_vnni (gr_mm_kernel_for); the whole file is compiled for that target.
 */
#if defined(__x86_64__) || defined(__i386__)
#pragma GCC target("avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c,sse4.1")
#pragma GCC optimize("fp-contract=off")
#include <immintrin.h>

#include "matmul.h"

#define INLINE static inline __attribute__((always_inline))
/* The one-row Q8_0/Q4_0 tiles prefetch the weights this many bytes ahead (the rows stream in
 * address order): measured from memory here (busy machine, one thread, medians of 8), 1 token
 * 12.2 -> 13.2 GB/s, 4 tokens 4.19 -> 3.88 ns per block */
#define PF_AHEAD 4096
/* the row / token / chunk loops of a tile unrolled completely, so its accumulators live in registers */
#define UNROLL _Pragma("GCC unroll 16")

/* the canonical tree sum of 16 lanes: h = 8, 4, 2, 1 */
INLINE float tree(__m512 v) {
    __m256 h8 = _mm256_add_ps(_mm512_castps512_ps256(v), _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(v), 1)));
    __m128 h4 = _mm_add_ps(_mm256_castps256_ps128(h8), _mm256_extractf128_ps(h8, 1));
    __m128 h2 = _mm_add_ps(h4, _mm_movehl_ps(h4, h4));
    return _mm_cvtss_f32(_mm_add_ss(h2, _mm_movehdup_ps(h2)));
}

INLINE __m512i cat256(__m256i lo, __m256i hi) { return _mm512_inserti64x4(_mm512_castsi256_si512(lo), hi, 1); }

/* ================= F32 / F16 / BF16 weights, F32 activations ================= */

INLINE __m512 load_w(int type, const char *p, __mmask16 m) {
    if (type == GR_F32) return _mm512_maskz_loadu_ps(m, p);
    __m256i h = _mm256_maskz_loadu_epi16(m, p);
    if (type == GR_F16) return _mm512_cvtph_ps(h);
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
}

/* 16 elements at k into accumulators acc (m: the elements present; absent ones load as 0 and
 * add +0, which leaves an accumulator unchanged since it is never -0) */
INLINE void float_step(int type, int NR, int NC, __m512 acc[2][8], const char *w, int64_t ws,
                       const char *const *act, int64_t k, __mmask16 m) {
    int es = type == GR_F32 ? 4 : 2;
    __m512 wv[2];
    UNROLL
    for (int r = 0; r < NR; r++) wv[r] = load_w(type, w + r * ws + k * es, m);
    UNROLL
    for (int c = 0; c < NC; c++) {
        __m512 av = _mm512_maskz_loadu_ps(m, (const float *)act[c] + k);
        UNROLL
        for (int r = 0; r < NR; r++) acc[r][c] = _mm512_fmadd_ps(wv[r], av, acc[r][c]);
    }
}

/* 32 lanes: lo holds lanes k % 32 < 16, hi the others (two independent chains); PF: a one-token
 * tile prefetches (see GR_FLOAT_PF_BYTES, matmul.h) */
INLINE void float_tile_pf(int type, int NR, int NC, int PF, int64_t K, const char *w, int64_t ws,
                          const char *const *act, float *const *out, int64_t r0) {
    __m512 lo[2][8], hi[2][8]; /* 2 rows x 4 tokens, or 1 row x up to 8 */
    UNROLL
    for (int r = 0; r < NR; r++)
        UNROLL
        for (int c = 0; c < NC; c++) lo[r][c] = hi[r][c] = _mm512_setzero_ps();
    int64_t k = 0;
    const int esz = type == GR_F32 ? 4 : 2; /* bytes a weight */
    for (; k + 32 <= K; k += 32) {
        if (NR == 1 && (NC > 1 || PF))
            gr_prefetch_l2(w + esz * k + GR_FLOAT_PF_BYTES, 32 * esz);
        float_step(type, NR, NC, lo, w, ws, act, k, 0xFFFF);
        float_step(type, NR, NC, hi, w, ws, act, k + 16, 0xFFFF);
    }
    if (k < K) { /* the last 1..31 elements */
        int64_t n = K - k;
        float_step(type, NR, NC, lo, w, ws, act, k, n >= 16 ? 0xFFFF : (__mmask16)((1u << n) - 1));
        if (n > 16) float_step(type, NR, NC, hi, w, ws, act, k + 16, (__mmask16)((1u << (n - 16)) - 1));
    }
    UNROLL
    for (int r = 0; r < NR; r++)
        UNROLL
        for (int c = 0; c < NC; c++) out[c][r0 + r] = tree(_mm512_add_ps(lo[r][c], hi[r][c]));
}

INLINE void float_tile(int type, int NR, int NC, int64_t K, const char *w, int64_t ws, const char *const *act,
                       float *const *out, int64_t r0) {
    float_tile_pf(type, NR, NC, 0, K, w, ws, act, out, r0);
}

/* the one-token tiles of F32/F16/BF16 matrices read from memory (gr_mm_kernel.stream1) */
#define FLOAT_STREAM1(name, type)                                                                        \
    static void name(int64_t K, const char *w, int64_t ws, int64_t nrows, const char *const *act,         \
                     float *const *out, int64_t r0) {                                                    \
        for (int64_t r = 0; r < nrows; r++) float_tile_pf(type, 1, 1, 1, K, w + r * ws, ws, act, out, r0 + r); \
    }
FLOAT_STREAM1(f32_stream1, GR_F32)
FLOAT_STREAM1(f16_stream1, GR_F16)
FLOAT_STREAM1(bf16_stream1, GR_BF16)
#undef FLOAT_STREAM1

/* ================= Q8_0 / Q4_0 weights, Q8 pairs ================= */

/* fp16 scales at p and p + stride -> [d0 x 8, d1 x 8] (d1 = 0 for a lone last block) */
INLINE __m512 pair_scale(const char *p, int stride, int two) {
    __m128i d0 = _mm_set1_epi16((short)gr_ld16(p));
    __m128i d1 = two ? _mm_set1_epi16((short)gr_ld16(p + stride)) : _mm_setzero_si128();
    return _mm512_cvtph_ps(_mm256_inserti128_si256(_mm256_castsi128_si256(d0), d1, 1));
}

/* two Q8_0 blocks at p (a lone block leaves the top half 0) */
INLINE __m512i q8_0_pair(const char *p, int two) {
    __m256i x0 = _mm256_loadu_si256((const __m256i *)(p + 2));
    __m256i x1 = two ? _mm256_loadu_si256((const __m256i *)(p + 36)) : _mm256_setzero_si256();
    return cat256(x0, x1);
}

/* two Q4_0 blocks at p: nibbles - 8 in element order [lo0, hi0, lo1, hi1] (16 bytes each) */
INLINE __m512i q4_0_pair(const char *p, int two) {
    __m128i q0 = _mm_loadu_si128((const __m128i *)(p + 2));
    __m128i q1 = two ? _mm_loadu_si128((const __m128i *)(p + 20)) : _mm_setzero_si128();
    __m256i x = _mm256_inserti128_si256(_mm256_castsi128_si256(q0), q1, 1), m = _mm256_set1_epi8(15);
    __m512i z = cat256(_mm256_and_si256(x, m), _mm256_and_si256(_mm256_srli_epi16(x, 4), m)); /* lo0 lo1 hi0 hi1 */
    return _mm512_sub_epi8(_mm512_shuffle_i64x2(z, z, _MM_SHUFFLE(3, 1, 2, 0)), _mm512_set1_epi8(8));
}

/* -128 * (the sum of each 4 signed weights), the start of each lane's vpdpbusd with the offset
 * activations u = q + 128: sum(u * w) - 128 * sum(w) = sum(q * w) */
INLINE __m512i q8_base(__m512i w) {
    return _mm512_sub_epi32(_mm512_setzero_si512(), _mm512_dpbusd_epi32(_mm512_setzero_si512(), _mm512_set1_epi8((char)0x80), w));
}

INLINE void q8_step(int type, int NR, int NC, __m512 acc[4][4], const char *w, int64_t ws,
                    const char *const *act, int64_t K, int64_t p, int two) {
    int bs = type == GR_Q8_0 ? 34 : 18;
    __m512i wv[4], base[4];
    __m512 dw[4];
    UNROLL
    for (int r = 0; r < NR; r++) {
        const char *b = w + r * ws + 2 * bs * p;
        wv[r] = type == GR_Q8_0 ? q8_0_pair(b, two) : q4_0_pair(b, two);
        dw[r] = pair_scale(b, bs, two);
        base[r] = q8_base(wv[r]);
    }
    const __m512i lanes = _mm512_set_epi32(1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0);
    UNROLL
    for (int c = 0; c < NC; c++) {
        __m512i av = _mm512_loadu_si512(act[c] + 64 * p);
        __m128 d2 = _mm_castsi128_ps(_mm_loadl_epi64((const __m128i *)(gr_q8_scales(act[c], K) + 2 * p)));
        __m512 da = _mm512_permutexvar_ps(lanes, _mm512_castps128_ps512(d2)); /* [d0 x 8, d1 x 8] */
        UNROLL
        for (int r = 0; r < NR; r++) {
            __m512i s = _mm512_dpbusd_epi32(base[r], av, wv[r]);
            acc[r][c] = _mm512_fmadd_ps(_mm512_mul_ps(dw[r], da), _mm512_cvtepi32_ps(s), acc[r][c]);
        }
    }
}

INLINE void q8_tile(int type, int NR, int NC, int64_t K, const char *w, int64_t ws, const char *const *act,
                    float *const *out, int64_t r0) {
    __m512 acc[4][4];
    UNROLL
    for (int r = 0; r < NR; r++)
        UNROLL
        for (int c = 0; c < NC; c++) acc[r][c] = _mm512_setzero_ps();
    int64_t nblk = K / 32, p = 0;
    for (; 2 * p + 2 <= nblk; p++) q8_step(type, NR, NC, acc, w, ws, act, K, p, 1);
    if (nblk & 1) q8_step(type, NR, NC, acc, w, ws, act, K, p, 0);
    UNROLL
    for (int r = 0; r < NR; r++)
        UNROLL
        for (int c = 0; c < NC; c++) out[c][r0 + r] = tree(acc[r][c]);
}

/* One weight row x NC tokens in 256-bit halves (the tiles of decode and verify batches, and the
 * cold first tiles of prefill): the same canonical order as q8_tile, fewer instructions per
 * token (here vpdpbusd on 512 bits is slower per byte than on 256). Block j goes to the 8 lanes
 * of parity j % 2 (acc[c][j % 2]). Its scale products P = dw * da are formed 8 blocks at a time
 * (the row's 8 fp16 scales packed in integer registers, one multiply per token) and each fma
 * reads its P as a broadcast from memory. Per token and block: one load, one vpdpbusd (from the
 * row's base lanes), one convert, one fma. */
INLINE __m256i q8_block_w(int type, const char *b) {
    if (type == GR_Q8_0) return _mm256_loadu_si256((const __m256i *)(b + 2));
    __m128i x = _mm_loadu_si128((const __m128i *)(b + 2)), m = _mm_set1_epi8(15);
    __m256i q = _mm256_inserti128_si256(_mm256_castsi128_si256(_mm_and_si128(x, m)), _mm_and_si128(_mm_srli_epi16(x, 4), m), 1);
    return _mm256_sub_epi8(q, _mm256_set1_epi8(8));
}

INLINE void q8_row_block(int type, int NC, __m256 acc[8][2], const char *w, const char *const *act,
                         const float (*P)[8], int64_t j, int jj, int h) {
    int bs = type == GR_Q8_0 ? 34 : 18;
    __m256i wq = q8_block_w(type, w + bs * j);
    __m256i base = _mm256_sub_epi32(_mm256_setzero_si256(),
                                    _mm256_dpbusd_epi32(_mm256_setzero_si256(), _mm256_set1_epi8((char)0x80), wq));
    UNROLL
    for (int c = 0; c < NC; c++) {
        __m256i s = _mm256_dpbusd_epi32(base, _mm256_loadu_si256((const __m256i *)(act[c] + 32 * j)), wq);
        acc[c][h] = _mm256_fmadd_ps(_mm256_set1_ps(P[c][jj]), _mm256_cvtepi32_ps(s), acc[c][h]);
    }
}

/* the fp16 scales of n blocks at w (n <= 8; block stride bs) as 8 floats, 0 past n, packed in
 * integer registers (the vector pipes are the busy ones) */
INLINE __m256 q8_row_scales(const char *w, int bs, int n) {
    uint64_t lo = 0, hi = 0;
    if (n == 8) {
        lo = gr_ld16(w) | (uint64_t)gr_ld16(w + bs) << 16 | (uint64_t)gr_ld16(w + 2 * bs) << 32 |
             (uint64_t)gr_ld16(w + 3 * bs) << 48;
        hi = gr_ld16(w + 4 * bs) | (uint64_t)gr_ld16(w + 5 * bs) << 16 | (uint64_t)gr_ld16(w + 6 * bs) << 32 |
             (uint64_t)gr_ld16(w + 7 * bs) << 48;
    } else {
        for (int j = 0; j < n; j++) {
            uint64_t h = gr_ld16(w + j * bs);
            if (j < 4) lo |= h << (16 * j);
            else hi |= h << (16 * (j - 4));
        }
    }
    return _mm256_cvtph_ps(_mm_insert_epi64(_mm_cvtsi64_si128((long long)lo), (long long)hi, 1));
}

INLINE void q8_row_tile(int type, int NC, int64_t K, const char *w, const char *const *act, float *const *out,
                        int64_t r0) {
    int bs = type == GR_Q8_0 ? 34 : 18;
    int64_t nblk = K / 32;
    __m256 acc[8][2];
    float P[8][8] __attribute__((aligned(32)));
    UNROLL
    for (int c = 0; c < NC; c++) acc[c][0] = acc[c][1] = _mm256_setzero_ps();
    const char *a[8];
    const float *da[8];
    UNROLL
    for (int c = 0; c < NC; c++) {
        a[c] = act[c];
        da[c] = gr_q8_scales(act[c], K);
    }
    for (int64_t j0 = 0; j0 < nblk; j0 += 8) {
        int n = nblk - j0 < 8 ? (int)(nblk - j0) : 8;
        __mmask8 m = (__mmask8)((1u << n) - 1);
        __m256 dw = q8_row_scales(w + bs * j0, bs, n);
        for (int l = 0; l < 8 * bs; l += 64) _mm_prefetch(w + bs * j0 + PF_AHEAD + l, _MM_HINT_T0);
        UNROLL
        for (int c = 0; c < NC; c++)
            _mm256_store_ps(P[c], _mm256_mul_ps(dw, _mm256_maskz_loadu_ps(m, da[c] + j0)));
        /* NOTE: the fmas read P back from memory as broadcasts (kept in registers, each would
         * cost two shuffles on the pipes the fmas need) */
        __asm__ volatile("" : "+m"(P));
        if (n == 8) {
            UNROLL
            for (int jj = 0; jj < 8; jj += 2) {
                q8_row_block(type, NC, acc, w, a, (const float (*)[8])P, j0 + jj, jj, 0);
                q8_row_block(type, NC, acc, w, a, (const float (*)[8])P, j0 + jj + 1, jj + 1, 1);
            }
            continue;
        }
        int jj = 0; /* pairs of blocks: the parity of each block a constant */
        for (; jj + 2 <= n; jj += 2) {
            q8_row_block(type, NC, acc, w, a, (const float (*)[8])P, j0 + jj, jj, 0);
            q8_row_block(type, NC, acc, w, a, (const float (*)[8])P, j0 + jj + 1, jj + 1, 1);
        }
        if (jj < n) q8_row_block(type, NC, acc, w, a, (const float (*)[8])P, j0 + jj, jj, 0);
    }
    UNROLL
    for (int c = 0; c < NC; c++) {
        __m256 h8 = _mm256_add_ps(acc[c][0], acc[c][1]); /* the canonical tree: h = 8, 4, 2, 1 */
        __m128 h4 = _mm_add_ps(_mm256_castps256_ps128(h8), _mm256_extractf128_ps(h8, 1));
        __m128 h2 = _mm_add_ps(h4, _mm_movehl_ps(h4, h4));
        out[c][r0] = _mm_cvtss_f32(_mm_add_ss(h2, _mm_movehdup_ps(h2)));
    }
}

/* The same one-row tile on 512 bits, for Q8_0 weights: a register holds a block pair, blocks
 * 2p and 2p + 1 in lanes 0..7 and 8..15, which are the canonical lanes of their parities (the
 * 256-bit tile's acc[c][0], acc[c][1] side by side). Per token and pair: one load, one vpdpbusd
 * (from the pair's base lanes), one convert, one permute that spreads the pair's two scale
 * products over their halves, one fma. Measured here (Zen 4, 1 thread, 1024 x 1024 in L2, ns
 * per block): 1 token 1.13 -> 0.90, 2: 1.40 -> 1.27, 4: 2.22 -> 2.06, 6: 3.58 -> 2.92, 8: 3.61 ->
 * 3.74; a 512-bit vpdpbusd or fma issues as one op and runs in two halves on the two pipes
 * they share (vpdpbusd and fma: one 256-bit half per pipe and cycle, the converts elsewhere), so
 * the pair form has the 256-bit throughput with half the instructions. */
INLINE void q8_pair_step(int NC, __m512 acc[8], const char *w, const char *const *act, const __m512 *P, int64_t p,
                         int pp, int two) {
    const __m512i wv = q8_0_pair(w + 68 * p, two), base = q8_base(wv);
    const __m512i idx = _mm512_inserti64x4(_mm512_set1_epi32(2 * pp), _mm256_set1_epi32(2 * pp + 1), 1);
    UNROLL
    for (int c = 0; c < NC; c++) {
        __m512i s = _mm512_dpbusd_epi32(base, _mm512_load_si512((const __m512i *)(act[c] + 64 * p)), wv);
        acc[c] = _mm512_fmadd_ps(_mm512_permutexvar_ps(idx, P[c]), _mm512_cvtepi32_ps(s), acc[c]);
    }
}

INLINE void q8_pair_row_tile(int NC, int64_t K, const char *w, const char *const *act, float *const *out, int64_t r0) {
    const int64_t nblk = K / 32;
    __m512 acc[8];
    const float *da[8];
    UNROLL
    for (int c = 0; c < NC; c++) {
        acc[c] = _mm512_setzero_ps();
        da[c] = gr_q8_scales(act[c], K);
    }
    for (int64_t j0 = 0; j0 < nblk; j0 += 8) {
        const int n = nblk - j0 < 8 ? (int)(nblk - j0) : 8;
        const __m256 dw = q8_row_scales(w + 34 * j0, 34, n);
        for (int l = 0; l < 8 * 34; l += 64) _mm_prefetch(w + 34 * j0 + PF_AHEAD + l, _MM_HINT_T0);
        __m512 P[8]; /* the scale products of the 8 blocks, in the low lanes (0 past n) */
        UNROLL
        for (int c = 0; c < NC; c++)
            P[c] = _mm512_castps256_ps512(_mm256_mul_ps(dw, _mm256_maskz_loadu_ps((__mmask8)((1u << n) - 1), da[c] + j0)));
        if (n == 8) {
            UNROLL
            for (int pp = 0; pp < 4; pp++) q8_pair_step(NC, acc, w, act, P, j0 / 2 + pp, pp, 1);
            continue;
        }
        int pp = 0;
        for (; 2 * pp + 2 <= n; pp++) q8_pair_step(NC, acc, w, act, P, j0 / 2 + pp, pp, 1);
        if (2 * pp < n) q8_pair_step(NC, acc, w, act, P, j0 / 2 + pp, pp, 0); /* a lone last block: its top half adds 0 */
    }
    UNROLL
    for (int c = 0; c < NC; c++) out[c][r0] = tree(acc[c]);
}

/* ================= K-quants, Q8K super-blocks ================= */

/* One super-block of one weight row decoded: quants of chunk c (64 unsigned bytes in element
 * order), the int16 scale vector of each chunk, the float scales and (Q4_K/Q5_K) the mins. */
typedef struct {
    __m512i sc;  /* int16 sub-block scales in the low lanes (8 for Q4_K/Q5_K, 16 for Q6_K) */
    __m256i m;   /* Q4_K/Q5_K: 8 mins as int32 */
    float d, dmin;
} ksb;

/* chunk c's int16 scale vector: sub-block scale of each int16 pair position */
INLINE __m512i chunk_scales(int type, const ksb *s, int c) {
    /* Q4_K/Q5_K: sub-blocks 2c, 2c + 1 (32 elements = 16 pairs each); Q6_K: 4c .. 4c + 3 (8 pairs each) */
    __m512i idx = type == GR_Q6_K
        ? _mm512_add_epi16(_mm512_set1_epi16((short)(4 * c)),
                           _mm512_set_epi64(0x0003000300030003, 0x0003000300030003, 0x0002000200020002, 0x0002000200020002,
                                            0x0001000100010001, 0x0001000100010001, 0, 0))
        : _mm512_add_epi16(_mm512_set1_epi16((short)(2 * c)),
                           _mm512_set_epi64(0x0001000100010001, 0x0001000100010001, 0x0001000100010001, 0x0001000100010001,
                                            0, 0, 0, 0));
    return _mm512_permutexvar_epi16(idx, s->sc);
}

INLINE void k_head(int type, const uint8_t *b, ksb *s) {
    if (type == GR_Q6_K) {
        s->sc = _mm512_castsi256_si512(_mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i *)(b + 192))));
        s->d = gr_f16_to_f32(gr_ld16(b + 208));
        return;
    }
    uint64_t sc, m;
    gr_k4_scales64(b + 4, &sc, &m);
    s->sc = _mm512_castsi128_si512(_mm_cvtepu8_epi16(_mm_cvtsi64_si128((long long)sc)));
    s->m = _mm256_cvtepu8_epi32(_mm_cvtsi64_si128((long long)m));
    s->d = gr_f16_to_f32(gr_ld16(b));
    s->dmin = gr_f16_to_f32(gr_ld16(b + 2));
}

/* the unsigned quants of chunk c (64 elements) of a super-block at b */
INLINE __m512i k_chunk(int type, const uint8_t *b, int c) {
    const __m512i m4 = _mm512_set1_epi8(15);
    if (type == GR_Q6_K) {
        int h = c / 2, s = c % 2;
        __m512i ql = _mm512_loadu_si512(b + 64 * h);
        __m512i lo = s ? _mm512_and_si512(_mm512_srli_epi16(ql, 4), m4) : _mm512_and_si512(ql, m4);
        __m256i qh = _mm256_loadu_si256((const __m256i *)(b + 128 + 32 * h));
        __m512i hh = cat256(qh, qh);
        /* bits 2k..2k+1 of qh to bits 4..5: k = 0, 1 (s = 0) shift left 4, 2; k = 2, 3 shift right 0, 2 */
        __m512i sh = _mm512_inserti64x4(_mm512_set1_epi16(s ? 0 : 4), _mm256_set1_epi16(2), 1);
        __m512i hi = s ? _mm512_srlv_epi16(hh, sh) : _mm512_sllv_epi16(hh, sh);
        return _mm512_or_si512(lo, _mm512_and_si512(hi, _mm512_set1_epi8(0x30)));
    }
    const uint8_t *qs = b + (type == GR_Q5_K ? 48 : 16);
    __m256i x = _mm256_loadu_si256((const __m256i *)(qs + 32 * c));
    __m512i q = _mm512_and_si512(cat256(x, _mm256_srli_epi16(x, 4)), m4);
    if (type == GR_Q5_K) { /* bit 2c (low half) / 2c + 1 (high half) of qh[l] is the 5th bit */
        __m256i qh = _mm256_loadu_si256((const __m256i *)(b + 16));
        __m512i bit = cat256(_mm256_set1_epi8((char)(1 << (2 * c))), _mm256_set1_epi8((char)(1 << (2 * c + 1))));
        __mmask64 k = _mm512_test_epi8_mask(cat256(qh, qh), bit);
        q = _mm512_mask_add_epi8(q, k, q, _mm512_set1_epi8(16));
    }
    return q;
}

INLINE void k_tile(int type, int NR, int NC, int64_t K, const char *w, int64_t ws, const char *const *act,
                   float *const *out, int64_t r0) {
    int bytes = type == GR_Q4_K ? 144 : type == GR_Q5_K ? 176 : 210;
    __m512 acc[4][4];
    UNROLL
    for (int r = 0; r < NR; r++)
        UNROLL
        for (int c = 0; c < NC; c++) acc[r][c] = _mm512_setzero_ps();
    for (int64_t i = 0; i < K / 256; i++) {
        if (NR == 1 && NC > 1)
            gr_prefetch_l2(w + bytes * i + GR_KQ_PF_BYTES, bytes);
        ksb s[4];
        __m512i IL[4][4], IL2[4][4]; /* IL2: odd chunks of small tiles (a second dependency chain) */
        const int split = NR * NC <= 2;
        UNROLL
        for (int r = 0; r < NR; r++) k_head(type, (const uint8_t *)w + r * ws + bytes * i, &s[r]);
        UNROLL
        for (int c = 0; c < NC; c++) {
            const gr_q8k *ak = (const gr_q8k *)act[c] + i;
            UNROLL
            for (int r = 0; r < NR; r++) {
                if (type == GR_Q6_K) { /* -32 * (sc[2k] bsums[2k] + sc[2k+1] bsums[2k+1]) in lanes k < 8 */
                    __m256i t = _mm256_madd_epi16(_mm512_castsi512_si256(s[r].sc), _mm256_loadu_si256((const __m256i *)ak->bsums));
                    IL[r][c] = _mm512_zextsi256_si512(_mm256_sub_epi32(_mm256_setzero_si256(), _mm256_slli_epi32(t, 5)));
                } else {
                    IL[r][c] = _mm512_setzero_si512();
                }
                IL2[r][c] = _mm512_setzero_si512();
            }
        }
        UNROLL
        for (int ch = 0; ch < 4; ch++) {
            __m512i q[4], sc[4];
            UNROLL
            for (int r = 0; r < NR; r++) {
                q[r] = k_chunk(type, (const uint8_t *)w + r * ws + bytes * i, ch);
                sc[r] = chunk_scales(type, &s[r], ch);
            }
            UNROLL
            for (int c = 0; c < NC; c++) {
                __m512i a = _mm512_load_si512(((const gr_q8k *)act[c] + i)->qs + 64 * ch);
                UNROLL
                for (int r = 0; r < NR; r++) {
                    __m512i p = _mm512_maddubs_epi16(q[r], a);
                    if (split && (ch & 1)) IL2[r][c] = _mm512_dpwssd_epi32(IL2[r][c], p, sc[r]);
                    else IL[r][c] = _mm512_dpwssd_epi32(IL[r][c], p, sc[r]);
                }
            }
        }
        UNROLL
        for (int c = 0; c < NC; c++) {
            const gr_q8k *ak = (const gr_q8k *)act[c] + i;
            __m256i bw = _mm256_cvtepi16_epi32(_mm_loadu_si128((const __m128i *)ak->bsum32));
            UNROLL
            for (int r = 0; r < NR; r++) {
                __m512i il = split ? _mm512_add_epi32(IL[r][c], IL2[r][c]) : IL[r][c];
                acc[r][c] = _mm512_fmadd_ps(_mm512_set1_ps(ak->d * s[r].d), _mm512_cvtepi32_ps(il), acc[r][c]);
                if (type != GR_Q6_K) {
                    __m512i ml = _mm512_zextsi256_si512(_mm256_mullo_epi32(s[r].m, bw));
                    acc[r][c] = _mm512_fmadd_ps(_mm512_set1_ps(-(ak->d * s[r].dmin)), _mm512_cvtepi32_ps(ml), acc[r][c]);
                }
            }
        }
    }
    UNROLL
    for (int r = 0; r < NR; r++)
        UNROLL
        for (int c = 0; c < NC; c++) out[c][r0 + r] = tree(acc[r][c]);
}

/* ================= repacked Q8_0 / Q4_0 (GR_Q8_0_R16, GR_Q4_0_R16), Q8R rows ================= */

/* One group of 16 rows (nvalid of them real) x NC tokens. Per block: the group's quants as 8
 * unsigned chunks in 8 registers (Q8_0: u = w + 128 as stored; Q4_0: the low and the high
 * nibbles n = w + 8 of its 4 chunks, one AND and one shift + AND a chunk) and the 16 scales; per
 * token, 8 vpdpbusd of a chunk with 4 of the token's quants broadcast (two chains, the first
 * starting at -128 sum(q), or -8 sum(q) = that >> 4) give the block's exact dot product for all
 * 16 rows, then one convert, one multiply of the row scales by the token's and one fma. */
INLINE void r16_group(int type, int NC, int64_t K, const char *g, const char *const *act, float *const *out,
                      int64_t r0, int64_t nvalid) {
    const int64_t nblk = K / 32;
    const int qb = gr_r16_qbytes(type), q4 = type == GR_Q4_0_R16;
    const int64_t pair = gr_r16_pair_bytes(qb);
    const __m512i low4 = _mm512_set1_epi8(0x0F);
    const float *meta[8];
    __m512 acc[8];
    UNROLL
    for (int c = 0; c < NC; c++) {
        acc[c] = _mm512_setzero_ps();
        meta[c] = gr_q8r_meta(act[c], K);
    }
    for (int64_t j = 0; j < nblk; j++) {
        const char *qp = gr_r16_quants(g, nblk, j, qb);
        if (NC > 1 && !(j & 1)) /* a pair's bytes, GR_R16_PF_PAIRS pairs ahead (matmul.h) */
            gr_prefetch_l2((const char *)gr_r16_scales(g, j, qb) + GR_R16_PF_PAIRS * pair, pair);
        /* W[k]: the unsigned operand for the token's quants 4k .. 4k + 3 */
        __m512i W[8];
        if (q4) {
            UNROLL
            for (int k = 0; k < 4; k++) {
                __m512i x = _mm512_loadu_si512(qp + 64 * k);
                W[k] = _mm512_and_si512(x, low4);
                W[k + 4] = _mm512_and_si512(_mm512_srli_epi16(x, 4), low4);
            }
        } else {
            UNROLL
            for (int k = 0; k < 8; k++) W[k] = _mm512_loadu_si512(qp + 64 * k); /* aligned but for a lone last block */
        }
        const __m512 dw = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)gr_r16_scales(g, j, qb)));
        UNROLL
        for (int c = 0; c < NC; c++) {
            const int32_t *qa = (const int32_t *)(act[c] + 32 * j);
            const int32_t s = ((const int32_t *)meta[c])[2 * j + 1]; /* -128 sum(q) */
            __m512i i0 = _mm512_set1_epi32(q4 ? s >> 4 : s), i1 = _mm512_setzero_si512();
            UNROLL
            for (int k = 0; k < 8; k += 2) {
                i0 = _mm512_dpbusd_epi32(i0, W[k], _mm512_set1_epi32(qa[k]));
                i1 = _mm512_dpbusd_epi32(i1, W[k + 1], _mm512_set1_epi32(qa[k + 1]));
            }
            const __m512 P = _mm512_mul_ps(dw, _mm512_set1_ps(meta[c][2 * j]));
            acc[c] = _mm512_fmadd_ps(P, _mm512_cvtepi32_ps(_mm512_add_epi32(i0, i1)), acc[c]);
        }
    }
    const __mmask16 m = nvalid >= 16 ? 0xFFFF : (__mmask16)((1u << nvalid) - 1);
    UNROLL
    for (int c = 0; c < NC; c++) _mm512_mask_storeu_ps(out[c] + r0, m, acc[c]);
}

#define R16_SHAPE(name, type, NC)                                                                        \
    static void name##_1x##NC(int64_t K, const char *w, int64_t ws, int64_t nrows, const char *const *act,  \
                              float *const *out, int64_t r0) {                                           \
        for (int64_t r = 0; r < nrows; r += GR_R16)                                                      \
            r16_group(type, NC, K, w + r * ws, act, out, r0 + r, nrows - r);                             \
    }
#define R16_KERNEL(name, type)                                                                           \
    R16_SHAPE(name, type, 1) R16_SHAPE(name, type, 2) R16_SHAPE(name, type, 3) R16_SHAPE(name, type, 4)  \
    R16_SHAPE(name, type, 5) R16_SHAPE(name, type, 6) R16_SHAPE(name, type, 7) R16_SHAPE(name, type, 8)  \
    static const gr_mm_rows_fn name[GR_MM_MAX_RT][GR_MM_MAX_CT] = {                                      \
        {name##_1x1, name##_1x2, name##_1x3, name##_1x4, name##_1x5, name##_1x6, name##_1x7, name##_1x8}};
R16_KERNEL(q8r_tile, GR_Q8_0_R16)
R16_KERNEL(q4r_tile, GR_Q4_0_R16)
#undef R16_KERNEL
#undef R16_SHAPE

/* ================= instantiation: one function per (type, nr, nc) ================= */

/* shape (NR, NC): its tiles over nrows weight rows (a multiple of NR) */
#define SHAPE(name, gen, type, NR, NC)                                                                   \
    static void name##_##NR##x##NC(int64_t K, const char *w, int64_t ws, int64_t nrows, const char *const *act, \
                                   float *const *out, int64_t r0) {                                      \
        for (int64_t r = 0; r < nrows; r += NR) gen(type, NR, NC, K, w + r * ws, ws, act, out, r0 + r);    \
    }
#define SHAPES(name, gen, type, NR)                                                                      \
    SHAPE(name, gen, type, NR, 1) SHAPE(name, gen, type, NR, 2) SHAPE(name, gen, type, NR, 3) SHAPE(name, gen, type, NR, 4)
#define PTRS(name, NR) {name##_##NR##x1, name##_##NR##x2, name##_##NR##x3, name##_##NR##x4}
#define DISPATCH(name, RT, ...) static const gr_mm_rows_fn name[GR_MM_MAX_RT][GR_MM_MAX_CT] = {__VA_ARGS__};
/* tiles of up to 1, 2 or 4 weight rows x 4 tokens */
#define KERNEL1(name, gen, type) SHAPES(name, gen, type, 1) DISPATCH(name, 1, PTRS(name, 1))
#define KERNEL2(name, gen, type)                                                                         \
    SHAPES(name, gen, type, 1) SHAPES(name, gen, type, 2) SHAPE(name, gen, type, 1, 5) SHAPE(name, gen, type, 1, 6) \
    SHAPE(name, gen, type, 1, 7) SHAPE(name, gen, type, 1, 8)                                             \
    DISPATCH(name, 2, {name##_1x1, name##_1x2, name##_1x3, name##_1x4, name##_1x5, name##_1x6, name##_1x7,  \
                       name##_1x8}, PTRS(name, 2))
#define KERNEL4(name, gen, type)                                                                         \
    SHAPES(name, gen, type, 1) SHAPES(name, gen, type, 2) SHAPES(name, gen, type, 3) SHAPES(name, gen, type, 4) \
    DISPATCH(name, 4, PTRS(name, 1), PTRS(name, 2), PTRS(name, 3), PTRS(name, 4))

/* measured (Zen 4): F32/F16/BF16 best at 2 rows (two accumulators per dot product), Q8_0/Q4_0 at
 * 4 rows, the K-quants at 1 row (their decoded quants and scales fill the registers) */
KERNEL2(f32_tile, float_tile, GR_F32)
KERNEL2(f16_tile, float_tile, GR_F16)
KERNEL2(bf16_tile, float_tile, GR_BF16)
/* one-row tiles through q8_pair_row_tile (Q8_0) or q8_row_tile (Q4_0), the others through q8_tile */
#define ROW_SHAPE(name, type, NC)                                                                        \
    static void name##_1x##NC(int64_t K, const char *w, int64_t ws, int64_t nrows, const char *const *act,  \
                              float *const *out, int64_t r0) {                                           \
        for (int64_t r = 0; r < nrows; r++) {                                                            \
            if (type == GR_Q8_0) q8_pair_row_tile(NC, K, w + r * ws, act, out, r0 + r);                  \
            else q8_row_tile(type, NC, K, w + r * ws, act, out, r0 + r);                                 \
        }                                                                                                \
    }
#define KERNEL4_ROW(name, gen, type)                                                                     \
    ROW_SHAPE(name, type, 1) ROW_SHAPE(name, type, 2) ROW_SHAPE(name, type, 3) ROW_SHAPE(name, type, 4)  \
    ROW_SHAPE(name, type, 5) ROW_SHAPE(name, type, 6) ROW_SHAPE(name, type, 7) ROW_SHAPE(name, type, 8)  \
    SHAPES(name, gen, type, 2) SHAPES(name, gen, type, 3) SHAPES(name, gen, type, 4)                      \
    DISPATCH(name, 4, {name##_1x1, name##_1x2, name##_1x3, name##_1x4, name##_1x5, name##_1x6, name##_1x7, \
                       name##_1x8}, PTRS(name, 2), PTRS(name, 3), PTRS(name, 4))
KERNEL4_ROW(q8_0_tile, q8_tile, GR_Q8_0)
KERNEL4_ROW(q4_0_tile, q8_tile, GR_Q4_0)
KERNEL1(q4_k_tile, k_tile, GR_Q4_K)
KERNEL1(q5_k_tile, k_tile, GR_Q5_K)
KERNEL1(q6_k_tile, k_tile, GR_Q6_K)

gr_mm_kernel gr_mm_avx512(int type) {
    switch (type) {
    case GR_F32: return (gr_mm_kernel){GR_ACT_F32, 2, 4, 8, f32_tile, f32_stream1};
    case GR_F16: return (gr_mm_kernel){GR_ACT_F32, 2, 4, 8, f16_tile, f16_stream1};
    case GR_BF16: return (gr_mm_kernel){GR_ACT_F32, 2, 4, 8, bf16_tile, bf16_stream1};
    case GR_Q8_0: return (gr_mm_kernel){GR_ACT_Q8, 4, 4, 8, q8_0_tile};
    case GR_Q4_0: return (gr_mm_kernel){GR_ACT_Q8, 4, 4, 8, q4_0_tile};
    case GR_Q4_K: return (gr_mm_kernel){GR_ACT_Q8K, 1, 4, 4, q4_k_tile};
    case GR_Q5_K: return (gr_mm_kernel){GR_ACT_Q8K, 1, 4, 4, q5_k_tile};
    case GR_Q6_K: return (gr_mm_kernel){GR_ACT_Q8K, 1, 4, 4, q6_k_tile};
    case GR_Q8_0_R16: return (gr_mm_kernel){GR_ACT_Q8R, 1, 8, 8, q8r_tile};
    case GR_Q4_0_R16: return (gr_mm_kernel){GR_ACT_Q8R, 1, 8, 8, q4r_tile};
    default: return (gr_mm_kernel){0, 0, 0, 0, NULL};
    }
}

#else
#include "matmul.h"
gr_mm_kernel gr_mm_avx512(int type) {
    (void)type;
    return (gr_mm_kernel){0, 0, 0, 0, NULL};
}
#endif
