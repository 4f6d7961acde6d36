/* Portable dot products of one weight row with one activation row, per weight type, in the
 * canonical order of matmul.h (the SIMD kernels reproduce it bit for bit), and the choice of
 * kernel set by ISA level.
 *
 * NOTE: fmaf is the fused multiply-add the SIMD kernels use; contraction of the plain
 * multiplies and adds is off so no other expression becomes an fma either. */
#pragma GCC optimize("fp-contract=off")
#include "matmul.h"

/* the tree sum of n (16 or 32) lanes: for h = n/2 .. 1: acc[i] += acc[i + h] (i < h) */
static float tree(float *acc, int n) {
    for (int h = n / 2; h; h >>= 1)
        for (int i = 0; i < h; i++) acc[i] += acc[i + h];
    return acc[0];
}
static float tree16(float *acc) { return tree(acc, 16); }

/* ---- F32 / F16 / BF16 weights, F32 activations: 32 lanes ---- */
static float dot_f32(int64_t K, const char *w, const float *a) {
    float acc[32] = {0};
    for (int64_t k = 0; k < K; k++) {
        float x;
        memcpy(&x, w + 4 * k, 4);
        acc[k & 31] = fmaf(x, a[k], acc[k & 31]);
    }
    return tree(acc, 32);
}

static float dot_f16(int64_t K, const char *w, const float *a) {
    float acc[32] = {0};
    for (int64_t k = 0; k < K; k++) acc[k & 31] = fmaf(gr_f16_to_f32(gr_ld16(w + 2 * k)), a[k], acc[k & 31]);
    return tree(acc, 32);
}

static float dot_bf16(int64_t K, const char *w, const float *a) {
    float acc[32] = {0};
    for (int64_t k = 0; k < K; k++) acc[k & 31] = fmaf(gr_bf16_to_f32(gr_ld16(w + 2 * k)), a[k], acc[k & 31]);
    return tree(acc, 32);
}

/* ---- Q8_0 / Q4_0 weights, Q8 rows ---- */
/* one 32-element block j: its 8 lane sums into acc[8 * (j % 2) + l] (a: the quants + 128) */
static void block_q8(const int8_t *q, float dw, const uint8_t *a, float da, int h, float *acc) {
    float s = dw * da;
    for (int l = 0; l < 8; l++) {
        int sum = 0;
        for (int e = 0; e < 4; e++) sum += q[4 * l + e] * (a[4 * l + e] - 128);
        acc[8 * h + l] = fmaf(s, (float)sum, acc[8 * h + l]);
    }
}

static float dot_q8_0(int64_t K, const char *w, const char *act) {
    const float *da = gr_q8_scales(act, K);
    float acc[16] = {0};
    for (int64_t j = 0; j < K / 32; j++) {
        const char *b = w + 34 * j;
        block_q8((const int8_t *)b + 2, gr_f16_to_f32(gr_ld16(b)), (const uint8_t *)act + 32 * j, da[j], (int)(j & 1), acc);
    }
    return tree16(acc);
}

static float dot_q4_0(int64_t K, const char *w, const char *act) {
    const float *da = gr_q8_scales(act, K);
    float acc[16] = {0};
    for (int64_t j = 0; j < K / 32; j++) {
        const uint8_t *b = (const uint8_t *)w + 18 * j;
        int8_t q[32];
        for (int i = 0; i < 16; i++) {
            q[i] = (int8_t)((b[2 + i] & 15) - 8);
            q[i + 16] = (int8_t)((b[2 + i] >> 4) - 8);
        }
        block_q8(q, gr_f16_to_f32(gr_ld16(b)), (const uint8_t *)act + 32 * j, da[j], (int)(j & 1), acc);
    }
    return tree16(acc);
}

/* ---- K-quants, Q8K super-blocks ----
 * A super-block's unsigned quants q (0..15, 0..31 or 0..63) are multiplied with the
 * activations per lane of 4 and weighted by their sub-block's scale:
 *   IL[L] = sum over chunks c of sc[sub-block of lane L in chunk c] * sum_e q * a,
 * then
 *   Q4_K/Q5_K: acc[L] = fma(da * d, IL[L], acc[L]); acc[k] = fma(-(da * dmin), m[k] * bsum32[k], acc[k]) (k < 8)
 *   Q6_K (q - 32): IL[k] -= 32 * (sc[2k] * bsums[2k] + sc[2k+1] * bsums[2k+1]) (k < 8) first,
 *                  acc[L] = fma(da * d, IL[L], acc[L]). */
