"""The native cpu mul_mat and mul_mat_id (shaders/cpu/matmul.c, quantize_act.c, vecdot*.c).

Each weight type (F32, F16, BF16, Q8_0, Q4_0, Q4_K, Q5_K, Q6_K), at odd row counts, 1..17
tokens (every batch of 1..8: decode and verify batches), several thread counts and every ISA
level, is checked
  - against the reference within the harness's mul_mat bound (MATMUL_NMSE);
  - against an exact model: float64 dot products of the weights with the activations rounded
    exactly as the kernels round them (Q8_0 blocks for Q8_0/Q4_0, Q8_K for the K-quants, none
    for F32/F16/BF16), within float32 accumulation error, so a wrong scale, sign or lane is
    caught tightly;
  - bit for bit across ISA levels (one canonical reduction order, matmul.h) and for batch
    invariance: a token's row is the same alone, in any batch, at any thread count.
Q8_0 and Q4_0 weights are repacked (backends/cpu/repack.py); "Q8_0-gguf" and "Q4_0-gguf" run
the same checks with repacking off, on the GGUF-layout kernels (which also serve matrices that
are not weights).
"""

from __future__ import annotations

import numpy as np
import pytest
from cpu_support import set_isa as _set_isa

import graphir as gr
from graphir.backends import availability, get_backend
from graphir.layout import bf16_to_f32, f32_to_bf16
from graphir.ops import Op
from graphir.parity import CASES
from graphir.parity.compare import MATMUL_NMSE, nmse
from graphir.parity.harness import check_case
from graphir.parity.inputs import random_blocks
from graphir.quants import dequantize_rows
from graphir.tensor import Tensor
from graphir.types import TYPE_INFO, DType

NATIVE = "cpu"
pytestmark = pytest.mark.skipif(not availability(NATIVE).ok, reason=f"native cpu: {availability(NATIVE).reason}")

F32, F16, BF16 = DType.F32, DType.F16, DType.BF16
Q8_0, Q4_0, Q4_K, Q5_K, Q6_K = DType.Q8_0, DType.Q4_0, DType.Q4_K, DType.Q5_K, DType.Q6_K
WEIGHTS = (F32, F16, BF16, Q8_0, Q4_0, Q4_K, Q5_K, Q6_K)
ISAS = {"portable": 0, "avx2": 1, "avx512": 3, "avx512-vnni": 7}
# row lengths per block size: odd block counts (a lone last Q8 pair half), vector tails
K_OF = {1: (1, 15, 16, 37, 100), 32: (32, 96, 224, 608), 256: (256, 768)}  # 608: two whole 8-block groups, 3 left


# ---- data and runs ---------------------------------------------------------------------


# (weight type, repacked): every type, and Q8_0 and Q4_0 once more in their GGUF layout
LAYOUTS = [(t, True) for t in WEIGHTS] + [(Q8_0, False), (Q4_0, False)]
LAYOUT_IDS = [t.name for t in WEIGHTS] + ["Q8_0-gguf", "Q4_0-gguf"]


def weight_data(type: DType, rows: int, K: int, rng: np.random.Generator) -> np.ndarray:
    """Host data of `rows` weight rows: random valid blocks, or uniform values."""
    if TYPE_INFO[type].is_quantized:
        return random_blocks(type, rows, K, rng)
    x = rng.uniform(-1, 1, (rows, K)).astype(np.float32)
    return f32_to_bf16(x) if type == BF16 else x.astype(TYPE_INFO[type].np_dtype)


def weight_f64(type: DType, data: np.ndarray, K: int) -> np.ndarray:
    """float64 weight values (rows, K)."""
    rows = data.reshape(-1, data.shape[-1])
    if TYPE_INFO[type].is_quantized:
        return dequantize_rows(rows, type).astype(np.float64)
    if type == BF16:
        return bf16_to_f32(rows).astype(np.float64)
    return rows.astype(np.float64)


