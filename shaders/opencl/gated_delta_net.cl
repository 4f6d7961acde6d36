// gated_delta_net: one work-item per (j, head, seq) owns column j of the state S (memory row
// M[j][:] = S[:][j]), held in private memory (-DS_V=<state size>); every step of the rule is
// independent across j, so no work-item talks to another. -DG_PER_CHANNEL when g is [S_v, ...];
// -DVEC4 when S_V % 4 == 0 and the rows of q, k (and a per-channel g) are contiguous.
// Snapshot slot n (n < K, n <= n_tokens - 1) gets the state n tokens before the end.
#include "common.h"

__kernel void gated_delta_net(TENSOR(q), TENSOR(k), TENSOR(v), TENSOR(g), TENSOR(beta), TENSOR(state),
                              TENSOR(d), int n_snap) {
    int gid = get_global_id(0);
    int H_v = v_ne.s1, n_tok = v_ne.s2, n_seqs = v_ne.s3, H_k = k_ne.s1;
    if (gid >= S_V * H_v * n_seqs) return;
    int j = gid % S_V, h = (gid / S_V) % H_v, s = gid / (S_V * H_v), hk = h % H_k;
    float m[S_V];
    __global const char *st = AT(state, 0, j, h, s);
    for (int i = 0; i < S_V; i++) m[i] = LD_F32(st + i * state_nb.s0);
    float scale = 1.0f / sqrt((float)S_V);
    int rows_o = n_tok * n_seqs;
    for (int t = 0; t < n_tok; t++) {
#ifndef G_PER_CHANNEL
        float eg = exp(LD_F32(AT(g, 0, h, t, s)));
#endif
        __global const char *kt = AT(k, 0, hk, t, s), *qt = AT(q, 0, hk, t, s);
#ifdef VEC4
        // contiguous rows, S_V a multiple of 4: the same steps on float4 lanes
        __global const float *kf = (__global const float *)kt, *qf = (__global const float *)qt;
        float4 sk4 = 0.0f;
        for (int i = 0; i < S_V / 4; i++) {
#ifdef G_PER_CHANNEL
            float4 m4 = vload4(i, m) * exp(vload4(i, (__global const float *)AT(g, 0, h, t, s)));
#else
            float4 m4 = vload4(i, m) * eg;
#endif
            vstore4(m4, i, m);
            sk4 += m4 * vload4(i, kf);
        }
        float delta = (LD_F32(AT(v, j, h, t, s)) - ((sk4.x + sk4.y) + (sk4.z + sk4.w))) * LD_F32(AT(beta, 0, h, t, s));
        float4 o4 = 0.0f;
        for (int i = 0; i < S_V / 4; i++) {
            float4 m4 = vload4(i, m) + delta * vload4(i, kf);
            vstore4(m4, i, m);
            o4 += m4 * vload4(i, qf);
        }
        float o = (o4.x + o4.y) + (o4.z + o4.w);
#else
        float sk = 0.0f;
        for (int i = 0; i < S_V; i++) {
#ifdef G_PER_CHANNEL
            m[i] *= exp(LD_F32(AT(g, i, h, t, s)));
#else
            m[i] *= eg;
#endif
            sk += m[i] * LD_F32(kt + i * k_nb.s0);
        }
        float delta = (LD_F32(AT(v, j, h, t, s)) - sk) * LD_F32(AT(beta, 0, h, t, s));
        float o = 0.0f;
        for (int i = 0; i < S_V; i++) {
            m[i] += delta * LD_F32(kt + i * k_nb.s0);
            o += m[i] * LD_F32(qt + i * q_nb.s0);
        }
#endif
        ST_F32(AT(d, h * S_V + j, s * n_tok + t, 0, 0), o * scale);
        int slot = n_tok - 1 - t;
        if (slot < n_snap) {
            // the snapshot block of slot: rows_o + slot * S_V * n_seqs rows of H_v * S_V, flattened
            // (s, h, j, i); a column's S_V values lie in one row (the width is a multiple of S_V)
            int base = ((s * H_v + h) * S_V + j) * S_V, width = H_v * S_V;
            __global char *row = AT(d, base % width, rows_o + slot * S_V * n_seqs + base / width, 0, 0);
            for (int i = 0; i < S_V; i++) ST_F32(row + i * d_nb.s0, m[i]);
        }
    }
}
