"""A recording fake of the part of pycuda.driver the cuda backend uses, for tests on machines
without a GPU (tests/backends/test_cuda.py).

Device memory is host memory (real addresses, so the host emulator of backends/cuda/emu.py can run
kernels on it when asked), with a guard after each allocation and a mask of the bytes written so far.
Every launch is checked against sm_80 limits (block and grid sizes, shared memory and registers from
ptxas' report), its grid against its kernel's items, every Tensor record against the allocations, and
every byte it reads (every operand but the destination, each kernel's last Tensor) against the mask,
so launches and copies must come in dependency order. `problems` collects what went wrong.
"""

from __future__ import annotations

import struct

import numpy as np

from graphir.types import TYPE_INFO, DType

from . import compiler, emu, runtime

# sm_80 limits a launch must respect
MAX_THREADS, MAX_BLOCK, MAX_GRID_X, MAX_GRID_YZ = 1024, (1024, 1024, 64), 2**31 - 1, 65535
MAX_SMEM, MAX_REGS_PER_BLOCK = 48 * 1024, 65536


def signatures() -> dict[str, str]:
    """kernel -> layout codes, from every source."""
    return {n: sig for src in compiler.sources() for n, sig in compiler.kernel_signatures(src.read_text()).items()}


class FakeAlloc:
    """Device memory as host memory (a real address, so the host emulator can run kernels on it),
    a guard of GUARD bytes after it, and a mask of the bytes written so far."""

    GUARD = 4096

    def __init__(self, cuda: FakeCuda, nbytes: int) -> None:
        self.cuda, self.nbytes = cuda, nbytes
        self.host = np.zeros(nbytes + self.GUARD + 256, dtype=np.uint8)
        self.addr = -(-self.host.ctypes.data // 256) * 256  # cudaMalloc's alignment
        off = self.addr - self.host.ctypes.data
        self.mem = self.host[off : off + nbytes]
        self.written = np.zeros(nbytes, dtype=bool)

    def __int__(self) -> int:
        return self.addr


class FakeStream:
    """A stream of pycuda as it is: no graph API, no handle for the driver-level capture here."""

    def __init__(self, cuda: FakeCuda) -> None:
        self.cuda, self.capturing = cuda, None

    def synchronize(self) -> None:
        pass


class FakeCaptureStream(FakeStream):
    """A stream of a pycuda with graph support (stream capture)."""

    def begin_capture(self) -> None:
        assert self.capturing is None, "nested capture"
        self.capturing = []

    def end_capture(self) -> FakeGraph:
        ops, self.capturing = self.capturing, None
        return FakeGraph(self.cuda, ops)


class FakeGraph:
    def __init__(self, cuda: FakeCuda, ops: list) -> None:
        self.cuda, self.ops = cuda, ops

    def instantiate(self) -> FakeGraph:
        return self

    def launch(self, stream: FakeStream) -> None:
        self.cuda.events.append(("graph", len(self.ops)))
        for op in self.ops:
            op()


class FakeFunction:
    def __init__(self, cuda: FakeCuda, name: str) -> None:
        self.cuda, self.name = cuda, name

    def _launch_kernel(self, grid, block, args: bytes, shared: int, stream: FakeStream) -> None:
        def run() -> None:
            self.cuda.check_launch(self.name, grid, block, args, shared)

        if stream.capturing is not None:
            stream.capturing.append(run)
        else:
            self.cuda.events.append(("launch", self.name))
            run()


class FakeModule:
    def __init__(self, cuda: FakeCuda) -> None:
        self.cuda = cuda

    def get_function(self, name: str) -> FakeFunction:
        assert name in self.cuda.signatures, f"no kernel {name!r} in any source"
        return FakeFunction(self.cuda, name)


class FakeCuda:
    """The surface of pycuda.driver the backend uses. Memory is host bytes with a written-mask:
    a launch's inputs and a copy's source must have been written (by a copy or an earlier launch),
    so launches and copies replay in dependency order. Kernels compute nothing: a launch marks its
    destination's extent written."""

    Error = RuntimeError

    def __init__(self, graphs: bool = True, stats: dict | None = None, emulate: bool = False) -> None:
        self.allocs: list[FakeAlloc] = []
        self.emulate = emulate
        self.events: list[tuple] = []
        self.launched: list[tuple[str, str]] = []
        self.stats = stats or {}
        self.signatures = signatures()
        self.graphs = graphs
        self.problems: list[str] = []

    # device and context
    def init(self) -> None:
        pass

    class _Context:
        def push(self) -> None:
            pass

    class Device:
        def __init__(self, i: int) -> None:
            self.i = i

        @staticmethod
        def count() -> int:
            return 1

        def name(self) -> str:
            return "Fake A100"

        def compute_capability(self) -> tuple[int, int]:
            return (8, 0)

        def retain_primary_context(self):
            return FakeCuda._Context()

    def Stream(self) -> FakeStream:  # noqa: N802 - pycuda's name
        return FakeCaptureStream(self) if self.graphs else FakeStream(self)

    def module_from_buffer(self, data: bytes) -> FakeModule:
        assert data[:4] == b"\x7fELF", "not a cubin"
        return FakeModule(self)

    # memory
    def mem_alloc(self, nbytes: int) -> FakeAlloc:
        a = FakeAlloc(self, nbytes)
        self.allocs.append(a)
        return a

    def find(self, addr: int, n: int, what: str) -> tuple[FakeAlloc, int] | None:
        for a in self.allocs:
            if a.addr <= addr and addr + n <= a.addr + a.nbytes:
                return a, addr - a.addr
        self.problems.append(f"{what}: [{addr:#x}, +{n}) outside every allocation")
        return None

    def require_written(self, addr: int, n: int, what: str) -> None:
        hit = self.find(addr, n, what)
        if hit and not hit[0].written[hit[1] : hit[1] + n].all():
            self.problems.append(f"{what}: reads [{addr:#x}, +{n}) before anything wrote it")

    def mark_written(self, addr: int, n: int, what: str) -> None:
        hit = self.find(addr, n, what)
        if hit:
            hit[0].written[hit[1] : hit[1] + n] = True

    def memcpy_htod(self, dst: int, src: np.ndarray) -> None:
        raw = np.ascontiguousarray(src).reshape(-1).view(np.uint8)
        hit = self.find(int(dst), raw.size, "memcpy_htod")
        if hit:
            a, o = hit
            a.mem[o : o + raw.size] = raw
            a.written[o : o + raw.size] = True
        self.events.append(("htod", raw.size))

    def memcpy_dtoh(self, dst: np.ndarray, src: int) -> None:
        hit = self.find(int(src), dst.nbytes, "memcpy_dtoh")
        if hit:
            a, o = hit
            dst.reshape(-1).view(np.uint8)[...] = a.mem[o : o + dst.nbytes]
        self.events.append(("dtoh", dst.nbytes))

    def memcpy_dtod_async(self, dst: int, src: int, n: int, stream: FakeStream) -> None:
        def run() -> None:
            self.require_written(src, n, "memcpy_dtod")
            s, d = self.find(src, n, "memcpy_dtod"), self.find(dst, n, "memcpy_dtod")
            if s and d:
                d[0].mem[d[1] : d[1] + n] = s[0].mem[s[1] : s[1] + n]
                d[0].written[d[1] : d[1] + n] = True
            self.events.append(("dtod", n))

        if stream.capturing is not None:
            stream.capturing.append(run)
        else:
            run()

    # launches
    def check_launch(self, name: str, grid, block, args: bytes, shared: int) -> None:
        layout = self.signatures[name]
        self.launched.append((name, layout))
        fmt = "".join(runtime.LAYOUT[c] for c in layout)
        if struct.calcsize(fmt) != len(args):
            self.problems.append(f"{name}: {len(args)} bytes of parameters, the signature {layout!r} takes "
                                 f"{struct.calcsize(fmt)}")  # fmt: skip
            return
        threads = block[0] * block[1] * block[2]
        if threads > MAX_THREADS or any(b > m for b, m in zip(block, MAX_BLOCK)) or threads % 32:
            self.problems.append(f"{name}: block {block}")
        if grid[0] > MAX_GRID_X or grid[1] > MAX_GRID_YZ or grid[2] > MAX_GRID_YZ or min(grid) < 1:
            self.problems.append(f"{name}: grid {grid}")
        st = self.stats.get(name)
        if st is not None and (st.smem + shared > MAX_SMEM or st.registers * threads > MAX_REGS_PER_BLOCK):
            self.problems.append(f"{name}: {st.smem} + {shared} B shared, {st.registers} registers x {threads}")
        values, pos, records = struct.unpack(fmt, args), 0, []
        for code in layout:
            if code == "T":
                ptr, nb, ne, type_ = values[pos], values[pos + 1 : pos + 5], values[pos + 5 : pos + 9], values[pos + 9]
                records.append((ptr, nb, ne, type_))
                pos += 11
            else:
                pos += 1
        why = uncovered(name, grid, block, [r[2] for r in records])
        if why:
            self.problems.append(f"{name}: grid {grid} x block {block} does not cover {why}")
        for i, (ptr, nb, ne, type_) in enumerate(records):
            if ptr == 0:
                continue  # an absent optional operand
            info = TYPE_INFO[DType(type_)]
            if min(ne) == 0:
                continue
            extent = (ne[0] // info.block_elems - 1) * nb[0] + info.block_bytes
            extent += sum((n - 1) * s for n, s in zip(ne[1:], nb[1:]))
            what = f"{name} operand {i}"
            if i == len(records) - 1:  # the destination (every kernel's last Tensor)
                self.mark_written(ptr, extent, what)
            else:
                self.require_written(ptr, extent, what)
        if self.emulate and not self.problems:
            emu.launch(name, grid, block, args)


def _n(ne) -> int:
    return ne[0] * ne[1] * ne[2] * ne[3]


# kernel -> (the items its threads (or warps, or blocks) stand for, from the records' ne; per-thread,
# per-warp or per-block). The one-item-per-thread kernels return early past the last item.
COVER = {
    "copy": (lambda ne: _n(ne[-1]), "thread"),
    "binary": (lambda ne: _n(ne[-1]), "thread"),
    "unary": (lambda ne: _n(ne[-1]), "thread"),
    "concat": (lambda ne: _n(ne[-1]), "thread"),
    "get_rows": (lambda ne: _n(ne[-1]), "thread"),
    "ssm_conv": (lambda ne: _n(ne[-1]), "thread"),
    "quantize": (lambda ne: _n(ne[-1]) // 32, "thread"),
    "get_rows_q": (lambda ne: _n(ne[-1]) // 16, "thread"),
    "argsort": (lambda ne: _n(ne[0]), "thread"),
    "set_rows": (lambda ne: ne[0][0] * ne[0][2] * ne[0][3], "thread"),
    "rope": (lambda ne: _n(ne[0]) // ne[0][0], "thread"),
    "norm_rows": (lambda ne: _n(ne[0]) // ne[0][0], "block"),
    "rows": (lambda ne: _n(ne[0]) // ne[0][0], "block"),
    "soft_max": (lambda ne: _n(ne[0]) // ne[0][0], "block"),
    "flash_attn_ext": (lambda ne: _n(ne[0]) // ne[0][0], "block"),
    "gated_delta_net": (lambda ne: ne[2][0] * ne[2][1] * ne[2][3], "warp"),
}


def uncovered(name: str, grid, block, ne: list) -> str | None:
    """Why a launch's grid misses some of its kernel's items (None when it covers them exactly
    enough: every item, and no whole block past the end)."""
    d = ne[-1]
    if name == "mul_mat_vec":  # warps over d's rows; tokens (expert slots) in y; batches (tokens) in z
        want = (-(-d[0] // (block[0] // 32)), d[1], d[2] * d[3])
        return None if tuple(grid) == want else f"d {d} (want {want})"
    if name == "mul_mat_tiled":  # 64 x 64 tiles of d, batches in z
        want = (-(-d[0] // 64), -(-d[1] // 64), d[2] * d[3])
        return None if tuple(grid) == want else f"d {d} (want {want})"
    items, per = COVER[name]
    n = items(ne)
    if per == "block":
        return None if grid[0] == n else f"{n} rows"
    width = block[0] // 32 if per == "warp" else block[0]
    return None if grid[0] == -(-n // width) else f"{n} items"


class FakeLibcuda:
    """The driver entry points of the ctypes graph capture, recording their order."""

    def __init__(self, fail_instantiate: bool = False) -> None:
        self.calls: list[str] = []
        self.fail_instantiate = fail_instantiate

    def cuStreamBeginCapture_v2(self, stream, mode) -> int:  # noqa: N802 - the driver's names
        self.calls.append(f"begin {stream.value:#x} mode {mode}")
        return 0

    def cuStreamEndCapture(self, stream, graph_ref) -> int:  # noqa: N802
        graph_ref._obj.value = 0x6A
        self.calls.append("end")
        return 0

    def cuGraphInstantiateWithFlags(self, exe_ref, graph, flags) -> int:  # noqa: N802
        if self.fail_instantiate:
            return 801  # CUDA_ERROR_NOT_SUPPORTED
        exe_ref._obj.value = 0xE7
        self.calls.append(f"instantiate {graph.value:#x}")
        return 0

    def cuGraphDestroy(self, graph) -> int:  # noqa: N802
        self.calls.append(f"destroy graph {graph.value:#x}")
        return 0

    def cuGraphLaunch(self, exe, stream) -> int:  # noqa: N802
        self.calls.append(f"launch {exe.value:#x} on {stream.value:#x}")
        return 0

    def cuGraphExecDestroy(self, exe) -> int:  # noqa: N802
        self.calls.append("destroy exec")
        return 0


class HandleStream(FakeStream):
    """A stream with a driver handle (pycuda's Stream.handle), for the ctypes graph capture."""

    handle = 0x5E
