// gated_delta_net: one invocation per (j, head, seq) owns column j of the state S (memory row
// M[j][:] = S[:][j]) in private memory (-DS_V=<state size>); every step of the rule is
// independent across j, so no invocation talks to another. -DG_PER_CHANNEL when g is [S_v, ...].
// Snapshot slot n (n < n_snap, n <= n_tokens - 1) gets the state n tokens before the end,
// written by the same pass (DESIGN.md section 3: outputs first, then slot 0 = the final state).
#version 450
#define N_TENSORS 7
#include "common.glsl"
layout(local_size_x = WG) in;
TENSOR(1, q, readonly);
TENSOR(2, k, readonly);
TENSOR(3, v, readonly);
TENSOR(4, g, readonly);
TENSOR(5, beta, readonly);
TENSOR(6, state, readonly);
TENSOR(7, d, );
layout(push_constant) uniform Push {
    uint n_snap;
} pc;

void main() {
    uint gid = group_index() * WG + gl_LocalInvocationID.x;
    uint H_v = NE(v).y, n_tok = NE(v).z, n_seqs = NE(v).w, H_k = NE(k).y;
    if (gid >= S_V * H_v * n_seqs) return;
    uint j = gid % S_V, h = (gid / S_V) % H_v, s = gid / (S_V * H_v), hk = h % H_k;
    float m[S_V];
    uint st = AT(state, 0u, j, h, s);
    for (uint i = 0; i < S_V; i++) m[i] = LD_F32(state, st + i * NB(state).x);
    float scale = 1.0 / sqrt(float(S_V));
    uint rows_o = n_tok * n_seqs;
    for (uint t = 0; t < n_tok; t++) {
        uint kt = AT(k, 0u, hk, t, s), qt = AT(q, 0u, hk, t, s);
#ifdef G_PER_CHANNEL
        uint gt = AT(g, 0u, h, t, s);
#else
        float eg = exp(LD_F32(g, AT(g, 0u, h, t, s)));
#endif
        float sk = 0.0;
        for (uint i = 0; i < S_V; i++) {
#ifdef G_PER_CHANNEL
            m[i] *= exp(LD_F32(g, gt + i * NB(g).x));
#else
            m[i] *= eg;
#endif
            sk += m[i] * LD_F32(k, kt + i * NB(k).x);
        }
        float delta = (LD_F32(v, AT(v, j, h, t, s)) - sk) * LD_F32(beta, AT(beta, 0u, h, t, s));
        float o = 0.0;
        for (uint i = 0; i < S_V; i++) {
            m[i] += delta * LD_F32(k, kt + i * NB(k).x);
            o += m[i] * LD_F32(q, qt + i * NB(q).x);
        }
        ST_F32(d, AT(d, h * S_V + j, s * n_tok + t, 0u, 0u), o * scale);
        uint slot = n_tok - 1u - t;
        if (slot < pc.n_snap) {
            // the snapshot block of slot: rows_o + slot S_V n_seqs rows of H_v S_V, flattened
            // (s, h, j, i); a column's S_V values lie in one row (the width is a multiple of S_V)
            uint base = ((s * H_v + h) * S_V + j) * S_V, width = H_v * S_V;
            uint row = AT(d, base % width, rows_o + slot * S_V * n_seqs + base / width, 0u, 0u);
            for (uint i = 0; i < S_V; i++) ST_F32(d, row + i * NB(d).x, m[i]);
        }
    }
}
