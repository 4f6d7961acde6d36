"""The native cpu elementwise and copy kernels (shaders/cpu/elementwise.c, copy.c, quants.c)
against the reference: the parity cases at several thread counts and for every ISA level,
long and strided rows (vector bodies, padded tails, conversion tiles), broadcasting, bit-exact
arithmetic, dequantization and Q8_0/Q4_0 quantization, batch and ISA invariance, set_rows
with repeated indices, and an in-place chain."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest
from cpu_support import Adhoc
from cpu_support import check as _check
from cpu_support import set_isa as _set_isa

import graphir as gr
from graphir.backends import availability, get_backend
from graphir.ops import Op
from graphir.parity import CASES
from graphir.parity.harness import check_case, examples
from graphir.parity.inputs import Built, Inputs, random_blocks
from graphir.quants import dequantize_rows
from graphir.types import TYPE_INFO, DType

NATIVE = "cpu"
pytestmark = pytest.mark.skipif(not availability(NATIVE).ok, reason=f"native cpu: {availability(NATIVE).reason}")

F32, F16, BF16, I32 = DType.F32, DType.F16, DType.BF16, DType.I32
QUANTS = (DType.Q8_0, DType.Q4_0, DType.Q4_K, DType.Q5_K, DType.Q6_K)
UNARY = ["sqr", "sqrt", "exp", "neg", "sigmoid", "silu", "softplus", "gelu", "scale", "clamp"]
BINARY = ["add", "sub", "mul", "div"]
COPIES = ["repeat", "cont", "dup", "cpy", "get_rows", "set_rows", "concat", "view", "reshape", "permute", "transpose"]
ISAS = {"portable": 0, "avx2": 1, "avx512": 7}
ROW_LENGTHS = [1, 7, 15, 16, 17, 33, 1000, 1025, 4099]  # vector bodies, tails, several tiles


def _run(built: Built, backend: str = NATIVE) -> list[np.ndarray]:
    plan = gr.compile(gr.build_graph(*[t.set_output() for t in built.outputs]), [backend], cache=False)
    for t, v in built.inputs.items():
        plan.set_input(t, v)
    plan.run()
    return [plan.get(t) for t in built.outputs]


def _same_bits(build: Callable[[], Built]) -> None:
    """native and the reference give the same bits (each run builds its own graph)."""
    got, want = _run(build()), _run(build(), "ref")
    for g, w in zip(got, want):
        assert g.dtype == w.dtype and g.shape == w.shape
        bad = np.ascontiguousarray(g).view(np.uint8) != np.ascontiguousarray(w).view(np.uint8)
        assert not bad.any(), f"{int(bad.sum())} bytes differ"


def _bits(a: np.ndarray) -> np.ndarray:
    a = np.ascontiguousarray(a)
    return a.view(f"u{a.dtype.itemsize}")


UNARY_FN: dict[str, Callable[[gr.Tensor], gr.Tensor]] = {
    "sqr": gr.sqr,
    "sqrt": gr.sqrt,
    "exp": gr.exp,
    "neg": gr.neg,
    "sigmoid": gr.sigmoid,
    "silu": gr.silu,
    "softplus": gr.softplus,
    "gelu": gr.gelu,
    "scale": lambda a: gr.scale(a, -1.75, 0.5),
    "clamp": lambda a: gr.clamp(a, -0.5, 1.5),
}
BINARY_FN: dict[str, Callable[[gr.Tensor, gr.Tensor], gr.Tensor]] = {
    "add": gr.add,
    "sub": gr.sub,
    "mul": gr.mul,
    "div": gr.div,
}
INPUT_RANGE = {"sqrt": (0.0, 4.0), "exp": (-4.0, 4.0), "softplus": (-30.0, 30.0), "gelu": (-3.0, 5.0)}
STRIDED = {"kind": "perm", "axes": (1, 0, 2, 3)}  # dim 0 not innermost: nb[0] != element size


# ======================================================================================
# the parity cases, every thread count and ISA level
# ======================================================================================


@pytest.mark.parametrize("isa", list(ISAS), ids=str)
@pytest.mark.parametrize("n_threads", [1, 3])
@pytest.mark.parametrize("name", UNARY + BINARY + COPIES)
def test_parity_cases(native, name: str, n_threads: int, isa: str) -> None:
    native.n_threads = n_threads
    _set_isa(ISAS[isa])
    results = [(p, check_case(CASES[name], p, NATIVE)) for p in examples(CASES[name])]
    failures = [f"{p}: {r}" for p, r in results if r.failed]
    assert not failures, failures[0]
    assert any(r.passed for _, r in results)


# ======================================================================================
# long and strided rows, F16, broadcasting
# ======================================================================================


@pytest.mark.parametrize("isa", list(ISAS), ids=str)
@pytest.mark.parametrize("type", [F32, F16], ids=["f32", "f16"])
@pytest.mark.parametrize("name", UNARY)
def test_unary_long_and_strided_rows(native, name: str, type: DType, isa: str) -> None:
    native.n_threads = 3
    _set_isa(ISAS[isa])

    def build(p: dict) -> Built:
        mk = Inputs(p["seed"])
        a = mk.tensor(
            type, (p["ne0"], 3), STRIDED if p["strided"] else None, mk.uniform(*INPUT_RANGE.get(name, (-3, 3))), "a"
        )
        return mk.done(UNARY_FN[name](a))

    for ne0 in ROW_LENGTHS:
        for strided in (False, True):
            _check(Adhoc(Op(name), build), {"seed": ne0, "ne0": ne0, "strided": strided})


# b's shape as a function of a's [ne0, 3, 2, 1]: same, one row, a column, tiled along dim 0, a scalar
BROADCASTS: dict[str, Callable[[int], tuple[int, ...]]] = {
    "same": lambda n: (n, 3, 2, 1),
    "row": lambda n: (n, 1, 1, 1),
    "column": lambda n: (1, 3, 2, 1),
    "tiled": lambda n: (n // 3 if n % 3 == 0 else n, 1, 2, 1),
    "scalar": lambda n: (1, 1, 1, 1),
}


@pytest.mark.parametrize("isa", ["portable", "avx512"])
@pytest.mark.parametrize("broadcast", list(BROADCASTS))
@pytest.mark.parametrize("name", BINARY)
def test_binary_broadcast_long_rows(native, name: str, broadcast: str, isa: str) -> None:
    native.n_threads = 3
    _set_isa(ISAS[isa])

    def build(p: dict) -> Built:
        mk = Inputs(p["seed"])
        a = mk.tensor(p["ta"], (p["ne0"], 3, 2, 1), STRIDED if p["strided"] else None, name="a")
        b = mk.tensor(p["tb"], BROADCASTS[broadcast](p["ne0"]), None, mk.away(0.5, 2.0), "b")
        return mk.done(BINARY_FN[name](a, b))

    for ne0 in (1, 15, 33, 1029, 4098):
        for ta, tb, strided in ((F32, F32, False), (F16, F32, False), (F32, F16, True), (F16, F16, True)):
            _check(Adhoc(Op(name), build), {"seed": ne0, "ne0": ne0, "ta": ta, "tb": tb, "strided": strided})


# ======================================================================================
# bit-exact numerics
# ======================================================================================


@pytest.mark.parametrize("isa", list(ISAS), ids=str)
@pytest.mark.parametrize("type", [F32, F16], ids=["f32", "f16"])
@pytest.mark.parametrize("name", ["add", "sub", "mul", "div", "scale", "sqr", "sqrt", "neg", "clamp"])
def test_arithmetic_is_bit_exact(native, name: str, type: DType, isa: str) -> None:
    """IEEE operations in the reference's order (no fused multiply-add): the same bits."""
    native.n_threads = 2
    _set_isa(ISAS[isa])

    def build() -> Built:
        mk = Inputs(7)
        a = mk.leaf(type, (1031, 5), mk.uniform(0.0 if name == "sqrt" else -3.0, 3.0), "a")
        if name in BINARY_FN:
            return mk.done(BINARY_FN[name](a, mk.leaf(type, (1031, 1), mk.away(0.5, 2.0), "b")))
        return mk.done(UNARY_FN[name](a))

    _same_bits(build)


