"""CUDA buffers are device allocations of one context with one stream. A split is lowered to its
kernels' prepared launches (parameters packed once) and captured into one CUDA graph, so running
it is one graph launch; where capture is unavailable the launches are replayed in order on the
stream."""

from __future__ import annotations

import numpy as np

from graphir import debug
from graphir.tensor import Tensor, is_empty_op

from ..base import Availability, Backend, Buffer, Call, Place
from . import compiler, runtime
from .kernels import KERNELS
from .runtime import Launch


class CUDABackend(Backend):
    name = "cuda"
    KERNELS = KERNELS
    alignment = 256  # cudaMalloc's alignment; float4 loads of row starts

    @classmethod
    def availability(cls) -> Availability:
        dev = runtime.select_device()
        if isinstance(dev, str):
            return Availability(False, f"{dev}; {cls.support_note()}")
        return Availability(True)

    @classmethod
    def support_note(cls) -> str:
        """How far the kernels got here: compiled (cached cubins for every arch) or not yet."""
        if compiler.all_cached():
            return "kernels compiled, not run here"
        return "kernels not compiled yet (python -m graphir.tools.cuda_report compiles them)"

    def __init__(self) -> None:
        dev = runtime.select_device()
        if isinstance(dev, str):
            raise RuntimeError(f"[cuda] unavailable: {dev}")
        self.device, self.arch = dev
        self.context = self.device.retain_primary_context()
        self.context.push()
        self.stream = runtime.cuda.Stream()
        self.modules = runtime.Modules(self.arch)
        self.pool = runtime.Pool()
        self._constants: dict[bytes, Place] = {}
        self.graphs = runtime.graph_api(self.stream)  # None: launch lists

    def describe(self) -> str:
        return f"cuda ({self.device.name()}, {self.arch})"

    # ---- memory ----
    def alloc_buffer(self, nbytes: int) -> Buffer:
        """One device allocation (a plan's compute buffer, sliced by offsets), from the pool of
        allocations that dropped buffers handed back; it goes back there when the buffer is dropped."""
        return Buffer(self, nbytes, self.pool.take(max(nbytes, 256)))

    def address(self, place: Place) -> int:
        return int(place.buffer.handle) + place.offset

    def write_bytes(self, buffer: Buffer, offset: int, data: np.ndarray) -> None:
        raw = np.ascontiguousarray(data).reshape(-1).view(np.uint8)
        if raw.size:
            self.stream.synchronize()  # kernels queued before may still read these bytes
            runtime.cuda.memcpy_htod(int(buffer.handle) + offset, raw)

    def read_bytes(self, buffer: Buffer, offset: int, nbytes: int) -> np.ndarray:
        out = np.empty(nbytes, dtype=np.uint8)
        if nbytes:
            self.stream.synchronize()
            runtime.cuda.memcpy_dtoh(out, int(buffer.handle) + offset)
        return out

    def copy_from(self, dst: Place, t: Tensor, src_backend: Backend, src: Place) -> Call:
        """Between buffers of this backend the copy stays on the device, queued on the stream
        (so it is ordered after the kernels that wrote the source); else through the host."""
        if src_backend is not self or not t.is_contiguous():
            return super().copy_from(dst, t, src_backend, src)
        n = t.nbytes
        if n == 0:
            return lambda: None
        s, d, stream, cuda = self.address(src), self.address(dst), self.stream, runtime.cuda

        def run() -> None:
            cuda.memcpy_dtod_async(d, s, n, stream)

        return run

    def constant(self, values: np.ndarray) -> Place:
        """Device copy of small host-computed constants (ALiBi slopes), shared by equal values."""
        raw = np.ascontiguousarray(values, dtype=np.float32).view(np.uint8).reshape(-1)
        key = raw.tobytes()
        place = self._constants.get(key)
        if place is None:
            buf = self.alloc_buffer(raw.size)
            self.write_bytes(buf, 0, raw)
            place = self._constants[key] = Place(buf, 0)
        return place

    # ---- execution ----
    def launches(self, node: Tensor, dst: Place, srcs: list[Place | None]) -> list[Launch]:
        """The node's prepared launches, their functions resolved (modules load at first use)."""
        out = self.KERNELS[node.op](self, node, dst, srcs)
        for launch in out:
            launch.function = self.modules.function(launch.kernel)
        return out

    def lower(self, node: Tensor, dst: Place, srcs: list[Place | None]) -> Call:
        return self.replay(self.launches(node, dst, srcs))

    def lower_split(self, nodes: list[Tensor], place, live_out=None) -> Call:
        launches = [la for n in nodes if not is_empty_op(n)
                    for la in self.launches(n, place(n), [None if s is None else place(s) for s in n.src])]  # fmt: skip
        return self.replay(launches)

    def replay(self, launches: list[Launch]) -> Call:
        """ONE call running the launches in order on the stream: a CUDA graph captured now
        (kernels run in capture order), else the prepared launch list."""
        stream = self.stream
        if not launches:
            return lambda: None
        if self.graphs is not None and len(launches) > 1:
            exe = self._capture(launches)
            if exe is not None:

                def run_graph() -> None:
                    exe.launch(stream)

                run_graph.launches = launches  # keeps constants alive; read by tests
                return run_graph

        def run() -> None:
            for la in launches:
                la.enqueue(stream)

        run.launches = launches
        return run

    def _capture(self, launches: list[Launch]):
        """The launches captured from the stream into an instantiated graph (nothing runs now), or
        None when the driver refuses; then this backend replays launch lists from here on."""
        try:
            self.stream.synchronize()
            return self.graphs.capture(self.stream, launches)
        except Exception as e:  # noqa: BLE001 - the launch list works everywhere
            debug.log(debug.SCHEDULE, f"[cuda] graph capture unavailable ({e}); replaying launch lists")
            self.graphs = None
            return None

    def synchronize(self) -> None:
        self.stream.synchronize()
