"""OpenCL buffers live on one context with one in-order queue; a prepared call is a kernel with
every argument (buffers, offsets, ne/nb) and its launch size set at lower time, so running it
only enqueues, and a split enqueues all its kernels from one loop.

Memory: where the device has fine-grained buffer SVM (PoCL's CPU device, integrated GPUs) every
buffer is SVM host memory: tensor I/O is a numpy copy between runs (no command, no round trip to
the driver's threads) and `host_view` hands `Plan.set_input` / `Plan.get` a cached view of it.
Elsewhere buffers are cl.Buffer objects, read and written with blocking copies.
GRAPHIR_OPENCL_SVM=0 forces cl.Buffer objects.
"""

from __future__ import annotations

import os

import numpy as np

from graphir.layout import host_array, np_view
from graphir.tensor import Tensor, is_empty_op
from graphir.types import DType

from ..base import Availability, Backend, Buffer, Call, Place
from . import runtime
from .kernels import KERNELS
from .runtime import cl

ENV_SVM = "GRAPHIR_OPENCL_SVM"
HOST_VIEW_TYPES = (DType.F32, DType.F16, DType.I32)  # stored as numpy holds them (no conversion)


class Launch:
    """A prepared kernel launch (arguments set): calling it enqueues the kernel over a 1-d range.
    `keep`: objects the launch must keep alive (set_arg holds no reference to buffers)."""

    __slots__ = ("backend", "kernel", "gs", "ls", "keep")

    def __init__(self, backend: OpenCLBackend, kernel, gs: tuple[int], ls: tuple[int] | None, keep: tuple) -> None:
        self.backend, self.kernel, self.gs, self.ls, self.keep = backend, kernel, gs, ls, keep

    def __call__(self) -> None:
        cl.enqueue_nd_range_kernel(self.backend.queue, self.kernel, self.gs, self.ls)
        self.backend.busy = True


def _noop() -> None:
    pass


