/* Internals of the matrix family (matmul.c, quantize_act.c, vecdot*.c): the activation
 * formats the weights' dot products read, and the per-type tile kernels.
 *
 * How a product is computed (as ggml-cpu does): each activation row (a row of b) is first
 * converted once into its weight type's dot-product format (quantize_act.c): Q8_0 blocks for
 * Q8_0/Q4_0 weights, Q8_K super-blocks for the K-quants, F32 rows for F32/F16/BF16 weights.
 * Then tile kernels compute nr weight rows x nc activation rows of dot products (matmul.c
 * schedules them; vecdot.c portable, vecdot_avx2.c, vecdot_avx512.c).
 *
 * Numerics: one canonical order per weight type, the same in the scalar, AVX2 and AVX-512
 * kernels and in every tile shape, so results are bit-identical across ISAs, thread counts and
 * batch sizes (batch invariance). Every dot product keeps float lanes acc[]:
 *   - F32/F16/BF16, 32 lanes (two independent chains of 16 in SIMD):
 *     acc[k % 32] = fma(w[k], a[k], acc[k % 32]) for k ascending;
 *   - block types, 16 lanes:
 *     a "lane" is 4 consecutive elements; 64 consecutive elements (two Q8_0/Q4_0
 *     blocks, one K-quant chunk) fill lanes 0..15 in order. Integer lane sums are exact, then
 *     Q8_0/Q4_0: acc[L] = fma(dw * da, (float)sum_L, acc[L]) per block (lanes 8 (j % 2) ..);
 *     K-quants: per super-block, the lanes' scale-weighted integer sums over its 4 chunks are
 *     converted once: acc[L] = fma(da * d, (float)IL[L], acc[L]) (then the mins, see vecdot.c);
 *   - the result is the tree sum: for h = n/2, ..., 2, 1: acc[i] += acc[i + h] (i < h); acc[0].
 *   - Q8_0 / Q4_0 weights repacked in groups of 16 rows (GR_Q8_0_R16, GR_Q4_0_R16, below), one
 *     float per dot product:
 *     acc = 0; for each block j ascending: acc = fma(dw_j * da_j, (float)I_j, acc), where I_j is
 *     the exact integer dot product of block j; the result is acc.
 */
#ifndef GRAPHIR_MATMUL_H
#define GRAPHIR_MATMUL_H

#include "graphir_cpu.h"

/* ---- activation formats (one row of b converted for one weight type) ---- */
enum gr_act_kind { GR_ACT_F32, GR_ACT_Q8, GR_ACT_Q8K, GR_ACT_Q8R };

/* Q8_0 / Q4_0 weights: ggml's block_q8_0 numerics (fp16 scale d = amax/127, q = round-half-
 * even(x * 127/amax)) in a row laid out for SIMD: the quants of whole block pairs stored offset
 * by 128 as unsigned bytes u = q + 128 (K rounded up to 64, padding q = 0), then each block's
 * scale d[] as a float (the fp16 value; 0 for padding). vpdpbusd takes u as its unsigned operand
 * and the signed weights as they are; sum(u * w) - 128 * sum(w) = sum(q * w). */
static inline int64_t gr_q8_pairs(int64_t K) { return (K + 63) / 64; }
static inline const float *gr_q8_scales(const char *row, int64_t K) { return (const float *)(row + 64 * gr_q8_pairs(K)); }