static void k_lanes(const uint8_t *q, const int8_t *a, const int *sc, int sub_elems, int32_t *IL) {
    for (int c = 0; c < 4; c++)
        for (int L = 0; L < 16; L++) {
            int i = 64 * c + 4 * L, sum = 0;
            for (int e = 0; e < 4; e++) sum += q[i + e] * a[i + e];
            IL[L] += sc[i / sub_elems] * sum;
        }
}

static void k_finish(const int32_t *IL, float dd, float *acc) {
    for (int L = 0; L < 16; L++) acc[L] = fmaf(dd, (float)IL[L], acc[L]);
}

static void k_mins(const uint8_t *m, const gr_q8k *ak, float dm, float *acc) {
    for (int k = 0; k < 8; k++) acc[k] = fmaf(-dm, (float)(m[k] * ak->bsum32[k]), acc[k]);
}

/* Q4_K/Q5_K quants of one super-block in element order (qh NULL for Q4_K) */
static void k4_quants(const uint8_t *qs, const uint8_t *qh, uint8_t *q) {
    for (int c = 0; c < 4; c++)
        for (int l = 0; l < 32; l++) {
            uint8_t lo = qs[32 * c + l] & 15, hi = qs[32 * c + l] >> 4;
            if (qh) {
                lo |= ((qh[l] >> (2 * c)) & 1) << 4;
                hi |= ((qh[l] >> (2 * c + 1)) & 1) << 4;
            }
            q[64 * c + l] = lo;
            q[64 * c + 32 + l] = hi;
        }
}

static float dot_k4(int64_t K, const char *w, const gr_q8k *a, int q5) {
    float acc[16] = {0};
    int bytes = q5 ? 176 : 144;
    for (int64_t i = 0; i < K / 256; i++) {
        const uint8_t *b = (const uint8_t *)w + bytes * i;
        uint8_t sc8[8], m[8], q[256];
        gr_k4_scales(b + 4, sc8, m);
        k4_quants(q5 ? b + 48 : b + 16, q5 ? b + 16 : NULL, q);
        int sc[8];
        for (int s = 0; s < 8; s++) sc[s] = sc8[s];
        int32_t IL[16] = {0};
        k_lanes(q, a[i].qs, sc, 32, IL);
        k_finish(IL, a[i].d * gr_f16_to_f32(gr_ld16(b)), acc);
        k_mins(m, &a[i], a[i].d * gr_f16_to_f32(gr_ld16(b + 2)), acc);
    }
    return tree16(acc);
}

static float dot_q6_k(int64_t K, const char *w, const gr_q8k *a) {
    float acc[16] = {0};
    for (int64_t i = 0; i < K / 256; i++) {
        const uint8_t *b = (const uint8_t *)w + 210 * i, *ql = b, *qh = b + 128;
        const int8_t *scales = (const int8_t *)(b + 192);
        uint8_t q[256];
        for (int j = 0; j < 256; j++) {
            int h = j / 128, k = (j % 128) / 32, l = j % 32;
            uint8_t lo = ql[64 * h + l + 32 * (k & 1)];
            lo = k >= 2 ? lo >> 4 : lo & 15;
            q[j] = lo | (((qh[32 * h + l] >> (2 * k)) & 3) << 4);
        }
        int sc[16];
        for (int s = 0; s < 16; s++) sc[s] = scales[s];
        int32_t IL[16] = {0};
        for (int k = 0; k < 8; k++) IL[k] -= 32 * (sc[2 * k] * a[i].bsums[2 * k] + sc[2 * k + 1] * a[i].bsums[2 * k + 1]);
        k_lanes(q, a[i].qs, sc, 16, IL);
        k_finish(IL, a[i].d * gr_f16_to_f32(gr_ld16(b + 208)), acc);
    }
    return tree16(acc);
}

