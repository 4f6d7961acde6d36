// mul_mat for several tokens (prefill): d[m, n, i2, i3] = sum_k a[k, m, i2 / r2, i3 / r3] * b[k, n, i2, i3].
// -DTA/-DDEQ/-DTB/-DA_CONTIG/-DB_CONTIG as mul_mat.cl (A16 and B_CONTIG required: a's rows are
// dequantized or vector-loaded, b's rows contiguous); -DTILE_M, -DTILE_N the block of d per item.
#include "common.h"
#include "mul_mat.h"

#if !defined(A16) || !defined(B_CONTIG)
#error "mul_mat_tiled needs A16 (DEQ or A_CONTIG) and B_CONTIG"
#endif

// Work-item g computes a TILE_M x TILE_N block of d (TILE_M rows of a against TILE_N rows of b),
// so each dequantized 16-element unit of a serves TILE_N tokens and each unit of b TILE_M rows.
// Blocks at the edges read clamped rows and write only the valid ones. Row tiles vary fastest
// (the token tile stays cached while the weights stream).
__kernel void mul_mat_tiled(TENSOR(a), TENSOR(b), TENSOR(d)) {
    int M = d_ne.s0, N = d_ne.s1, K = a_ne.s0;
    int tm = (M + TILE_M - 1) / TILE_M, tn = (N + TILE_N - 1) / TILE_N;
    int g = get_global_id(0);
    int m0 = (g % tm) * TILE_M, n0 = ((g / tm) % tn) * TILE_N, z = g / (tm * tn);
    if (z >= d_ne.s2 * d_ne.s3) return;  // the range is padded to whole work-groups
    int i2 = z % d_ne.s2, i3 = z / d_ne.s2;
    int a2 = i2 / (b_ne.s2 / a_ne.s2), a3 = i3 / (b_ne.s3 / a_ne.s3);
    __global const char *ar[TILE_M], *br[TILE_N];
    for (int i = 0; i < TILE_M; i++) ar[i] = AT(a, 0, min(m0 + i, M - 1), a2, a3);
    for (int j = 0; j < TILE_N; j++) br[j] = AT(b, 0, min(n0 + j, N - 1), i2, i3);
    float16 acc[TILE_M][TILE_N];
    for (int i = 0; i < TILE_M; i++)
        for (int j = 0; j < TILE_N; j++) acc[i][j] = 0.0f;
    for (int u = 0; u < K / 16; u++) {
        float16 x[TILE_N];
#pragma unroll
        for (int j = 0; j < TILE_N; j++) x[j] = LD16(TB, br[j], u);
#pragma unroll
        for (int i = 0; i < TILE_M; i++) {
            float16 w = A16(ar[i], u);
#pragma unroll
            for (int j = 0; j < TILE_N; j++) acc[i][j] += w * x[j];
        }
    }
    for (int i = 0; i < TILE_M; i++)
        for (int j = 0; j < TILE_N; j++) {
            if (m0 + i >= M || n0 + j >= N) continue;
            float8 a8 = acc[i][j].lo + acc[i][j].hi;
            float4 a4 = a8.lo + a8.hi;
            ST_F32(AT(d, m0 + i, n0 + j, i2, i3), (a4.x + a4.y) + (a4.z + a4.w));
        }
}