/* Repacked Q8_0 weights (GR_Q8_0_R16; K a multiple of 32, nblk = K / 32 blocks a row): rows in
 * groups of 16 (the last group padded with rows of zero scale and zero quants), each group
 * 16 * 34 * nblk bytes, as many as its 16 rows take in GGUF, so a row's offset m * nb[1] still
 * lands on its group when m is a multiple of 16 (matmul.c's units are). A group is its blocks
 * in pairs, one stream read in address order: a pair is 64 bytes of scales (16 fp16 of block
 * 2p, row r's at 2r, then block 2p + 1's) and the two blocks' quants, 512 bytes each (a lone
 * last block: 32 bytes of scales, then its quants). A block's quants are 8 chunks of 64 bytes:
 * chunk c holds elements 4c .. 4c + 3 of the block, row r's at 4r, each stored offset by 128
 * (w ^ 0x80, unsigned).
 * A dot product reads 4 bytes of the activation block against 16 rows at once (one vpdpbusd
 * with a broadcast), so the block's 16 integer dot products are whole after 8 of them and
 * one convert and one fma serve 16 rows: the float work per token is 1/16 of a row-at-a-time
 * kernel's, and verify batches stay bound by reading the weights. Built once per weight
 * (gr_repack_q8_0_r16); weights that are not repacked keep the GGUF kernels.
 *
 * Repacked Q4_0 weights (GR_Q4_0_R16) are the same layout with a block's 16 quant bytes a row
 * (18 * nblk bytes a row, pairs of 64 + 2 x 256 bytes): chunk c (0..3) of a block holds bytes
 * 4c .. 4c + 3 of each row's 16 (row r's at 4r) as GGUF stores them, so its low nibbles are
 * elements 4c .. 4c + 3 and its high nibbles elements 16 + 4c .. 16 + 4c + 3. The nibbles
 * n = w + 8 are vpdpbusd's unsigned operand as they are: one AND (low) and one shift + AND (high)
 * per chunk serve every token, then two vpdpbusd a token; sum(n q) - 8 sum(q) = sum(w q), and
 * -8 sum(q) is the Q8R meta's -128 sum(q) >> 4 exactly, so both types read Q8R activations. */
/* NOTE: groups of 32 rows (one broadcast of a token's quants for two vpdpbusd, in one stream)
 * took 0.6x the instructions in a loop from L1 (0.46 vs 0.82 ns per row-block at 4 tokens in L2)
 * but read alike from memory (a standalone chain of 3.7 MB matrices, 2 threads, 1 and 4 tokens)
 * and decoded slower in the 0.8B model once (33 vs 30 ms); two 16-row groups side by side (two
 * streams) streamed slower still: 16 it is. */
#define GR_R16 16
/* qb: a row's quant bytes per block: 32 (GR_Q8_0_R16) or 16 (GR_Q4_0_R16) */
static inline int gr_r16_qbytes(int type) { return type == GR_Q4_0_R16 ? 16 : 32; }
static inline int64_t gr_r16_pair_bytes(int qb) { return 64 + 2 * GR_R16 * qb; }
static inline int64_t gr_r16_group_bytes(int64_t K, int qb) { return GR_R16 * (2 + qb) * (K / 32); }
/* block j (of nblk) of the group at g: its 16 fp16 scales, its 16 * qb bytes of quants */
static inline const uint16_t *gr_r16_scales(const char *g, int64_t j, int qb) {
    return (const uint16_t *)(g + j / 2 * gr_r16_pair_bytes(qb) + 32 * (j % 2));
}
static inline const char *gr_r16_quants(const char *g, int64_t nblk, int64_t j, int qb) {
    return g + j / 2 * gr_r16_pair_bytes(qb) + ((j | 1) < nblk ? 64 : 32) + GR_R16 * qb * (j % 2);
}
/* quant byte e (0..qb-1) of row r (0..15) within a block's quants */
static inline int gr_r16_byte(int r, int e) { return 64 * (e / 4) + 4 * r + e % 4; }
/* Tiles of several tokens (verify batches, prefill) prefetch the group's stream this many block
 * pairs ahead into L2, a pair at a time (past a matrix's end: prefetches never fault). With a token's
 * broadcasts and dot products per block the loop holds fewer of the stream's misses in flight
 * than a decode does, and the hardware prefetcher alone left 4 tokens reading at 0.72-0.75x the
 * 1-token rate; with it 0.96-1.0x (24 layers of 3.7 MB matrices, 2 threads, in-process A/B). In
 * the 0.8B Q8_0 model a verify of 3 drafts went from 1.30-1.45x to 1.09-1.24x a decode (AVX-512
 * VNNI), 60.6 -> 44.7 ms at the AVX2 level. 4-9 pairs ahead measured alike; into L1 (T0) 1.6x
 * slower. One token streams at the memory limit without it (a prefetch there measured 0-8%
 * slower). */