@pytest.mark.parametrize("isa", list(ISAS), ids=str)
@pytest.mark.parametrize("type", QUANTS + (F16, BF16), ids=lambda t: TYPE_INFO[t].name)
def test_get_rows_dequantizes_bit_exact(native, type: DType, isa: str) -> None:
    """Every weight type's rows, as graphir.quants.dequantize_rows (the ggml-exact oracle)."""
    native.n_threads = 3
    _set_isa(ISAS[isa])
    ne0, n_rows = 1024, 11
    rng = np.random.default_rng(int(type))
    if TYPE_INFO[type].is_quantized:
        raw = random_blocks(type, n_rows, ne0, rng)
        want = dequantize_rows(raw, type)
    else:
        x = rng.uniform(-3, 3, (n_rows, ne0)).astype(np.float32)
        raw = x.astype(np.float16) if type == F16 else (x.view(np.uint32) >> 16).astype(np.uint16)
        want = raw.astype(np.float32) if type == F16 else (raw.astype(np.uint32) << 16).view(np.float32)
    idx = np.array([3, 0, 10, 3, 7], np.int32)
    w = gr.new_weight(type, (ne0, n_rows), raw, "w")
    rows = gr.new_input(I32, (idx.size,), "rows")
    got = _run(Built([gr.get_rows(w, rows)], {rows: idx}))[0]
    assert np.array_equal(_bits(got[0, 0]), _bits(want[idx]))


