"""The cuda backend without a GPU: every kernel source compiles for sm_80 and sm_90 with
warnings as errors, the hot kernels keep everything in registers, every launcher packs exactly
the parameters its kernel's signature declares, and the host side (allocation, places, copies,
launch lists / CUDA graphs, split replay) runs against a recording fake of pycuda.driver that
checks every launch: grid/block/shared sizes and registers within sm_80 limits, every Tensor
record inside its allocation, every byte a launch or copy reads written before it.

The kernels themselves run in a host emulator (backends/cuda/emu.py: the same .cu sources built
by g++, block threads as fibers): every parity case against the reference and the shipped tiny
model, plain and with MTP drafts, through the real launchers and host side and the fake driver.

What needs a GPU (parity on the device, models end to end, generate, bench) is in
tools/gpu_check.sh; here it skips with the reason.
"""

from __future__ import annotations

import struct

import numpy as np
import pytest

import graphir as gr
from graphir.backends import availability, get_backend
from graphir.backends.cuda import CUDABackend, compiler, emu, kernels, runtime
from graphir.backends.cuda.fake_driver import FakeCuda, FakeLibcuda, FakeModule, HandleStream
from graphir.backends.cuda.kernels import KERNELS
from graphir.graph import build_graph
from graphir.ops import Op
from graphir.quants import dequantize_rows, quantize_rows
from graphir.types import TYPE_INFO, DType

HAVE_NVCC = compiler.nvcc() is not None
needs_nvcc = pytest.mark.skipif(not HAVE_NVCC and not compiler.all_cached(), reason="nvcc not found, no cached cubins")
AV = availability("cuda")
needs_gpu = pytest.mark.skipif(not AV.ok, reason=f"cuda unavailable: {AV.reason}")
SOURCES = {p.name: p.read_text() for p in compiler.sources()}
HOT = ("mul_mat_vec", "mul_mat_tiled", "flash_attn_ext", "gated_delta_net")


# ---- compilation ----------------------------------------------------------------------


@pytest.fixture(scope="session")
def reports() -> dict[tuple[str, str], compiler.KernelStats]:
    """(kernel, arch) -> ptxas figures; each source compiled once per arch (and cached on disk)."""
    built = compiler.compile_all((*compiler.ARCHS, compiler.PTX_ARCH), jobs=2)
    return {(k.kernel, k.arch): k for b in built for k in compiler.parse_report(b.report)}


@needs_nvcc
def test_every_kernel_compiles_for_sm80_and_sm90_and_to_ptx(reports):
    declared = {n for src in SOURCES.values() for n in compiler.kernel_signatures(src)}
    assert {(n, a) for n in declared for a in compiler.ARCHS} == set(reports)  # (PTX has no ptxas report)
    assert all(compiler.is_cached(src, compiler.PTX_ARCH) for src in compiler.sources())
    assert "-Werror" in compiler.FLAGS and "all-warnings" in compiler.FLAGS


@needs_nvcc
@pytest.mark.skipif(not HAVE_NVCC, reason="nvcc not found")
def test_a_warning_fails_the_build(tmp_path, monkeypatch):
    # the check bites: a source with an unused variable does not build
    monkeypatch.setenv("GRAPHIR_CACHE", str(tmp_path / "cache"))
    src = tmp_path / "warn.cu"
    (tmp_path / compiler.HEADER).write_text((compiler.shader_dir() / compiler.HEADER).read_text())
    src.write_text('#include "common.cuh"\nextern "C" __global__ void k(Tensor d) { int unused = 3; }\n')
    with pytest.raises(RuntimeError, match="nvcc failed(.|\n)*never referenced"):
        compiler.compile_source(src, "sm_80")


@needs_nvcc
@pytest.mark.parametrize("arch", compiler.ARCHS)
@pytest.mark.parametrize("kernel", HOT)
def test_hot_kernels_do_not_spill(reports, kernel, arch):
    k = reports[(kernel, arch)]
    assert (k.spill_stores, k.spill_loads, k.stack) == (0, 0, 0), k
    assert k.registers <= 255


def test_ptxas_report_parser():
    text = """ptxas info    : Compiling entry function 'mv' for 'sm_80'
ptxas info    : Function properties for mv
    16 bytes stack frame, 8 bytes spill stores, 4 bytes spill loads
ptxas info    : Used 72 registers, used 1 barriers, 4128 bytes smem, 608 bytes cmem[0]"""
    (k,) = compiler.parse_report(text)
    assert (k.kernel, k.arch, k.registers, k.stack, k.spill_stores, k.spill_loads, k.smem) == (
        "mv", "sm_80", 72, 16, 8, 4, 4128)  # fmt: skip


