"""The vulkan backend beyond per-op parity (test_parity.py runs every op case on it): how it reports
itself unavailable, the binding's struct layouts, the shader interfaces against their Python
mirror (with mutants that must fail), spirv-val on every variant, in-shader dequantization bit for
bit, windows over tensors past maxStorageBufferRange, copies, the staging path, and the tiny Qwen3.5
models end to end on vulkan alone and split with the cpu.

Everything but the availability tests skips (with the reason) where no Vulkan device exists.
The 0.8B-shaped model runs only with GRAPHIR_VULKAN_08B=1 (minutes on lavapipe).
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import subprocess
from pathlib import Path

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
from graphir.backends.vulkan import VulkanBackend, kernels, runtime, shaders, spirv, vk
from graphir.graph import build_graph
from graphir.ops import Op
from graphir.quants import dequantize_rows, quantize_rows
from graphir.types import TYPE_INFO, DType

AV = availability("vulkan")
needs_device = pytest.mark.skipif(not AV.ok, reason=f"vulkan unavailable: {AV.reason}")
QUANTS = [DType.Q8_0, DType.Q4_0, DType.Q4_K, DType.Q5_K, DType.Q6_K]
WEIGHTS = [DType.F32, DType.F16, DType.BF16, *QUANTS]


def run_on(out, inputs: dict, backends=("vulkan",)) -> tuple[np.ndarray, gr.Plan]:
    plan = gr.compile(build_graph(out), list(backends), cache=False)
    for t, v in inputs.items():
        plan.set_input(t, v)
    plan.run()
    return plan.get(out), plan


def weight_rows(rng: np.random.Generator, type: DType, M: int, K: int) -> np.ndarray:
    """Raw weight bytes (or values) of type for an [K, M] weight."""
    w = rng.standard_normal((M, K)).astype(np.float32)
    if type in (DType.F32, DType.F16):
        return w.astype(TYPE_INFO[type].np_dtype)
    if type == DType.BF16:
        return (w.view(np.uint32) >> 16).astype(np.uint16)
    return quantize_rows(w, type)


# ---- availability -----------------------------------------------------------------------


@pytest.fixture
def fresh_devices(monkeypatch):
    """Forget the process-wide device list so a patched loader is asked again."""
    monkeypatch.setattr(runtime, "_devices", None)
    monkeypatch.setattr(runtime, "_instance", None)


def test_unavailable_without_the_loader(monkeypatch, fresh_devices):
    monkeypatch.setattr(vk, "_loaded", "the Vulkan loader libvulkan.so.1 is missing (test)")
    monkeypatch.setattr(shaders, "glslc", lambda: "/usr/bin/glslc")
    av = availability("vulkan")
    assert not av.ok and "libvulkan.so.1" in av.reason


def test_unavailable_without_glslc(monkeypatch):
    monkeypatch.setattr(shaders, "glslc", lambda: None)
    av = availability("vulkan")
    assert not av.ok and av.reason.startswith("glslc not found")


@needs_device
@pytest.mark.parametrize(("value", "why"), [("no-such-device-xyz", "matches no device"), ("99", "only")])
def test_device_selection_reason(monkeypatch, value, why):
    monkeypatch.setenv(runtime.ENV_DEVICE, value)
    av = availability("vulkan")
    assert not av.ok and av.reason.startswith(f"{runtime.ENV_DEVICE}=") and why in av.reason


@needs_device
def test_device_selection_by_index_and_name(monkeypatch):
    first = runtime.physical_devices()[0]
    monkeypatch.setenv(runtime.ENV_DEVICE, "0")
    assert runtime.select_device() == first
    monkeypatch.setenv(runtime.ENV_DEVICE, first.name[:4])
    assert not isinstance(runtime.select_device(), str)


# ---- the binding: every struct as vulkan_core.h lays it out ----------------------------


@pytest.mark.skipif(not Path("/usr/include/vulkan/vulkan_core.h").exists() or shutil.which("cc") is None,
                    reason="needs vulkan_core.h (Debian's libvulkan-dev) and a C compiler")  # fmt: skip
def test_binding_structs_match_vulkan_core_h(tmp_path):
    import cffi

    ffi = cffi.FFI()
    ffi.cdef(vk.CDEF)
    lines = ["#include <vulkan/vulkan_core.h>", "#include <stdio.h>", "#include <stddef.h>", "int main(void) {"]
    for s in vk.STRUCTS:
        lines.append(f'printf("{s} %zu\\n", sizeof({s}));')
        lines += [f'printf("{s}.{f} %zu\\n", offsetof({s}, {f}));' for f, _ in ffi.typeof(s).fields]
    (tmp_path / "c.c").write_text("\n".join(lines) + "return 0; }\n")
    subprocess.run(["cc", "-o", str(tmp_path / "c"), str(tmp_path / "c.c")], check=True)
    out = subprocess.run([str(tmp_path / "c")], capture_output=True, text=True, check=True).stdout.split()
    bad = []
    for key, value in zip(out[::2], out[1::2]):
        mine = ffi.offsetof(*key.split(".")) if "." in key else ffi.sizeof(key)
        if mine != int(value):
            bad.append(f"{key}: ours {mine}, vulkan_core.h {value}")
    assert len(out) > 2 * len(vk.STRUCTS) and bad == []


# ---- shader interfaces: the Python mirror against the SPIR-V of every variant ---------------


def expected(shader: kernels.Shader, counts: tuple[int, ...], local: int) -> dict:
    return {"push": [(4 * i, ty) for i, (_, ty) in enumerate(shader.push)], "meta": len(shader.tensors),
            "bindings": dict(enumerate(counts)), "local": (local, 1, 1)}  # fmt: skip


def interface_mismatches(code: bytes, want: dict) -> list[str]:
    """How a compiled variant's interface differs from what the Python side binds and pushes."""
    got = spirv.reflect(code)
    bad = []
    if got.push and got.push != want["push"]:  # (a variant that reads no scalar has no block)
        bad.append(f"push constants: shader {got.push}, python {want['push']}")
    if got.meta_records != want["meta"]:
        bad.append(f"meta records: shader {got.meta_records}, python {want['meta']}")
    # the optimizer drops bindings a variant never reads (a mask without HAS_MASK): a subset is fine
    extra = {b: n for b, n in got.bindings.items() if want["bindings"].get(b) != n}
    if extra:
        bad.append(f"bindings {extra} not bound so by python ({want['bindings']})")
    if got.local_size != want["local"]:
        bad.append(f"work-group size: shader {got.local_size}, python {want['local']}")
    return bad