@pytest.mark.parametrize("isa", list(ISAS), ids=str)
@pytest.mark.parametrize("src", [F32, F16, BF16], ids=lambda t: TYPE_INFO[t].name)
@pytest.mark.parametrize("dst", [DType.Q8_0, DType.Q4_0], ids=lambda t: TYPE_INFO[t].name)
def test_cpy_quantizes_bit_exact(native, src: DType, dst: DType, isa: str) -> None:
    """cpy into Q8_0/Q4_0: the bytes of graphir.quants.quantize_rows (ggml's reference
    quantizers), including all-zero, negative-zero, single-spike, tied and half-way blocks."""
    native.n_threads = 3
    _set_isa(ISAS[isa])
    x = np.random.default_rng(1).normal(0, 1.5, (9, 256)).astype(np.float32)
    x[0, :32] = 0.0
    x[1, 32:64] = 0.0
    x[1, 40] = -3.0
    x[2, 64:96] = np.float32(-0.0)
    x[3, 100], x[3, 110] = 9.0, -9.0  # Q4_0: the first of equal magnitudes sets the sign
    x[4, 128:160] = 0.25
    x[4, 128:133] = [127.0, 2.5, -2.5, 0.5, -126.5]  # Q8_0: d = 1, halves round away from zero

    def build() -> Built:
        mk = Inputs(0)
        a = mk.leaf(src, (256, 9), lambda shape: x, "a")
        return mk.done(gr.cpy(a, gr.new_tensor(dst, (256, 9), "q")))

    _same_bits(build)  # the reference's cpy is quantize_rows


@pytest.mark.filterwarnings("ignore:overflow encountered in cast")  # the reference, on purpose
@pytest.mark.parametrize("isa", list(ISAS), ids=str)
@pytest.mark.parametrize("pair", [(F32, F16), (F32, BF16), (F16, F32), (BF16, F16), (F32, I32), (F16, I32), (I32, F32),
                                  (I32, F16)], ids=lambda p: f"{TYPE_INFO[p[0]].name}-{TYPE_INFO[p[1]].name}")  # fmt: skip
def test_cpy_converts_bit_exact(native, pair: tuple[DType, DType], isa: str) -> None:
    """Conversions round as numpy does (nearest even; float to int truncates), also for values
    that round to f16 subnormals, overflow to inf, and NaN."""
    native.n_threads = 2
    _set_isa(ISAS[isa])
    src, dst = pair

    def gen(shape: tuple[int, ...]) -> np.ndarray:
        rng = np.random.default_rng(2)
        v = rng.uniform(-70000, 70000, shape) * 10.0 ** rng.integers(-12, 1, shape)
        v.reshape(-1)[:4] = [np.nan, np.inf, -np.inf, 65519.0] if I32 not in pair else [0.5, -0.5, 1.5, -2.5]
        return v.astype(np.float32)

    def build() -> Built:
        mk = Inputs(0)
        a = mk.tensor(src, (37, 5, 3, 1), STRIDED, gen, "a")
        return mk.done(gr.cpy(a, gr.new_tensor(dst, (37, 5, 3, 1), "d")))

    _same_bits(build)


