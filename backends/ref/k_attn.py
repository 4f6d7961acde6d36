"""Fused attention (Op.FLASH_ATTN_EXT), the reference for ggml_flash_attn_ext.

out = softmax(s + slope * mask) v with s = scale * q k^T, or with a logit softcap
s = softcap * tanh(scale * q k^T / softcap), per query head h using kv head h // (H / H_kv).

NOTE on numerics (ggml-cpu ops.cpp, flash_attn_ext_f16):
- ggml's one-row path (used for decode, n_q below its tile size) converts Q to F16 when K is
  F16 and accumulates V in F16 when V is F16; its tiled path (prefill) converts K/V to F32 and
  keeps Q in F32. We always compute in float32 (K/V widened, Q kept F32) like the tiled path;
  the F16 rounding of the other path is well inside the 5e-4 attention parity threshold.
- Mask entries equal to -inf (after the slope) are skipped outright, so they weigh exactly 0.
- A fully masked row has no weight at all: ggml keeps sum S = 0 and writes 0 * V = zeros
  (S_inv = 0), not NaN. We do the same.
"""

from __future__ import annotations

import numpy as np

from graphir.numerics import alibi_slopes
from graphir.tensor import Tensor

from .common import as_f32

F32 = np.float32


def flash_attn_ext(node: Tensor, dst: np.ndarray, q: np.ndarray, k: np.ndarray, v: np.ndarray,
                   mask: np.ndarray | None = None) -> None:  # fmt: skip
    """q (n_seq, H, n_q, D), k (n_seq_kv, H_kv, n_kv, D), v (.., Dv), mask (m3, m2, >=n_q, n_kv)
    -> dst (n_seq, n_q, H, Dv) (heads before tokens)."""
    p = node.params
    scale, softcap = F32(p["scale"]), F32(p["logit_softcap"])
    n_seq, H, n_q, _ = q.shape
    H_kv = k.shape[1]
    rk2, rk3 = H // H_kv, n_seq // k.shape[0]  # broadcast factors: kv index = q index // r (grouped)
    qf = as_f32(q, node.src[0].type)
    kf = as_f32(k, node.src[1].type)
    vf = as_f32(v, node.src[2].type)
    mf = None if mask is None else as_f32(mask, node.src[3].type)
    slopes = alibi_slopes(H, p["max_bias"])
    if softcap != 0:
        scale = scale / softcap  # as ggml: scale first, then softcap * tanh

    # gather the kv head (grouped) and kv sequence of every (seq, q head): [n_seq, H, n_kv, D]
    kf = kf[np.arange(n_seq) // rk3][:, np.arange(H) // rk2]
    vf = vf[np.arange(n_seq) // rk3][:, np.arange(H) // rk2]
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        s = (qf @ kf.swapaxes(-1, -2)) * scale  # [n_seq, H, n_q, n_kv]
        if softcap != 0:
            s = softcap * np.tanh(s)
        if mf is not None:
            seqs = np.arange(n_seq) % mf.shape[0]
            heads = np.arange(H) % mf.shape[1]
            mv = slopes[None, :, None, None] * mf[seqs][:, heads, :n_q]
            s = np.where(mv == -np.inf, F32(-np.inf), s + mv)  # -inf entries are skipped in ggml
        out = _softmax_v(s.astype(F32), vf)  # [n_seq, H, n_q, Dv]
    dst[...] = out.swapaxes(1, 2)


def _softmax_v(s: np.ndarray, v: np.ndarray) -> np.ndarray:
    """softmax(s) v per row, with a fully -inf row giving zeros (ggml's S == 0 rule)."""
    if s.shape[-1] == 0:
        return np.zeros(s.shape[:-1] + (v.shape[-1],), dtype=F32)
    m = s.max(axis=-1, keepdims=True)
    dead = m == -np.inf
    w = np.exp(s - np.where(dead, F32(0), m))  # exp(-inf) = 0 for skipped entries
    total = w.sum(axis=-1, keepdims=True)
    finite = np.isfinite(v)
    if finite.all():
        acc = w @ v
    else:  # as ggml, a skipped (masked) cell's V is never read: a NaN there must not leak as 0 * NaN
        acc = w @ np.where(finite, v, F32(0))
        seen = (w > 0).astype(F32) @ (~finite).astype(F32)  # weighted non-finite entries per output
        acc = np.where(seen > 0, w @ v, acc)
    return np.where(total == 0, F32(0), acc / np.where(total == 0, F32(1), total)).astype(F32)