def activations_as_rounded(type: DType, x: np.ndarray) -> np.ndarray:
    """The activations (..., K) as the kernels see them, in float64: Q8_0 blocks (ggml's x86
    quantize_row_q8_0: d = amax/127 stored as f16, q = rint(x * 127/amax)) for Q8_0/Q4_0
    weights, Q8_K blocks (quantize_row_q8_K_ref) for the K-quants, float32 otherwise."""
    x = np.asarray(x, np.float32)
    if not TYPE_INFO[type].is_quantized:
        return x.astype(np.float64)
    blk = 32 if type in (Q8_0, Q4_0) else 256
    xb = x.reshape(*x.shape[:-1], -1, blk)
    with np.errstate(divide="ignore", invalid="ignore"):
        if blk == 32:
            amax = np.abs(xb).max(-1, keepdims=True)
            d = amax / np.float32(127)
            q = np.clip(np.rint(xb * np.where(amax > 0, np.float32(127) / amax, np.float32(0))), -127, 127)
            scale = d.astype(np.float16).astype(np.float64)
        else:
            imax = np.abs(xb).argmax(-1)[..., None]  # the first of the largest magnitude
            mx = np.take_along_axis(xb, imax, -1)
            iscale = np.where(mx != 0, np.float32(-127) / mx, np.float32(0)).astype(np.float32)
            q = np.clip(np.rint(xb * iscale), -127, 127)
            scale = np.where(mx != 0, np.float32(1) / iscale, 0).astype(np.float64)
    return (q * scale).reshape(x.shape)


def run(backend: str, out: Tensor, inputs: dict[Tensor, np.ndarray]) -> np.ndarray:
    plan = gr.compile(gr.build_graph(out), [backend], cache=False)
    for t, v in inputs.items():
        plan.set_input(t, v)
    plan.run()
    return plan.get(out)


def activation_input(b: np.ndarray, layout: str, type: DType = F32) -> tuple[Tensor, Tensor, np.ndarray]:
    """b (numpy (ne3, ne2, N, K)) reached as `layout`: "cont", "perm" (dims 1 and 2 swapped),
    "trans" (dim 0 not innermost: a transposed leaf) or "view" (into a larger leaf).
    Returns (the tensor mul_mat reads, its leaf, the leaf's host data)."""
    ne3, ne2, N, K = b.shape
    host = b.astype(np.float16) if type == F16 else b
    if layout == "perm":
        leaf = gr.new_input(type, [K, ne2, N, ne3], "b.src")
        return gr.permute(leaf, 0, 2, 1, 3), leaf, np.ascontiguousarray(host.transpose(0, 2, 1, 3))
    if layout == "trans":
        assert ne2 == ne3 == 1
        leaf = gr.new_input(type, [N, K], "b.src")
        return gr.transpose(leaf), leaf, np.ascontiguousarray(host[0, 0].T)
    if layout == "view":
        big = np.zeros((ne3, ne2 + 1, N + 2, K + 3), host.dtype)
        big[:, 1:, 1 : N + 1, 2 : K + 2] = host
        leaf = gr.new_input(type, [K + 3, N + 2, ne2 + 1, ne3], "b.src")
        off = 2 * leaf.nb[0] + leaf.nb[1] + leaf.nb[2]
        return gr.view_4d(leaf, K, N, ne2, ne3, leaf.nb[1], leaf.nb[2], leaf.nb[3], off), leaf, big
    leaf = gr.new_input(type, [K, N, ne2, ne3], "b")
    return leaf, leaf, host


