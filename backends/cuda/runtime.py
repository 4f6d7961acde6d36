"""Device selection, modules and prepared launches of the CUDA backend (pycuda's driver API).

GRAPHIR_CUDA_DEVICE picks the device: an index, or a substring of a device name. Default: 0.
`cuda` is pycuda.driver, or None where pycuda cannot be imported; tests swap in a recording fake
with the same surface (tests/backends/test_cuda.py).
"""

from __future__ import annotations

import ctypes
import os
import struct
from dataclasses import dataclass, field

from graphir import debug

from . import compiler

try:
    import pycuda.driver as cuda
except Exception as e:  # ImportError, or an OSError where libcuda.so is absent
    cuda = None
    _IMPORT_ERROR = f"{type(e).__name__}: {e}"

ENV_DEVICE = "GRAPHIR_CUDA_DEVICE"
# a launch layout's code -> its struct format (native alignment, as the C ABI lays out kernel
# parameters). T: the Tensor record of common.cuh: data, nb[4], ne[4], type, padding.
LAYOUT = {"T": "P4q4i2i", "P": "P", "i": "i", "f": "f"}
TENSOR_BYTES = struct.calcsize(LAYOUT["T"])  # 64, static_assert'ed in common.cuh


def select_device():
    """(pycuda Device, arch) of the chosen device, or a string saying why none can be used."""
    if cuda is None:
        return f"pycuda is not installed or cannot load libcuda ({_IMPORT_ERROR}; pip install 'graphir[cuda]')"
    try:
        cuda.init()
        n = cuda.Device.count()
    except Exception as e:  # pycuda.driver.Error: no driver, or a driver too old
        return f"no CUDA driver ({e})"
    if n == 0:
        return "no CUDA device found"
    want = os.environ.get(ENV_DEVICE, "").strip()
    if want.isdigit():
        if int(want) >= n:
            return f"{ENV_DEVICE}={want}: only {n} devices"
        dev = cuda.Device(int(want))
    elif want:
        found = [cuda.Device(i) for i in range(n) if want.lower() in cuda.Device(i).name().lower()]
        if not found:
            names = ", ".join(cuda.Device(i).name() for i in range(n))
            return f"{ENV_DEVICE}={want!r} matches no device (have: {names})"
        dev = found[0]
    else:
        dev = cuda.Device(0)
    arch = arch_of(dev.compute_capability())
    if compiler.nvcc() is None and not compiler.all_cached((arch,)):
        return "nvcc not found and no cached cubins for this device"
    return dev, arch


def arch_of(cc: tuple[int, int]) -> str:
    """The build a device of compute capability cc runs: sm_80 cubins on every 8.x (binary
    compatible), sm_90 on 9.0, the compute_90 PTX (JIT) elsewhere."""
    if cc[0] == 8:
        return "sm_80"
    if cc == (9, 0):
        return "sm_90"
    return compiler.PTX_ARCH


class Modules:
    """Loaded modules (one per source file) and their functions, for one context and arch."""

    def __init__(self, arch: str) -> None:
        self.arch = arch
        self._modules: dict[str, object] = {}
        self._functions: dict[str, object] = {}

    def function(self, name: str):
        fn = self._functions.get(name)
        if fn is None:
            stem = compiler.kernel_files()[name]
            mod = self._modules.get(stem)
            if mod is None:
                built = compiler.compile_source(compiler.shader_dir() / f"{stem}.cu", self.arch)
                if debug.enabled(debug.KERNELS):
                    debug.log(debug.KERNELS, f"[cuda] load {built.binary}")
                image = built.binary.read_bytes()
                if self.arch.startswith("compute_"):
                    image += b"\0"  # PTX text for the driver's JIT: a NUL-terminated string
                mod = self._modules[stem] = cuda.module_from_buffer(image)
            fn = self._functions[name] = mod.get_function(name)
        return fn


# ---- CUDA graphs ------------------------------------------------------------------------
# pycuda itself has no graph API (up to 2025.x), so a split's launches are captured from the stream
# through the driver directly (ctypes on libcuda); a pycuda with stream capture methods (or a test's
# fake) is used as it is. Where neither works the backend replays the launch list.

CAPTURE_MODE_RELAXED = 2  # CU_STREAM_CAPTURE_MODE_RELAXED: other threads' driver calls stay legal


class StreamCapture:
    """Graphs through the stream's own begin_capture / end_capture (returning a graph to instantiate)."""

    def capture(self, stream, launches: list[Launch]):
        stream.begin_capture()
        try:
            for la in launches:
                la.enqueue(stream)
        finally:
            graph = stream.end_capture()
        return graph.instantiate()  # .launch(stream)


