"""Copy and indexing kernels: cont, cpy, dup, repeat, get_rows, set_rows, concat.

Element order of a copy between different shapes is the logical (row-major in ne order)
order of both tensors, as ggml_cpy/ggml_cont: element i of a's flattening lands at element
i of the destination's flattening, whatever the strides.
"""

from __future__ import annotations

import numpy as np

from graphir.layout import f32_to_bf16, np_shape
from graphir.tensor import Tensor
from graphir.types import TYPE_INFO, DType

from .common import as_f32, broadcast_src, store


def _relayout(src: np.ndarray, type: DType, shape: tuple[int, ...]) -> np.ndarray:
    """The elements of `src` (a view of a `type` tensor) in logical order, reshaped to
    numpy `shape`, same type. Quantized rows are moved as whole blocks (bit-exact)."""
    info = TYPE_INFO[type]
    if info.is_quantized:
        # each row's blocks are contiguous bytes; the logical block sequence is the C-order
        # flattening of (rows, blocks) -- requantizing would not be exact
        blocks = np.reshape(src, (-1, info.block_bytes))
        return blocks.reshape(shape)
    return np.reshape(src, shape)


def cont(node: Tensor, dst: np.ndarray, a: np.ndarray) -> None:
    """Contiguous copy of a, optionally reshaped (same element count and type)."""
    dst[...] = _relayout(a, node.src[0].type, dst.shape)


def dup(node: Tensor, dst: np.ndarray, a: np.ndarray) -> None:
    """Contiguous copy of a (same type and shape)."""
    dst[...] = _relayout(a, node.src[0].type, dst.shape)


def cpy(node: Tensor, dst: np.ndarray, a: np.ndarray, b: np.ndarray) -> None:
    """Write a into dst (the view of b), converting to b's type in logical element order.

    Float to I32 truncates toward zero (a C cast); I32 to float rounds as a C cast does.
    Quantized destinations are quantized row by row (ggml's from_float).
    """
    ta, tb = node.src[0].type, node.type
    if ta == tb:
        dst[...] = _relayout(a, ta, dst.shape)
        return
    logical = np_shape(node.ne)
    if tb == DType.I32:
        with np.errstate(invalid="ignore"):  # NaN/inf to int is undefined in C too
            dst[...] = np.reshape(as_f32(a, ta), logical).astype(np.int32)
        return
    value = np.reshape(as_f32(a, ta), logical)
    store(dst, value, tb)


def repeat(node: Tensor, dst: np.ndarray, a: np.ndarray) -> None:
    """Tile a over dst's shape (each dim of dst a whole multiple of a's)."""
    # works on the raw view, so every type (quantized rows included) is copied exactly
    dst[...] = broadcast_src(a, dst.shape)


def _check_range(op: str, idx: np.ndarray, n: int) -> None:
    if idx.size and (idx.min() < 0 or idx.max() >= n):
        bad = idx[(idx < 0) | (idx >= n)].ravel()[0]
        raise IndexError(f"[{op}] row index {int(bad)} out of range 0..{n - 1}")


def get_rows(node: Tensor, dst: np.ndarray, a: np.ndarray, b: np.ndarray) -> None:
    """dst[i3, i2, i, :] = a[i3, i2, b[i, i2, i3], :] (numpy order), dequantized to F32.

    An I32 source stays I32 (exact). Only the gathered rows are converted.
    """
    idx = b[0].astype(np.intp)  # (ne3, ne2, n)
    _check_range("get_rows", idx, a.shape[2])
    i3 = np.arange(a.shape[0])[:, None, None]
    i2 = np.arange(a.shape[1])[None, :, None]
    rows = a[i3, i2, idx]  # (ne3, ne2, n, ne0 | row_bytes), a copy
    if node.src[0].type == DType.I32:
        dst[...] = rows
    else:
        store(dst, as_f32(rows, node.src[0].type), node.type)


def _as_type(value: np.ndarray, type: DType) -> np.ndarray:
    """float32 `value` converted to the numpy representation of plain `type`."""
    if type == DType.BF16:
        return f32_to_bf16(value)
    with np.errstate(invalid="ignore"):
        return value.astype(TYPE_INFO[type].np_dtype)


def set_rows(node: Tensor, dst: np.ndarray, a: np.ndarray, b: np.ndarray, c: np.ndarray) -> None:
    """a[i3, i2, c[i, i2 % c.ne1, i3 % c.ne2], :] = b[i3, i2, i, :] (numpy order), converted to a's type.

    dst is a's memory; rows not indexed are left untouched. When an index repeats within
    one (i2, i3) plane the last row of b wins, as in ggml's sequential loop.
    """
    ne3, ne2, n_b = b.shape[0], b.shape[1], b.shape[2]
    idx = np.tile(c[0], (ne3 // c.shape[1], ne2 // c.shape[2], 1)).astype(np.intp)  # (ne3, ne2, n_b)
    _check_range("set_rows", idx, dst.shape[2])
    value = _as_type(np.asarray(b, dtype=np.float32), node.type)  # (ne3, ne2, n_b, ne0)
    i3 = np.broadcast_to(np.arange(ne3)[:, None, None], idx.shape).ravel()
    i2 = np.broadcast_to(np.arange(ne2)[None, :, None], idx.shape).ravel()
    ii = np.broadcast_to(np.arange(n_b)[None, None, :], idx.shape).ravel()
    rows = idx.ravel()
    # numpy does not promise an order for repeated fancy-index writes: keep only the last
    # occurrence of each destination row
    key = (i3 * ne2 + i2) * dst.shape[2] + rows
    _, last_rev = np.unique(key[::-1], return_index=True)
    keep = key.size - 1 - last_rev
    dst[i3[keep], i2[keep], rows[keep]] = value[i3[keep], i2[keep], ii[keep]]


def concat(node: Tensor, dst: np.ndarray, a: np.ndarray, b: np.ndarray) -> None:
    """a and b joined along ne dim `dim` (numpy axis 3 - dim)."""
    dst[...] = np.concatenate((a, b), axis=3 - node.params["dim"])