def mul_mat_case(type: DType, K: int, M: int, N: int, rng: np.random.Generator, layout: str = "cont",
                 bcast: tuple[int, int, int, int] = (1, 1, 1, 1), b_type: DType = F32):  # fmt: skip
    """(out, inputs, w64 (ne03, ne02, M, K), b values (ne13, ne12, N, K)) for one mul_mat."""
    ne02, ne03, r2, r3 = bcast
    data = weight_data(type, M * ne02 * ne03, K, rng).reshape(ne03, ne02, M, -1)
    a = gr.new_weight(type, [K, M, ne02, ne03], data, "a")
    bv = rng.uniform(-1, 1, (ne03 * r3, ne02 * r2, N, K)).astype(np.float32)
    if b_type == F16:
        bv = bv.astype(np.float16).astype(np.float32)
    b, leaf, host = activation_input(bv, layout, b_type)
    w64 = weight_f64(type, data, K).reshape(ne03, ne02, M, K)
    return gr.mul_mat(a, b).set_output(), {leaf: host}, w64, bv


def model(type: DType, w64: np.ndarray, bv: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The exact model (float64 products of the weights with the rounded activations) and the
    sum of the terms' magnitudes (the scale of float32 accumulation error), (ne13, ne12, N, M)."""
    ne03, ne02 = w64.shape[:2]
    r3, r2 = bv.shape[0] // ne03, bv.shape[1] // ne02
    w = np.repeat(np.repeat(w64, r3, axis=0), r2, axis=1)
    x = activations_as_rounded(type, bv)
    return x @ np.swapaxes(w, -1, -2), np.abs(x) @ np.swapaxes(np.abs(w), -1, -2)


def assert_model(type: DType, got: np.ndarray, w64: np.ndarray, bv: np.ndarray) -> None:
    want, mag = model(type, w64, bv)
    K = w64.shape[-1]
    tol = (K / 16 + 8) * 2.0**-24 * mag + 1e-30  # float32 rounding of K/16 lane steps and the tree
    bad = np.abs(got - want) > tol
    assert not bad.any(), (f"{type.name}: {int(bad.sum())} of {bad.size} outputs off the exact model, first "
                           f"{got[bad][0]} vs {want[bad][0]} (tolerance {tol[bad][0]:.3g})")  # fmt: skip


def bits(a: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(a, np.float32).view(np.uint32)


def blocks(type: DType) -> int:
    return TYPE_INFO[type].block_elems


# ---- against the reference -------------------------------------------------------------


@pytest.mark.parametrize("n_threads", [1, 2, 3])
@pytest.mark.parametrize("type", WEIGHTS, ids=lambda t: t.name)
def test_mul_mat_matches_reference(native, type: DType, n_threads: int) -> None:
    native.n_threads = n_threads
    case = CASES["mul_mat"]
    for i, (K, M, N) in enumerate([(K_OF[blocks(type)][-1], 17, 1), (K_OF[blocks(type)][1], 19, 5),
                                   (K_OF[blocks(type)][0], 33, 17)]):  # fmt: skip
        p = {"seed": 7 * i + n_threads, "type": type, "type_b": (F32, F16)[i % 2], "K": K, "M": M, "N": N,
             "ne02": 1 + (i == 1), "ne03": 1, "r2": 1 + (i == 2), "r3": 1 + (i == 1), "weight": i != 1,
             "layout_a": {"kind": "perm", "axes": (0, 2, 1, 3)} if i == 1 else {"kind": "cont"},
             "layout_b": [{"kind": "cont"}, {"kind": "perm", "axes": (0, 2, 1, 3)},
                          {"kind": "view", "pad": (1, 2, 1, 0), "off": (1, 1, 0, 0)}][i]}  # fmt: skip
        r = check_case(case, p, NATIVE)
        assert r.passed and r.nmse <= MATMUL_NMSE, f"{p}: {r}"


@pytest.mark.parametrize("n_threads", [1, 3])
@pytest.mark.parametrize("type", WEIGHTS, ids=lambda t: t.name)
def test_mul_mat_id_matches_reference(native, type: DType, n_threads: int) -> None:
    native.n_threads = n_threads
    case = CASES["mul_mat_id"]
    for i, (n_expert, n_used, n_tok) in enumerate([(4, 2, 5), (6, 4, 3), (1, 1, 2)]):
        p = {"seed": 11 * i + n_threads, "type": type, "K": K_OF[blocks(type)][-1], "M": 17 + 2 * i,
             "n_expert": n_expert, "n_used": n_used, "n_tokens": n_tok, "b_shared": i == 1, "weight": i != 2,
             "layout_b": {"kind": "perm", "axes": (0, 2, 1, 3)} if i == 0 else {"kind": "cont"}}  # fmt: skip
        r = check_case(case, p, NATIVE)
        assert r.passed, f"{p}: {r}"


# ---- against the exact model, every ISA level ------------------------------------------


@pytest.mark.parametrize("isa", ISAS.values(), ids=ISAS.keys())
@pytest.mark.parametrize("type,repack", LAYOUTS, ids=LAYOUT_IDS)
def test_mul_mat_exact_model(native, type: DType, repack: bool, isa: int) -> None:
    native.repack = repack
    _set_isa(isa)
    native.n_threads = 2
    rng = np.random.default_rng(int(type) * 10 + isa)
    for K in K_OF[blocks(type)]:
        for M, N in ((1, 1), (3, 2), (7, 5), (9, 17)):
            out, inputs, w64, bv = mul_mat_case(type, K, M, N, rng)
            assert_model(type, run(NATIVE, out, inputs), w64, bv)


@pytest.mark.parametrize("layout", ["perm", "trans", "view"])
@pytest.mark.parametrize("type", WEIGHTS, ids=lambda t: t.name)
def test_mul_mat_strided_activations(native, type: DType, layout: str) -> None:
    native.n_threads = 2
    rng = np.random.default_rng(int(type))
    K = K_OF[blocks(type)][-1]
    bcast = (1, 1, 1, 1) if layout == "trans" else (2, 1, 1, 2)
    out, inputs, w64, bv = mul_mat_case(type, K, 5, 6, rng, layout, bcast)
    assert_model(type, run(NATIVE, out, inputs), w64, bv)


@pytest.mark.parametrize("bcast", [(1, 1, 3, 1), (2, 1, 2, 1), (1, 2, 1, 2), (2, 2, 1, 1)], ids=str)
@pytest.mark.parametrize("type", [F16, Q8_0, Q6_K], ids=lambda t: t.name)
def test_mul_mat_broadcast(native, type: DType, bcast) -> None:
    """a [K, M, ne02, ne03] serves r2 (r3) consecutive b matrices, as the reference defines."""
    native.n_threads = 3
    rng = np.random.default_rng(5)
    out, inputs, w64, bv = mul_mat_case(type, K_OF[blocks(type)][0], 7, 3, rng, bcast=bcast)
    got = run(NATIVE, out, inputs)
    assert_model(type, got, w64, bv)
    assert nmse(got, run("ref", out, inputs)) < MATMUL_NMSE


@pytest.mark.parametrize("type", [F32, Q4_0, Q5_K], ids=lambda t: t.name)
def test_mul_mat_f16_activations(native, type: DType) -> None:
    native.n_threads = 2
    rng = np.random.default_rng(3)
    out, inputs, w64, bv = mul_mat_case(type, K_OF[blocks(type)][-1], 9, 4, rng, "perm", (1, 1, 2, 1), F16)
    assert_model(type, run(NATIVE, out, inputs), w64, bv)


def mul_mat_id_case(type: DType, K: int, M: int, n_expert: int, n_used: int, n_tok: int, b_shared: bool,
                    rng: np.random.Generator):  # fmt: skip
    data = weight_data(type, M * n_expert, K, rng).reshape(n_expert, M, -1)
    experts = gr.new_weight(type, [K, M, n_expert], data, "experts")
    bv = rng.uniform(-1, 1, (n_tok, 1 if b_shared else n_used, K)).astype(np.float32)
    b = gr.new_input(F32, [K, bv.shape[1], n_tok], "b")
    chosen = np.stack([rng.permutation(n_expert)[:n_used] for _ in range(n_tok)]).astype(np.int32)
    ids = gr.new_input(gr.I32, [n_used, n_tok], "ids")
    out = gr.mul_mat_id(experts, b, ids).set_output()
    return out, {b: bv, ids: chosen}, weight_f64(type, data, K).reshape(n_expert, M, K), bv, chosen


@pytest.mark.parametrize("isa", [0, 7], ids=["portable", "avx512-vnni"])
@pytest.mark.parametrize("type,repack", LAYOUTS, ids=LAYOUT_IDS)
def test_mul_mat_id_exact_model(native, type: DType, repack: bool, isa: int) -> None:
    native.repack = repack
    _set_isa(isa)
    native.n_threads = 3
    rng = np.random.default_rng(int(type))
    for n_expert, n_used, n_tok, shared in ((8, 3, 7, False), (3, 3, 4, True)):
        out, inputs, w64, bv, chosen = mul_mat_id_case(type, K_OF[blocks(type)][-1], 11, n_expert, n_used,
                                                       n_tok, shared, rng)  # fmt: skip
        got = run(NATIVE, out, inputs)[0]  # (n_tok, n_used, M)
        for t in range(n_tok):
            for e in range(n_used):
                x = bv[t, e % bv.shape[1]][None, None, None]
                assert_model(type, got[t, e][None, None, None], w64[chosen[t, e]][None, None], x)


def edge_activations(K: int, rng: np.random.Generator) -> np.ndarray:
    """Rows that stress the activation rounding: largest magnitudes tied with opposite signs
    (the negative first: Q8_K keeps the first), an all-zero row, values landing exactly on
    half steps (round half to even), one huge outlier, tiny values."""
    rows = np.zeros((6, K), np.float32)
    rows[0] = rng.uniform(-0.5, 0.5, K)
    rows[0, 3::37], rows[0, 5::37] = -1.0, 1.0
    rows[2] = np.arange(K) % 64 - 31.5  # block max 127: scale exactly 1, every value a tie
    rows[2, ::32] = 127
    rows[3] = rng.uniform(-1, 1, K)
    rows[3, K // 2] = 1e4
    rows[4] = rng.uniform(-1, 1, K) * 1e-30
    rows[5] = -rows[0]
    return rows


@pytest.mark.parametrize("isa", [0, 1, 7], ids=["portable", "avx2", "avx512-vnni"])
@pytest.mark.parametrize("type", [Q8_0, Q4_0, Q4_K, Q6_K], ids=lambda t: t.name)
def test_activation_rounding_edges(native, type: DType, isa: int) -> None:
    _set_isa(isa)
    native.n_threads = 2
    rng = np.random.default_rng(9)
    K, M = K_OF[blocks(type)][-1], 7
    data = weight_data(type, M, K, rng)
    a = gr.new_weight(type, [K, M], data, "a")
    bv = edge_activations(K, rng)
    b = gr.new_input(F32, [K, bv.shape[0]], "b")
    got = run(NATIVE, gr.mul_mat(a, b).set_output(), {b: bv})
    assert_model(type, got, weight_f64(type, data, K)[None, None], bv[None, None])


# ---- determinism: ISA levels, batch invariance, threads ---------------------------------


@pytest.mark.parametrize("type,repack", LAYOUTS, ids=LAYOUT_IDS)
def test_isa_levels_bit_identical(native, type: DType, repack: bool) -> None:
    """One canonical order of every dot product: the portable, AVX2 and AVX-512 kernels agree
    bit for bit (tails, lone last blocks and every tile shape included)."""
    native.repack = repack
    native.n_threads = 2
    rng = np.random.default_rng(int(type) + 100)
    for K in K_OF[blocks(type)]:
        out, inputs, *_ = mul_mat_case(type, K, 13, 9, rng)
        got = {}
        for name, isa in ISAS.items():
            _set_isa(isa)
            got[name] = bits(run(NATIVE, out, inputs))
        for name in ISAS:
            np.testing.assert_array_equal(got[name], got["portable"], err_msg=f"{type.name} K={K}: {name}")


@pytest.mark.parametrize("isa", [0, 1, 7], ids=["portable", "avx2", "avx512-vnni"])
@pytest.mark.parametrize("type,repack", LAYOUTS, ids=LAYOUT_IDS)
def test_batch_invariance(native, type: DType, repack: bool, isa: int) -> None:
    """Token n of a 17-token batch equals token n computed alone, at 1 and 3 threads, bit for bit
    (decode, verify batches and prefill all give one token the same row)."""
    native.repack = repack
    _set_isa(isa)
    rng = np.random.default_rng(int(type) + 7)
    K, M, N = K_OF[blocks(type)][-1], 37, 17
    data = weight_data(type, M, K, rng)
    a = gr.new_weight(type, [K, M], data, "a")
    bv = rng.uniform(-1, 1, (N, K)).astype(np.float32)
    batch, one = gr.new_input(F32, [K, N], "batch"), gr.new_input(F32, [K, 1], "one")
    rows = {}
    for n_threads in (1, 3):
        native.n_threads = n_threads
        rows[n_threads] = bits(run(NATIVE, gr.mul_mat(a, batch).set_output(), {batch: bv}))
    np.testing.assert_array_equal(rows[1], rows[3])
    native.n_threads = 2
    for n in (0, 5, 16):
        alone = bits(run(NATIVE, gr.mul_mat(a, one).set_output(), {one: bv[n : n + 1]}))
        np.testing.assert_array_equal(alone[0, 0, 0], rows[1][0, 0, n], err_msg=f"{type.name} token {n}")


@pytest.mark.parametrize("isa", [0, 1, 7], ids=["portable", "avx2", "avx512-vnni"])
@pytest.mark.parametrize("type,repack", LAYOUTS, ids=LAYOUT_IDS)
def test_verify_batches(native, type: DType, repack: bool, isa: int) -> None:
    """Batches of 1..8 tokens (decode and verify batches: one pass of one-row tiles on AVX-512)
    at odd row counts: every token's row equals the token alone bit for bit, and the exact model."""
    native.repack = repack
    _set_isa(isa)
    rng = np.random.default_rng(int(type) + 31)
    K, M = K_OF[blocks(type)][1 if blocks(type) > 1 else -1], 23
    data = weight_data(type, M, K, rng)
    a = gr.new_weight(type, [K, M], data, "a")
    w64 = weight_f64(type, data, K)[None, None]
    bv = rng.uniform(-1, 1, (8, K)).astype(np.float32)
    one = gr.new_input(F32, [K, 1], "one")
    native.n_threads = 2
    alone = np.stack([bits(run(NATIVE, gr.mul_mat(a, one).set_output(), {one: bv[n : n + 1]}))[0, 0, 0]
                      for n in range(8)])  # fmt: skip
    for N in range(1, 9):
        native.n_threads = 1 + N % 3
        batch = gr.new_input(F32, [K, N], "batch")
        got = run(NATIVE, gr.mul_mat(a, batch).set_output(), {batch: bv[:N]})
        np.testing.assert_array_equal(bits(got)[0, 0], alone[:N], err_msg=f"{type.name} N={N}")
        assert_model(type, got, w64, bv[None, None, :N])


@pytest.mark.parametrize("type", [F32, Q8_0, Q6_K], ids=lambda t: t.name)
def test_batch_invariance_long_rows(native, type: DType) -> None:
    """Rows of 4096: a unit holds fewer tokens (its activations stay in L2), so a 45-token batch
    spans several token blocks per weight row block (cold first tiles and warm ones)."""
    rng = np.random.default_rng(2)
    K, M, N = 4096, 21, 45
    a = gr.new_weight(type, [K, M], weight_data(type, M, K, rng), "a")
    bv = rng.uniform(-1, 1, (N, K)).astype(np.float32)
    batch, one = gr.new_input(F32, [K, N], "batch"), gr.new_input(F32, [K, 1], "one")
    native.n_threads = 2
    rows = bits(run(NATIVE, gr.mul_mat(a, batch).set_output(), {batch: bv}))
    for n in (0, 21, 44):
        alone = bits(run(NATIVE, gr.mul_mat(a, one).set_output(), {one: bv[n : n + 1]}))
        np.testing.assert_array_equal(alone[0, 0, 0], rows[0, 0, n], err_msg=f"{type.name} token {n}")


@pytest.mark.parametrize("isa", [0, 7], ids=["portable", "avx512-vnni"])
@pytest.mark.parametrize("type", [F32, F16, BF16], ids=lambda t: t.name)
def test_streamed_matrices(native, type: DType, isa: int) -> None:
    """A matrix of at least GR_MM_STREAM_BYTES (1 MiB: one token takes the prefetching tile,
    gr_mm_kernel.stream1) and one just below it give the same token the same row alone and in
    a batch, bit for bit, and the exact model's."""
    _set_isa(isa)
    rng = np.random.default_rng(int(type) + 57)
    K = 1024
    for M in (1 << 20) // (K * TYPE_INFO[type].block_bytes) + np.array([0, -1]):
        data = weight_data(type, int(M), K, rng)
        a = gr.new_weight(type, [K, int(M)], data, "a")
        bv = rng.uniform(-1, 1, (3, K)).astype(np.float32)
        batch, one = gr.new_input(F32, [K, 3], "batch"), gr.new_input(F32, [K, 1], "one")
        native.n_threads = 2
        rows = run(NATIVE, gr.mul_mat(a, batch).set_output(), {batch: bv})
        assert_model(type, rows, weight_f64(type, data, K)[None, None], bv[None, None])
        for n in range(3):
            alone = bits(run(NATIVE, gr.mul_mat(a, one).set_output(), {one: bv[n : n + 1]}))
            np.testing.assert_array_equal(alone[0, 0, 0], bits(rows)[0, 0, n], err_msg=f"{type.name} M={M} token {n}")


@pytest.mark.parametrize("type", [F16, Q8_0, Q4_0, Q4_K], ids=lambda t: t.name)
def test_mul_mat_id_batch_invariance(native, type: DType) -> None:
    """A token's expert rows do not depend on the other tokens routed with it."""
    rng = np.random.default_rng(1)
    out, inputs, *_ = mul_mat_id_case(type, K_OF[blocks(type)][-1], 21, 6, 2, 9, False, rng)
    b, ids = list(inputs)
    native.n_threads = 3
    batch = bits(run(NATIVE, out, inputs))
    experts = out.src[0]
    b1, ids1 = gr.new_input(F32, [b.ne[0], b.ne[1], 1], "b1"), gr.new_input(gr.I32, [2, 1], "ids1")
    single = gr.mul_mat_id(experts, b1, ids1).set_output()
    native.n_threads = 3  # one token: every thread converts it and lists its experts itself
    for t in (0, 4, 8):
        alone = bits(run(NATIVE, single, {b1: inputs[b][t : t + 1], ids1: inputs[ids][t : t + 1]}))
        np.testing.assert_array_equal(alone[0, 0], batch[0, t])


def test_supports_limits() -> None:
    """What the kernels do not cover goes to the reference: a type other than the weight types,
    and weight rows whose elements are not packed along ne0."""
    be = get_backend(NATIVE)
    ok = gr.mul_mat(gr.new_input(Q6_K, [256, 4]), gr.new_input(F32, [256, 2]))
    ints = gr.mul_mat(gr.new_input(gr.I32, [8, 4]), gr.new_input(F32, [8, 2]))
    strided = gr.mul_mat(gr.transpose(gr.new_input(F32, [4, 8])), gr.new_input(F32, [8, 2]))
    assert be.supports_op(ok) and not be.supports_op(ints) and not be.supports_op(strided)
    assert Op.MUL_MAT in be.KERNELS and Op.MUL_MAT_ID in be.KERNELS