/* ---- repacked Q8_0 / Q4_0 (GR_Q8_0_R16, GR_Q4_0_R16), Q8R rows: one float per dot product (matmul.h) ---- */
/* qb quant bytes a block row (34- or 18-byte GGUF blocks), each 4-byte word XORed with `flip` */
static void repack_r16(const char *src, int64_t K, int64_t M, int64_t nmat, int64_t snb1, int64_t snb2, char *dst,
                       int qb, uint32_t flip) {
    const int64_t nblk = K / 32, ng = (M + GR_R16 - 1) / GR_R16;
    for (int64_t i = 0; i < nmat; i++)
        for (int64_t g = 0; g < ng; g++) {
            char *grp = dst + (i * ng + g) * gr_r16_group_bytes(K, qb);
            for (int r = 0; r < GR_R16; r++) {
                int64_t m = g * GR_R16 + r;
                const char *row = m < M ? src + i * snb2 + m * snb1 : NULL;
                for (int64_t j = 0; j < nblk; j++) {
                    const char *blk = row ? row + (2 + qb) * j : NULL;
                    uint16_t d = blk ? gr_ld16(blk) : 0;
                    char *q = (char *)gr_r16_quants(grp, nblk, j, qb);
                    memcpy((char *)gr_r16_scales(grp, j, qb) + 2 * r, &d, 2);
                    for (int c = 0; c < qb / 4; c++) { /* 4 quant bytes at a time (padding rows: 0) */
                        uint32_t v = 0;
                        if (blk) memcpy(&v, blk + 2 + 4 * c, 4);
                        v ^= flip;
                        memcpy(q + gr_r16_byte(r, 4 * c), &v, 4);
                    }
                }
            }
        }
}

void gr_repack_q8_0_r16(const char *src, int64_t K, int64_t M, int64_t nmat, int64_t snb1, int64_t snb2, char *dst) {
    repack_r16(src, K, M, nmat, snb1, snb2, dst, 32, 0x80808080u); /* offset by 128: unsigned */
}

void gr_repack_q4_0_r16(const char *src, int64_t K, int64_t M, int64_t nmat, int64_t snb1, int64_t snb2, char *dst) {
    repack_r16(src, K, M, nmat, snb1, snb2, dst, 16, 0); /* the nibbles as GGUF stores them */
}

/* The exact integer dot product of block j of row `lane` of the group at g with the Q8R
 * activation block a (32 signed quants), starting from its meta's -128 sum(q):
 * Q8_0: sum((w + 128) q) - 128 sum(q); Q4_0: sum((w + 8) q) - 8 sum(q), -8 sum(q) = (-128 sum(q)) / 16. */
static int32_t r16_block_dot(int type, const char *g, int64_t nblk, int64_t j, int lane, const int8_t *a,
                             int32_t minus128_sum) {
    const uint8_t *q = (const uint8_t *)gr_r16_quants(g, nblk, j, gr_r16_qbytes(type));
    if (type == GR_Q8_0_R16) {
        int32_t I = minus128_sum;
        for (int e = 0; e < 32; e++) I += q[gr_r16_byte(lane, e)] * a[e];
        return I;
    }
    int32_t I = minus128_sum / 16; /* exact: a multiple of 16 */
    for (int e = 0; e < 16; e++) {
        uint8_t v = q[gr_r16_byte(lane, e)];
        I += (v & 15) * a[e] + (v >> 4) * a[16 + e];
    }
    return I;
}

/* rows [0, nrows) of the groups at w, one activation (the portable kernel: the definition) */
static void tile_r16(int type, int64_t K, const char *w, int64_t ws, int64_t nrows, const char *const *act,
                     float *const *out, int64_t r0) {
    const int64_t nblk = K / 32;
    const int qb = gr_r16_qbytes(type);
    const int8_t *a = (const int8_t *)act[0];
    const float *meta = gr_q8r_meta(act[0], K);
    for (int64_t r = 0; r < nrows; r++) {
        const char *g = w + r / GR_R16 * GR_R16 * ws;
        int lane = (int)(r % GR_R16);
        float acc = 0.0f;
        for (int64_t j = 0; j < nblk; j++) {
            int32_t s;
            memcpy(&s, meta + 2 * j + 1, 4); /* -128 sum(q) */
            int32_t I = r16_block_dot(type, g, nblk, j, lane, a + 32 * j, s);
            acc = fmaf(gr_f16_to_f32(gr_ld16(gr_r16_scales(g, j, qb) + lane)) * meta[2 * j], (float)I, acc);
        }
        out[0][r0 + r] = acc;
    }
}
static void tile_q8r_1x1(int64_t K, const char *w, int64_t ws, int64_t nrows, const char *const *act,
                         float *const *out, int64_t r0) {
    tile_r16(GR_Q8_0_R16, K, w, ws, nrows, act, out, r0);
}
static void tile_q4r_1x1(int64_t K, const char *w, int64_t ws, int64_t nrows, const char *const *act,
                         float *const *out, int64_t r0) {
    tile_r16(GR_Q4_0_R16, K, w, ws, nrows, act, out, r0);
}
static const gr_mm_rows_fn tile_q4r[GR_MM_MAX_RT][GR_MM_MAX_CT] = {{tile_q4r_1x1}};
static const gr_mm_rows_fn tile_q8r[GR_MM_MAX_RT][GR_MM_MAX_CT] = {{tile_q8r_1x1}};

