"""Helpers shared by the reference kernels: type conversion on numpy views.

Kernels receive numpy views in (ne3, ne2, ne1, ne0) order (raw uint8 rows for quantized
types) and write the destination view in place. Every kernel must be correct when its
destination aliases src[0] (in-place reuse): compute the result, then assign.
"""

from __future__ import annotations

import numpy as np

from graphir.layout import bf16_to_f32, f32_to_bf16
from graphir.quants import dequantize_rows, quantize_rows
from graphir.types import TYPE_INFO, DType


def as_f32(arr: np.ndarray, type: DType) -> np.ndarray:
    """The float32 values of a view of a tensor of `type` (dequantizing block types)."""
    if type == DType.F32:
        return arr
    if type == DType.F16:
        return arr.astype(np.float32)
    if type == DType.BF16:
        return bf16_to_f32(arr)
    if type == DType.I32:
        return arr.astype(np.float32)
    return dequantize_rows(arr, type)


def store(dst: np.ndarray, value: np.ndarray, type: DType) -> None:
    """Write float32 `value` (broadcastable to the logical shape) into view `dst` of `type`."""
    if type in (DType.F32, DType.F16, DType.I32):
        dst[...] = value
    elif type == DType.BF16:
        dst[...] = f32_to_bf16(np.broadcast_to(value, dst.shape))
    elif TYPE_INFO[type].is_quantized:
        shape = dst.shape[:-1] + (dst.shape[-1] // TYPE_INFO[type].block_bytes * TYPE_INFO[type].block_elems,)
        dst[...] = quantize_rows(np.broadcast_to(value, shape).astype(np.float32), type)
    else:
        raise TypeError(f"[ref] cannot store into {type!r}")


def broadcast_src(b: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """Tile b (numpy order) to `shape`, ggml's can_repeat broadcast: each dim divides."""
    reps = tuple(n // m for n, m in zip(shape, b.shape))
    return b if all(r == 1 for r in reps) else np.tile(b, reps)