def fake_backend(
    monkeypatch, graphs: bool = True, stats: dict | None = None, emulate: bool = False
) -> tuple[CUDABackend, FakeCuda]:
    fake = FakeCuda(graphs, stats, emulate)
    monkeypatch.setattr(runtime, "cuda", fake)
    be = CUDABackend()
    return be, fake


# ---- availability ---------------------------------------------------------------------


def test_unavailable_without_pycuda(monkeypatch):
    monkeypatch.setattr(runtime, "cuda", None)
    av = availability("cuda")
    assert not av.ok and av.reason.startswith("pycuda is not installed")
    assert "compiled, not run here" in av.reason or "not compiled yet" in av.reason


def test_no_driver_is_a_reason(monkeypatch):
    class NoDriver(FakeCuda):
        def init(self) -> None:
            raise RuntimeError("cuInit failed: no CUDA-capable device is detected")

    monkeypatch.setattr(runtime, "cuda", NoDriver())
    av = availability("cuda")
    assert not av.ok and av.reason.startswith("no CUDA driver")


@pytest.mark.parametrize(("value", "why"), [("no-such-gpu", "matches no device"), ("7", "only 1 devices")])
def test_device_selection_reason(monkeypatch, value, why):
    monkeypatch.setattr(runtime, "cuda", FakeCuda())
    monkeypatch.setenv(runtime.ENV_DEVICE, value)
    av = availability("cuda")
    assert not av.ok and why in av.reason


def test_arch_of_compute_capability():
    assert runtime.arch_of((8, 6)) == "sm_80" and runtime.arch_of((9, 0)) == "sm_90"
    assert runtime.arch_of((12, 0)) == compiler.PTX_ARCH


def test_every_op_is_in_the_table():
    assert {op for op in Op if op is not Op.NONE} == set(KERNELS)


# ---- launch-argument layouts ------------------------------------------------------------


def layout_mismatches(sources: dict[str, str], launched: set[tuple[str, str]]) -> list[str]:
    """(kernel, packed layout) pairs that disagree with the kernel's signature in sources."""
    sigs = {n: s for src in sources.values() for n, s in compiler.kernel_signatures(src).items()}
    bad = []
    for name, layout in sorted(launched):
        if name not in sigs:
            bad.append(f"{name}: no such kernel")
        elif sigs[name] != layout:
            bad.append(f"{name}: python packs {layout!r}, the kernel takes {sigs[name]!r}")
    return bad


@pytest.fixture(scope="module")
def case_launches() -> set[tuple[str, str]]:
    """(kernel, layout) of every launch that lowering every parity case's examples makes."""
    from graphir.parity import CASES
    from graphir.parity.harness import examples

    mp = pytest.MonkeyPatch()
    try:
        mp.setattr(kernels, "MV_MAX_N", 1)  # the parity cases' several-token products take the tiled kernel
        be, _ = fake_backend(mp)
        mp.setattr(be.modules, "function", lambda name: None)  # lowering only
        seen: set[tuple[str, str]] = set()
        orig = be.launches

        def record(node, dst, srcs):
            out = orig(node, dst, srcs)
            seen.update((la.kernel, la.layout) for la in out)
            return out

        mp.setattr(be, "launches", record)
        for case in CASES.values():
            for p in examples(case, "ci"):
                gr.compile(build_graph(*case.build(p).outputs), [be, get_backend("cpu")], cache=False)
        return seen
    finally:
        mp.undo()


def test_kernel_argument_layouts_match_the_cu_signatures(case_launches):
    assert layout_mismatches(SOURCES, case_launches) == []
    # every kernel of every source is launched by some lowering
    declared = {n for src in SOURCES.values() for n in compiler.kernel_signatures(src)}
    assert declared == {n for n, _ in case_launches}
    # the check bites: a parameter whose type changed, one dropped, and a launcher packing one too many
    fa = SOURCES["attn.cu"]
    for mutant in (fa.replace("float softcap", "int softcap"), fa.replace(",\n               float scale", "")):
        assert mutant != fa
        bad = layout_mismatches(SOURCES | {"attn.cu": mutant}, case_launches)
        assert bad and all(b.startswith("flash_attn_ext:") for b in bad)
    extra = {(n, lay + "f" if n == "norm_rows" else lay) for n, lay in case_launches}
    bad = layout_mismatches(SOURCES, extra)
    assert bad and all(b.startswith("norm_rows:") for b in bad)


