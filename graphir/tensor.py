"""Tensors with ggml conventions: ne[0..3] elements per dimension (ne[0] innermost),
nb[0..3] strides in bytes (nb[0] is the block size for quantized types), views that
alias `view_src` at `view_offs`, flags and names."""

from __future__ import annotations

import enum
from typing import Any

import numpy as np

from .ops import VIEW_OPS, WRITE_INTO, Op
from .types import TYPE_INFO, DType, row_size

MAX_DIMS = 4


class Flag(enum.IntFlag):
    NONE = 0
    INPUT = 1  # set by the caller before each run
    OUTPUT = 2  # read by the caller after a run; never freed or overwritten
    PARAM = 4  # a weight: lives in a weight buffer, not in the compute buffer


_bits = int.__and__
_INPUT, _OUTPUT, _PARAM = int(Flag.INPUT), int(Flag.OUTPUT), int(Flag.PARAM)


def contiguous_strides(type: DType, ne: tuple[int, ...]) -> tuple[int, int, int, int]:
    info = TYPE_INFO[type]
    nb0 = info.block_bytes
    nb1 = row_size(type, ne[0])
    nb2 = nb1 * ne[1]
    nb3 = nb2 * ne[2]
    return (nb0, nb1, nb2, nb3)


def pad_ne(ne: tuple[int, ...] | list[int]) -> tuple[int, int, int, int]:
    ne = tuple(int(n) for n in ne)
    if not 1 <= len(ne) <= MAX_DIMS:
        raise ValueError(f"tensors have 1..4 dims, got ne={list(ne)}")
    if any(n < 0 for n in ne):
        raise ValueError(f"negative dimension in ne={list(ne)}")
    return ne + (1,) * (MAX_DIMS - len(ne))  # type: ignore[return-value]


class Tensor:
    """A node of the graph. Builders create these; nothing here computes.

    Attributes:
        type: element type.
        ne: elements per dimension, innermost first.
        nb: byte strides per dimension.
        op, src, params: the op that produces it, its sources and parameters.
        view_src, view_offs: for views (and write-into ops), the tensor whose memory is
            aliased and the byte offset into it. `view_src` is always a storage owner.
        flags: INPUT / OUTPUT / PARAM.
        data: host bytes of a weight or constant (a numpy array, may be memory-mapped).
    """

    __slots__ = (
        "type", "ne", "nb", "op", "src", "params", "name", "flags",
        "view_src", "view_offs", "data", "backend", "_nbytes", "__weakref__",
    )  # fmt: skip

    def __init__(
        self,
        type: DType,
        ne: tuple[int, ...] | list[int],
        op: Op = Op.NONE,
        src: tuple[Tensor | None, ...] = (),
        params: dict[str, Any] | None = None,
        nb: tuple[int, ...] | None = None,
        view_src: Tensor | None = None,
        view_offs: int = 0,
        name: str = "",
    ) -> None:
        self.type = DType(type)
        self.ne = pad_ne(ne)
        self.nb = tuple(nb) if nb is not None else contiguous_strides(self.type, self.ne)
        self.op = op
        self.src = tuple(src)
        self.params = params or {}
        self.name = name
        self.flags = Flag.NONE
        # views of views point at the storage owner directly, as in ggml
        if view_src is not None and view_src.view_src is not None:
            view_offs += view_src.view_offs
            view_src = view_src.view_src
        self.view_src = view_src
        self.view_offs = view_offs
        self.data: np.ndarray | None = None
        self.backend: str | None = None  # where a weight's buffer lives, if pinned
        self._nbytes: int | None = None  # nbytes, computed once (type, ne and nb never change)

    # ---- naming and flags (chainable, like ggml_set_name / ggml_set_input) ----
    def set_name(self, name: str) -> Tensor:
        self.name = name
        return self

    def set_input(self) -> Tensor:
        self.flags |= Flag.INPUT
        return self

    def set_output(self) -> Tensor:
        self.flags |= Flag.OUTPUT
        return self

    # NOTE: int's own `&`: IntFlag's builds an enum member per call, and the compiler asks these of
    # every tensor several times (~10% of compiling a plan)
    @property
    def is_input(self) -> bool:
        return _bits(self.flags, _INPUT) != 0

    @property
    def is_output(self) -> bool:
        return _bits(self.flags, _OUTPUT) != 0

    @property
    def is_param(self) -> bool:
        return _bits(self.flags, _PARAM) != 0

    @property
    def is_view(self) -> bool:
        return self.view_src is not None

    @property
    def is_leaf(self) -> bool:
        return self.op is Op.NONE

    # ---- size and layout ----
    @property
    def nelements(self) -> int:
        return self.ne[0] * self.ne[1] * self.ne[2] * self.ne[3]

    @property
    def nrows(self) -> int:
        return self.ne[1] * self.ne[2] * self.ne[3]

    @property
    def nbytes(self) -> int:
        """Bytes spanned from the first element to one past the last (ggml_nbytes)."""
        if self._nbytes is None:
            self._nbytes = self._span()
        return self._nbytes

    def _span(self) -> int:
        if self.nelements == 0:
            return 0
        info = TYPE_INFO[self.type]
        if info.block_elems > 1:
            n = row_size(self.type, self.ne[0])
        else:  # nb[0] may differ from the element size (permuted views): count its stride too
            n = info.block_bytes + (self.ne[0] - 1) * self.nb[0]
        return n + sum((self.ne[i] - 1) * self.nb[i] for i in range(1, MAX_DIMS))

    def is_contiguous(self) -> bool:
        """Elements packed densely in ne order; dims of size 1 may have any stride (as ggml)."""
        dense = contiguous_strides(self.type, self.ne)
        return all(self.ne[i] == 1 or self.nb[i] == dense[i] for i in range(MAX_DIMS))

    def same_layout(self, other: Tensor) -> bool:
        return self.type == other.type and self.ne == other.ne and self.nb == other.nb

    @property
    def ndim(self) -> int:
        for i in range(MAX_DIMS - 1, 0, -1):
            if self.ne[i] != 1:
                return i + 1
        return 1

    def shape_str(self) -> str:
        return "[" + ", ".join(str(n) for n in self.ne[: max(self.ndim, 1)]) + "]"

    def __repr__(self) -> str:
        name = f" {self.name!r}" if self.name else ""
        return f"<Tensor{name} {self.op.value} {TYPE_INFO[self.type].name} ne={list(self.ne)}>"


def storage_of(t: Tensor) -> Tensor:
    """The tensor that owns the memory `t` lives in."""
    return t.view_src if t.view_src is not None else t


def is_empty_op(t: Tensor) -> bool:
    """True when running `t` does nothing: a leaf or a pure view."""
    return t.op is Op.NONE or t.op in VIEW_OPS


def write_target(t: Tensor) -> Tensor | None:
    """For ops that write into an existing tensor (cpy, set_rows), that tensor."""
    i = WRITE_INTO.get(t.op)
    return None if i is None else t.src[i]
