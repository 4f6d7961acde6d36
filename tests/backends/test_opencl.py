"""The opencl backend beyond per-op parity: how it reports itself unavailable, a graph split
between opencl and the cpu fallback, and the tiny Qwen3.5 model decoding on it.

Everything but the availability tests skips (with the reason) where no OpenCL device exists.
"""

from __future__ import annotations

import re

import numpy as np
import pytest
from device_support import (
    check_masked_cells_skipped,
    check_mul_mat_id_q4_k,
    check_rollback_rows,
    copy_between,
    expect_copied,
    nmse,
)

import graphir as gr
from graphir.backends import availability, get_backend
from graphir.backends.base import Place
from graphir.backends.opencl import OpenCLBackend, runtime
from graphir.backends.opencl.runtime import cl
from graphir.graph import build_graph
from graphir.ops import Op
from graphir.quants import dequantize_rows, quantize_rows
from graphir.types import TYPE_INFO, DType

AV = availability("opencl")
needs_device = pytest.mark.skipif(not AV.ok, reason=f"opencl unavailable: {AV.reason}")


# ---- availability ---------------------------------------------------------------------


def test_unavailable_without_pyopencl(monkeypatch):
    monkeypatch.setattr(runtime, "cl", None)
    av = availability("opencl")
    assert not av.ok and av.reason.startswith("pyopencl is not installed")


@pytest.mark.skipif(runtime.cl is None, reason="pyopencl is not installed")
@pytest.mark.parametrize(("value", "why"), [("no-such-device-xyz", "matches no device"), ("99", "only")])
def test_device_selection_reason(monkeypatch, value, why):
    monkeypatch.setenv(runtime.ENV_DEVICE, value)
    av = availability("opencl")
    assert not av.ok
    assert av.reason.startswith(f"{runtime.ENV_DEVICE}=") and why in av.reason


@needs_device
def test_device_selection_by_index_and_name(monkeypatch):
    first = runtime.all_devices()[0][1]
    monkeypatch.setenv(runtime.ENV_DEVICE, "0")
    assert runtime.select_device().int_ptr == first.int_ptr
    monkeypatch.setenv(runtime.ENV_DEVICE, first.name[:4])
    assert not isinstance(runtime.select_device(), str)


# ---- a graph split between opencl and the cpu fallback ------------------------------


_RNG = np.random.default_rng(0)
W_Q = quantize_rows(_RNG.standard_normal((12, 256)).astype(np.float32), DType.Q4_K)
BIAS = _RNG.standard_normal(12).astype(np.float32)


def _mixed_graph():
    """rms_norm -> mul_mat by Q4_K weights (disabled on opencl by the test) -> silu -> add -> scale
    -> cpy to I32 (not on opencl)."""
    K, M, N = 256, 12, 5
    x = gr.new_input(DType.F32, (K, N), "x")
    w = gr.new_weight(DType.Q4_K, (K, M), W_Q, "w")
    bias = gr.from_numpy(BIAS, "bias")
    h = gr.mul_mat(w, gr.rms_norm(x, 1e-6))
    c = gr.add(gr.silu(h), bias)
    return x, c, gr.cpy(gr.scale(c, 100.0), gr.new_tensor(DType.I32, c.ne, "c_i32"))