def _extra_graphs():
    """Variants the ci parity examples may not reach: the tiled mul_mat per weight type."""
    rng = np.random.default_rng(0)
    for type in WEIGHTS:
        w = gr.new_weight(type, (256, 8), weight_rows(rng, type, 8, 256), "w")
        yield gr.mul_mat(w, gr.new_input(DType.F32, (256, 40), "x"))


@pytest.fixture(scope="module")
def variants() -> dict:
    """(file, defines) -> (shader, descriptor counts, local size) of every dispatch that lowering
    every parity case (ci profile) and the extra graphs makes."""
    if not AV.ok:
        pytest.skip(f"vulkan unavailable: {AV.reason}")
    from graphir.parity import CASES
    from graphir.parity.harness import examples

    be = get_backend("vulkan")
    seen: dict = {}
    command = be.command

    def recording(d):
        c = command(d)
        key = c.pipeline.key
        seen.setdefault(key, (d.shader, c.pipeline.counts, c.pipeline.key, d.local))
        return c

    be.command = recording
    tiled_min_n, be.tiled_min_n = be.tiled_min_n, 8  # the tiled mul_mat too (lavapipe never takes it)
    item_rows = be.item_rows
    try:
        outs = [case.build(p).outputs for case in CASES.values() for p in examples(case, "ci")]
        outs += [[o] for o in _extra_graphs()]
        for be.item_rows in (True, False):  # mat-vec rows per invocation (CPU devices) and per work-group
            for o in outs:
                gr.compile(build_graph(*o), [be], cache=False)
    finally:
        del be.command
        be.tiled_min_n, be.item_rows = tiled_min_n, item_rows
    return seen


