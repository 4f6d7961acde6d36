"""The Vulkan backend: GLSL compute shaders (shaders/vulkan/) compiled to SPIR-V by glslc,
dispatched through our own cffi ABI binding of libvulkan.so.1 (vk.py), not the `vulkan` package
from PyPI: we use ~45 entry points, cffi is already a dependency, the package's import parses the
whole header and its wrappers build every struct from keyword arguments (and drop some results),
and our declarations are checked field by field against vulkan_core.h. Runs here on Mesa's lavapipe.

A split is lowered to ONE command buffer, recorded at lower time (pipelines, descriptor sets
and the meta buffer of tensor records made then) and re-submitted by every run; inputs change
by buffer contents, never by re-recording. A run is one vkQueueSubmit and one fence wait.
"""

from __future__ import annotations

import struct

import numpy as np

from graphir.layout import host_array, np_view
from graphir.ops import Op
from graphir.tensor import Tensor, is_empty_op
from graphir.types import DType

from ..base import Availability, Backend, Buffer, Call, Place
from . import runtime
from .kernels import EPT, KERNELS, MAT_VEC, MM_TILED_MIN_N, REDUCE_WG, Dispatch

PUSH_FORMAT = {"float": "f", "int": "i", "uint": "I"}
# ops whose src[0] may be bound in windows when it exceeds one descriptor's range (weights.glsl)
WINDOWED_SRC0 = (Op.MUL_MAT, Op.MUL_MAT_ID, Op.GET_ROWS)
WINDOW_ROWS = 64  # rows of a one work-group may read from one window (mul_mat_tiled's RM, with room)