@needs_device
def test_mixed_graph_falls_back_to_cpu_with_copies(monkeypatch):
    monkeypatch.delitem(get_backend("opencl").KERNELS, Op.MUL_MAT)  # deliberately disabled: runs on the cpu
    rng = np.random.default_rng(0)
    x, c, trunc = _mixed_graph()
    xv = rng.standard_normal((5, 256)).astype(np.float32)
    graph = build_graph(c, trunc)
    outs = {}
    for backends in (["cpu"], ["opencl"]):
        plan = gr.compile(graph, backends, cache=False)
        plan.set_input(x, xv)
        plan.run()
        outs[backends[0]] = (plan.get(c), plan.get(trunc))
        if backends == ["opencl"]:
            where = {n.op.value: plan.schedule.node_backend[n].name for n in graph.nodes}
            assert where == {"rms_norm": "opencl", "mul_mat": "cpu", "silu": "opencl", "add": "opencl",
                             "scale": "opencl", "cpy": "cpu"}  # fmt: skip
            assert plan.stats.n_splits == 4 and plan.stats.n_copies >= 3
    (c_cpu, o_cpu), (c_cl, o_cl) = outs["cpu"], outs["opencl"]
    assert nmse(c_cl, c_cpu) < 1e-10
    np.testing.assert_array_equal(o_cl, o_cpu)
    # and against the formula: silu(W (x / rms(x))) + bias, and 100 times that truncated
    w = dequantize_rows(W_Q.reshape(12, -1), DType.Q4_K).astype(np.float64)
    xn = xv / np.sqrt(np.mean(xv.astype(np.float64) ** 2, axis=-1, keepdims=True) + 1e-6)
    h = xn @ w.T
    want = h / (1.0 + np.exp(-h)) + BIAS
    # NOTE: the fallback's mul_mat (native cpu) rounds activations to Q8_K blocks as ggml does: the mul_mat bound
    assert nmse(c_cl.reshape(5, 12), want) < 5e-4
    assert np.abs(o_cl.reshape(5, 12) - np.trunc(c_cl.reshape(5, 12) * 100)).max() <= 1  # truncation of c


# ---- copies between OpenCL buffers ---------------------------------------------------


@needs_device
@pytest.mark.parametrize("svm", [True, False], ids=["svm", "buffers"])
def test_copy_between_opencl_buffers_stays_on_the_device(svm, monkeypatch):
    be = get_backend("opencl") if svm else OpenCLBackend(svm=False)
    if svm and not be.svm:
        pytest.skip("the device has no fine-grained buffer SVM")
    host_trips = []
    monkeypatch.setattr(be, "get_tensor", lambda *a: host_trips.append(a))
    monkeypatch.setattr(be, "set_tensor", lambda *a: host_trips.append(a))
    expect_copied(copy_between(be, be))
    assert host_trips == []  # clEnqueueCopyBuffer, no read back


@needs_device
def test_copy_from_another_context_or_the_cpu_goes_through_the_host():
    be = get_backend("opencl")
    expect_copied(copy_between(be, OpenCLBackend()))  # a second context: buffers do not mix
    expect_copied(copy_between(be, get_backend("cpu")))
    expect_copied(copy_between(get_backend("cpu"), be))


# ---- memory: SVM (host I/O without commands) and cl.Buffer objects -----------------------


@needs_device
def test_inputs_and_outputs_between_runs_and_plans_of_two_shapes():
    """Inputs written through the SVM host views (no command) and outputs read back stay right run
    after run, with two plans of different shapes taking turns on one backend, and match the
    cl.Buffer memory of a backend created with svm=False (blocking copies)."""
    rng = np.random.default_rng(8)
    w = gr.new_weight(DType.F32, (32, 16), rng.standard_normal((16, 32)).astype(np.float32), "w")

    def graph(n: int):
        x = gr.new_input(DType.F32, (32, n), "x")
        ids = gr.new_input(DType.I32, (n,), "ids")
        return x, ids, gr.get_rows(gr.silu(gr.mul_mat(w, x)), ids)

    def want(xv: np.ndarray, iv: np.ndarray) -> np.ndarray:
        h = xv.astype(np.float64) @ w.data.reshape(16, 32).T.astype(np.float64)
        return (h / (1 + np.exp(-h)))[iv]

    for be in (get_backend("opencl"), OpenCLBackend(svm=False)):
        plans = {}
        for n in (1, 3):
            x, ids, out = graph(n)
            plans[n] = (gr.compile(build_graph(out), [be], cache=False), x, ids, out)
        for step in range(6):
            n = (1, 3)[step % 2]
            plan, x, ids, out = plans[n]
            xv = rng.standard_normal((n, 32)).astype(np.float32)
            iv = rng.permutation(n).astype(np.int32)
            plan.set_input(x, xv)
            plan.set_input(ids, iv)
            plan.run()
            got = plan.get(out).reshape(n, 16)
            assert nmse(got, want(xv, iv)) < 1e-10, (be.describe(), step)
        assert be.busy is False  # plan.get waited for the queue


