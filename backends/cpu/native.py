"""The compiled module (`_native`, built by backends/cpu/build.py) and op-record programs.

A `Program` holds a cffi array of `gr_op` records for a run of nodes: pointers, ne/nb and
parameters bound once at lower time, plus the scratch memory the kernels ask for. Running it
is one call to `gr_run`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from graphir.backends.base import Place
from graphir.ops import Op
from graphir.tensor import Tensor

from . import repack
from .fuse import StateIO
from .ops import Kernel, build_table

try:
    from ._native import ffi, lib
except ImportError as e:  # the extension was not built (no C compiler at install time)
    ffi = lib = None
    REASON = (f"the native extension is not built ({e}); install a C compiler and reinstall "
              "(pip install -e .)")  # fmt: skip
    KERNELS: dict = {}
else:
    REASON = ""
    lib.gr_init()
    KERNELS: dict = build_table(lib, ffi)


def isa_name() -> str:
    if lib is None:
        return "none"
    isa = lib.gr_isa()
    return "avx512-vnni" if isa & 4 else "avx512" if isa & 2 else "avx2" if isa & 1 else "portable"


def _address(place: Place, bases: dict[int, int]) -> int:
    """The host address of a place; `bases` memoizes buffer addresses (numpy's .ctypes is slow)."""
    handle = place.buffer.handle
    base = bases.get(id(handle))
    if base is None:
        base = bases[id(handle)] = handle.ctypes.data
    return base + place.offset


def _bind(rec_t, t: Tensor, place: Place, bases: dict[int, int]) -> None:
    rec_t.data = ffi.cast("char *", _address(place, bases))
    rec_t.type = int(t.type)
    rec_t.ne = t.ne
    rec_t.nb = t.nb


def _bind_repacked(rec_t, t: Tensor, address: int) -> None:
    """Bind weight t as its repacked copy at `address` (backends/cpu/repack.py)."""
    rec_t.data = ffi.cast("char *", address)
    rec_t.type = getattr(lib, repack.LAYOUTS[t.type][2])
    rec_t.ne = t.ne
    rec_t.nb = repack.strides(t)


class Program:
    """Op records for `nodes` (each computing something), bound to their places; `state_io`:
    gated_delta_net nodes of `nodes` that read and write their state cache themselves (their
    dropped get_rows/set_rows must not be in `nodes`); `repacked`: where the matrix products
    read their Q8_0 / Q4_0 weights repacked (None: in their GGUF layout)."""

    def __init__(self, nodes: list[Tensor], place: Callable[[Tensor], Place], max_threads: int,
                 state_io: Sequence[StateIO] = (), repacked: repack.Repacked | None = None) -> None:  # fmt: skip
        self.n = len(nodes)
        self.nodes = tuple(nodes)  # record i computes nodes[i] (for profiles)
        self.recs = ffi.new("gr_op[]", max(self.n, 1))
        self.keep: list = []  # host constants the records point at
        self.bytes_touched = 0
        bases: dict[int, int] = {}  # the buffers live as long as the plan (it holds them)
        for rec, node in zip(self.recs, nodes):
            k: Kernel = KERNELS[node.op]
            rec.op = k.code
            rec.n_src = len(node.src)
            _bind(rec.dst, node, place(node), bases)
            for i, s in enumerate(node.src):
                if s is None:
                    continue
                if i == 0 and repacked is not None and node.op in (Op.MUL_MAT, Op.MUL_MAT_ID) and repack.eligible(s):
                    _bind_repacked(rec.src[0], s, repacked.address(s))
                else:
                    _bind(rec.src[i], s, place(s), bases)
                self.bytes_touched += s.nbytes
            self.bytes_touched += node.nbytes
            if k.pack is not None:
                k.pack(node, rec, self.keep)
        index = {n: i for i, n in enumerate(nodes)}
        self.state_io = tuple(state_io)
        for io in state_io:  # (the dropped records are not in nodes: their bytes were never counted)
            self._bind_state_io(self.recs[index[io.node]], io, place, bases)
        wsize = max((lib.gr_op_wsize(self.recs + i, max_threads) for i in range(self.n)), default=0)
        self.max_threads = max_threads
        self.scratch = np.zeros(max(int(wsize), 1) + 64, dtype=np.uint8)
        base = (self.scratch.ctypes.data + 63) // 64 * 64  # cache-line aligned
        for rec in self.recs[0 : self.n]:
            rec.wdata = ffi.cast("char *", base)
            rec.wsize = wsize

    def _bind_state_io(self, rec, io: StateIO, place: Callable[[Tensor], Place], bases: dict[int, int]) -> None:
        """gated_delta_net record `rec` reads/writes io.cache itself (shaders/cpu/ssm.c)."""
        sio = ffi.new("gr_state_io *")
        for field, t in (("cache", io.cache), ("src_ids", io.src_ids), ("dst_ids", io.dst_ids)):
            _bind(getattr(sio, field), t, place(t), bases)
        self.keep.append(sio)
        rec.aux = sio
        rec.ip[1] = 1

    def run_timed(self, n_threads: int) -> np.ndarray:
        """Run once; the seconds each record took (its slowest thread and the barrier after it)."""
        times = np.zeros(max(self.n, 1), np.float64)
        err = lib.gr_run_timed(self.recs, self.n, min(n_threads, self.max_threads),
                               ffi.cast("double *", times.ctypes.data))  # fmt: skip
        if err:
            raise RuntimeError(f"[cpu] gr_run failed (errno {err})")
        return times[: self.n]

    def run(self, n_threads: int) -> None:
        err = lib.gr_run(self.recs, self.n, min(n_threads, self.max_threads))
        if err:
            raise RuntimeError(f"[cpu] gr_run failed (errno {err}): an op is not compiled in or threads "
                               "could not be created")  # fmt: skip