def grid(n: int, max_x: int = 65535) -> tuple[int, int, int]:
    """n work-groups as (x, y, 1) counts; shaders rebuild the flat index (common.glsl group_index)."""
    if n <= max_x:
        return (n, 1, 1)
    return (max_x, -(-n // max_x), 1)


class VulkanBackend(Backend):
    name = "vulkan"
    KERNELS = KERNELS

    @classmethod
    def availability(cls) -> Availability:
        pd = runtime.select_device()
        if isinstance(pd, str):
            return Availability(False, pd)
        return Availability(True)

    def __init__(self, staging: bool = False) -> None:
        """staging=True: never map device memory, every host access goes through a staging
        buffer and a copy command (as on a discrete GPU); for tests."""
        pd = runtime.select_device()
        if isinstance(pd, str):
            raise RuntimeError(f"[vulkan] unavailable: {pd}")
        self.device = runtime.Device(pd, staging=staging)
        self.max_range = pd.max_storage_range
        kind = "cpu" if pd.type == "cpu" else "gpu"
        self.mat_vec, self.tiled_min_n, self.ept = MAT_VEC[kind], MM_TILED_MIN_N[kind], EPT[kind]
        self.reduce_wg = REDUCE_WG[kind]
        self.item_rows = kind == "cpu"  # mat-vec rows one per invocation (mul_mat.comp ITEM_ROWS)

    def describe(self) -> str:
        return f"vulkan ({self.device.pd.describe()})"

    # ---- support: the op table, then what one descriptor (or a window) can bind ----
    def supports_op(self, node: Tensor) -> bool:
        if not super().supports_op(node):
            return False
        for i, t in enumerate((node, *node.src)):
            if t is None or t.nbytes <= self.max_range:
                continue
            windowed = i == 1 and node.op in WINDOWED_SRC0 and self.device.pd.dynamic_indexing
            w = 1 << self.device.window_shift()
            if not windowed or t.nb[1] * WINDOW_ROWS > w or t.nbytes >= 1 << 32:
                return False
        return True

    # ---- memory ----
    def alloc_buffer(self, nbytes: int) -> Buffer:
        return Buffer(self, nbytes, self.device.buffer(nbytes))

    def write_bytes(self, buffer: Buffer, offset: int, data: np.ndarray) -> None:
        self.device.write(buffer.handle, offset, np.ascontiguousarray(data).reshape(-1).view(np.uint8))

    def read_bytes(self, buffer: Buffer, offset: int, nbytes: int) -> np.ndarray:
        return self.device.read(buffer.handle, offset, nbytes)

    def set_tensor(self, place: Place, t: Tensor, data: np.ndarray) -> None:
        mapped = place.buffer.handle.mapped
        if mapped is None:
            return super().set_tensor(place, t, data)
        np_view(mapped, place.offset, t)[...] = host_array(data, t)

    def get_tensor(self, place: Place, t: Tensor) -> np.ndarray:
        mapped = place.buffer.handle.mapped
        if mapped is None:
            return super().get_tensor(place, t)
        return np_view(mapped, place.offset, t).copy()

    def host_view(self, place: Place, t: Tensor) -> np.ndarray | None:
        """Mapped memory: a view of t (plain numeric types); every call waits for its own submission,
        so nothing is in flight when the host touches it."""
        mapped = place.buffer.handle.mapped
        if mapped is None or t.type not in (DType.F32, DType.F16, DType.I32):
            return None
        return np_view(mapped, place.offset, t)

    def copy_from(self, dst: Place, t: Tensor, src_backend: Backend, src: Place) -> Call:
        """Between buffers of this device: a recorded vkCmdCopyBuffer. From a backend whose
        buffers are host arrays (cpu, ref) into mapped memory: one numpy copy between views.
        Otherwise through the host."""
        n = t.nbytes
        if n == 0:
            return lambda: None
        dmap = dst.buffer.handle.mapped
        if src_backend is self and t.is_contiguous():
            s, d = src.offset, dst.offset
            if src.buffer is not dst.buffer or s >= d + n or d >= s + n:  # vkCmdCopyBuffer refuses overlaps
                return self.device.record_copy(src.buffer.handle, s, dst.buffer.handle, d, n)
        if isinstance(src.buffer.handle, np.ndarray) and dmap is not None:
            sview, dview = np_view(src.buffer.handle, src.offset, t), np_view(dmap, dst.offset, t)
            other = src_backend

            def run() -> None:
                other.synchronize()
                dview[...] = sview

            return run
        return super().copy_from(dst, t, src_backend, src)

    # ---- execution ----
    def lower(self, node: Tensor, dst: Place, srcs: list[Place | None]) -> Call:
        places = {id(node): dst, **{id(s): p for s, p in zip(node.src, srcs) if s is not None}}
        return self.lower_split([node], lambda t: places[id(t)])

    def lower_split(self, nodes: list[Tensor], place, live_out=None) -> Call:
        """ONE recorded command buffer for every node of the split."""
        commands = []
        for n in nodes:
            if is_empty_op(n):
                continue
            srcs = [None if s is None else place(s) for s in n.src]
            commands += [self.command(d) for d in self.KERNELS[n.op](self, n, place(n), srcs)]
        if not commands:
            return lambda: None
        return self.device.record(commands)

    def command(self, d: Dispatch) -> runtime.Command:
        """A dispatch with its pipeline, args (windows for a large binding 1) and packed push constants."""
        defines = dict(d.defines)
        if "WG_M" not in defines:
            defines["WG"] = d.local
        args, counts = [], [1]
        last = len(d.tensors) - 1
        for i, (pl, t) in enumerate(d.tensors):
            arg = runtime.Arg(pl.buffer.handle, pl.offset, t.nbytes, t.ne, t.nb, writes=i == last)
            count = 1
            if t.nbytes > self.max_range:
                if i != 0 or not d.shader.windowed:
                    raise ValueError(f"[vulkan] {d.shader.file}: binding {d.shader.tensors[i]!r} of {t.nbytes} "
                                     f"bytes exceeds maxStorageBufferRange {self.max_range}")  # fmt: skip
                shift = self.device.window_shift()
                count = -(-(pl.offset % self.device.pd.storage_align + t.nbytes) // (1 << shift))
                defines.update(A_NW=count, WIN_SHIFT=shift)
            args.append(arg)
            counts.append(count)
        fmt = "<" + "".join(PUSH_FORMAT[ty] for _, ty in d.shader.push)
        if len(d.push) != len(d.shader.push):
            raise ValueError(f"[vulkan] {d.shader.file}: {len(d.push)} push values for {len(d.shader.push)} fields")
        push = struct.pack(fmt, *d.push)
        pipeline = self.device.pipeline(d.shader.file, defines, tuple(counts), len(push))
        return runtime.Command(pipeline, args, push, grid(d.groups), d.extra)

    def synchronize(self) -> None:
        """Every call waits for its own submission: nothing is ever left in flight."""