def _compile_variant(key: str, src: str | None = None) -> bytes:
    file, *args = key.split()
    defines = {}
    for a in args:
        k, _, v = a[2:].partition("=")
        defines[k] = v if v else None
    return shaders.compile_spirv(file, defines, src)


@needs_device
def test_shader_interfaces_match_the_python_side(variants):
    bad = []
    for key, (shader, counts, _, local) in variants.items():
        bad += [f"{key}: {b}" for b in interface_mismatches(_compile_variant(key), expected(shader, counts, local))]
    assert bad == []
    # every shader source and every Python mirror is exercised
    files = {p.name for p in shaders.shader_dir().glob("*.comp")}
    assert files == {s.file for s, *_ in variants.values()}
    assert {s for s, *_ in variants.values()} == set(kernels.SHADERS)


@needs_device
def test_interface_check_bites(variants):
    """Mutants: a push field retyped, a record more, a binding made an array of two; and a push field
    the Python side adds."""
    key = next(k for k, (s, *_) in variants.items() if s is kernels.S_FLASH_ATTN)
    shader, counts, _, local = variants[key]
    want = expected(shader, counts, local)
    src = (shaders.shader_dir() / "flash_attn_ext.comp").read_text()
    windowed_q = (
        "layout(std430, set = 0, binding = 1) readonly buffer q_buf { uint d[]; } q_w[2];\n"
        "const uint q_i = 0u;\nuint q_win = 0u;\n#define q_d q_w[q_win].d"
    )
    for old, new in (("float softcap;", "int softcap;"), ("#define N_TENSORS 5", "#define N_TENSORS 6"),
                     ("TENSOR(1, q, readonly);", windowed_q)):  # fmt: skip
        assert old in src
        bad = interface_mismatches(_compile_variant(key, src.replace(old, new)), want)
        assert bad, f"the mutant {new!r} went unnoticed"
    more = expected(dataclasses.replace(shader, push=(*shader.push, ("extra", "float"))), counts, local)
    assert interface_mismatches(_compile_variant(key), more)


@needs_device
@pytest.mark.skipif(shutil.which("spirv-val") is None, reason="spirv-val not installed (Debian's spirv-tools)")
def test_spirv_val_accepts_every_variant(variants):
    bad = {key: why for key in variants if (why := shaders.validate(_compile_variant(key))) is not None}
    assert bad == {}


# ---- in-shader dequantization and quantization, bit for bit ------------------------------


@needs_device
@pytest.mark.parametrize("type", QUANTS, ids=lambda t: t.name)
def test_get_rows_dequantizes_bit_exact(type):
    rng = np.random.default_rng(1)
    K, R = 512, 7  # two super-blocks per row
    raw = quantize_rows(rng.standard_normal((R, K)).astype(np.float32), type)
    w = gr.new_weight(type, (K, R), raw, "w")
    idx = np.array([6, 0, 3, 3, 5], dtype=np.int32)
    ids = gr.new_input(DType.I32, (len(idx),), "ids")
    got, _ = run_on(gr.get_rows(w, ids), {ids: idx})
    want = dequantize_rows(raw.reshape(R, -1), type)[idx]
    np.testing.assert_array_equal(got.reshape(want.shape), want)


@needs_device
@pytest.mark.parametrize("type", [DType.Q8_0, DType.Q4_0], ids=lambda t: t.name)
def test_cpy_quantizes_bit_exact(type):
    rng = np.random.default_rng(6)
    xv = rng.standard_normal((3, 96)).astype(np.float32)
    xv[1, 32:64] = 0  # a zero block: d = 0
    xv[2, :32] = np.round(xv[2, :32] * 4) / 4  # ties of magnitude and halves to round
    x = gr.new_input(DType.F32, (96, 3), "x")
    got, _ = run_on(gr.cpy(x, gr.new_tensor(type, (96, 3), "q")), {x: xv})
    np.testing.assert_array_equal(got.reshape(3, -1), quantize_rows(xv, type).reshape(3, -1))