@needs_device
def test_svm_host_view_only_for_plain_types():
    be = get_backend("opencl")
    if not be.svm:
        pytest.skip("the device has no fine-grained buffer SVM")
    buf = be.alloc_buffer(1024)
    for type, view in (
        (DType.F32, True),
        (DType.I32, True),
        (DType.F16, True),
        (DType.BF16, False),
        (DType.Q8_0, False),
    ):
        t = gr.new_tensor(type, (32, 2), "t")
        v = be.host_view(Place(buf, 64), t)
        assert (v is not None) == view, type
        if view:
            assert v.shape == (1, 1, 2, 32) and v.dtype == TYPE_INFO[type].np_dtype
    plain = OpenCLBackend(svm=False)
    assert plain.host_view(Place(plain.alloc_buffer(256), 0), gr.new_tensor(DType.F32, (32, 2), "t")) is None


# ---- block-quantized weights, dequantized in-kernel -------------------------------------

QUANTS = [DType.Q8_0, DType.Q4_0, DType.Q4_K, DType.Q5_K, DType.Q6_K]


def _run_opencl(out, inputs: dict) -> np.ndarray:
    plan = gr.compile(build_graph(out), ["opencl"], cache=False)
    assert all(plan.schedule.node_backend[n].name == "opencl" for n in plan.graph.nodes)
    for t, v in inputs.items():
        plan.set_input(t, v)
    plan.run()
    return plan.get(out)


@needs_device
@pytest.mark.parametrize("type", QUANTS, ids=lambda t: t.name)
def test_get_rows_dequantizes_bit_exact(type):
    rng = np.random.default_rng(1)
    K, R = 512, 7  # two super-blocks per row
    raw = quantize_rows(rng.standard_normal((R, K)).astype(np.float32), type)
    w = gr.new_weight(type, (K, R), raw, "w")
    idx = np.array([6, 0, 3, 3, 5], dtype=np.int32)
    ids = gr.new_input(DType.I32, (len(idx),), "ids")
    got = _run_opencl(gr.get_rows(w, ids), {ids: idx})
    want = dequantize_rows(raw.reshape(R, -1), type)[idx]
    np.testing.assert_array_equal(got.reshape(want.shape), want)


@needs_device
@pytest.mark.parametrize("ne0", [12, 10], ids=["row4", "per-element"])
def test_state_row_copies_get_rows_set_rows(ne0, monkeypatch):
    """The recurrent state's row copies: get_rows then set_rows of F32 rows (ROW4: contiguous, ne0 % 4
    == 0, one work-item per 4 elements, copied as bits: a NaN payload survives), against numpy."""

    rng = np.random.default_rng(10)
    n_rows = 7
    state = rng.standard_normal((n_rows, ne0)).astype(np.float32)
    state[2, 1] = np.frombuffer(np.uint32(0x7FC01234).tobytes(), np.float32)[0]  # a NaN with a payload
    s = gr.new_input(DType.F32, (ne0, n_rows), "s")
    src, dst = gr.new_input(DType.I32, (2,), "src"), gr.new_input(DType.I32, (2,), "dst")
    be = get_backend("opencl")
    used: list[dict] = []
    kernel = be.programs.kernel
    monkeypatch.setattr(be.programs, "kernel", lambda f, n, d=None: used.append(d) or kernel(f, n, d))
    got = _run_opencl(gr.set_rows(s, gr.get_rows(s, src), dst),
                      {s: state, src: np.array([2, 5], np.int32), dst: np.array([0, 6], np.int32)})  # fmt: skip
    want = state.copy()
    want[[0, 6]] = state[[2, 5]]
    assert got.reshape(n_rows, ne0).view(np.uint32).tolist() == want.view(np.uint32).tolist()
    assert all(("ROW4" in d) == (ne0 % 4 == 0) for d in used)


def _weight_rows(rng: np.random.Generator, type: DType, M: int, K: int) -> tuple[np.ndarray, np.ndarray]:
    """Raw weight bytes (or floats) of type and the float64 values they hold."""
    w = rng.standard_normal((M, K)).astype(np.float32)
    if type in (DType.F32, DType.F16):
        raw = w.astype(TYPE_INFO[type].np_dtype)
        return raw, raw.astype(np.float64)
    raw = quantize_rows(w, type)
    return raw, dequantize_rows(raw.reshape(M, -1), type).astype(np.float64)


