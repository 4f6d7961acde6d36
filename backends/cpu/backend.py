"""The native cpu backend: host memory as the reference's (numpy buffers, zero-copy weights;
backends/host.py); a split is lowered to an array of C op records and run by
ONE call into the compiled module, which walks the records with a persistent thread pool.

The GIL is released during the call (cffi API mode). Threads: `n_threads` (default: the CPUs
this process may use); a split whose work is small runs on one thread, where waking the pool
would cost more than it saves.
"""

from __future__ import annotations

from graphir.tensor import Tensor, is_empty_op

from ..base import Availability, Call, Place, default_threads
from ..host import HostMemoryBackend
from . import native

# NOTE: a split whose ops touch fewer bytes than this on average runs on one thread: waking the
# pool and a barrier per op cost more than the work saves (the tiny model's decode averages
# ~40 KB per op; a 0.8B model's ~1 MB). On a loaded machine a barrier can cost a scheduler
# time slice, so the bar is set high.
SMALL_OP_BYTES = 256 << 10


class CPUBackend(HostMemoryBackend):
    name = "cpu"
    KERNELS = native.KERNELS

    @classmethod
    def availability(cls) -> Availability:
        if native.lib is None:
            return Availability(False, native.REASON)
        return Availability(True)

    def __init__(self) -> None:
        self.n_threads = default_threads()

    def describe(self) -> str:
        return f"cpu (native, {self.n_threads} threads, isa {native.isa_name()})"

    # ---- execution ----
    def lower(self, node: Tensor, dst: Place, srcs: list[Place | None]) -> Call:
        places = {id(node): dst, **{id(s): p for s, p in zip(node.src, srcs) if s is not None}}
        return self.lower_split([node], lambda t: places[id(t)])

    def lower_split(self, nodes: list[Tensor], place) -> Call:
        """One C call over the split's op records (views and leafs compute nothing)."""
        work = [n for n in nodes if not is_empty_op(n)]
        program = native.Program(work, place, max_threads=default_threads())
        small = program.bytes_touched < SMALL_OP_BYTES * max(program.n, 1)
        run, backend = program.run, self

        def call() -> None:
            run(1 if small else backend.n_threads)

        call.program = program  # for inspection (graphir profile) and to keep it alive
        return call

