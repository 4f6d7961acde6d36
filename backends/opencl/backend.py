"""OpenCL buffers are cl.Buffer objects on one context with one in-order queue; a prepared
call is a kernel with every argument (buffers, offsets, ne/nb) and its launch size set at
lower time, so running it only enqueues."""

from __future__ import annotations

import numpy as np

from graphir.tensor import Tensor

from ..base import Availability, Backend, Buffer, Call, Place
from . import runtime
from .kernels import KERNELS
from .runtime import cl


class OpenCLBackend(Backend):
    name = "opencl"
    KERNELS = KERNELS

    @classmethod
    def availability(cls) -> Availability:
        dev = runtime.select_device()
        if isinstance(dev, str):
            return Availability(False, dev)
        return Availability(True)

    def __init__(self) -> None:
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

    def describe(self) -> str:
        return f"opencl ({self.device.name.strip()}, {self.device.platform.name.strip()})"

    # ---- memory ----
    def alloc_buffer(self, nbytes: int) -> Buffer:
        return Buffer(self, nbytes, cl.Buffer(self.ctx, cl.mem_flags.READ_WRITE, max(nbytes, 4)))

    def write_bytes(self, buffer: Buffer, offset: int, data: np.ndarray) -> None:
        raw = np.ascontiguousarray(data).reshape(-1).view(np.uint8)
        if raw.size:
            cl.enqueue_copy(self.queue, buffer.handle, raw, dst_offset=offset, is_blocking=True)

    def read_bytes(self, buffer: Buffer, offset: int, nbytes: int) -> np.ndarray:
        out = np.empty(nbytes, dtype=np.uint8)
        if nbytes:
            cl.enqueue_copy(self.queue, out, buffer.handle, src_offset=offset, is_blocking=True)
        return out

    def copy_from(self, dst: Place, t: Tensor, src_backend: Backend, src: Place) -> Call:
        """Between buffers of one OpenCL context the copy stays on the device
        (clEnqueueCopyBuffer); from another backend or context it goes through the host."""
        same_ctx = isinstance(src_backend, OpenCLBackend) and src_backend.ctx == self.ctx
        s, d, n = src.offset, dst.offset, t.nbytes
        overlap = src.buffer is dst.buffer and s < d + n and d < s + n  # clEnqueueCopyBuffer refuses it
        if not same_ctx or not t.is_contiguous() or overlap:
            return super().copy_from(dst, t, src_backend, src)
        if n == 0:
            return lambda: None
        queue, other = self.queue, src_backend
        sbuf, dbuf = src.buffer.handle, dst.buffer.handle

        def run() -> None:
            if other is not self:  # another queue: its writes first
                other.synchronize()
            cl.enqueue_copy(queue, dbuf, sbuf, byte_count=n, src_offset=s, dst_offset=d)

        return run

    # ---- execution ----
    def lower(self, node: Tensor, dst: Place, srcs: list[Place | None]) -> Call:
        return self.KERNELS[node.op](self, node, dst, srcs)

    def launch(self, kernel, global_size: int, local_size: int | None = None, keep: tuple = ()) -> Call:
        """A prepared call enqueueing `kernel` (arguments already set) over a 1-d range.
        `keep`: objects the call must keep alive (set_arg holds no reference to buffers)."""
        queue = self.queue
        if global_size == 0:
            return lambda: None
        if global_size >= 2**32:  # the kernels index elements with 32-bit arithmetic (common.h UNRAVEL)
            raise ValueError(f"[opencl] launch of {global_size} work-items exceeds 2^32")
        gs, ls = (global_size,), None if local_size is None else (local_size,)

        def run() -> None:
            cl.enqueue_nd_range_kernel(queue, kernel, gs, ls)

        run.keep = keep
        return run

    def synchronize(self) -> None:
        self.queue.finish()