#define GR_R16_PF_PAIRS 6
/* the cache lines of [p, p + bytes) prefetched into L2 (prefetcht1 on x86; a prefetch never faults) */
static inline void gr_prefetch_l2(const char *p, int64_t bytes) {
    for (int64_t l = 0; l < bytes; l += 64) __builtin_prefetch(p + l, 0, 2);
}
/* One-row F32/F16/BF16 tiles of several tokens prefetch the row stream this far ahead into L2,
 * likewise: in the 0.8B F16 model a verify of 3 drafts went from 1.9-2.3x to 1.21-1.47x a decode
 * (AVX-512; in-process A/B, 2 threads; 6-24 KB ahead measured alike), 113.5 -> 85.1 ms at the
 * AVX2 level. One token prefetches only from matrices read from memory (gr_mm_kernel.stream1,
 * AVX-512): unlike a Q8_0 decode an F16 decode gains (2 bytes a weight: more instructions per
 * byte streamed; 24 layers of 7 MB F16 matrices 0.87-0.93x the time, the 0.8B F16 model's
 * decode 60.5 -> 56.2 ms), while the shipped tiny model (F16, every matrix <= 512 KB, all in
 * cache) decoded 3-5% slower with it. */
#define GR_FLOAT_PF_BYTES 8192
/* One-row K-quant tiles of several tokens, likewise: in a 0.8B-shaped Q4_K_M file (Q4_K and Q6_K
 * weights) a verify of 3 drafts 45.5-45.9 -> 38.8-39.8 ms (decode ~24 ms; AVX-512; 8 KB measured
 * alike or worse), 73.1 -> 62.7 ms at the AVX2 level. These tiles stay compute-bound at 4 tokens. */
#define GR_KQ_PF_BYTES 4096

/* Activations for repacked Q8_0 (GR_ACT_Q8R): the same quantization as GR_ACT_Q8 (ggml's
 * block_q8_0 numerics) stored as signed bytes q (K bytes, rounded up to 64), then per block
 * its scale d (float, the fp16 value) and -128 * sum(q) (int32), in pairs: vpdpbusd of the
 * offset weights u = w + 128 with q gives sum(w q) + 128 sum(q), so a block's sum starts there. */
static inline const float *gr_q8r_meta(const char *row, int64_t K) { return (const float *)(row + (K + 63) / 64 * 64); }

/* Repack `nmat` Q8_0 (Q4_0) matrices of M rows x K (matrix i at src + i * snb2, row stride snb1)
 * into dst (nmat * ceil(M / 16) groups of gr_r16_group_bytes(K, qb), matrix after matrix). */
void gr_repack_q8_0_r16(const char *src, int64_t K, int64_t M, int64_t nmat, int64_t snb1, int64_t snb2, char *dst);
void gr_repack_q4_0_r16(const char *src, int64_t K, int64_t M, int64_t nmat, int64_t snb1, int64_t snb2, char *dst);

/* K-quant weights: ggml's block_q8_K (float d, q = round-half-even(-127/max * x) where max is
 * the first element of largest magnitude, d = 1/(-127/max)), plus the sums of q per 16
 * (bsums) and per 32 (bsum32) elements. */
typedef struct gr_q8k {
    int8_t qs[256];
    float d;
    int16_t bsums[16];
    int16_t bsum32[8];
    int8_t pad_[12];
} gr_q8k;

_Static_assert(sizeof(gr_q8k) == 320, "gr_q8k layout");