def test_kernel_signature_parser():
    src = ('extern "C" __global__ void __launch_bounds__(128)\nk(const Tensor a, Tensor d, const float *s,\n'
           ' int n, float x, double y) {}')  # fmt: skip
    assert compiler.kernel_signatures(src) == {"k": "TTPif?"}


def test_pack_lays_out_tensor_records_as_the_c_abi():
    rec = (0x1000, (4, 16, 64, 64), (4, 4, 1, 1), 0)
    buf = runtime.pack("TiT", [rec, 7, rec])
    assert runtime.TENSOR_BYTES == 64 and len(buf) == 64 + 8 + 64  # the int padded to the record's alignment
    assert struct.unpack_from("i", buf, 64) == (7,)
    with pytest.raises(ValueError, match="layout"):
        runtime.pack("TT", [rec])


# ---- the host side against the fake ------------------------------------------------------


@pytest.fixture(scope="module")
def sm80_stats() -> dict:
    if not (HAVE_NVCC or compiler.all_cached()):
        return {}
    built = compiler.compile_all(("sm_80",), jobs=2)
    return {k.kernel: k for b in built for k in compiler.parse_report(b.report)}


def _run_case(be: CUDABackend, case, p: dict) -> None:
    built = case.build(p)
    plan = gr.compile(build_graph(*built.outputs), [be, get_backend("cpu")], cache=False)
    for t, data in built.inputs.items():
        plan.set_input(t, data)
    plan.run()
    plan.run()  # a replay of the same prepared calls
    for t in built.outputs:
        plan.get(t)


@needs_nvcc
@pytest.mark.parametrize("graphs", [True, False], ids=["graph", "launch-list"])
def test_every_parity_case_runs_through_the_fake(monkeypatch, sm80_stats, graphs):
    from graphir.parity import CASES
    from graphir.parity.harness import examples

    monkeypatch.setattr(kernels, "MV_MAX_N", 1)  # several-token products take the tiled kernel
    be, fake = fake_backend(monkeypatch, graphs, sm80_stats)
    assert (be.graphs is not None) is graphs
    for case in CASES.values():
        for p in examples(case, "ci")[:3]:
            _run_case(be, case, p)
            assert fake.problems == [], f"{case.name} {p}: {fake.problems[:5]}"
    kinds = {e[0] for e in fake.events}
    assert ("graph" in kinds) is graphs
    assert "launch" in kinds  # single-launch splits (and the launch list) go straight to the stream
    ran = {n for n, _ in fake.launched}
    assert {"mul_mat_vec", "mul_mat_tiled", "flash_attn_ext", "gated_delta_net", "quantize"} <= ran


def _mixed_graph():
    """rms_norm -> mul_mat by Q4_K weights -> silu -> add -> scale -> cpy to I32 (not on cuda:
    the cpu takes it, with a copy through the host)."""
    rng = np.random.default_rng(0)
    K, M, N = 256, 12, 5
    x = gr.new_input(DType.F32, (K, N), "x")
    w = gr.new_weight(DType.Q4_K, (K, M), quantize_rows(rng.standard_normal((M, K)).astype(np.float32), DType.Q4_K),
                      "w")  # fmt: skip
    bias = gr.from_numpy(rng.standard_normal(M).astype(np.float32), "bias")
    c = gr.add(gr.silu(gr.mul_mat(w, gr.rms_norm(x, 1e-6))), bias)
    return x, gr.cpy(gr.scale(c, 100.0), gr.new_tensor(DType.I32, c.ne, "c_i32"))


@needs_nvcc
def test_one_graph_per_split_and_weights_uploaded_once(monkeypatch, sm80_stats):
    be, fake = fake_backend(monkeypatch, True, sm80_stats)
    x, out = _mixed_graph()
    graph = build_graph(out)
    plan = gr.compile(graph, [be, get_backend("cpu")], cache=False)
    homes = [plan.backend_of(n).name for n in graph.nodes if n.op is not Op.NONE]
    assert "cuda" in homes and "cpu" in homes
    uploads = sum(1 for e in fake.events if e[0] == "htod")
    plan.set_input(x, np.ones((5, 256), np.float32))
    for _ in range(3):
        fake.events.clear()
        plan.run()
        graphs = [e for e in fake.events if e[0] == "graph"]
        assert len(graphs) == 1 and graphs[0][1] == 5  # rms_norm, mul_mat, silu, add, scale: one graph
        assert not any(e[0] == "launch" for e in fake.events)
        assert sum(1 for e in fake.events if e[0] == "htod") == 0  # weights stay on the device
    assert fake.problems == []
    assert uploads >= 2  # the weight and the bias, once, at compile time
    plan.get(out)