@needs_device
def test_f16_stores_round_to_nearest_even():
    """F32 -> F16 by integer arithmetic: ties, subnormals, overflow to inf, as numpy."""
    v = np.array([1 + 2**-11, 1 + 3 * 2**-11, 65504, 65519, 65520, -1e6, 2**-24, 2**-25, 3 * 2**-26, 1e-9,
                  -0.0, np.inf, 6e-5, 0.1, -2.5], dtype=np.float32)  # fmt: skip
    x = gr.new_input(DType.F32, (len(v),), "x")
    got, _ = run_on(gr.cpy(x, gr.new_tensor(DType.F16, (len(v),), "h")), {x: v})
    with np.errstate(over="ignore"):
        want = v.astype(np.float16)
    np.testing.assert_array_equal(got.reshape(-1).view(np.uint16), want.view(np.uint16))


@needs_device
def test_long_rows_in_chunks_per_work_group():
    """Rows longer than a work-group's WG * EPT elements (a partial last chunk) and rows of one element
    (the flat order) through the elementwise, copy, concat, get_rows and set_rows shaders."""
    rng = np.random.default_rng(8)
    n0 = 64 * get_backend("vulkan").ept * 2 + 37
    x = gr.new_input(DType.F32, (n0, 3, 2), "x")
    y = gr.new_input(DType.F16, (n0, 1, 2), "y")
    col = gr.new_input(DType.F32, (1, 3, 2), "col")
    kv = gr.new_input(DType.F16, (n0, 5), "kv")
    idx = gr.new_input(DType.I32, (2,), "idx")
    outs = [gr.mul(gr.silu(x), y), gr.concat(x, x, 0), gr.cpy(x, gr.new_tensor(DType.F16, x.ne, "h")),
            gr.cont(gr.permute(x, 0, 2, 1, 3)), gr.get_rows(gr.reshape(x, n0, 6), idx), gr.scale(col, 2.0, 1.0),
            gr.set_rows(kv, gr.reshape(gr.view_2d(x, n0, 2, x.nb[1], 0), n0, 2), idx)]  # fmt: skip
    data = {x: rng.standard_normal((2, 3, n0)).astype(np.float32), y: rng.standard_normal((2, 1, n0)).astype(np.float16),
            col: rng.standard_normal((2, 3, 1)).astype(np.float32), kv: np.zeros((5, n0), np.float16),
            idx: np.array([4, 1], np.int32)}  # fmt: skip
    got, want = [], []
    for backends, res in ((["vulkan"], got), (["ref"], want)):
        plan = gr.compile(build_graph(*outs), backends, cache=False)
        for t, v in data.items():
            plan.set_input(t, v)
        plan.run()
        res += [plan.get(o).astype(np.float64) for o in outs]
    for g, w in zip(got, want):
        assert nmse(g, w) < 1e-10


# ---- mul_mat variants --------------------------------------------------------------------


@needs_device
@pytest.mark.parametrize(("n_tok", "tiled"), [(1, False), (5, False), (41, True)])
@pytest.mark.parametrize("type", WEIGHTS, ids=lambda t: t.name)
def test_mul_mat_per_weight_type(type, n_tok, tiled, monkeypatch):
    """Odd row counts (partial work-groups and tiles), a broadcast over dims 2 and 3, against the reference."""
    monkeypatch.setattr(get_backend("vulkan"), "tiled_min_n", 8 if tiled else 1 << 30)
    rng = np.random.default_rng(2)
    K, M = 512, 37
    w = gr.new_weight(type, (K, M, 2, 1), weight_rows(rng, type, 2 * M, K), "w")
    x = gr.new_input(DType.F32, (K, n_tok, 4, 2), "x")
    xv = rng.standard_normal((2, 4, n_tok, K)).astype(np.float32)
    out = gr.mul_mat(w, x)
    got, plan = run_on(out, {x: xv})
    assert all(plan.schedule.node_backend[n].name == "vulkan" for n in plan.graph.nodes)
    assert ("mul_mat_tiled" in plan._calls[0].keep[2][0].key) == tiled
    want, _ = run_on(out, {x: xv}, ("ref",))  # float32 products (the cpu rounds activations to 8 bits)
    assert nmse(got, want) < 1e-10


