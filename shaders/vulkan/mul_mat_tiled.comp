// mul_mat for several tokens (prefill): d[m, n, i2, i3] = sum_k a[k, m, i2 / r2, i3 / r3] * b[k, n, i2, i3].
// -DDEQ or -DTA with -DA_CONTIG (a's rows by 16-element units, weights.glsl), -DTB=F32|F16.
//
// A work-group of WG_M x WG_N invocations computes a (WG_M TM) x (WG_N TN) block of d, each
// invocation TM rows x TN tokens of it. Per chunk of KC units of K the group first stages its rows
// of a, dequantized once, in shared memory; then every invocation multiplies its TM staged units
// by the TN units of b it loads, so a dequantized unit serves the group's WG_N TN tokens. Blocks at
// the edges read clamped rows and write only the valid ones.
#version 450
#define N_TENSORS 3
#define WG (WG_M * WG_N)
#include "common.glsl"
#include "weights.glsl"
layout(local_size_x = WG) in;
TENSOR(2, b, readonly);
TENSOR(3, d, );

#define RM (WG_M * TM)  // rows of a per work-group
#define RN (WG_N * TN)  // tokens per work-group
shared float wl_[KC * RM * 16];

void main() {
    uint M = NE(d).x, N = NE(d).y, K16 = NE(a).x / 16u, l = gl_LocalInvocationID.x;
    uint tm = (M + RM - 1u) / RM, tn = (N + RN - 1u) / RN, g = group_index();
    uint mb = (g % tm) * RM, nb = ((g / tm) % tn) * RN, z = g / (tm * tn);
    if (z >= NE(d).z * NE(d).w) return;
    uint i2 = z % NE(d).z, i3 = z / NE(d).z;
    uint a_row0 = OFF(a) + (i2 / (NE(b).z / NE(a).z)) * NB(a).z + (i3 / (NE(b).w / NE(a).w)) * NB(a).w;
    uint base = A_WINDOW(a_row0 + mb * NB(a).y);  // the group's RM rows lie within RM rows of it
    uint m0 = (l % WG_M) * TM, n0 = nb + (l / WG_M) * TN;
    uint brow[TN];
    [[unroll]] for (uint j = 0; j < TN; j++) brow[j] = AT(b, 0u, min(n0 + j, N - 1u), i2, i3);
    float acc[TM][TN];
    [[unroll]] for (uint i = 0; i < TM; i++)
        [[unroll]] for (uint j = 0; j < TN; j++) acc[i][j] = 0.0;
    for (uint u0 = 0; u0 < K16; u0 += KC) {
        for (uint q = l; q < KC * RM; q += WG) {  // the group's rows x KC units of a, dequantized once
            uint r = q % RM, c = q / RM;
            float w[16];
            if (u0 + c < K16) {
                a16(base + min(r, M - 1u - mb) * NB(a).y, u0 + c, w);
            } else {
                [[unroll]] for (uint j = 0; j < 16u; j++) w[j] = 0.0;
            }
            [[unroll]] for (uint j = 0; j < 16u; j++) wl_[q * 16u + j] = w[j];
        }
        memoryBarrierShared();
        barrier();
        uint kc = min(KC, K16 - u0);
        for (uint c = 0; c < kc; c++) {
            [[unroll]] for (uint j = 0; j < TN; j++) {
                float x[16];
                uint bu = brow[j] + 16u * (u0 + c) * NB(b).x;
                [[unroll]] for (uint e = 0; e < 16u; e++) x[e] = LD(TB, b, bu + e * NB(b).x);
                [[unroll]] for (uint i = 0; i < TM; i++) {
                    uint w0 = ((c * RM) + m0 + i) * 16u;
                    float s = 0.0;
                    [[unroll]] for (uint e = 0; e < 16u; e++) s += wl_[w0 + e] * x[e];
                    acc[i][j] += s;
                }
            }
        }
        barrier();
    }
    [[unroll]] for (uint i = 0; i < TM; i++)
        [[unroll]] for (uint j = 0; j < TN; j++)
            if (mb + m0 + i < M && n0 + j < N) ST_F32(d, AT(d, mb + m0 + i, n0 + j, i2, i3), acc[i][j]);
}
