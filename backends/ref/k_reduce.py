"""Row reductions and norms over dim 0 (numpy's last axis): sum_rows, mean, rms_norm,
l2_norm, soft_max, argmax, argsort, top_k.

Numerics follow ggml-cpu: row sums accumulate in double (ggml_float) and are rounded to
float32 once; scales are computed in float32 and applied as a float32 multiply.
"""

from __future__ import annotations

import numpy as np

from graphir.builders import SORT_DESC
from graphir.numerics import alibi_slopes
from graphir.tensor import Tensor

from .common import as_f32, broadcast_src

_F32 = np.float32


def _sum64(x: np.ndarray) -> np.ndarray:
    """Row sums of float32 x accumulated in float64 (ggml_float), keepdims."""
    return np.sum(x, axis=-1, keepdims=True, dtype=np.float64)


def sum_rows(node: Tensor, dst: np.ndarray, a: np.ndarray) -> None:
    dst[...] = _sum64(a).astype(_F32)


def mean(node: Tensor, dst: np.ndarray, a: np.ndarray) -> None:
    # ggml: the float32 row sum divided by ne0 in float32
    dst[...] = _sum64(a).astype(_F32) / _F32(a.shape[-1])


def rms_norm(node: Tensor, dst: np.ndarray, a: np.ndarray) -> None:
    """x / sqrt(mean(x^2) + eps); squares in float32, summed in double, as ggml."""
    x = np.asarray(a, dtype=_F32)
    ms = (_sum64(x * x) / x.shape[-1]).astype(_F32)
    with np.errstate(divide="ignore", invalid="ignore"):
        scale = _F32(1.0) / np.sqrt(ms + _F32(node.params["eps"]))
    dst[...] = x * scale


def l2_norm(node: Tensor, dst: np.ndarray, a: np.ndarray) -> None:
    """x / max(||x||_2, eps); the double sum of float32 squares is rounded to float before sqrt."""
    x = np.asarray(a, dtype=_F32)
    norm = np.sqrt(_sum64(x * x).astype(_F32))
    with np.errstate(divide="ignore", invalid="ignore"):
        scale = _F32(1.0) / np.maximum(norm, _F32(node.params["eps"]))
    dst[...] = x * scale


def soft_max(node: Tensor, dst: np.ndarray, a: np.ndarray, mask: np.ndarray | None = None) -> None:
    """softmax over dim 0 of a*scale + slope[h]*mask (ggml_soft_max_ext).

    The mask's first ne1 rows are used and it is tiled over dims 2, 3 (mask index i2 % mask.ne2,
    i3 % mask.ne3); slope[h] is the ALiBi slope of head h = the dim-2 index (1 without max_bias).
    -inf mask entries give exact zeros. NOTE: a row that is -inf everywhere gives NaN, as in
    ggml-cpu (exp(-inf - -inf); ggml only asserts against it in debug builds).
    """
    scale, max_bias = node.params["scale"], node.params["max_bias"]
    w = np.asarray(a, dtype=_F32) * _F32(scale)
    if mask is not None:
        m = as_f32(mask, node.src[1].type)[:, :, : a.shape[2], :]
        m = broadcast_src(m, a.shape)
        slope = alibi_slopes(a.shape[1], max_bias)[None, :, None, None]
        w = w + slope * m
    with np.errstate(invalid="ignore", over="ignore"):
        e = np.exp(w - w.max(axis=-1, keepdims=True))
        inv = (1.0 / _sum64(e)).astype(_F32)  # ggml: 1.0/sum in double, applied as a float scale
        dst[...] = e * inv


def argmax(node: Tensor, dst: np.ndarray, a: np.ndarray) -> None:
    """Index of each row's largest element, the FIRST one on ties (the builder's contract).

    NOTE: ggml-cpu's loop (`max = MAX(max, x[i]); if (max == x[i]) idx = i`) returns the last
    index on ties; we keep the documented first-index rule. NaN rows are unspecified.
    """
    dst[...] = np.argmax(a, axis=-1)[None]


def _sort_desc(x: np.ndarray) -> np.ndarray:
    """Stable descending order: ties keep the lower index first (negation is exact)."""
    return np.argsort(-x, axis=-1, kind="stable")


def argsort(node: Tensor, dst: np.ndarray, a: np.ndarray) -> None:
    """Per-row sorting permutation, stable in both orders (equal values: lower index first).

    NOTE: ggml-cpu uses std::sort, whose order among equal values is unspecified.
    """
    x = np.asarray(a, dtype=_F32)
    order = _sort_desc(x) if node.params["order"] == SORT_DESC else np.argsort(x, axis=-1, kind="stable")
    dst[...] = order


def top_k(node: Tensor, dst: np.ndarray, a: np.ndarray) -> None:
    """Indices of the k largest elements per row, largest first; equal values in ascending
    index order (so the result is a prefix of the stable descending argsort).

    NOTE: ggml-cpu leaves the order unspecified (it even swaps the first two on purpose).
    """
    dst[...] = _sort_desc(np.asarray(a, dtype=_F32))[..., : node.params["k"]]