@needs_device
@pytest.mark.parametrize("item_rows", [True, False], ids=["item-rows", "work-groups"])
@pytest.mark.parametrize("type", [DType.F32, DType.Q8_0, DType.Q4_K], ids=lambda t: t.name)
def test_mul_mat_few_tokens_bit_identical_to_one(type, item_rows, monkeypatch):
    """The mat-vec kernel takes blocks of MM_VEC_NT tokens (the last partial): every token's row is
    bit-identical to the same token multiplied alone, so a verify batch gives exactly the logits of
    single-token decodes."""
    be = get_backend("vulkan")
    monkeypatch.setattr(be, "item_rows", item_rows)
    monkeypatch.setattr(be, "tiled_min_n", 1 << 30)
    rng = np.random.default_rng(7)
    K, M = 512, 13
    w = gr.new_weight(type, (K, M), weight_rows(rng, type, M, K), "w")
    n_max = 2 * kernels.MM_VEC_NT + 1
    xv = rng.standard_normal((n_max, K)).astype(np.float32)
    one = gr.new_input(DType.F32, (K, 1), "one")
    alone = np.concatenate([run_on(gr.mul_mat(w, one), {one: xv[i : i + 1]})[0].reshape(1, M) for i in range(n_max)])
    for n in (2, kernels.MM_VEC_NT, n_max):
        x = gr.new_input(DType.F32, (K, n), "x")
        got = run_on(gr.mul_mat(w, x), {x: xv[:n]})[0].reshape(n, M)
        np.testing.assert_array_equal(got, alone[:n])


@needs_device
def test_flash_attn_ext_never_reads_masked_cells():
    """-inf mask entries: the cell's K and V are never read (NaN left in free cells of a padded cache
    does not leak as 0 * NaN) and the result equals attention over the unmasked cells alone."""
    check_masked_cells_skipped(lambda out, inputs: run_on(out, inputs)[0])


@needs_device
def test_mul_mat_id_dequantizes_per_expert():
    check_mul_mat_id_q4_k(lambda out, inputs: run_on(out, inputs)[0])


# ---- tensors past one descriptor's range: windows the shader indexes through ------------------


@pytest.fixture(scope="module")
def small_range():
    """A backend that believes maxStorageBufferRange is 64 KiB: windows of 64 KiB every 32 KiB."""
    if not AV.ok:
        pytest.skip(f"vulkan unavailable: {AV.reason}")
    pd = dataclasses.replace(runtime.select_device(), max_storage_range=1 << 16)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(runtime, "select_device", lambda: pd)
        be = VulkanBackend()
    be.tiled_min_n = 8  # the tiled kernel for 8 tokens (their result must stay within the 64 KiB too)
    return be