@needs_device
@pytest.mark.parametrize("b_layout", ["contiguous", "transposed"])
@pytest.mark.parametrize("type", [DType.F32, DType.F16, *QUANTS], ids=lambda t: t.name)
def test_mul_mat_vector_paths(type, b_layout):
    """16-element units of a (dequantized in-kernel or vector-loaded) against b read as
    vectors (contiguous rows) or gathered (a transposed view)."""
    rng = np.random.default_rng(2)
    K, M, N = 2304, 9, 3  # 144 units of 16: work-items take 9 units each
    raw, w64 = _weight_rows(rng, type, M, K)
    w = gr.new_weight(type, (K, M), raw, "w")
    xv = rng.standard_normal((N, K)).astype(np.float32)
    if b_layout == "contiguous":
        x = gr.new_input(DType.F32, (K, N), "x")
        b, data = x, xv
    else:
        x = gr.new_input(DType.F32, (N, K), "x")
        b, data = gr.transpose(x), np.ascontiguousarray(xv.T)
    got = _run_opencl(gr.mul_mat(w, b), {x: data}).reshape(N, M)
    assert nmse(got, xv.astype(np.float64) @ w64.T) < 1e-10  # float32 accumulation of exact weights


@needs_device
@pytest.mark.parametrize("type_b", [DType.F32, DType.F16], ids=lambda t: t.name)
@pytest.mark.parametrize("type", [DType.F32, DType.F16, *QUANTS], ids=lambda t: t.name)
def test_mul_mat_tiled_several_tokens_odd_sizes(type, type_b, monkeypatch):
    """Several tokens take the tiled kernel: M, N not multiples of a work-group's block (nor of
    an item's), K not a multiple of the staged chunk (but for the 256-blocks), a broadcast over
    dims 2 and 3, against the cpu reference."""
    from graphir.backends.opencl import kernels

    rng = np.random.default_rng(4)
    (tm, tn), (wm, wn), kc = kernels.MM_TILE, kernels.MM_TILE_WG, kernels.MM_TILE_KC
    blk = TYPE_INFO[type].block_elems
    K = {1: 16 * (kc + 1), 32: 16 * (2 * kc + 2), 256: 512}[blk]  # units of 16: kc + 1, 2 kc + 2, 2 kc
    M, N = wm * tm + tm + 1, wn * tn + tn + 3  # the second blocks partial, some items wholly past the edge
    raw = _weight_rows(rng, type, M * 2, K)[0]
    w = gr.new_weight(type, (K, M, 2, 1), raw, "w")
    x = gr.new_input(type_b, (K, N, 4, 2), "x")
    xv = rng.standard_normal((2, 4, N, K)).astype(TYPE_INFO[type_b].np_dtype)
    out = gr.mul_mat(w, x)
    be = get_backend("opencl")
    used: list[str] = []
    kernel = be.programs.kernel
    monkeypatch.setattr(be.programs, "kernel", lambda f, n, d=None: used.append(n) or kernel(f, n, d))
    got = _run_opencl(out, {x: xv})
    assert used == ["mul_mat_tiled"]
    plan = gr.compile(build_graph(out), ["ref"], cache=False)
    plan.set_input(x, xv)
    plan.run()
    want = plan.get(out).astype(np.float64)
    assert got.shape == want.shape
    assert nmse(got.astype(np.float64), want) <= 5e-4
    # every block of d written (the edges included): no row or token left at the buffer's fill
    assert np.all(np.abs(got - want) <= 1e-3 * (1 + np.abs(want)))


