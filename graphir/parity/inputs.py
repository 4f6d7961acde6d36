"""Seeded input data for the parity cases: value generators, random quantized blocks,
inputs reached through layouts (permutations, views into larger tensors), and the masks
of elements an op must leave alone or does not define."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

import graphir as gr
from graphir.layout import f32_to_bf16, np_shape
from graphir.tensor import Tensor, pad_ne, storage_of
from graphir.types import TYPE_INFO, DType, row_size

I32 = DType.I32
Gen = Callable[[tuple[int, ...]], np.ndarray]  # numpy shape -> values

# The f16 scale fields of each block format: (byte offset in the block, magnitude). All
# other bytes are random, so every pattern of quants and sub-block scales occurs, while
# the scales keep values around [-2, 3].
_BLOCK_SCALES = {
    DType.Q8_0: ((0, 1 / 127),),
    DType.Q4_0: ((0, 1 / 8),),
    DType.Q4_K: ((0, 2 / (63 * 15)), (2, 1 / 63)),  # d, dmin
    DType.Q5_K: ((0, 2 / (63 * 31)), (2, 1 / 63)),  # d, dmin
    DType.Q6_K: ((208, 1 / (128 * 32)),),  # d follows ql[128], qh[64], scales[16]
}


def random_blocks(type: DType, nrows: int, ne0: int, rng: np.random.Generator) -> np.ndarray:
    """Random valid rows of a block-quantized type: uint8 (nrows, row_bytes)."""
    info = TYPE_INFO[type]
    nblk = nrows * (ne0 // info.block_elems)
    raw = rng.integers(0, 256, size=(nblk, info.block_bytes), dtype=np.uint8)
    for off, mag in _BLOCK_SCALES[type]:
        d = (rng.uniform(0.5, 1.5, nblk) * mag).astype(np.float16)
        raw[:, off : off + 2] = d.view(np.uint8).reshape(nblk, 2)
    return raw.reshape(nrows, -1)


def encode(values: np.ndarray, type: DType) -> np.ndarray:
    """Float values as host data of a plain type."""
    if type == DType.F16:
        return values.astype(np.float16)
    if type == DType.BF16:
        return f32_to_bf16(values.astype(np.float32))
    if type == I32:
        return np.rint(values).astype(np.int32)
    return values.astype(np.float32)


def element_index(t: Tensor) -> np.ndarray:
    """For each element of t (numpy order), its flat index in t's storage owner (plain types,
    contiguous owner)."""
    owner = storage_of(t)
    es = TYPE_INFO[t.type].block_bytes
    idx = np.arange(owner.nelements, dtype=np.int64)
    start = t.view_offs // es if t.view_src is not None else 0
    strides = tuple(t.nb[i] // es * idx.itemsize for i in (3, 2, 1, 0))
    return np.lib.stride_tricks.as_strided(idx[start:], np_shape(t.ne), strides, writeable=False)


@dataclass
class Built:
    """One built case: what to compare and what the harness must check.

    outputs: tensors compared with the reference. inputs: INPUT leafs -> host data.
    keep: (input, mask) pairs: elements a write-into op must leave as they were set.
    defined: output index -> mask of the elements the op defines (others are ignored).
    """

    outputs: list[Tensor]
    inputs: dict[Tensor, np.ndarray]
    keep: list[tuple[Tensor, np.ndarray]] = field(default_factory=list)
    defined: dict[int, np.ndarray] = field(default_factory=dict)


class Inputs:
    """The input leafs of one case and their seeded host data."""

    def __init__(self, seed: int) -> None:
        self.rng = np.random.default_rng(seed)
        self.data: dict[Tensor, np.ndarray] = {}

    # ---- value generators ----
    def uniform(self, lo: float = -1.0, hi: float = 1.0) -> Gen:
        return lambda shape: self.rng.uniform(lo, hi, shape).astype(np.float32)

    def away(self, lo: float, hi: float) -> Gen:
        """|x| in [lo, hi] with a random sign (divisors)."""
        return lambda shape: (self.rng.uniform(lo, hi, shape) * self.rng.choice([-1.0, 1.0], shape)).astype(np.float32)

    def ints(self, lo: int, hi: int) -> Gen:
        return lambda shape: self.rng.integers(lo, hi + 1, shape)

    def distinct(self) -> Gen:
        """All values different (spaced 2/n apart in [-1, 1)), so orderings have no ties."""

        def gen(shape: tuple[int, ...]) -> np.ndarray:
            n = int(np.prod(shape))
            return ((self.rng.permutation(n) - n / 2) * (2.0 / n)).astype(np.float32).reshape(shape)

        return gen

    def unit_rows(self) -> Gen:
        """Rows of length 1 (L2-normalised q/k, as the delta net sees them)."""

        def gen(shape: tuple[int, ...]) -> np.ndarray:
            x = self.rng.uniform(-1, 1, shape)
            return (x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-3)).astype(np.float32)

        return gen

    def mask(self) -> Gen:
        """An attention mask: values in [-4, 0], about a third -inf, never a whole row."""

        def gen(shape: tuple[int, ...]) -> np.ndarray:
            m = self.rng.uniform(-4, 0, shape).astype(np.float32)
            hide = self.rng.random(shape) < 0.35
            open_ = self.rng.integers(0, shape[-1], shape[:-1] + (1,))
            np.put_along_axis(hide, open_, False, axis=-1)
            m[hide] = -np.inf
            return m

        return gen

    # ---- tensors ----
    def leaf(self, type: DType, ne: Sequence[int], gen: Gen | None = None, name: str = "",
             weight: bool = False) -> Tensor:  # fmt: skip
        """A new INPUT leaf (or a weight with host data) of `type` holding seeded values."""
        ne = pad_ne(ne)
        if TYPE_INFO[type].is_quantized:
            data = random_blocks(type, ne[1] * ne[2] * ne[3], ne[0], self.rng)
        else:
            gen = gen or (self.ints(-1000, 1000) if type == I32 else self.uniform())
            data = encode(np.asarray(gen(np_shape(ne))).reshape(np_shape(ne)), type)
        if weight:
            return gr.new_weight(type, ne, data, name)
        t = gr.new_input(type, ne, name)
        self.data[t] = data
        return t

    def tensor(self, type: DType, ne: Sequence[int], layout: dict | None = None, gen: Gen | None = None,
               name: str = "") -> Tensor:  # fmt: skip
        """An input of logical shape `ne` reached through `layout` (see strategies.layouts):
        contiguous, a permutation of a leaf, or a view into a larger leaf."""
        kind = (layout or {}).get("kind", "cont")
        ne = pad_ne(ne)
        if kind == "perm":
            axes = layout["axes"]
            src = self.leaf(type, [ne[a] for a in axes], gen, name + ".src")
            return gr.permute(src, *axes).set_name(name)
        if kind == "view":
            blk = TYPE_INFO[type].block_elems  # block types pad and offset dim 0 in blocks
            pad = [p * (blk if i == 0 else 1) for i, p in enumerate(layout["pad"])]
            src = self.leaf(type, [n + p for n, p in zip(ne, pad)], gen, name + ".src")
            off = layout["off"]
            offset = row_size(type, off[0] * blk) + sum(off[i] * src.nb[i] for i in (1, 2, 3))
            return gr.view_4d(src, *ne, src.nb[1], src.nb[2], src.nb[3], offset).set_name(name)
        return self.leaf(type, ne, gen, name)

    def done(self, *outputs: Tensor, keep: Sequence[tuple[Tensor, np.ndarray]] = (),
             defined: dict[int, np.ndarray] | None = None) -> Built:  # fmt: skip
        for i, t in enumerate(outputs):
            t.name = t.name or ("out" if len(outputs) == 1 else f"out{i}")
        return Built(list(outputs), self.data, list(keep), defined or {})


def untouched_outside(t: Tensor) -> tuple[Tensor, np.ndarray]:
    """(storage owner of t, mask of its elements that t does not cover)."""
    owner = storage_of(t)
    mask = np.ones(owner.nelements, dtype=bool)
    mask[element_index(t).ravel()] = False
    return owner, mask.reshape(np_shape(owner.ne))
