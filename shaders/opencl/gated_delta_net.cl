// gated_delta_net: one work-item per (j, head, seq) owns column j of the state S (memory row
// M[j][:] = S[:][j]), held in private memory (-DS_V=<state size>); every step of the rule is
// independent across j, so no work-item talks to another. -DG_PER_CHANNEL when g is [S_v, ...].
// Snapshot slot n (n < K, n <= n_tokens - 1) gets the state n tokens before the end.
#include "common.h"

__kernel void gated_delta_net(TENSOR(q), TENSOR(k), TENSOR(v), TENSOR(g), TENSOR(beta), TENSOR(state),
                              TENSOR(d), int n_snap) {
    int gid = get_global_id(0);
    int H_v = v_ne.s1, n_tok = v_ne.s2, n_seqs = v_ne.s3, H_k = k_ne.s1;
    if (gid >= S_V * H_v * n_seqs) return;
    int j = gid % S_V, h = (gid / S_V) % H_v, s = gid / (S_V * H_v), hk = h % H_k;
    float m[S_V];
    for (int i = 0; i < S_V; i++) m[i] = LD_F32(AT(state, i, j, h, s));
    float scale = 1.0f / sqrt((float)S_V);
    int rows_o = n_tok * n_seqs;
    for (int t = 0; t < n_tok; t++) {
#ifndef G_PER_CHANNEL
        float eg = exp(LD_F32(AT(g, 0, h, t, s)));
#endif
        float sk = 0.0f;
        for (int i = 0; i < S_V; i++) {
#ifdef G_PER_CHANNEL
            m[i] *= exp(LD_F32(AT(g, i, h, t, s)));
#else
            m[i] *= eg;
#endif
            sk += m[i] * LD_F32(AT(k, i, hk, t, s));
        }
        float delta = (LD_F32(AT(v, j, h, t, s)) - sk) * LD_F32(AT(beta, 0, h, t, s));
        float o = 0.0f;
        for (int i = 0; i < S_V; i++) {
            m[i] += delta * LD_F32(AT(k, i, hk, t, s));
            o += m[i] * LD_F32(AT(q, i, hk, t, s));
        }
        ST_F32(AT(d, h * S_V + j, s * n_tok + t, 0, 0), o * scale);
        int slot = n_tok - 1 - t;
        if (slot < n_snap) {
            // the snapshot block of slot: rows_o + slot * S_V * n_seqs rows, flattened (s, h, j, i)
            ulong base = ((ulong)(s * H_v + h) * S_V + j) * S_V;
            int row0 = rows_o + slot * S_V * n_seqs, width = H_v * S_V;
            for (int i = 0; i < S_V; i++) {
                ulong f = base + i;
                ST_F32(AT(d, f % width, row0 + f / width, 0, 0), m[i]);
            }
        }
    }
}
