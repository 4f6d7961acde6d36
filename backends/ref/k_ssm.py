"""State-space kernels: the causal depthwise conv (Op.SSM_CONV) and the gated delta rule
(Op.GATED_DELTA_NET) with state snapshots for rollback. Numerics follow ggml-cpu ops.cpp
(ssm_conv_f32, gated_delta_net_one_chunk), in float32."""

from __future__ import annotations

import numpy as np

from graphir.tensor import Tensor

F32 = np.float32


def ssm_conv(node: Tensor, dst: np.ndarray, sx: np.ndarray, c: np.ndarray) -> None:
    """sx (1, n_seqs, channels, d_conv-1+n_tokens), c (1, 1, channels, d_conv)
    -> dst (1, n_seqs, n_tokens, channels): out[s, t, ch] = sum_k sx[s, ch, t+k] * c[ch, k]."""
    d_conv = c.shape[-1]
    n_tokens = dst.shape[2]
    acc = np.zeros(sx.shape[:-1] + (n_tokens,), dtype=F32)
    for i in range(d_conv):  # sequential float32 sum over the window, as ggml (not a double-precision dot)
        acc += sx[..., i : i + n_tokens] * c[0, 0, :, i : i + 1]
    dst[...] = acc.swapaxes(-1, -2)


def gated_delta_net(node: Tensor, dst: np.ndarray, q: np.ndarray, k: np.ndarray, v: np.ndarray,
                    g: np.ndarray, beta: np.ndarray, state: np.ndarray) -> None:  # fmt: skip
    """The gated delta rule over n_tokens tokens for every (seq, v head), see builders.gated_delta_net.

    Views (numpy order): q, k (n_seqs, n_tokens, H_k, S_v); v (n_seqs, n_tokens, H_v, S_v);
    g (n_seqs, n_tokens, H_v, 1 | S_v); beta (n_seqs, n_tokens, H_v, 1); state (n_seqs, H_v, S_v, S_v)
    where state[s, h, j, i] = S[i][j] (i the k index); dst (1, 1, rows, S_v*H_v).
    Snapshot slots beyond n_tokens - 1 are left untouched (their memory is the caller's).
    """
    n_seqs, n_tokens, H_v, S_v = v.shape
    H_k = k.shape[2]
    K = node.params["snapshots"]
    tile = np.arange(H_v) % H_k  # v head j reads q/k head j % H_k (tiled, not grouped)
    scale = F32(1.0) / np.sqrt(F32(S_v))

    # M[s, h, j, i] = S[i][j]: the memory layout of the state, so rows of M are columns of S
    M = np.array(state, dtype=F32)
    o = np.empty((n_seqs, n_tokens, H_v, S_v), dtype=F32)
    snaps: dict[int, np.ndarray] = {}
    for t in range(n_tokens):
        qt, kt = q[:, t][:, tile], k[:, t][:, tile]  # [n_seqs, H_v, S_v]
        M *= np.exp(g[:, t])[:, :, None, :]  # per head, or per channel i (the k index)
        sk = (M @ kt[..., None])[..., 0]  # (S^T k)[j]
        delta = (v[:, t] - sk) * beta[:, t]
        M += delta[..., :, None] * kt[..., None, :]  # S[i][j] += k[i] delta[j]
        o[:, t] = (M @ qt[..., None])[..., 0] * scale
        slot = n_tokens - 1 - t
        if slot < K:
            snaps[slot] = M.copy()

    rows_o = n_tokens * n_seqs
    rows_s = S_v * n_seqs
    out = dst[0, 0]
    out[:rows_o] = o.reshape(rows_o, H_v * S_v)
    for slot, st in snaps.items():
        r0 = rows_o + slot * rows_s
        out[r0 : r0 + rows_s] = st.reshape(rows_s, H_v * S_v)