@needs_nvcc
def test_device_to_device_copy_waits_for_its_source(monkeypatch, sm80_stats):
    from graphir.backends.base import Place

    be, fake = fake_backend(monkeypatch, True, sm80_stats)
    t = gr.new_tensor(DType.F32, (64,), "t")
    a, b = be.alloc_buffer(256), be.alloc_buffer(256)
    call = be.copy_from(Place(b, 0), t, be, Place(a, 0))
    call()
    assert fake.problems and "before anything wrote it" in fake.problems[0]
    fake.problems.clear()
    be.set_tensor(Place(a, 0), t, np.arange(64, dtype=np.float32))
    call()
    assert fake.problems == []
    np.testing.assert_array_equal(be.get_tensor(Place(b, 0), t).reshape(-1), np.arange(64, dtype=np.float32))


@needs_nvcc
def test_the_fake_catches_bad_records_blocks_and_grids(monkeypatch, sm80_stats):
    be, fake = fake_backend(monkeypatch, True, sm80_stats)
    buf = be.alloc_buffer(256)
    fake.mark_written(int(buf.handle), 256, "test")
    rec = (int(buf.handle) + 128, (4, 256, 256, 256), (64, 1, 1, 1), 0)  # 256 bytes from offset 128
    fake.check_launch("unary", (1, 1, 1), (64, 1, 1), runtime.pack("TTiff", [rec, rec, 0, 0.0, 0.0]), 0)
    assert any("outside every allocation" in p for p in fake.problems)
    fake.problems.clear()
    fake.check_launch("unary", (1, 1, 1), (2048, 1, 1), runtime.pack("TTiff", [rec, rec, 0, 0.0, 0.0]), 0)
    assert any("block" in p for p in fake.problems)
    fake.problems.clear()
    rec = (int(buf.handle), (4, 256, 256, 256), (64, 1, 1, 1), 0)
    fake.check_launch("unary", (1, 1, 1), (32, 1, 1), runtime.pack("TTiff", [rec, rec, 0, 0.0, 0.0]), 0)
    assert fake.problems == ["unary: grid (1, 1, 1) x block (32, 1, 1) does not cover 64 items"]


# ---- on a GPU -----------------------------------------------------------------------


@needs_gpu
def test_parity_on_the_device():
    from graphir.parity.harness import run_all

    table = run_all(["cuda"], "ci")
    assert table.ok, table.format()


# ---- the kernels themselves, in the host emulator --------------------------------------

EMU = emu.available()
needs_emu = pytest.mark.skipif(EMU is not None or not (HAVE_NVCC or compiler.all_cached()), reason=f"{EMU}")


def emulated_parity(monkeypatch, stats: dict, cases: list[str] | None = None, per_case: int | None = None):
    """(case, params, result) of every parity example run by the kernels in the host emulator."""
    from graphir.parity import CASES
    from graphir.parity.harness import check_case, examples

    be, fake = fake_backend(monkeypatch, True, stats, emulate=True)
    out = []
    for name, case in CASES.items():
        if cases is None or name in cases:
            for p in examples(case, "ci")[:per_case]:
                out.append((name, p, check_case(case, p, be)))
                assert fake.problems == [], f"{name} {p}: {fake.problems[:5]}"
    return out


@needs_emu
def test_every_parity_case_passes_in_the_host_emulator(monkeypatch, sm80_stats):
    results = emulated_parity(monkeypatch, sm80_stats)
    bad = [f"{n} {p}: {r.status.value} {r.reason}" for n, p, r in results if not r.passed]
    assert bad == [] and len(results) > 0


@needs_emu
def test_mul_mat_parity_through_the_tiled_kernel(monkeypatch, sm80_stats):
    monkeypatch.setattr(kernels, "MV_MAX_N", 1)  # every several-token example takes mul_mat_tiled
    results = emulated_parity(monkeypatch, sm80_stats, ["mul_mat", "attn_decomposed"])
    assert results and [f"{n} {p}: {r.reason}" for n, p, r in results if not r.passed] == []