/* ---- the scalar kernel set: tiles of one row x one activation ---- */
#define SCALAR_TILE(name, call)                                                                        \
    static void name##_1x1(int64_t K, const char *w, int64_t ws, int64_t nrows, const char *const *act, \
                           float *const *out, int64_t r0) {                                            \
        for (int64_t r = 0; r < nrows; r++) out[0][r0 + r] = call(K, w + r * ws, (const void *)act[0]);  \
    }                                                                                                  \
    static const gr_mm_rows_fn name[GR_MM_MAX_RT][GR_MM_MAX_CT] = {{name##_1x1}};
SCALAR_TILE(tile_f32, dot_f32)
SCALAR_TILE(tile_f16, dot_f16)
SCALAR_TILE(tile_bf16, dot_bf16)
SCALAR_TILE(tile_q8_0, dot_q8_0)
SCALAR_TILE(tile_q4_0, dot_q4_0)
static float dot_q4_k(int64_t K, const char *w, const gr_q8k *a) { return dot_k4(K, w, a, 0); }
static float dot_q5_k(int64_t K, const char *w, const gr_q8k *a) { return dot_k4(K, w, a, 1); }
SCALAR_TILE(tile_q4_k, dot_q4_k)
SCALAR_TILE(tile_q5_k, dot_q5_k)
SCALAR_TILE(tile_q6_k, dot_q6_k)
#undef SCALAR_TILE

gr_mm_kernel gr_mm_scalar(int type) {
    switch (type) {
    case GR_F32: return (gr_mm_kernel){GR_ACT_F32, 1, 1, 1, tile_f32};
    case GR_F16: return (gr_mm_kernel){GR_ACT_F32, 1, 1, 1, tile_f16};
    case GR_BF16: return (gr_mm_kernel){GR_ACT_F32, 1, 1, 1, tile_bf16};
    case GR_Q8_0: return (gr_mm_kernel){GR_ACT_Q8, 1, 1, 1, tile_q8_0};
    case GR_Q4_0: return (gr_mm_kernel){GR_ACT_Q8, 1, 1, 1, tile_q4_0};
    case GR_Q4_K: return (gr_mm_kernel){GR_ACT_Q8K, 1, 1, 1, tile_q4_k};
    case GR_Q5_K: return (gr_mm_kernel){GR_ACT_Q8K, 1, 1, 1, tile_q5_k};
    case GR_Q6_K: return (gr_mm_kernel){GR_ACT_Q8K, 1, 1, 1, tile_q6_k};
    case GR_Q8_0_R16: return (gr_mm_kernel){GR_ACT_Q8R, 1, 1, 1, tile_q8r};
    case GR_Q4_0_R16: return (gr_mm_kernel){GR_ACT_Q8R, 1, 1, 1, tile_q4r};
    default: return (gr_mm_kernel){0, 0, 0, 0, NULL};
    }
}

/* The SIMD sets fall back to the scalar kernel for a type they do not cover. */
gr_mm_kernel gr_mm_kernel_for(int type) {
    gr_mm_kernel k = {0, 0, 0, 0, NULL};
#if defined(__x86_64__) || defined(__i386__)
    if (gr_has_vnni) k = gr_mm_avx512(type);
    else if (gr_has_avx2) k = gr_mm_avx2(type);
#endif
    return k.tiles ? k : gr_mm_scalar(type);
}