# ======================================================================================
# batch and ISA invariance
# ======================================================================================


@pytest.mark.parametrize("isa", list(ISAS), ids=str)
@pytest.mark.parametrize("name", UNARY + BINARY)
def test_rows_are_batch_invariant(native, name: str, isa: str) -> None:
    """Row i of a batch equals the same row computed alone, bit for bit, whatever the thread
    count and the row's position in the flattened batch (tails go through padded vectors)."""
    _set_isa(ISAS[isa])
    n, rows = 1037, 9
    lo, hi = INPUT_RANGE.get(name, (-3.0, 3.0))
    x = np.random.default_rng(3).uniform(lo, hi, (rows, n)).astype(np.float32)
    y = np.random.default_rng(4).uniform(0.5, 2.0, (1, n)).astype(np.float32)

    def op(a: gr.Tensor) -> gr.Tensor:
        if name in BINARY_FN:
            b = gr.new_input(F32, (n, 1), "b")
            return BINARY_FN[name](a, b)
        return UNARY_FN[name](a)

    def run(x_rows: np.ndarray) -> np.ndarray:
        a = gr.new_input(F32, (n, x_rows.shape[0]), "a")
        out = op(a)
        inputs = {a: x_rows} | ({out.src[1]: y} if name in BINARY_FN else {})
        return _run(Built([out], inputs))[0]

    native.n_threads = 3
    batch = run(x)
    native.n_threads = 1
    for i in range(rows):
        assert np.array_equal(_bits(batch[0, 0, i]), _bits(run(x[i : i + 1])[0, 0, 0])), f"row {i} differs"


@pytest.mark.parametrize("name", ["exp", "sigmoid", "silu", "softplus", "gelu"])
def test_transcendentals_do_not_depend_on_the_isa(native, name: str) -> None:
    """The vector math is one source compiled per ISA without fused multiply-add: the portable,
    AVX2 and AVX-512 paths give the same bits (also for inf, NaN, overflow and subnormals)."""
    native.n_threads = 2
    x = np.random.default_rng(6).uniform(-110, 90, 4099).astype(np.float32)
    x[:6] = [np.nan, np.inf, -np.inf, 0.0, -0.0, 1e-30]

    def build() -> Built:
        mk = Inputs(0)
        return mk.done(UNARY_FN[name](mk.leaf(F32, (4099,), lambda shape: x.reshape(shape), "a")))

    outs = []
    for level in ISAS.values():
        _set_isa(level)
        outs.append(_bits(_run(build())[0]))
    assert np.array_equal(outs[0], outs[1]) and np.array_equal(outs[0], outs[2])


# ======================================================================================
# indexing: set_rows repeats and KV rows, get_rows bounds, concat of a transposed view
# ======================================================================================


@pytest.mark.parametrize("n_threads", [1, 2, 3, 4])
@pytest.mark.parametrize("planes", [1, 6], ids=["column-split", "plane-split"])
def test_set_rows_repeated_index_keeps_the_last_row(native, n_threads: int, planes: int) -> None:
    native.n_threads = n_threads

    def build(p: dict) -> Built:
        mk = Inputs(p["seed"])
        dst = mk.leaf(F16, (300, 8, planes), name="dst")
        b = mk.leaf(F32, (300, 5, planes), name="b")
        c = mk.leaf(I32, (5,), lambda shape: np.array([2, 6, 2, 0, 6], np.int32), "c")
        return mk.done(gr.set_rows(dst, b, c))

    _check(Adhoc(Op.SET_ROWS, build), {"seed": n_threads})


@pytest.mark.parametrize("type", [F16, F32, BF16], ids=lambda t: TYPE_INFO[t].name)
@pytest.mark.parametrize("n_tokens", [1, 7])
def test_set_rows_kv_cache_rows(native, type: DType, n_tokens: int) -> None:
    """K rows [n_embd_k_gqa, n_tokens] F32 into a cache of 64 cells, written in place."""
    native.n_threads = 3

    def build(p: dict) -> Built:
        mk = Inputs(p["seed"])
        cache = mk.leaf(type, (512, 64), name="cache")
        rows = mk.leaf(F32, (512, n_tokens), mk.uniform(-4, 4), "k")
        slots = mk.leaf(I32, (n_tokens,), lambda shape: np.arange(20, 20 + n_tokens, dtype=np.int32), "slots")
        return mk.done(gr.set_rows(cache, rows, slots))

    _same_bits(lambda: build({"seed": n_tokens}))


