"""Matrix kernels: mul_mat (with ggml's dims-2/3 broadcast of a) and mul_mat_id (MoE).

NOTE: the reference multiplies the exact float32 values: a is dequantized (or widened) to
float32 once per call and b is used as float32. ggml-cpu instead rounds b to a's
`vec_dot_type` first (F16 for F16 a, BF16 for BF16 a, Q8_0/Q8_K for quantized a), so it
differs from this reference by that rounding of the activations.
"""

from __future__ import annotations

import numpy as np

from graphir.tensor import Tensor

from .common import as_f32, store


def _matmul_bt(x: np.ndarray, w: np.ndarray) -> np.ndarray:
    """x @ w^T over the last two axes in float32: x (..., N, K), w (..., M, K) -> (..., N, M)."""
    return np.matmul(x, np.swapaxes(w, -1, -2), dtype=np.float32)


def mul_mat(node: Tensor, dst: np.ndarray, a: np.ndarray, b: np.ndarray) -> None:
    """dst[i3, i2, n, m] = sum_k a[i3 // r3, i2 // r2, m, k] * b[i3, i2, n, k] (numpy order),
    r2 = ne12 / ne02, r3 = ne13 / ne03: each a matrix serves r2 (r3) consecutive b matrices."""
    w = as_f32(a, node.src[0].type)  # (ne03, ne02, M, K), dequantized once
    x = as_f32(b, node.src[1].type)  # (ne13, ne12, N, K)
    ne03, ne02, M, K = w.shape
    ne13, ne12, N, _ = x.shape
    r3, r2 = ne13 // ne03, ne12 // ne02
    # fold the b matrices sharing one a matrix into its row dim: one matmul per a matrix
    xs = x.reshape(ne03, r3, ne02, r2, N, K).transpose(0, 2, 1, 3, 4, 5).reshape(ne03, ne02, r3 * r2 * N, K)
    out = _matmul_bt(xs, w)  # (ne03, ne02, r3 * r2 * N, M)
    out = out.reshape(ne03, ne02, r3, r2, N, M).transpose(0, 2, 1, 3, 4, 5).reshape(ne13, ne12, N, M)
    store(dst, out, node.type)


def mul_mat_id(node: Tensor, dst: np.ndarray, as_: np.ndarray, b: np.ndarray, ids: np.ndarray) -> None:
    """dst[0, t, e, :] = as[0, ids[t, e]] @ b[0, t, e % b.ne1, :] (numpy order).

    Each expert that is used is dequantized once and applied to all its (token, slot) rows
    in one matmul.
    """
    n_expert = as_.shape[1]
    sel = ids[0, 0].astype(np.intp)  # (n_tokens, n_used)
    if sel.size and (sel.min() < 0 or sel.max() >= n_expert):
        bad = sel[(sel < 0) | (sel >= n_expert)].ravel()[0]
        raise IndexError(f"[mul_mat_id] expert id {int(bad)} out of range 0..{n_expert - 1}")
    x = as_f32(b, node.src[1].type)[0]  # (n_tokens, b_ne1, K)
    n_tokens, n_used = sel.shape
    slot_src = np.arange(n_used) % x.shape[1]
    out = np.zeros((n_tokens, n_used, dst.shape[-1]), dtype=np.float32)
    for ex in np.unique(sel):
        t, e = np.nonzero(sel == ex)
        w = as_f32(as_[0, ex], node.src[0].type)  # (M, K)
        out[t, e] = _matmul_bt(x[t, slot_src[e]], w)
    store(dst, out[None], node.type)
