"""Q8_0 and Q4_0 weights repacked for the cpu matrix kernels, once per weight
(shaders/cpu/matmul.h, GR_Q8_0_R16 and GR_Q4_0_R16): rows in groups of 16 whose quants
interleave 4 bytes a row, so one `vpdpbusd` serves 16 rows and a block's 16 dot products need
one convert and one fma. The float work per token falls to a sixteenth of the GGUF layout's,
which keeps verify batches (2-8 tokens) bound by reading the weights rather than by the fma pipes.

A weight is repacked when a mul_mat / mul_mat_id reads it whole as its weights: a leaf flagged
PARAM (never written by a graph; memory state is not) whose rows are contiguous and whole
blocks. Every such op of every plan on the backend reads the same repacked copy, so a row's
result does not depend on the plan that computes it (batch invariance, MTP == plain). Other
ops reading the weight (get_rows of a tied embedding) still read the GGUF bytes; writing the
weight's bytes through the backend (Plan.set_input) copies them again. The copy
takes as many bytes as the weight (the last group of 16 rows padded); when the weight is a
read-only file mapping, its pages are released after the copy (they come back from the file if
something else reads them), so resident memory does not double.

GRAPHIR_CPU_REPACK=0 turns it off for both types (for side-by-side measurements); results then
follow the GGUF layout's canonical order, which differs in the last bits.
"""

from __future__ import annotations

import mmap
import os
import weakref

import numpy as np

from graphir.ops import Op
from graphir.tensor import Flag, Tensor
from graphir.types import DType

GROUP = 16  # rows per group (GR_R16)
# the types repacked: (GGUF block bytes, the repack function of the native module, the repacked type's name)
LAYOUTS = {DType.Q8_0: (34, "gr_repack_q8_0_r16", "GR_Q8_0_R16"), DType.Q4_0: (18, "gr_repack_q4_0_r16", "GR_Q4_0_R16")}
CHUNK_BYTES = 8 << 20  # the copy goes this many bytes of source rows at a time


def enabled_by_env() -> bool:
    return os.environ.get("GRAPHIR_CPU_REPACK", "1") not in ("0", "")


def eligible(t: Tensor) -> bool:
    """t can be repacked: a Q8_0 or Q4_0 weight leaf with contiguous rows of whole blocks."""
    if t.type not in LAYOUTS or t.op is not Op.NONE or t.data is None or not (t.flags & Flag.PARAM):
        return False
    bs = LAYOUTS[t.type][0]
    row = bs * (t.ne[0] // 32)
    return (t.ne[0] % 32 == 0 and t.nb[0] == bs and t.nb[1] == row and t.nb[2] == row * t.ne[1]
            and t.nb[3] == t.nb[2] * t.ne[2])  # fmt: skip


def strides(t: Tensor) -> tuple[int, int, int, int]:
    """nb of the repacked copy of t: rows keep their stride, matrices are whole groups."""
    bs = LAYOUTS[t.type][0]
    row = bs * (t.ne[0] // 32)
    mat = -(-t.ne[1] // GROUP) * GROUP * row
    return (bs, row, mat, mat * t.ne[2])


def _file_mapped_readonly(a: np.ndarray) -> bool:
    base = a
    while isinstance(base, np.ndarray):
        base = base.base
    return isinstance(base, mmap.mmap) and not a.flags.writeable


class Repacked:
    """The repacked copies of one backend's weights, made on first use, dropped with the weight."""

    def __init__(self, lib, ffi) -> None:
        self._lib, self._ffi = lib, ffi
        self._copies: dict[int, tuple[weakref.ref, np.ndarray, int]] = {}

    def address(self, t: Tensor) -> int:
        """The address of t's repacked copy (made now if it is not yet)."""
        hit = self._copies.get(id(t))
        if hit is not None and hit[0]() is t:
            return hit[2]
        nb = strides(t)
        buf = np.empty(nb[3] * t.ne[3] + 64, np.uint8)
        addr = (buf.ctypes.data + 63) // 64 * 64  # the kernels load whole 64-byte chunks aligned
        self._copy(t, addr, _file_mapped_readonly(t.data))
        self._copies[id(t)] = (weakref.ref(t), buf, addr)
        weakref.finalize(t, self._copies.pop, id(t), None)
        return addr

    def refresh(self, t: Tensor) -> None:
        """t's bytes were written (Plan.set_input on a weight): its copy, if it has one, again."""
        hit = self._copies.get(id(t))
        if hit is not None and hit[0]() is t:
            self._copy(t, hit[2], release=False)

    def _copy(self, t: Tensor, addr: int, release: bool) -> None:
        """Repack t into addr in chunks of whole groups; with `release`, the source's pages are
        released as each chunk is copied: a mapped weight and its copy are never both resident
        (a 0.8B model's 270 MB output matrix: +227 MiB peak otherwise)."""
        nb, src = strides(t), t.data.reshape(-1).view(np.uint8)
        ffi, repack_fn = self._ffi, getattr(self._lib, LAYOUTS[t.type][1])
        rows = max(GROUP, CHUNK_BYTES // max(t.nb[1], 1) // GROUP * GROUP)
        for i in range(t.ne[2] * t.ne[3]):
            for m0 in range(0, t.ne[1], rows):
                m1 = min(m0 + rows, t.ne[1])
                repack_fn(ffi.cast("const char *", src.ctypes.data + i * t.nb[2] + m0 * t.nb[1]), t.ne[0],
                          m1 - m0, 1, t.nb[1], t.nb[2], ffi.cast("char *", addr + i * nb[2] + m0 * nb[1]))  # fmt: skip
                if release:  # every whole page copied so far (the last one only once it is whole)
                    self._lib.gr_drop_pages(ffi.cast("const void *", src.ctypes.data), i * t.nb[2] + m1 * t.nb[1])