def test_get_rows_out_of_range_reads_nan(native) -> None:
    """The reference raises; the kernel never reads outside a: that row reads as NaN."""
    native.n_threads = 2
    w = gr.new_weight(F32, (40, 3), np.arange(120, dtype=np.float32).reshape(3, 40), "w")
    rows = gr.new_input(I32, (3,), "rows")
    got = _run(Built([gr.get_rows(w, rows)], {rows: np.array([2, 3, -1], np.int32)}))[0][0, 0]
    assert np.array_equal(got[0], np.arange(80, 120, dtype=np.float32))
    assert np.isnan(got[1:]).all()


@pytest.mark.parametrize("n_tokens", [1, 5, 70])
def test_concat_conv_window(native, n_tokens: int) -> None:
    """The delta net's conv input: [d_conv-1, channels, ns] ++ a transposed [nt, channels, ns]."""
    native.n_threads = 3

    def build(p: dict) -> Built:
        mk = Inputs(p["seed"])
        state = mk.leaf(F32, (3, 200, 2), name="state")
        qkv = mk.leaf(F32, (200, n_tokens, 2), name="qkv")
        return mk.done(gr.concat(state, gr.transpose(qkv), 0))

    _same_bits(lambda: build({"seed": n_tokens}))


@pytest.mark.parametrize("type", [F32, F16, I32], ids=lambda t: TYPE_INFO[t].name)
@pytest.mark.parametrize("axes", [(1, 0, 2, 3), (2, 0, 1, 3), (0, 2, 1, 3), (3, 1, 0, 2)], ids=str)
def test_cont_and_concat_of_permuted_views(native, axes: tuple[int, ...], type: DType) -> None:
    """Shapes past the 16-row tiles of transposed sources, merged dims, one long row split
    across threads; concat along every dim of permuted inputs."""
    native.n_threads = 3

    def build(p: dict) -> Built:
        mk = Inputs(p["seed"])
        ne = (37, 45, 3, 2)
        a = mk.tensor(type, ne, {"kind": "perm", "axes": axes}, name="a")
        ne_b = tuple(5 if i == p["dim"] else n for i, n in enumerate(ne))
        b = mk.tensor(type, ne_b, {"kind": "perm", "axes": axes[::-1]}, name="b")
        flat = gr.cont(a, 37 * 45 * 3 * 2)
        return mk.done(gr.cont(gr.transpose(gr.cont(a))), flat, gr.concat(a, b, p["dim"]))

    for dim in range(4):
        _same_bits(lambda dim=dim: build({"seed": dim, "dim": dim}))


def test_cpy_into_k_quants_stays_on_the_reference() -> None:
    be = get_backend(NATIVE)
    a = gr.new_tensor(F32, (256, 2))
    for type in QUANTS:
        node = gr.cpy(a, gr.new_tensor(type, (256, 2)))
        assert be.supports_op(node) == (type in (DType.Q8_0, DType.Q4_0)), TYPE_INFO[type].name


# ======================================================================================
# in place
# ======================================================================================


def test_in_place_chain(native) -> None:
    """cont -> silu -> mul -> scale -> add, each working in its parent's memory (F16)."""
    native.n_threads = 3

    def build(p: dict) -> Built:
        mk = Inputs(p["seed"])
        a = mk.tensor(F16, (100, 6, 2), STRIDED, name="a")
        cur = gr.silu(gr.cont(a))
        cur = gr.mul(cur, mk.leaf(F32, (100, 1, 2), name="w"))
        cur = gr.scale(cur, 0.5, -0.25)
        return mk.done(gr.add(cur, mk.leaf(F16, (1, 6), name="b")))

    built = build({"seed": 4})
    plan = gr.compile(gr.build_graph(*built.outputs), [NATIVE], cache=False)
    nodes = [n for n in plan.graph.nodes if n.op in (Op.CONT, Op.SILU, Op.MUL, Op.SCALE, Op.ADD)]
    assert len({plan.alloc.offsets[n] for n in nodes}) == 1, "the chain was expected to run in place"
    _check(Adhoc(Op.ADD, build), {"seed": 4})
