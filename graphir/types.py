"""Tensor element types, numbered as in GGUF/ggml so a GGUF type id maps directly.

Block-quantized types store `block_elems` elements in `block_bytes` bytes; a row of
`ne[0]` elements is `ne[0] // block_elems` blocks (ne[0] must be a multiple).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

import numpy as np


class DType(enum.IntEnum):
    F32 = 0
    F16 = 1
    Q4_0 = 2
    Q8_0 = 8
    Q4_K = 12
    Q5_K = 13
    Q6_K = 14
    I32 = 26
    BF16 = 30


@dataclass(frozen=True)
class TypeInfo:
    name: str
    block_elems: int
    block_bytes: int
    np_dtype: np.dtype | None  # element dtype for non-block types; None for quantized
    is_quantized: bool


QK_K = 256  # super-block size of the K-quants

TYPE_INFO: dict[DType, TypeInfo] = {
    DType.F32: TypeInfo("f32", 1, 4, np.dtype(np.float32), False),
    DType.F16: TypeInfo("f16", 1, 2, np.dtype(np.float16), False),
    # NOTE: numpy has no bfloat16; BF16 is held as raw uint16 and converted by kernels.
    DType.BF16: TypeInfo("bf16", 1, 2, np.dtype(np.uint16), False),
    DType.I32: TypeInfo("i32", 1, 4, np.dtype(np.int32), False),
    DType.Q8_0: TypeInfo("q8_0", 32, 34, None, True),  # f16 d, 32 x i8
    DType.Q4_0: TypeInfo("q4_0", 32, 18, None, True),  # f16 d, 16 bytes of nibbles
    DType.Q4_K: TypeInfo("q4_K", QK_K, 144, None, True),  # f16 d, dmin, 12 B scales, 128 B qs
    DType.Q5_K: TypeInfo("q5_K", QK_K, 176, None, True),  # + 32 B high bits
    DType.Q6_K: TypeInfo("q6_K", QK_K, 210, None, True),  # 128 B ql, 64 B qh, 16 scales, f16 d
}

FLOAT_TYPES = (DType.F32, DType.F16, DType.BF16)


def type_info(t: DType) -> TypeInfo:
    return TYPE_INFO[t]


def row_size(t: DType, n: int) -> int:
    """Bytes taken by `n` consecutive elements of type `t` (n must be whole blocks)."""
    info = TYPE_INFO[t]
    if n % info.block_elems:
        raise ValueError(f"[{info.name}] row of {n} elements is not a multiple of {info.block_elems}")
    return n // info.block_elems * info.block_bytes


def parse_type(name: str | int | DType) -> DType:
    """DType from a DType, a GGUF type id or a name such as 'q8_0' (case-insensitive)."""
    if isinstance(name, DType):
        return name
    if isinstance(name, int):
        try:
            return DType(name)
        except ValueError:
            raise ValueError(f"unsupported tensor type id {name}") from None
    for t, info in TYPE_INFO.items():
        if info.name.lower() == str(name).lower():
            return t
    raise ValueError(f"unknown tensor type {name!r}; known: {[i.name for i in TYPE_INFO.values()]}")
