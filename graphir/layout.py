"""Numpy views of tensors over raw byte buffers (ne/nb honoured, no copies).

Plain types give an array of shape (ne3, ne2, ne1, ne0) with the tensor's byte strides.
Block-quantized types give the raw rows: uint8 (ne3, ne2, ne1, row_bytes).
"""

from __future__ import annotations

import numpy as np

from .tensor import Tensor
from .types import TYPE_INFO, DType, row_size


def np_shape(ne: tuple[int, ...]) -> tuple[int, int, int, int]:
    return (ne[3], ne[2], ne[1], ne[0])


def np_view(raw: np.ndarray, offset: int, t: Tensor) -> np.ndarray:
    """A numpy view of tensor `t` stored at byte `offset` of the uint8 buffer `raw`."""
    info = TYPE_INFO[t.type]
    if info.np_dtype is not None:
        shape = np_shape(t.ne)
        strides = (t.nb[3], t.nb[2], t.nb[1], t.nb[0])
        dtype = info.np_dtype
    else:
        shape = (t.ne[3], t.ne[2], t.ne[1], row_size(t.type, t.ne[0]))
        strides = (t.nb[3], t.nb[2], t.nb[1], 1)
        dtype = np.dtype(np.uint8)
    if 0 in shape:
        return np.zeros(shape, dtype)
    return np.ndarray(shape, dtype, buffer=raw, offset=offset, strides=strides)


def host_array(data: np.ndarray, t: Tensor) -> np.ndarray:
    """`data` (numpy shape (ne3, ne2, ne1, ne0) or any shape with the same element count)
    as a contiguous array of t's numpy dtype and full 4-d shape, checked."""
    info = TYPE_INFO[t.type]
    if info.np_dtype is None:
        raw = np.ascontiguousarray(data).view(np.uint8).reshape(-1)
        want = row_size(t.type, t.ne[0]) * t.nrows
        if raw.size != want:
            raise ValueError(f"[{t.name or t.op.value}] quantized data must be {want} bytes, got {raw.size}")
        return raw.reshape(t.ne[3], t.ne[2], t.ne[1], -1)
    arr = np.asarray(data)
    if t.type == DType.BF16 and arr.dtype == np.float32:
        arr = f32_to_bf16(arr)
    if arr.size != t.nelements:
        raise ValueError(
            f"[{t.name or t.op.value}] expected {t.nelements} elements for ne={list(t.ne)}, got array of shape {arr.shape}"
        )
    return np.ascontiguousarray(arr, dtype=info.np_dtype).reshape(np_shape(t.ne))


def bf16_to_f32(a: np.ndarray) -> np.ndarray:
    return (a.astype(np.uint32) << 16).view(np.float32)


def f32_to_bf16(a: np.ndarray) -> np.ndarray:
    """Round to nearest even, NaN kept quiet (as ggml_compute_fp32_to_bf16)."""
    u = np.ascontiguousarray(a, dtype=np.float32).view(np.uint32)
    nan = (u & 0x7FFFFFFF) > 0x7F800000
    rounded = ((u + (0x7FFF + ((u >> 16) & 1))) >> 16).astype(np.uint16)
    return np.where(nan, ((u >> 16) | 64).astype(np.uint16), rounded)
