"""The native cpu backend: host memory as the reference's (numpy buffers, zero-copy weights;
backends/host.py); a split is lowered to an array of C op records and run by
ONE call into the compiled module, which walks the records with a persistent thread pool.

The GIL is released during the call (cffi API mode). Threads: `n_threads` (default: the CPUs
this process may use); a split whose work is small runs on one thread, where waking the pool
would cost more than it saves; the others run with `n_threads` or with one thread, whichever
measured faster lately (`ThreadChoice`: a barrier per op makes a pool of threads that share their
cores with another busy process 10-20x slower, one thread only loses the second core).
"""

from __future__ import annotations

import os
import time
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager

from graphir.tensor import Tensor, is_empty_op, storage_of

from ..base import Availability, Call, Place, default_threads
from ..host import HostMemoryBackend
from . import native, repack
from .fuse import find_state_io

# NOTE: a split whose ops touch fewer bytes than this on average runs on one thread: waking the
# pool and a barrier per op cost more than the work saves (the tiny model's decode averages
# ~40 KB per op; a 0.8B model's ~1 MB). On a loaded machine a barrier can cost a scheduler
# time slice, so the bar is set high.
SMALL_OP_BYTES = 256 << 10


class ThreadChoice:
    """For one program: the thread count of its next run, `n` (the backend's) or 1, whichever took
    less time in its recent runs (median of the last WINDOW of each). The first WARMUP runs use n
    (a program run only a few times, as a prompt's ubatches, is never slowed by a measurement; the
    first run is not counted: it touches its buffers for the first time); then the kind not
    chosen is re-measured for PROBE_LEN runs every `interval` runs (its older samples dropped: they
    are stale), the interval doubling from PROBE_MIN to PROBE_MAX while the choice holds and back
    to PROBE_MIN when a probe changes it. The kernels give the same bits with any thread count,
    so the choice changes time only."""

    WARMUP, WINDOW, PROBE_LEN, PROBE_MIN, PROBE_MAX = 8, 5, 2, 32, 512

    def __init__(self) -> None:
        self.n = 0  # the thread count the measurements are for (0: none yet)

    def _reset(self, n: int) -> None:
        self.n, self.best, self.runs, self.interval = n, n, 0, self.PROBE_MIN
        self.samples: dict[int, deque[float]] = {n: deque(maxlen=self.WINDOW), 1: deque(maxlen=self.WINDOW)}
        self.probe: list[int] = []
        self.next_probe = 0
        self._last = n

    def pick(self, n: int) -> int:
        if n != self.n:
            self._reset(n)
        self.runs += 1
        if self.runs <= self.WARMUP:
            return n
        if not self.probe and self.runs >= self.next_probe:
            if self.next_probe:  # a probe ran since: it confirmed the choice (wait longer) or changed it
                self.interval = min(self.interval * 2, self.PROBE_MAX) if self.best == self._last else self.PROBE_MIN
            self._last, other = self.best, 1 if self.best == n else n
            self.samples[other].clear()
            self.probe = [other] * self.PROBE_LEN
            self.next_probe = self.runs + self.PROBE_LEN + self.interval
        return self.probe.pop() if self.probe else self.best

    def record(self, k: int, seconds: float) -> None:
        if self.runs <= 1:
            return
        self.samples[k].append(seconds)
        med = {t: sorted(xs)[len(xs) // 2] for t, xs in self.samples.items() if xs}
        if len(med) == 2:
            self.best = min(med, key=lambda t: (med[t], t != self.n))


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
        # GRAPHIR_FIXED_THREADS=1: always n_threads (no ThreadChoice), e.g. to measure a thread count
        self.adaptive_threads = os.environ.get("GRAPHIR_FIXED_THREADS", "") in ("", "0")
        # Q8_0 weights of matrix products repacked once (backends/cpu/repack.py); read at lower time
        self.repack = repack.enabled_by_env()
        self.repacked = repack.Repacked(native.lib, native.ffi) if native.lib is not None else None

    def describe(self) -> str:
        return f"cpu (native, {self.n_threads} threads, isa {native.isa_name()})"

    def set_tensor(self, place: Place, t: Tensor, data) -> None:
        super().set_tensor(place, t, data)
        if self.repacked is not None:  # a weight written after its repacked copy was made
            self.repacked.refresh(storage_of(t))

    # ---- execution ----
    def lower(self, node: Tensor, dst: Place, srcs: list[Place | None]) -> Call:
        places = {id(node): dst, **{id(s): p for s, p in zip(node.src, srcs) if s is not None}}
        return self.lower_split([node], lambda t: places[id(t)])

    def lower_split(self, nodes: list[Tensor], place, live_out=None) -> Call:
        """One C call over the split's op records (views and leafs compute nothing; the
        fusions of backends/cpu/fuse.py drop some)."""
        state_io = find_state_io(nodes, live_out)
        dropped = {t for io in state_io for t in io.dropped}
        work = [n for n in nodes if not is_empty_op(n) and n not in dropped]
        program = native.Program(work, place, max_threads=default_threads(), state_io=state_io,
                                 repacked=self.repacked if self.repack else None)  # fmt: skip
        small = program.bytes_touched < SMALL_OP_BYTES * max(program.n, 1)
        run, backend, choice = program.run, self, ThreadChoice()

        def call() -> None:
            n = backend.n_threads
            if small or n <= 1:
                run(1)
            elif not backend.adaptive_threads:
                run(n)
            else:
                k = choice.pick(n)
                t0 = time.perf_counter()
                run(k)
                choice.record(k, time.perf_counter() - t0)

        call.program = program  # for inspection (graphir profile) and to keep it alive
        call.threads = choice
        # graphir profile: one run with each record timed, at the thread count of a fixed run
        call.timed = lambda: program.run_timed(1 if small or backend.n_threads <= 1 else backend.n_threads)
        return call


@contextmanager
def fixed_threads() -> Iterator[None]:
    """Every run of the cpu backend with its n_threads, no ThreadChoice, inside the block: the
    measurement tools (bench, profile, bench-ops, bench_verify) time a given thread count."""
    from graphir.backends import availability, get_backend

    if not availability("cpu").ok:
        yield
        return
    be = get_backend("cpu")
    saved, be.adaptive_threads = be.adaptive_threads, False
    try:
        yield
    finally:
        be.adaptive_threads = saved