/* ---- tile kernels ---- */
/* A shape-specialized kernel: for every tile of NR weight rows (nrows, a multiple of NR) x NC
 * activation rows: out[c][r0 + r] = dot(weight row r, activation row c) for r < nrows, c < NC.
 * Weight row r starts at w + r * ws (K elements of the weight type); act[c] is activation row c
 * in the weight type's format (K elements); out[c] is the output row of activation c. */
typedef void (*gr_mm_rows_fn)(int64_t K, const char *w, int64_t ws, int64_t nrows, const char *const *act,
                              float *const *out, int64_t r0);

#define GR_MM_MAX_RT 4
#define GR_MM_MAX_CT 8

typedef struct gr_mm_kernel {
    int act;    /* enum gr_act_kind */
    int rt, ct; /* largest tile of several weight rows: weight rows x activation rows */
    int ct1;    /* most activation rows of a one-row tile (>= ct): decode and verify batches */
    const gr_mm_rows_fn (*tiles)[GR_MM_MAX_CT]; /* tiles[nr - 1][nc - 1]: nr = 1, nc <= ct1; nr <= rt, nc <= ct */
    gr_mm_rows_fn stream1; /* NULL, or a one-row one-token tile for weights read from memory (a
                            * prefetching tiles[0][0]; matmul.c takes it for matrices of at least
                            * GR_MM_STREAM_BYTES: more than a core's L2, and in a model made of
                            * them more than any cache holds from one token to the next) */
} gr_mm_kernel;

#define GR_MM_STREAM_BYTES (1 << 20) /* one core's L2 here (Zen 4) */

/* The kernel for weights of `type` at the current ISA level; .tiles NULL if unsupported. */
gr_mm_kernel gr_mm_kernel_for(int type);

/* bytes of one activation row of K elements in format `act` (a multiple of 64) */
int64_t gr_act_row_bytes(int act, int64_t K);

/* Convert n elements of a row of b (type F32/F16, element stride sb bytes) into the format
 * `act` at dst (gr_act_row_bytes(act, n) bytes). */
void gr_act_row(const char *src, int type, int64_t sb, int64_t n, int act, char *dst);

/* ---- per-ISA kernel sets (vecdot.c scalar, vecdot_avx2.c, vecdot_avx512.c) ---- */
gr_mm_kernel gr_mm_scalar(int type);
gr_mm_kernel gr_mm_avx2(int type);
gr_mm_kernel gr_mm_avx512(int type);

/* ---- scalar helpers shared by the kernel files ---- */
static inline uint16_t gr_ld16(const void *p) {
    uint16_t v;
    memcpy(&v, p, 2);
    return v;
}

/* Q4_K/Q5_K: the 6-bit scales sc[8] and mins m[8] packed in 12 bytes (ggml's get_scale_min_k4) */
static inline void gr_k4_scales(const uint8_t *s, uint8_t *sc, uint8_t *m) {
    for (int j = 0; j < 4; j++) {
        sc[j] = s[j] & 63;
        m[j] = s[j + 4] & 63;
        sc[j + 4] = (s[j + 8] & 0xF) | ((s[j] >> 6) << 4);
        m[j + 4] = (s[j + 8] >> 4) | ((s[j + 4] >> 6) << 4);
    }
}

/* the same, 8 bytes each packed in a uint64 (byte j = sub-block j), word-parallel */
static inline void gr_k4_scales64(const uint8_t *s, uint64_t *sc, uint64_t *m) {
    uint32_t u0, u1, u2;
    memcpy(&u0, s, 4);
    memcpy(&u1, s + 4, 4);
    memcpy(&u2, s + 8, 4);
    uint32_t sc_hi = (u2 & 0x0f0f0f0fu) | ((u0 >> 2) & 0x30303030u);
    uint32_t m_hi = ((u2 >> 4) & 0x0f0f0f0fu) | ((u1 >> 2) & 0x30303030u);
    *sc = (u0 & 0x3f3f3f3fu) | (uint64_t)sc_hi << 32;
    *m = (u1 & 0x3f3f3f3fu) | (uint64_t)m_hi << 32;
}

#endif