@needs_emu
def test_the_emulated_parity_check_bites(monkeypatch, sm80_stats):
    monkeypatch.setitem(kernels.BINARY, Op.ADD, kernels.BINARY[Op.SUB])  # a launcher passing the wrong op code
    results = emulated_parity(monkeypatch, sm80_stats, ["add"], 2)
    assert results and all(r.status.value == "fail" for _, _, r in results)


@needs_emu
@pytest.mark.parametrize("spec", [None, "mtp"], ids=["plain", "mtp"])
def test_the_shipped_tiny_model_decodes_in_the_host_emulator(monkeypatch, spec):
    """End to end on cuda (emulated; the cpu takes nothing the backend supports): the greedy tokens
    are the cpu's, plain and with MTP drafts (verify batches with snapshots, partial rollback)."""
    from graphir import backends

    fake = FakeCuda(True, None, emulate=True)
    monkeypatch.setattr(runtime, "cuda", fake)
    monkeypatch.setattr(backends, "_INSTANCES", {})
    got = gr.load(backend="cuda", spec=spec, n_ctx=128)
    want = gr.load(backend="cpu", spec=spec, n_ctx=128)
    assert got.generate("def add(a, b):", max_tokens=5, temperature=0) == want.generate(
        "def add(a, b):", max_tokens=5, temperature=0
    )
    assert fake.problems == [] and {"mul_mat_vec", "gated_delta_net", "flash_attn_ext"} <= {n for n, _ in fake.launched}


def test_dropped_buffers_go_back_to_the_pool(monkeypatch):
    be, fake = fake_backend(monkeypatch)
    a = be.alloc_buffer(10_000)
    addr, n = int(a.handle), len(fake.allocs)
    del a
    b = be.alloc_buffer(9_000)  # fits the dropped one (not below half its size)
    assert int(b.handle) == addr and len(fake.allocs) == n
    c = be.alloc_buffer(1_000)  # far smaller: a new allocation, not the big one
    assert len(fake.allocs) == n + 1 and int(c.handle) != addr


@pytest.mark.parametrize("fails", [False, True], ids=["captured", "refused"])
def test_driver_level_graph_capture(monkeypatch, fails):
    """pycuda has no graph API: a split is captured through libcuda (ctypes); a refusal falls back to
    launch lists."""
    lib = FakeLibcuda(fails)
    fake = FakeCuda()
    monkeypatch.setattr(fake, "Stream", lambda: HandleStream(fake))
    monkeypatch.setattr(runtime, "cuda", fake)
    monkeypatch.setattr(runtime.ctypes, "CDLL", lambda name: lib)
    be = CUDABackend()
    assert isinstance(be.graphs, runtime.DriverCapture)
    ran = []
    la = [runtime.Launch("unary", "TTiff", b"", (1, 1, 1), (32, 1, 1)) for _ in range(3)]
    for i, x in enumerate(la):
        x.enqueue = lambda stream, i=i: ran.append(i)
    call = be.replay(la)
    if fails:
        assert be.graphs is None and ran == [0, 1, 2]  # captured (not run), then refused
        ran.clear()
        call()
        assert ran == [0, 1, 2]
        return
    assert lib.calls == ["begin 0x5e mode 2", "end", "instantiate 0x6a", "destroy graph 0x6a"]
    assert ran == [0, 1, 2]  # enqueued once, into the capture
    call()
    call()
    assert lib.calls[-2:] == ["launch 0xe7 on 0x5e"] * 2 and ran == [0, 1, 2]


def test_ops_matrix_marks_cuda_compiled_not_run(monkeypatch, capsys):
    from graphir.tools.cli import main

    monkeypatch.setattr(runtime, "cuda", None)
    monkeypatch.setattr(compiler, "all_cached", lambda archs=compiler.ARCHS: True)
    assert main(["ops"]) == 0
    assert "cuda: 39/39 (compiled, not run here)" in capsys.readouterr().out


