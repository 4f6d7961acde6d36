// State-space ops: ssm_conv and gated_delta_net.
#include "common.cuh"

// ssm_conv: d[ch, t, s] = sum_k sx[t + k, ch, s] * c[k, ch], a sequential float sum over the window
// (as ggml-cpu); one thread per output element
extern "C" __global__ void ssm_conv(const Tensor sx, const Tensor c, Tensor d) {
    long long idx = global_id();
    if (idx >= nelem(d)) return;
    int ch, t, s, i3;
    unravel(d, idx, ch, t, s, i3);
    float acc = 0.0f;
    for (int k = 0; k < c.ne[0]; k++) acc += ldf(at(sx, t + k, ch, s, 0)) * ldf(at(c, k, ch, 0, 0));
    stf(at(d, ch, t, s, i3), acc);
}

#define GDN_R 8  // state rows per lane: S_v <= 32 * GDN_R (kernels.py GDN_MAX_S)

// gated_delta_net: one warp per (j, head, seq) owns column j of the state S (memory row M[j][:] =
// S[:][j]), lane l holding rows l, l + 32, ... in registers; the two dot products of each step are
// warp sums. Per token: S <- exp(g) S; delta = beta (v - S^T k); S <- S + k delta^T; o = S^T q / sqrt(S_v).
// Snapshot slot n (n < n_snap, n <= n_tokens - 1) gets the state n tokens before the end, written
// by the same pass (d's rows after the n_tokens * n_seqs output rows, DESIGN.md section 3).
extern "C" __global__ void gated_delta_net(const Tensor q, const Tensor k, const Tensor v, const Tensor g,
                                           const Tensor beta, const Tensor state, Tensor d, int n_snap) {
    int S_v = v.ne[0], H_v = v.ne[1], n_tok = v.ne[2], n_seqs = v.ne[3], H_k = k.ne[1];
    int col = blockIdx.x * (blockDim.x / WARP) + threadIdx.x / WARP, lane = threadIdx.x % WARP;
    if (col >= S_v * H_v * n_seqs) return;
    int j = col % S_v, h = (col / S_v) % H_v, s = col / (S_v * H_v), hk = h % H_k;
    bool per_channel = g.ne[0] > 1;
    float m[GDN_R];
    const char *st0 = at(state, 0, j, h, s);
#pragma unroll
    for (int r = 0; r < GDN_R; r++) {
        int i = lane + WARP * r;
        m[r] = i < S_v ? ldf(st0 + i * state.nb[0]) : 0.0f;
    }
    float scale = 1.0f / sqrtf((float)S_v);
    int rows_o = n_tok * n_seqs;
    for (int t = 0; t < n_tok; t++) {
        const char *kt = at(k, 0, hk, t, s), *qt = at(q, 0, hk, t, s), *gt = at(g, 0, h, t, s);
        float eg = expf(ldf(gt)), kr[GDN_R], sk = 0.0f;
#pragma unroll
        for (int r = 0; r < GDN_R; r++) {
            int i = lane + WARP * r;
            kr[r] = i < S_v ? ldf(kt + i * k.nb[0]) : 0.0f;
            if (i < S_v) m[r] *= per_channel ? expf(ldf(gt + i * g.nb[0])) : eg;
            sk += m[r] * kr[r];
        }
        sk = warp_sum(sk);
        float delta = (ldf(at(v, j, h, t, s)) - sk) * ldf(at(beta, 0, h, t, s));
        float o = 0.0f;
#pragma unroll
        for (int r = 0; r < GDN_R; r++) {
            int i = lane + WARP * r;
            m[r] += delta * kr[r];
            if (i < S_v) o += m[r] * ldf(qt + i * q.nb[0]);
        }
        o = warp_sum(o);
        if (lane == 0) stf(at(d, h * S_v + j, s * n_tok + t, 0, 0), o * scale);
        int slot = n_tok - 1 - t;
        if (slot < n_snap) {
            // the snapshot block of slot: rows_o + slot * S_v * n_seqs rows of H_v * S_v, flattened
            // (s, h, j, i); a column's S_v values lie in one row (the width is a multiple of S_v)
            long long base = ((long long)(s * H_v + h) * S_v + j) * S_v, width = (long long)H_v * S_v;
            char *row = at(d, (int)(base % width), (int)(rows_o + (long long)slot * S_v * n_seqs + base / width), 0, 0);
#pragma unroll
            for (int r = 0; r < GDN_R; r++) {
                int i = lane + WARP * r;
                if (i < S_v) stf(row + i * d.nb[0], m[r]);
            }
        }
    }
}