class OpenCLBackend(Backend):
    name = "opencl"
    KERNELS = KERNELS

    @classmethod
    def availability(cls) -> Availability:
        dev = runtime.select_device()
        if isinstance(dev, str):
            return Availability(False, dev)
        return Availability(True)

    def __init__(self, svm: bool | None = None) -> None:
        """svm: None = where the device has fine-grained buffer SVM (unless GRAPHIR_OPENCL_SVM=0);
        False = cl.Buffer objects (as on a discrete GPU), for tests."""
        dev = runtime.select_device()
        if isinstance(dev, str):
            raise RuntimeError(f"[opencl] unavailable: {dev}")
        self.device = dev
        self.ctx = cl.Context([dev])
        self.queue = cl.CommandQueue(self.ctx)  # in order
        self.programs = runtime.Programs(self.ctx)
        # a CPU device (PoCL) runs mat-vec products one work-item per row: its work-group barriers cost more
        # than the row's sum (kernels.py _mat_vec)
        self.item_rows = bool(dev.type & cl.device_type.CPU)
        if svm is None:
            svm = runtime.fine_grain_svm(dev) and os.environ.get(ENV_SVM, "1").strip() != "0"
        self.svm = bool(svm)
        self.busy = False  # work may be in flight (enqueued since the last finish)

    def describe(self) -> str:
        memory = "SVM" if self.svm else "buffers"
        return f"opencl ({self.device.name.strip()}, {self.device.platform.name.strip()}, {memory})"

    # ---- memory ----
    def alloc_buffer(self, nbytes: int) -> Buffer:
        if self.svm:  # a numpy uint8 array over fine-grained SVM; kernels take it as cl.SVM(array)
            return Buffer(self, nbytes, cl.fsvm_empty(self.ctx, max(nbytes, 4), np.uint8))
        return Buffer(self, nbytes, cl.Buffer(self.ctx, cl.mem_flags.READ_WRITE, max(nbytes, 4)))

    def _idle(self) -> None:
        """Wait for queued work before the host touches SVM memory."""
        if self.busy:
            self.queue.finish()
            self.busy = False

    def write_bytes(self, buffer: Buffer, offset: int, data: np.ndarray) -> None:
        raw = np.ascontiguousarray(data).reshape(-1).view(np.uint8)
        if not raw.size:
            return
        if isinstance(buffer.handle, np.ndarray):
            self._idle()
            buffer.handle[offset : offset + raw.size] = raw
            return
        cl.enqueue_copy(self.queue, buffer.handle, raw, dst_offset=offset, is_blocking=True)

    def read_bytes(self, buffer: Buffer, offset: int, nbytes: int) -> np.ndarray:
        if isinstance(buffer.handle, np.ndarray):
            self._idle()
            return buffer.handle[offset : offset + nbytes].copy()
        out = np.empty(nbytes, dtype=np.uint8)
        if nbytes:
            cl.enqueue_copy(self.queue, out, buffer.handle, src_offset=offset, is_blocking=True)
        return out

    def set_tensor(self, place: Place, t: Tensor, data: np.ndarray) -> None:
        if not isinstance(place.buffer.handle, np.ndarray):
            return super().set_tensor(place, t, data)
        self._idle()
        np_view(place.buffer.handle, place.offset, t)[...] = host_array(data, t)

    def get_tensor(self, place: Place, t: Tensor) -> np.ndarray:
        if not isinstance(place.buffer.handle, np.ndarray):
            return super().get_tensor(place, t)
        self._idle()
        return np_view(place.buffer.handle, place.offset, t).copy()

    def host_view(self, place: Place, t: Tensor) -> np.ndarray | None:
        """SVM memory: a view of t (plain numeric types). NOTE: `Plan.set_input` writes through it
        without a synchronize: every `Plan.run` ends with one, so the queue is idle between runs."""
        if isinstance(place.buffer.handle, np.ndarray) and t.type in HOST_VIEW_TYPES:
            return np_view(place.buffer.handle, place.offset, t)
        return None

    def copy_from(self, dst: Place, t: Tensor, src_backend: Backend, src: Place) -> Call:
        """Between buffers of one OpenCL context the copy stays on the device (clEnqueueCopyBuffer,
        clEnqueueSVMMemcpy); from another backend or context it goes through the host."""
        same_ctx = isinstance(src_backend, OpenCLBackend) and src_backend.ctx == self.ctx
        s, d, n = src.offset, dst.offset, t.nbytes
        overlap = src.buffer is dst.buffer and s < d + n and d < s + n  # the device copies refuse it
        sh, dh = src.buffer.handle, dst.buffer.handle
        svm = isinstance(sh, np.ndarray), isinstance(dh, np.ndarray)
        if not same_ctx or not t.is_contiguous() or overlap or svm[0] != svm[1]:
            return super().copy_from(dst, t, src_backend, src)
        if n == 0:
            return _noop
        queue, other = self.queue, src_backend
        if svm[0]:
            sbuf, dbuf, kw = cl.SVM(sh[s : s + n]), cl.SVM(dh[d : d + n]), {}
        else:
            sbuf, dbuf, kw = sh, dh, {"byte_count": n, "src_offset": s, "dst_offset": d}

        def run() -> None:
            if other is not self:  # another queue: its writes first
                other.synchronize()
            cl.enqueue_copy(queue, dbuf, sbuf, **kw)
            self.busy = True

        run.keep = (sh, dh)
        return run

    # ---- execution ----
    def lower(self, node: Tensor, dst: Place, srcs: list[Place | None]) -> Call:
        return self.KERNELS[node.op](self, node, dst, srcs)

    def lower_split(self, nodes: list[Tensor], place, live_out=None) -> Call:
        """ONE call enqueueing every kernel of the split from a single loop (no finish: `Plan.run`
        synchronizes once at its end, and host access waits for the queue first)."""
        calls = [self.lower(n, place(n), [None if s is None else place(s) for s in n.src])
                 for n in nodes if not is_empty_op(n)]  # fmt: skip
        calls = [c for c in calls if c is not _noop]
        if all(isinstance(c, Launch) for c in calls):
            enqueue, queue = cl.enqueue_nd_range_kernel, self.queue
            items = [(c.kernel, c.gs, c.ls) for c in calls]
            keep = [c.keep for c in calls]

            def run() -> None:
                for kernel, gs, ls in items:
                    enqueue(queue, kernel, gs, ls)
                self.busy = True

            run.keep = keep
            return run

        def run_each() -> None:
            for call in calls:
                call()

        return run_each

    def launch(self, kernel, global_size: int, local_size: int | None = None, keep: tuple = ()) -> Call:
        """A prepared call enqueueing `kernel` (arguments already set) over a 1-d range.
        `keep`: objects the call must keep alive (set_arg holds no reference to buffers)."""
        if global_size == 0:
            return _noop
        if global_size >= 2**32:  # the kernels index elements with 32-bit arithmetic (common.h UNRAVEL)
            raise ValueError(f"[opencl] launch of {global_size} work-items exceeds 2^32")
        return Launch(self, kernel, (global_size,), None if local_size is None else (local_size,), keep)

    def synchronize(self) -> None:
        """Wait for the queue (every enqueue of this backend marks it busy; nothing to wait for otherwise)."""
        if self.busy:
            self.queue.finish()
            self.busy = False