@needs_device
@pytest.mark.parametrize("item_rows", [True, False], ids=["item-rows", "work-groups"])
@pytest.mark.parametrize("type", [DType.F32, DType.F16, DType.Q8_0, DType.Q4_K], ids=lambda t: t.name)
def test_mul_mat_few_tokens_bit_identical_to_one(type, item_rows, monkeypatch):
    """Up to MM_VEC_MAX_N tokens stay on the mat-vec kernel (blocks of NT tokens per work-item or
    work-group, the last block partial): every token's row is bit-identical to the same token decoded
    alone, so a verify batch gives exactly the logits of single-token decodes."""
    from graphir.backends.opencl import kernels

    rng = np.random.default_rng(7)
    K, M = 512, 5
    raw = _weight_rows(rng, type, M, K)[0]
    w = gr.new_weight(type, (K, M), raw, "w")
    xv = rng.standard_normal((kernels.MM_VEC_MAX_N + 1, K)).astype(np.float32)
    be = get_backend("opencl")
    monkeypatch.setattr(be, "item_rows", item_rows)
    used: list[str] = []
    kernel = be.programs.kernel
    monkeypatch.setattr(be.programs, "kernel", lambda f, n, d=None: used.append(n) or kernel(f, n, d))
    one = gr.new_input(DType.F32, (K, 1), "one")
    alone = np.concatenate(
        [_run_opencl(gr.mul_mat(w, one), {one: xv[i : i + 1]}).reshape(1, M) for i in range(len(xv))]
    )
    for n in (2, 3, kernels.MM_VEC_MAX_N, kernels.MM_VEC_MAX_N + 1):
        x = gr.new_input(DType.F32, (K, n), "x")
        used.clear()
        got = _run_opencl(gr.mul_mat(w, x), {x: xv[:n]}).reshape(n, M)
        assert used == (["mul_mat"] if n <= kernels.MM_VEC_MAX_N else ["mul_mat_tiled"])
        if n <= kernels.MM_VEC_MAX_N:
            np.testing.assert_array_equal(got, alone[:n])
        else:
            assert nmse(got, alone[:n]) < 1e-10


@needs_device
def test_mul_mat_id_dequantizes_q4_k_per_expert():
    check_mul_mat_id_q4_k(_run_opencl)


# ---- kernel argument layouts: the .cl signatures against what the launchers set ---------

TENSOR_ARGS = ["global*", "ulong", "int4", "ulong4"]  # TENSOR(T) of common.h


def kernel_signatures(src: str) -> dict[str, list[str]]:
    """Each `__kernel` of an OpenCL source -> its parameter types, TENSOR(T) expanded to its
    four and pointers written as "global*" / "local*"."""
    src = re.sub(r"//[^\n]*|/\*.*?\*/", "", src, flags=re.S)
    out: dict[str, list[str]] = {}
    for m in re.finditer(r"__kernel\s+void\s+(\w+)\s*\(", src):
        depth, i, cut, params = 1, m.end(), m.end(), []
        while depth:  # split the parameter list at its top-level commas
            c = src[i]
            depth += (c == "(") - (c == ")")
            if (c == "," and depth == 1) or depth == 0:
                params.append(" ".join(src[cut:i].split()))
                cut = i + 1
            i += 1
        types: list[str] = []
        for p in filter(None, params):
            if re.fullmatch(r"TENSOR\(\w+\)", p):
                types += TENSOR_ARGS
            elif "*" in p:
                types.append("local*" if "__local" in p else "global*")
            else:
                types.append(" ".join(w for w in p.split()[:-1] if w != "const"))
        assert m.group(1) not in out, f"two __kernel {m.group(1)} in one source"
        out[m.group(1)] = types
    return out


def arg_type(v: object) -> str:
    """The OpenCL C type a kernel argument set from Python has."""
    if cl is not None and isinstance(v, cl.Buffer | cl.SVM):
        return "global*"
    if isinstance(v, np.ndarray) and v.shape == ():
        for name in ("int4", "uint4", "ulong4", "float4"):
            if v.dtype == getattr(cl.cltypes, name):
                return name
    scalar = {np.uint64: "ulong", np.int64: "long", np.uint32: "uint", np.int32: "int", np.float32: "float"}
    return scalar.get(type(v), f"untyped {type(v).__name__}")


class _Recorded:
    """A stand-in kernel: records the arguments a launcher sets."""

    def __init__(self, file: str, name: str, defines: dict | None) -> None:
        self.file, self.name, self.defines, self.args = file, name, dict(defines or {}), {}

    def set_arg(self, i: int, v: object) -> None:
        self.args[i] = v


class _Recorder:
    def __init__(self) -> None:
        self.kernels: list[_Recorded] = []

    def kernel(self, file: str, name: str, defines: dict | None = None) -> _Recorded:
        self.kernels.append(_Recorded(file, name, defines))
        return self.kernels[-1]