@needs_nvcc
@pytest.mark.skipif(not HAVE_NVCC, reason="nvcc not found")
def test_newer_gpus_load_ptx(monkeypatch):
    """A device that is neither 8.x nor 9.0 JIT-compiles the compute_90 PTX (NUL-terminated)."""
    fake = FakeCuda()
    loaded = []
    monkeypatch.setattr(fake.Device, "compute_capability", lambda self: (12, 0))
    monkeypatch.setattr(fake, "module_from_buffer", lambda image: loaded.append(image) or FakeModule(fake))
    monkeypatch.setattr(runtime, "cuda", fake)
    be = CUDABackend()
    assert be.arch == compiler.PTX_ARCH
    be.modules.function("unary")
    assert loaded[0].startswith(b"//") and b".target sm_90" in loaded[0] and loaded[0].endswith(b"\0")


# ---- weight types through the emulated kernels -------------------------------------------

QUANTS = [DType.Q8_0, DType.Q4_0, DType.Q4_K, DType.Q5_K, DType.Q6_K]
WEIGHTS = [DType.F32, DType.F16, DType.BF16, *QUANTS]


def _run_emulated(monkeypatch, out, inputs: dict) -> tuple[np.ndarray, set[str]]:
    """out computed on cuda alone (kernels in the host emulator), and the kernels it launched."""
    be, fake = fake_backend(monkeypatch, True, None, emulate=True)
    plan = gr.compile(build_graph(out), [be], cache=False)
    for t, v in inputs.items():
        plan.set_input(t, v)
    plan.run()
    got = plan.get(out)
    assert fake.problems == []
    return got, {n for n, _ in fake.launched}


def _weight_rows(rng: np.random.Generator, type: DType, M: int, K: int) -> tuple[np.ndarray, np.ndarray]:
    """Raw weight data of type and the float64 values it holds."""
    w = rng.standard_normal((M, K)).astype(np.float32)
    if type == DType.BF16:
        raw = (w.view(np.uint32) >> 16).astype(np.uint16)
        return raw, (raw.astype(np.uint32) << 16).view(np.float32).astype(np.float64)
    if type in (DType.F32, DType.F16):
        raw = w.astype(TYPE_INFO[type].np_dtype)
        return raw, raw.astype(np.float64)
    raw = quantize_rows(w, type)
    return raw, dequantize_rows(raw.reshape(M, -1), type).astype(np.float64)


def _nmse(got: np.ndarray, ref: np.ndarray) -> float:
    return float(np.mean((got - ref) ** 2) / max(np.mean(ref**2), 1e-30))


@needs_emu
@pytest.mark.parametrize("type", QUANTS, ids=lambda t: t.name)
def test_get_rows_dequantizes_bit_exact(monkeypatch, type):
    rng = np.random.default_rng(1)
    K, R = 512, 7  # two super-blocks per row
    raw = quantize_rows(rng.standard_normal((R, K)).astype(np.float32), type)
    w = gr.new_weight(type, (K, R), raw, "w")
    idx = np.array([6, 0, 3, 3, 5], dtype=np.int32)
    ids = gr.new_input(DType.I32, (len(idx),), "ids")
    got, used = _run_emulated(monkeypatch, gr.get_rows(w, ids), {ids: idx})
    want = dequantize_rows(raw.reshape(R, -1), type)[idx]
    np.testing.assert_array_equal(got.reshape(want.shape), want)
    assert used == {"get_rows_q"}


@needs_emu
@pytest.mark.parametrize("b_layout", ["contiguous", "transposed"])
@pytest.mark.parametrize("type", WEIGHTS, ids=lambda t: t.name)
def test_mul_mat_vec_every_weight_type(monkeypatch, type, b_layout):
    """One token: warps over rows of a, dequantized 16 elements at a time, against b read as float4
    (contiguous) or element by element (a transposed view); a row count not a multiple of the warps."""
    rng = np.random.default_rng(2)
    K, M = 1024, 9
    raw, w64 = _weight_rows(rng, type, M, K)
    w = gr.new_weight(type, (K, M), raw, "w")
    xv = rng.standard_normal((1, K)).astype(np.float32)
    if b_layout == "contiguous":
        x = gr.new_input(DType.F32, (K, 1), "x")
        b, data = x, xv
    else:
        x = gr.new_input(DType.F32, (1, K), "x")
        b, data = gr.transpose(x), np.ascontiguousarray(xv.T)
    got, used = _run_emulated(monkeypatch, gr.mul_mat(w, b), {x: data})
    assert used == {"mul_mat_vec"}
    assert _nmse(got.reshape(1, M), xv.astype(np.float64) @ w64.T) < 1e-10  # float32 sums of exact weights