class DriverCapture:
    """Graphs through the driver API (cuStreamBeginCapture ... cuGraphInstantiate, cuGraphLaunch)."""

    def __init__(self, lib) -> None:
        self.lib = lib
        self.begin = getattr(lib, "cuStreamBeginCapture_v2", None) or lib.cuStreamBeginCapture
        self.instantiate = lib.cuGraphInstantiateWithFlags

    def check(self, rc: int, what: str) -> None:
        if rc != 0:
            raise RuntimeError(f"[cuda] {what} failed: CUresult {rc}")

    def capture(self, stream, launches: list[Launch]) -> DriverGraphExec:
        h = ctypes.c_void_p(stream.handle)
        self.check(self.begin(h, CAPTURE_MODE_RELAXED), "cuStreamBeginCapture")
        graph = ctypes.c_void_p()
        try:
            for la in launches:
                la.enqueue(stream)
        finally:
            rc = self.lib.cuStreamEndCapture(h, ctypes.byref(graph))
        self.check(rc, "cuStreamEndCapture")
        exe = ctypes.c_void_p()
        try:
            self.check(self.instantiate(ctypes.byref(exe), graph, ctypes.c_ulonglong(0)), "cuGraphInstantiate")
        finally:
            self.lib.cuGraphDestroy(graph)  # the executable graph keeps what it needs
        return DriverGraphExec(self, exe)


class DriverGraphExec:
    def __init__(self, api: DriverCapture, exe: ctypes.c_void_p) -> None:
        self.api, self.exe = api, exe

    def launch(self, stream) -> None:
        self.api.check(self.api.lib.cuGraphLaunch(self.exe, ctypes.c_void_p(stream.handle)), "cuGraphLaunch")

    def __del__(self) -> None:
        self.api.lib.cuGraphExecDestroy(self.exe)


def graph_api(stream):
    """How this stream's launches become a CUDA graph, or None (replay the launch list)."""
    if hasattr(stream, "begin_capture"):
        return StreamCapture()
    if not hasattr(stream, "handle"):
        return None
    try:
        return DriverCapture(ctypes.CDLL("libcuda.so.1"))
    except (OSError, AttributeError):  # no driver library, or one without graph capture
        return None


class Pool:
    """Device allocations handed back by dropped buffers (a plan's compute buffer, weights of a
    freed model), reused by later requests of at least their size and below twice it, so a plan
    rebuilt for new shapes does not go back to cuMemAlloc/cuMemFree each time."""

    def __init__(self) -> None:
        self.free: list[tuple[int, object]] = []  # (bytes, allocation)
        self.cached_bytes = 0
        self.limit = 1 << 30  # dropped memory kept for reuse at most

    def take(self, nbytes: int) -> Pooled:
        best = None
        for i, (n, _) in enumerate(self.free):
            if nbytes <= n < 2 * nbytes and (best is None or n < self.free[best][0]):
                best = i
        if best is not None:
            n, alloc = self.free.pop(best)
            self.cached_bytes -= n
            return Pooled(self, n, alloc)
        return Pooled(self, nbytes, cuda.mem_alloc(nbytes))

    def give_back(self, nbytes: int, alloc) -> None:
        if self.cached_bytes + nbytes <= self.limit:
            self.free.append((nbytes, alloc))
            self.cached_bytes += nbytes


class Pooled:
    """A Buffer's handle: a device allocation that returns to its pool when the handle is dropped.
    int(handle) is the device address."""

    __slots__ = ("pool", "nbytes", "alloc", "ptr")

    def __init__(self, pool: Pool, nbytes: int, alloc) -> None:
        self.pool, self.nbytes, self.alloc, self.ptr = pool, nbytes, alloc, int(alloc)

    def __int__(self) -> int:
        return self.ptr

    def __del__(self) -> None:
        self.pool.give_back(self.nbytes, self.alloc)


def pack(layout: str, args: list) -> bytes:
    """The kernel's parameter buffer: args (a Tensor record is a (ptr, nb, ne, type) tuple) laid
    out as the C ABI lays out the parameters `layout` names."""
    fmt, flat = "", []
    if len(layout) != len(args):
        raise ValueError(f"[cuda] layout {layout!r} has {len(layout)} parameters, got {len(args)} arguments")
    for code, a in zip(layout, args):
        fmt += LAYOUT[code]
        if code == "T":
            ptr, nb, ne, type_ = a
            flat += [ptr, *nb, *ne, type_, 0]
        else:
            flat.append(a)
    return struct.pack(fmt, *flat)


@dataclass
class Launch:
    """One prepared kernel launch: the function, sizes and its packed parameter buffer.
    `keep`: device memory the launch reads that nothing else holds (constants)."""

    kernel: str
    layout: str
    args: bytes
    grid: tuple[int, int, int]
    block: tuple[int, int, int]
    shared: int = 0
    keep: tuple = field(default=())
    function: object = None

    def enqueue(self, stream) -> None:
        launch = getattr(self.function, "_launch_kernel", None)
        if launch is not None:  # the packed buffer as is (pycuda's prepared calls pack per call)
            launch(self.grid, self.block, self.args, self.shared, stream)
        else:  # pragma: no cover - pycuda without _launch_kernel
            raise RuntimeError("[cuda] this pycuda has no Function._launch_kernel")