def layout_mismatches(sources: dict[str, str], launched: list[tuple[str, str, str, list[str]]]) -> list[str]:
    """Every disagreement between the sources' kernel signatures and launches
    (file, kernel, defines, argument types)."""
    sigs = {f: kernel_signatures(src) for f, src in sources.items()}
    bad = []
    for file, name, defines, got in launched:
        want = sigs.get(file, {}).get(name)
        if want is None:
            bad.append(f"{file}: no __kernel {name}")
        elif got != want:
            bad.append(f"{file}:{name} [{defines}]: python sets {got}, the kernel takes {want}")
    return bad


def _launches_of_every_case(monkeypatch) -> list[tuple[str, str, str, list[str]]]:
    """Lower every parity case's examples onto opencl with recording kernels."""
    from graphir.backends.opencl import kernels
    from graphir.parity import CASES
    from graphir.parity.harness import examples

    be = get_backend("opencl")
    rec = _Recorder()
    monkeypatch.setattr(be, "programs", rec)
    # the cases' few tokens on mat-vec (per item, per work-group), then on the tiled kernel
    for vec_max_n, item_rows in ((kernels.MM_VEC_MAX_N, True), (kernels.MM_VEC_MAX_N, False), (1, True)):
        monkeypatch.setattr(kernels, "MM_VEC_MAX_N", vec_max_n)
        monkeypatch.setattr(be, "item_rows", item_rows)
        for case in CASES.values():
            for p in examples(case, "ci"):
                gr.compile(build_graph(*case.build(p).outputs), [be, get_backend("cpu")], cache=False)
    out = set()
    for k in rec.kernels:
        idx = sorted(k.args)
        assert idx == list(range(len(idx))), f"{k.file}:{k.name} arguments set at {idx}"
        out.add((k.file, k.name, " ".join(f"{a}={b}" for a, b in sorted(k.defines.items())),
                 tuple(arg_type(k.args[i]) for i in idx)))  # fmt: skip
    return [(f, n, d, list(t)) for f, n, d, t in sorted(out)]


@needs_device
def test_kernel_argument_layouts_match_the_cl_signatures(monkeypatch):
    sources = {p.name: p.read_text() for p in runtime.shader_dir().glob("*.cl")}
    launched = _launches_of_every_case(monkeypatch)
    assert layout_mismatches(sources, launched) == []
    # every __kernel of every source is launched by some lowering
    declared = {(f, n) for f, src in sources.items() for n in kernel_signatures(src)}
    assert declared == {(f, n) for f, n, _, _ in launched}
    # the check bites: a parameter whose type changed, one dropped, and a launcher that sets one too many
    fa = sources["flash_attn_ext.cl"]
    for mutant in (fa.replace("float softcap", "int softcap"), fa.replace(", float softcap", "")):
        assert mutant != fa
        bad = layout_mismatches(sources | {"flash_attn_ext.cl": mutant}, launched)
        assert bad and all(b.startswith("flash_attn_ext.cl:flash_attn_ext") for b in bad)
    extra = [(f, n, d, t + ["float"]) if n == "norm" else (f, n, d, t) for f, n, d, t in launched]
    bad = layout_mismatches(sources, extra)
    assert bad and all(b.startswith("norm.cl:norm ") for b in bad)


def test_kernel_signature_parser():
    src = """// a comment with __kernel void fake(int x)
    __kernel void k1(TENSOR(a), __global const float *s, /* c */ TENSOR(d), float scale, int4 sec) { f(a, (1)); }
    __kernel void k2(__local float *tmp, ulong n) {}"""
    assert kernel_signatures(src) == {
        "k1": TENSOR_ARGS + ["global*"] + TENSOR_ARGS + ["float", "int4"],
        "k2": ["local*", "ulong"],
    }


@needs_device
@pytest.mark.parametrize("type", [DType.Q8_0, DType.Q4_0], ids=lambda t: t.name)
def test_cpy_quantizes_bit_exact(type):
    rng = np.random.default_rng(6)
    xv = rng.standard_normal((3, 96)).astype(np.float32)
    xv[1, 32:64] = 0  # a zero block: d = 0
    xv[2, :32] = np.round(xv[2, :32] * 4) / 4  # ties of magnitude and halves to round
    x = gr.new_input(DType.F32, (96, 3), "x")
    out = gr.cpy(x, gr.new_tensor(type, (96, 3), "q"))
    got = _run_opencl(out, {x: xv})
    np.testing.assert_array_equal(got.reshape(3, -1), quantize_rows(xv, type).reshape(3, -1))