@pytest.mark.parametrize("type", WEIGHTS, ids=lambda t: t.name)
def test_windows_over_a_large_weight(small_range, type):
    """get_rows, mat-vec, tiled mul_mat and mul_mat_id over a weight of several windows (rows of
    at most 512 bytes, so 64 of them fit in one window) give the unwindowed results."""
    be, rng = small_range, np.random.default_rng(4)
    K = {1: 128, 32: 448, 256: 256}[TYPE_INFO[type].block_elems]
    M = (3 << 16) // (K * TYPE_INFO[type].block_bytes // TYPE_INFO[type].block_elems) + 5  # > 3 windows
    raw = weight_rows(rng, type, M, K)
    w = gr.new_weight(type, (K, M), raw, "w")
    rows = gr.new_input(DType.I32, (6,), "rows")
    x1, x8 = gr.new_input(DType.F32, (K, 1), "x1"), gr.new_input(DType.F32, (K, 8), "x8")
    experts = gr.new_weight(type, (K, M // 4, 4), raw[: (M // 4) * 4].reshape(-1), "experts")
    ids = gr.new_input(DType.I32, (2, 3), "ids")
    xe = gr.new_input(DType.F32, (K, 2, 3), "xe")
    outs = [gr.get_rows(w, rows), gr.mul_mat(w, x1), gr.mul_mat(w, x8), gr.mul_mat_id(experts, xe, ids)]
    data = {rows: np.array([0, M - 1, M // 2, 77, M - 64, 3], np.int32), ids: np.array([[3, 0], [1, 2], [2, 3]], np.int32),
            x1: rng.standard_normal((1, K)).astype(np.float32), x8: rng.standard_normal((8, K)).astype(np.float32),
            xe: rng.standard_normal((3, 2, K)).astype(np.float32)}  # fmt: skip
    graph = build_graph(*outs)
    plan = gr.compile(graph, [be], cache=False)
    assert all(plan.schedule.node_backend[n] is be for n in graph.nodes)
    assert w.nbytes > 3 * (1 << 15) and be.device.window_shift() == 15
    ref = gr.compile(build_graph(*outs), ["ref"], cache=False)
    for p in (plan, ref):
        for t, v in data.items():
            p.set_input(t, v)
        p.run()
    np.testing.assert_array_equal(plan.get(outs[0]), ref.get(outs[0]))  # bit for bit
    for o in outs[1:]:
        assert nmse(plan.get(o), ref.get(o)) < 1e-10


@needs_device
def test_a_weight_past_128_mib_on_the_real_limit():
    """A Q8_0 weight larger than maxStorageBufferRange itself (lavapipe: 128 MiB), as the 0.8B model's
    token_embd and output: get_rows and a mat-vec read every window."""
    be = get_backend("vulkan")
    K, row = 1024, 1024 // 32 * 34
    M = be.max_range // row + 1000
    rng = np.random.default_rng(5)
    raw = rng.integers(0, 256, (M, row), dtype=np.uint8)
    raw.reshape(M, -1, 34)[:, :, :2] = np.frombuffer(np.float16(1 / 64).tobytes(), np.uint8)  # scales
    w = gr.new_weight(DType.Q8_0, (K, M), raw, "w")
    rows = gr.new_input(DType.I32, (4,), "rows")
    x = gr.new_input(DType.F32, (K, 1), "x")
    xv = rng.standard_normal((1, K)).astype(np.float32)
    pick = np.array([0, M - 1, M // 2, M - 3], np.int32)
    plan = gr.compile(build_graph(gr.get_rows(w, rows), out := gr.mul_mat(w, x)), ["vulkan"], cache=False)
    assert w.nbytes > be.max_range and {plan.schedule.node_backend[n].name for n in plan.graph.nodes} == {"vulkan"}
    plan.set_input(rows, pick)
    plan.set_input(x, xv)
    plan.run()
    got_rows = plan.get(plan.graph.nodes[0]).reshape(4, K)
    np.testing.assert_array_equal(got_rows, dequantize_rows(raw[pick], DType.Q8_0))
    got = plan.get(out).reshape(-1)
    for m0 in range(0, M, 1 << 15):  # the reference in chunks: the whole matrix in float is 0.5 GB
        want = dequantize_rows(raw[m0 : m0 + (1 << 15)], DType.Q8_0).astype(np.float64) @ xv[0]
        assert nmse(got[m0 : m0 + len(want)], want) < 1e-10


# ---- copies, the staging path, a split with the cpu -----------------------------------------


@needs_device
def test_copy_between_vulkan_buffers_stays_on_the_device(monkeypatch):
    be = get_backend("vulkan")
    host_trips = []
    monkeypatch.setattr(be, "get_tensor", lambda *a: host_trips.append(a))
    monkeypatch.setattr(be, "set_tensor", lambda *a: host_trips.append(a))
    submits = be.device.submits
    expect_copied(copy_between(be, be))
    assert host_trips == [] and be.device.submits == submits + 1  # one vkCmdCopyBuffer


@needs_device
def test_copies_with_the_cpu_and_another_device():
    be = get_backend("vulkan")
    expect_copied(copy_between(be, get_backend("cpu")))  # numpy view -> mapped memory
    expect_copied(copy_between(get_backend("cpu"), be))
    expect_copied(copy_between(be, VulkanBackend()))  # another VkDevice: through the host


@needs_device
def test_inputs_and_outputs_through_host_views_across_runs_and_shapes():
    """Mapped memory: Plan.set_input / Plan.get go through cached host views (plain types only);
    values stay right run after run with two plans of different shapes taking turns, and the
    staging path (no views) agrees."""
    rng = np.random.default_rng(8)
    w = gr.new_weight(DType.F32, (32, 16), rng.standard_normal((16, 32)).astype(np.float32), "w")
    for be in (get_backend("vulkan"), VulkanBackend(staging=True)):
        plans = {}
        for n in (1, 3):
            x, ids = gr.new_input(DType.F32, (32, n), "x"), gr.new_input(DType.I32, (n,), "ids")
            out = gr.get_rows(gr.silu(gr.mul_mat(w, x)), ids)
            plans[n] = (gr.compile(build_graph(out), [be], cache=False), x, ids, out)
        buf = next(iter(plans[1][0].buffers.values()))
        t = gr.new_tensor(DType.F32, (4, 2), "t")
        assert (be.host_view(Place(buf, 0), t) is None) == be.device.staging
        assert be.host_view(Place(buf, 0), gr.new_tensor(DType.BF16, (4, 2), "b")) is None
        for step in range(6):
            plan, x, ids, out = plans[(1, 3)[step % 2]]
            n = x.ne[1]
            xv, iv = rng.standard_normal((n, 32)).astype(np.float32), rng.permutation(n).astype(np.int32)
            plan.set_input(x, xv)
            plan.set_input(ids, iv)
            plan.run()
            h = xv.astype(np.float64) @ w.data.reshape(16, 32).T.astype(np.float64)
            assert nmse(plan.get(out).reshape(n, 16), (h / (1 + np.exp(-h)))[iv]) < 1e-10


@needs_device
def test_staging_path_without_mapped_memory():
    """Device memory never mapped (a discrete GPU's path): uploads, strided writes, reads and a
    graph go through a staging buffer and copy commands."""
    be = VulkanBackend(staging=True)
    rng = np.random.default_rng(7)
    w = gr.new_weight(DType.Q8_0, (64, 6), quantize_rows(rng.standard_normal((6, 64)).astype(np.float32), DType.Q8_0))
    x = gr.new_input(DType.F32, (64, 3), "x")
    xv = rng.standard_normal((3, 64)).astype(np.float32)
    out = gr.rms_norm(gr.mul_mat(w, x), 1e-6)
    got, plan = run_on(out, {x: xv}, (be,))
    assert all(b.handle.mapped is None for b in plan.buffers.values())
    want, _ = run_on(out, {x: xv}, ("ref",))
    assert nmse(got, want) < 1e-10
    buf = be.alloc_buffer(64)
    be.write_bytes(buf, 0, np.zeros(16, np.float32))
    view = gr.view_2d(gr.new_tensor(DType.F32, (4, 4)), 2, 3, 16, 4)  # a strided [2, 3] view at element 1
    be.set_tensor(Place(buf, 4), view, np.arange(6, dtype=np.float32))
    np.testing.assert_array_equal(be.read_bytes(buf, 0, 64).view(np.float32).reshape(4, 4),
                                  [[0, 0, 1, 0], [0, 2, 3, 0], [0, 4, 5, 0], [0, 0, 0, 0]])  # fmt: skip


@needs_device
def test_one_command_buffer_per_split_and_barriers_only_where_needed(monkeypatch):
    """Independent dispatches share a barrier, dependent ones get one each (plus the command buffer's
    first and last); every run is one submission."""
    be = get_backend("vulkan")
    barriers = []
    barrier = be.device._barrier
    monkeypatch.setattr(be.device, "_barrier", lambda *a: barriers.append(a) or barrier(*a))
    x, y = gr.new_input(DType.F32, (64,), "x"), gr.new_input(DType.F32, (64,), "y")
    fan_in = gr.add(gr.sqr(x), gr.neg(y))  # sqr, neg independent; add after both
    chain = gr.exp(gr.sqr(gr.neg(x)))  # each step after the last
    for out, n_barriers in ((fan_in, 2 + 1), (chain, 2 + 2)):
        barriers.clear()
        plan = gr.compile(build_graph(out), ["vulkan"], cache=False)
        assert plan.stats.n_splits == 1 and len(barriers) == n_barriers
    submits = be.device.submits
    plan.set_input(x, np.ones(64, np.float32))
    plan.run()
    plan.run()
    assert be.device.submits == submits + 2
    np.testing.assert_allclose(plan.get(chain).reshape(-1), np.e, rtol=1e-6)


# ---- the tiny models end to end --------------------------------------------------------------


@needs_device
@pytest.mark.parametrize("disabled", [(), (Op.GATED_DELTA_NET, Op.FLASH_ATTN_EXT)], ids=["vulkan", "mixed"])
@pytest.mark.parametrize("arch", ["qwen35", "qwen35moe"])
def test_tiny_model_decodes_on_vulkan(arch, disabled, monkeypatch):
    """Prompt in two ubatches, greedy steps, then a rollback round (3 drafts verified, 2 rolled back
    through the recurrent snapshots, another token decoded): every logit row within NMSE 2e-3 of the
    reference. "mixed" leaves the delta rule and attention to the cpu, between vulkan splits."""
    from graphir.models.model import Model
    from graphir.models.tiny import cached_tiny_path

    prompt = [1, 5, 9, 13, 2, 7, 11, 3, 6, 10]
    check_rollback_rows(Model.load(cached_tiny_path(arch)), prompt, "vulkan", "ref", disabled, monkeypatch, n_ubatch=6)


@needs_device
def test_mtp_speculation_on_vulkan_is_lossless():
    """Greedy generation with the MTP head drafting on vulkan gives plain decoding's tokens (on the cpu)."""
    from graphir.models.model import Model
    from graphir.models.speculative import Generator
    from graphir.models.tiny import cached_tiny_path

    model = Model.load(cached_tiny_path("qwen35"))
    prompt = [1, 5, 9, 13, 2, 7, 11, 3]
    plain = list(Generator(model, spec=None, n_ctx=64, n_ubatch=16).generate(prompt, 10))
    gen = Generator(model, spec="mtp", draft_max=3, n_ctx=64, n_ubatch=16, backends=("vulkan",))
    assert list(gen.generate(prompt, 10)) == plain
    assert gen.stats.rounds > 0


@needs_device
def test_generate_cli_prints_the_cpu_greedy_text(capsys):
    """`graphir generate --backend vulkan` on the shipped model: the same greedy text as the cpu."""
    from graphir.tools.cli import main

    outs = {}
    for backend in ("cpu", "vulkan"):
        assert main(["generate", "-p", "def add(a, b):", "-n", "24", "--greedy", "-q", "-b", backend]) == 0
        outs[backend] = capsys.readouterr().out
    assert outs["vulkan"] == outs["cpu"] and len(outs["cpu"]) > len("def add(a, b):")


@pytest.mark.skipif(
    os.environ.get("GRAPHIR_VULKAN_08B") != "1", reason="set GRAPHIR_VULKAN_08B=1 (minutes on lavapipe)"
)
@needs_device
def test_08b_shaped_model_prompt_and_decode():
    """The Qwen3.5-0.8B-shaped Q8_0 file (token_embd/output past 128 MiB, so windowed): a prompt and
    three decode steps on vulkan alone, logits against the cpu's."""
    from graphir.models.batch import Batch
    from graphir.models.context import Context
    from graphir.models.model import Model

    path = Path(os.environ.get("GRAPHIR_08B_DIR", "/work/m08b")) / "qwen35-0.8b-shaped-q8_0.gguf"
    if not path.exists():
        pytest.skip(f"{path} absent (graphir bench --make-08b DIR writes it)")
    model = Model.load(path)
    prompt, steps = list(range(1, 9)), [11, 2024, 77]  # the same tokens on both backends

    def decode(backends):
        ctx = Context(model, n_ctx=64, n_batch=8, n_ubatch=8, backends=backends)
        rows = [ctx.decode(Batch.simple(prompt, 0)).logits]
        for i, tok in enumerate(steps):
            rows.append(ctx.decode(Batch.simple([tok], len(prompt) + i)).logits)
        return np.concatenate(rows), ctx.last_graph()[1]

    ref, _ = decode(("cpu",))
    got, plan = decode(("vulkan",))
    assert {plan.schedule.node_backend[n].name for n in plan.graph.nodes} == {"vulkan"}
    # NOTE: the cpu rounds activations to 8 bits for its Q8_0 dot products (4e-3 here; vulkan and
    # opencl, which multiply in float, agree with each other to 1e-6)
    assert max(nmse(g, r) for g, r in zip(got, ref)) <= 1e-2