@needs_emu
@pytest.mark.parametrize("type", WEIGHTS, ids=lambda t: t.name)
def test_mul_mat_tiled_every_weight_type_odd_sizes(monkeypatch, type):
    """Several tokens: 64 x 64 tiles with partial edge tiles in M and N, a broadcast of a over dim 2,
    F16 activations."""
    rng = np.random.default_rng(4)
    K, M, N = 512, 64 + 5, 64 + 3
    raw, w64 = _weight_rows(rng, type, M, K)
    w = gr.new_weight(type, (K, M), raw, "w")
    x = gr.new_input(DType.F16, (K, N, 2), "x")
    xv = rng.standard_normal((2, N, K)).astype(np.float16)
    got, used = _run_emulated(monkeypatch, gr.mul_mat(w, x), {x: xv})
    assert used == {"mul_mat_tiled"}
    want = xv.astype(np.float64) @ w64.T  # (2, N, M)
    assert got.reshape(want.shape).shape == want.shape
    assert _nmse(got.reshape(want.shape), want) < 1e-10
    assert np.all(np.abs(got.reshape(want.shape) - want) <= 1e-3 * (1 + np.abs(want)))  # every edge written


@needs_emu
@pytest.mark.parametrize("type", WEIGHTS, ids=lambda t: t.name)
def test_mul_mat_id_every_weight_type(monkeypatch, type):
    """MoE experts: each (slot, token) row picks its expert's rows; one b row shared by the slots."""
    rng = np.random.default_rng(5)
    K, M, n_expert, n_used, n_tok = 256, 6, 4, 2, 3
    raw, w64 = _weight_rows(rng, type, M * n_expert, K)
    w = gr.new_weight(type, (K, M, n_expert), raw, "experts")
    x = gr.new_input(DType.F32, (K, 1, n_tok), "x")
    ids = gr.new_input(DType.I32, (n_used, n_tok), "ids")
    xv = rng.standard_normal((n_tok, 1, K)).astype(np.float32)
    iv = np.array([[3, 0], [1, 1], [2, 3]], dtype=np.int32)
    got, used = _run_emulated(monkeypatch, gr.mul_mat_id(w, x, ids), {x: xv, ids: iv})
    assert used == {"mul_mat_vec"}
    w64 = w64.reshape(n_expert, M, K)
    want = np.stack([[w64[iv[t, e]] @ xv[t, 0].astype(np.float64) for e in range(n_used)] for t in range(n_tok)])
    assert _nmse(got.reshape(want.shape), want) < 1e-10


@needs_emu
def test_eval_callback_runs_node_by_node(monkeypatch):
    """A run with an eval callback goes node by node (`lower`): every node's value as the split run gives."""
    be, fake = fake_backend(monkeypatch, True, None, emulate=True)
    x, out = _mixed_graph()
    xv = np.random.default_rng(3).standard_normal((5, 256)).astype(np.float32)
    plan = gr.compile(build_graph(out), [be, get_backend("cpu")], cache=False)
    plan.set_input(x, xv)
    plan.run()
    whole = plan.get(out).copy()
    seen = []
    plan.run(lambda node, value: seen.append(node.op))
    np.testing.assert_array_equal(plan.get(out), whole)
    assert {Op.RMS_NORM, Op.MUL_MAT, Op.SILU, Op.ADD, Op.SCALE, Op.CPY} <= set(seen) and fake.problems == []


@needs_emu
def test_mul_mat_is_batch_invariant_up_to_a_verify_batch(monkeypatch):
    """Up to MV_MAX_N tokens every row is summed as a single token's: a verify batch of drafts gives
    the plain decode's values bit for bit."""
    rng = np.random.default_rng(6)
    K, M, N = 512, 10, kernels.MV_MAX_N
    raw, _ = _weight_rows(rng, DType.Q4_K, M, K)
    xv = rng.standard_normal((N, K)).astype(np.float32)
    w = gr.new_weight(DType.Q4_K, (K, M), raw, "w")
    x = gr.new_input(DType.F32, (K, N), "x")
    batch, _ = _run_emulated(monkeypatch, gr.mul_mat(w, x), {x: xv})
    for n in (0, N - 1):
        x1 = gr.new_input(DType.F32, (K, 1), "x1")
        one, _ = _run_emulated(monkeypatch, gr.mul_mat(w, x1), {x1: xv[n : n + 1]})
        np.testing.assert_array_equal(batch.reshape(N, M)[n], one.reshape(M))
