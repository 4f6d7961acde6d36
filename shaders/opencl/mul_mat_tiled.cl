// mul_mat for several tokens (prefill): d[m, n, i2, i3] = sum_k a[k, m, i2 / r2, i3 / r3] * b[k, n, i2, i3].
// -DTA/-DDEQ/-DTB/-DA_CONTIG/-DB_CONTIG as mul_mat.cl (A16 and B_CONTIG required: a's rows are
// dequantized or vector-loaded, b's rows contiguous).
//
// A work-group of WG_M x WG_N items computes a (WG_M TILE_M) x (WG_N TILE_N) block of d, each
// item a TILE_M x TILE_N block of it. Per chunk of KC 16-element units of K, the group first
// stages its rows of a, dequantized once, in local memory; then every item multiplies its
// TILE_M staged units by the TILE_N units of b it loads, so a dequantized unit serves the
// group's WG_N TILE_N tokens and a unit of b TILE_M rows. Blocks at the edges read clamped
// rows and write only the valid ones.
#include "common.h"
#include "mul_mat.h"

#if !defined(A16) || !defined(B_CONTIG)
#error "mul_mat_tiled needs A16 (DEQ or A_CONTIG) and B_CONTIG"
#endif

#define RM (WG_M * TILE_M)  // rows of a per work-group
#define WGS (WG_M * WG_N)

__kernel void mul_mat_tiled(TENSOR(a), TENSOR(b), TENSOR(d)) {
    int M = d_ne.s0, N = d_ne.s1, K16 = a_ne.s0 / 16;
    int tm = (M + RM - 1) / RM, tn = (N + WG_N * TILE_N - 1) / (WG_N * TILE_N);
    int grp = get_group_id(0), l = get_local_id(0);
    int mb = (grp % tm) * RM, z = grp / (tm * tn);
    int m0 = mb + (l % WG_M) * TILE_M, n0 = ((grp / tm) % tn) * (WG_N * TILE_N) + (l / WG_M) * TILE_N;
    int i2 = z % d_ne.s2, i3 = z / d_ne.s2;
    int a2 = i2 / (b_ne.s2 / a_ne.s2), a3 = i3 / (b_ne.s3 / a_ne.s3);
    __local float16 wl[KC * RM];
    __global const char *br[TILE_N];
#pragma unroll
    for (int j = 0; j < TILE_N; j++) br[j] = AT(b, 0, min(n0 + j, N - 1), i2, i3);
    float16 acc[TILE_M][TILE_N];
#pragma unroll
    for (int i = 0; i < TILE_M; i++)
#pragma unroll
        for (int j = 0; j < TILE_N; j++) acc[i][j] = 0.0f;
    for (int u0 = 0; u0 < K16; u0 += KC) {
        for (int q = l; q < KC * RM; q += WGS) {  // the group's rows x KC units of a, dequantized once
            int r = q % RM, u = u0 + q / RM;
            wl[q] = u < K16 ? A16(AT(a, 0, min(mb + r, M - 1), a2, a3), u) : (float16)0.0f;
        }
        barrier(CLK_LOCAL_MEM_FENCE);
        int kc = (m0 < M && n0 < N) ? min(KC, K16 - u0) : 0;  // items wholly past the edges only stage
        for (int c = 0; c < kc; c++) {
            float16 x[TILE_N];
#pragma unroll
            for (int j = 0; j < TILE_N; j++) x[j] = LD16(TB, br[j], u0 + c);
#pragma unroll
            for (int i = 0; i < TILE_M; i++) {
                float16 w = wl[c * RM + m0 - mb + i];
#pragma unroll
                for (int j = 0; j < TILE_N; j++) acc[i][j] += w * x[j];
            }
        }
        barrier(CLK_LOCAL_MEM_FENCE);
    }
#pragma unroll
    for (int i = 0; i < TILE_M; i++)
#pragma unroll
        for (int j = 0; j < TILE_N; j++) {
            if (m0 + i >= M || n0 + j >= N) continue;
            float8 a8 = acc[i][j].lo + acc[i][j].hi;
            float4 a4 = a8.lo + a8.hi;
            ST_F32(AT(d, m0 + i, n0 + j, i2, i3), (a4.x + a4.y) + (a4.z + a4.w));
        }
}