# ---- vector and scalar variants of the attention and delta-rule kernels ------------------


def _opencl_vs_cpu(out, inputs: dict) -> float:
    """NMSE of out computed on opencl against the cpu reference (every node on opencl)."""
    got = _run_opencl(out, inputs)
    plan = gr.compile(build_graph(out), ["cpu"], cache=False)
    for t, v in inputs.items():
        plan.set_input(t, v)
    plan.run()
    return nmse(got, plan.get(out))


@needs_device
@pytest.mark.parametrize("item_rows", [True, False], ids=["item-rows", "work-groups"])
@pytest.mark.parametrize("D", [8, 6])  # QK_VEC4 / scalar score loop
def test_flash_attn_ext_head_sizes(D, item_rows, monkeypatch):
    monkeypatch.setattr(get_backend("opencl"), "item_rows", item_rows)
    rng = np.random.default_rng(4)
    q = gr.new_input(DType.F32, (D, 3, 4, 1), "q")
    k = gr.new_input(DType.F16, (D, 70, 2, 1), "k")
    v = gr.new_input(DType.F16, (D, 70, 2, 1), "v")
    data = {q: rng.standard_normal((1, 4, 3, D)).astype(np.float32),
            k: rng.standard_normal((1, 2, 70, D)).astype(np.float16),
            v: rng.standard_normal((1, 2, 70, D)).astype(np.float16)}  # fmt: skip
    assert _opencl_vs_cpu(gr.flash_attn_ext(q, k, v, None, D**-0.5), data) < 1e-10


@needs_device
@pytest.mark.parametrize("item_rows", [True, False], ids=["item-rows", "work-groups"])
def test_flash_attn_ext_never_reads_masked_cells(item_rows, monkeypatch):
    """-inf mask entries: the cell's K and V are never read (NaN left in free cells of a padded cache
    does not leak as 0 * NaN) and the result equals attention over the unmasked cells alone."""
    monkeypatch.setattr(get_backend("opencl"), "item_rows", item_rows)
    check_masked_cells_skipped(_run_opencl)


@needs_device
@pytest.mark.parametrize("S_v", [8, 6])  # VEC4 / scalar state loops
def test_gated_delta_net_state_sizes(S_v):
    rng = np.random.default_rng(5)
    H, T = 3, 5
    shapes = {"q": (S_v, H, T, 1), "k": (S_v, H, T, 1), "v": (S_v, H, T, 1), "g": (S_v, H, T, 1),
              "beta": (1, H, T, 1), "state": (S_v, S_v, H, 1)}  # fmt: skip
    ts = {n: gr.new_input(DType.F32, ne, n) for n, ne in shapes.items()}
    data = {t: (rng.standard_normal(t.ne[::-1]) * 0.3).astype(np.float32) for t in ts.values()}
    out = gr.gated_delta_net(*ts.values(), snapshots=2)
    assert _opencl_vs_cpu(out, data) < 1e-10


# ---- the tiny model end to end ---------------------------------------------------------


@needs_device
@pytest.mark.parametrize("disabled", [(), (Op.GATED_DELTA_NET, Op.FLASH_ATTN_EXT)], ids=["opencl", "mixed"])
@pytest.mark.parametrize("arch", ["qwen35", "qwen35moe"])
def test_tiny_model_decodes_on_opencl(arch, disabled, monkeypatch):
    """Prompt, greedy steps, then a rollback round (3 drafts verified, 2 rolled back through the
    recurrent snapshots, another token decoded): every logit row matches the cpu backend. "mixed"
    disables the delta rule and attention on opencl, so they run on the cpu between opencl splits."""
    from graphir.models.model import Model
    from graphir.models.tiny import cached_tiny_path

    prompt = [1, 5, 9, 13, 2, 7, 11, 3]
    check_rollback_rows(Model.load(cached_tiny_path(arch)), prompt, "opencl", "cpu", disabled, monkeypatch, n_ubatch=16)
