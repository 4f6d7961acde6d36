"""The native cpu reductions, norms, soft_max, sorting and rope (shaders/cpu/reduce.c, rope.c)
against the reference: the parity cases at several thread counts and for every ISA level,
long rows (vector bodies and tails), strided rows (dim 0 not innermost), ties and NaNs,
batch invariance (a row's bits do not depend on its batch or the thread count) and an
in-place chain."""

from __future__ import annotations

import numpy as np
import pytest
from cpu_support import Adhoc
from cpu_support import check as _check
from cpu_support import set_isa as _set_isa

import graphir as gr
from graphir.backends import availability
from graphir.builders import ROPE_IMROPE, ROPE_NEOX, ROPE_NORMAL, SORT_ASC, SORT_DESC
from graphir.ops import Op
from graphir.parity import CASES
from graphir.parity.harness import check_case, examples
from graphir.parity.inputs import Built, Inputs

NATIVE = "cpu"
pytestmark = pytest.mark.skipif(not availability(NATIVE).ok, reason=f"native cpu: {availability(NATIVE).reason}")

F32, F16, I32 = gr.F32, gr.F16, gr.I32
FAMILY = ["sum_rows", "mean", "rms_norm", "l2_norm", "soft_max", "argmax", "argsort", "top_k", "rope"]
ISAS = {"portable": 0, "avx2": 1, "avx512": 7}


# ======================================================================================
# the parity cases, every thread count and ISA level
# ======================================================================================


@pytest.mark.parametrize("isa", list(ISAS), ids=str)
@pytest.mark.parametrize("n_threads", [1, 3])
@pytest.mark.parametrize("name", FAMILY)
def test_parity_cases(native, name: str, n_threads: int, isa: str) -> None:
    native.n_threads = n_threads
    _set_isa(ISAS[isa])
    results = [(p, check_case(CASES[name], p, NATIVE)) for p in examples(CASES[name])]
    failures = [f"{p}: {r}" for p, r in results if r.failed]
    assert not failures, failures[0]
    assert any(r.passed for _, r in results)


# ======================================================================================
# long rows and strided rows
# ======================================================================================

ROW_LENGTHS = [1, 7, 8, 9, 15, 16, 17, 33, 257, 4099]


def _rows_input(mk: Inputs, ne0: int, n_rows: int, strided: bool, gen=None) -> gr.Tensor:
    """[ne0, n_rows] F32, or the transpose of a [n_rows, ne0] leaf (nb[0] != 4) when strided."""
    gen = gen or mk.uniform(-3.0, 3.0)
    if strided:
        return gr.transpose(mk.leaf(F32, (n_rows, ne0), gen, "a.src")).set_name("a")
    return mk.leaf(F32, (ne0, n_rows), gen, "a")


def _row_op(name: str, a: gr.Tensor) -> gr.Tensor:
    return {
        "sum_rows": lambda: gr.sum_rows(a),
        "mean": lambda: gr.mean(a),
        "rms_norm": lambda: gr.rms_norm(a, 1e-6),
        "l2_norm": lambda: gr.l2_norm(a, 1e-6),
        "argmax": lambda: gr.argmax(a),
        "argsort_asc": lambda: gr.argsort(a, SORT_ASC),
        "argsort_desc": lambda: gr.argsort(a, SORT_DESC),
        "top_k": lambda: gr.top_k(a, min(a.ne[0], 5)),
    }[name]()


ROW_OPS = ["sum_rows", "mean", "rms_norm", "l2_norm", "argmax", "argsort_asc", "argsort_desc", "top_k"]


@pytest.mark.parametrize("isa", list(ISAS), ids=str)
@pytest.mark.parametrize("strided", [False, True], ids=["contiguous", "strided"])
@pytest.mark.parametrize("name", ROW_OPS)
def test_long_and_strided_rows(native, name: str, strided: bool, isa: str) -> None:
    native.n_threads = 3
    _set_isa(ISAS[isa])

    def build(p: dict) -> Built:
        mk = Inputs(p["seed"])
        gen = mk.distinct() if name.startswith(("arg", "top")) else None
        return mk.done(_row_op(name, _rows_input(mk, p["ne0"], 5, strided, gen)))

    op = Op.ARGSORT if name.startswith("argsort") else Op(name)
    for ne0 in ROW_LENGTHS:
        _check(Adhoc(op, build), {"seed": ne0, "ne0": ne0})


@pytest.mark.parametrize("isa", list(ISAS), ids=str)
@pytest.mark.parametrize("mask", [None, F32, F16], ids=["no-mask", "f32-mask", "f16-mask"])
@pytest.mark.parametrize("strided", [False, True], ids=["contiguous", "strided"])
def test_soft_max_long_and_strided_rows(native, mask, strided: bool, isa: str) -> None:
    """Rows of every length modulo the vector widths; masks broadcast over heads, ALiBi slopes."""
    native.n_threads = 3
    _set_isa(ISAS[isa])

    def build(p: dict) -> Built:
        mk = Inputs(p["seed"])
        n_kv, n_q, H = p["ne0"], 3, 4
        a = mk.tensor(F32, (n_kv, n_q, H, 1), {"kind": "perm", "axes": (1, 0, 2, 3)} if strided else None,
                      mk.uniform(-3.0, 3.0), "a")  # fmt: skip
        m = None
        if mask is not None:
            m = mk.tensor(mask, (n_kv, n_q + 1, 1, 1), {"kind": "perm", "axes": (1, 0, 2, 3)} if strided else None,
                          mk.mask(), "mask")  # fmt: skip
        return mk.done(gr.soft_max_ext(a, m, 0.6, p["max_bias"]))

    for ne0 in ROW_LENGTHS:
        for max_bias in (0.0, 8.0) if mask is not None else (0.0,):
            _check(Adhoc(Op.SOFT_MAX, build), {"seed": ne0, "ne0": ne0, "max_bias": max_bias})


@pytest.mark.parametrize("isa", ["portable", "avx512"])
def test_soft_max_fully_masked_row_is_nan_as_the_reference(native, isa: str) -> None:
    native.n_threads = 2
    _set_isa(ISAS[isa])

    def build(p: dict) -> Built:
        mk = Inputs(p["seed"])
        a = mk.leaf(F32, (19, 3), mk.uniform(-3.0, 3.0), "a")

        def gen(shape):
            m = np.zeros(shape, np.float32)
            m[..., 1, :] = -np.inf  # row 1: every key masked
            m[..., 2, 5:] = -np.inf
            return m

        return mk.done(gr.soft_max_ext(a, mk.leaf(F16, (19, 3), gen, "mask"), 1.0, 0.0))

    _check(Adhoc(Op.SOFT_MAX, build), {"seed": 1})


# ======================================================================================
# ties and NaNs: argmax first index, argsort/top_k stable, NaNs last
# ======================================================================================


def _tied(mk: Inputs, nan: bool):
    def gen(shape):
        v = mk.rng.integers(-3, 4, shape).astype(np.float32)
        if nan:
            v[mk.rng.random(shape) < 0.1] = np.nan
        return v

    return gen


@pytest.mark.parametrize("nan", [False, True], ids=["ties", "ties+nan"])
@pytest.mark.parametrize("name", ["argmax", "argsort_asc", "argsort_desc", "top_k"])
def test_ties_and_nans_follow_the_reference(native, name: str, nan: bool) -> None:
    native.n_threads = 2
    op = Op.ARGSORT if name.startswith("argsort") else Op(name)

    def build(p: dict) -> Built:
        mk = Inputs(p["seed"])
        a = _rows_input(mk, p["ne0"], 7, False, _tied(mk, nan))
        return mk.done(gr.top_k(a, p["k"]) if p["k"] else _row_op(name, a))

    # top_k: k < ne0 selects through a heap, k == ne0 sorts the whole row
    for ne0 in (100, 3001):
        for k in (1, 5, 33, 99, ne0) if name == "top_k" else (None,):
            for seed in range(2):
                _check(Adhoc(op, build), {"seed": seed, "ne0": ne0, "k": k})


# ======================================================================================
# rope: model-sized heads, long positions, YaRN, strided rows
# ======================================================================================


@pytest.mark.parametrize("isa", ["portable", "avx512"])
@pytest.mark.parametrize("mode", [ROPE_NORMAL, ROPE_NEOX, ROPE_IMROPE])
@pytest.mark.parametrize("yarn", [False, True], ids=["plain", "yarn"])
@pytest.mark.parametrize("strided", [False, True], ids=["contiguous", "strided"])
def test_rope_model_shapes(native, mode: int, yarn: bool, strided: bool, isa: str) -> None:
    """Qwen3.5-like heads (256 dims, 64 rotated) at positions up to 100k."""
    native.n_threads = 3
    _set_isa(ISAS[isa])
    head_dim, n_dims, n_head, n_tok = 256, 64, 3, 5
    multi = mode == ROPE_IMROPE

    def build(p: dict) -> Built:
        mk = Inputs(p["seed"])
        layout = {"kind": "perm", "axes": (1, 0, 2, 3)} if strided else None
        a = mk.tensor(F32, (head_dim, n_head, n_tok, 1), layout, mk.uniform(-1.0, 1.0), "a")
        pos = mk.leaf(I32, (n_tok * (4 if multi else 1),), mk.ints(0, 100_000), "pos")
        ff = mk.leaf(F32, (n_dims // 2,), mk.uniform(0.5, 2.0), "ff") if p["ff"] else None
        kw = dict(freq_base=1e7, freq_scale=0.25 if yarn else 1.0, ext_factor=1.0 if yarn else 0.0,
                  n_ctx_orig=4096 if yarn else 0, attn_factor=1.0)  # fmt: skip
        if multi:
            return mk.done(gr.rope_multi(a, pos, ff, n_dims, (11, 11, 10, 0), mode, **kw))
        return mk.done(gr.rope_ext(a, pos, ff, n_dims, mode, **kw))

    for seed, ff in ((0, False), (1, True)):
        _check(Adhoc(Op.ROPE, build), {"seed": seed, "ff": ff})


# ======================================================================================
# batch invariance: row i of a batch equals the same row computed alone, bit for bit
# ======================================================================================


def _run(out: gr.Tensor, inputs: dict) -> np.ndarray:
    plan = gr.compile(gr.build_graph(out.set_output()), [NATIVE], cache=False)
    for t, v in inputs.items():
        plan.set_input(t, v)
    plan.run()
    return plan.get(out)


def _bits(a: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(a).view(np.uint32)


INVARIANT_OPS = {
    "sum_rows": gr.sum_rows,
    "mean": gr.mean,
    "rms_norm": lambda a: gr.rms_norm(a, 1e-6),
    "l2_norm": lambda a: gr.l2_norm(a, 1e-6),
    "soft_max": lambda a: gr.soft_max_ext(a, None, 0.3, 0.0),
    "top_k": lambda a: gr.top_k(a, 8),
}


@pytest.mark.parametrize("isa", list(ISAS), ids=str)
@pytest.mark.parametrize("name", list(INVARIANT_OPS))
def test_rows_are_batch_invariant(native, name: str, isa: str) -> None:
    _set_isa(ISAS[isa])
    n, rows = 1037, 9
    x = np.random.default_rng(3).uniform(-4, 4, (rows, n)).astype(np.float32)
    a = gr.new_input(F32, (n, rows), "a")
    native.n_threads = 3
    batch = _run(INVARIANT_OPS[name](a), {a: x})
    native.n_threads = 1
    for i in range(rows):
        one = gr.new_input(F32, (n, 1), "one")
        alone = _run(INVARIANT_OPS[name](one), {one: x[i : i + 1]})
        assert np.array_equal(_bits(batch[0, 0, i]), _bits(alone[0, 0, 0])), f"row {i} differs"


@pytest.mark.parametrize("isa", list(ISAS), ids=str)
def test_masked_soft_max_is_batch_invariant(native, isa: str) -> None:
    """Query row i of a batch (its mask row i) equals a one-query run with that mask row."""
    _set_isa(ISAS[isa])
    n_kv, n_q, H = 300, 6, 4
    rng = np.random.default_rng(5)
    x = rng.uniform(-3, 3, (1, H, n_q, n_kv)).astype(np.float32)
    m = np.where(rng.random((1, 1, n_q, n_kv)) < 0.3, -np.inf, 0.0).astype(np.float16)
    a, mask = gr.new_input(F32, (n_kv, n_q, H, 1), "a"), gr.new_input(F16, (n_kv, n_q, 1, 1), "mask")
    native.n_threads = 3
    batch = _run(gr.soft_max_ext(a, mask, 0.125, 8.0), {a: x, mask: m})
    native.n_threads = 1
    for i in range(n_q):
        a1, m1 = gr.new_input(F32, (n_kv, 1, H, 1), "a1"), gr.new_input(F16, (n_kv, 1, 1, 1), "m1")
        alone = _run(gr.soft_max_ext(a1, m1, 0.125, 8.0), {a1: x[:, :, i : i + 1], m1: m[:, :, i : i + 1]})
        assert np.array_equal(_bits(batch[:, :, i]), _bits(alone[:, :, 0])), f"query {i} differs"


def test_rope_is_batch_invariant(native) -> None:
    """Token i of a batch equals the same token (same positions) rotated alone."""
    head_dim, n_dims, n_head, n_tok = 128, 64, 4, 7
    rng = np.random.default_rng(9)
    x = rng.uniform(-1, 1, (1, n_tok, n_head, head_dim)).astype(np.float32)
    pos = rng.integers(0, 50_000, (4, n_tok)).astype(np.int32)

    def rope(a: gr.Tensor, p: gr.Tensor) -> gr.Tensor:
        return gr.rope_multi(a, p, None, n_dims, (11, 11, 10, 0), ROPE_IMROPE, freq_base=1e7)

    a, p = gr.new_input(F32, (head_dim, n_head, n_tok, 1), "a"), gr.new_input(I32, (4 * n_tok,), "pos")
    native.n_threads = 3
    batch = _run(rope(a, p), {a: x, p: pos.reshape(-1)})
    native.n_threads = 1
    for i in range(n_tok):
        a1, p1 = gr.new_input(F32, (head_dim, n_head, 1, 1), "a1"), gr.new_input(I32, (4,), "p1")
        alone = _run(rope(a1, p1), {a1: x[:, i : i + 1], p1: pos[:, i]})
        assert np.array_equal(_bits(batch[:, i]), _bits(alone[:, 0])), f"token {i} differs"


# ======================================================================================
# in place: a chain whose nodes reuse their parent's memory
# ======================================================================================


def test_in_place_chain(native) -> None:
    """rms_norm -> l2_norm -> soft_max -> rope, each working in its parent's memory."""
    native.n_threads = 2

    def build(p: dict) -> Built:
        mk = Inputs(p["seed"])
        a = mk.leaf(F32, (64, 4, 3, 1), mk.uniform(-2.0, 2.0), "a")
        cur = gr.rms_norm(a, 1e-6)
        cur = gr.l2_norm(cur, 1e-6)
        cur = gr.soft_max_ext(cur, mk.leaf(F16, (64, 4), mk.mask(), "mask"), 3.0, 0.0)
        pos = mk.leaf(I32, (3,), mk.ints(0, 300), "pos")
        return mk.done(gr.rope_ext(cur, pos, None, 32, ROPE_NEOX, freq_base=1e4))

    built = build({"seed": 4})
    plan = gr.compile(gr.build_graph(*built.outputs), [NATIVE], cache=False)
    nodes = [n for n in plan.graph.nodes if n.op in (Op.L2_NORM, Op.SOFT_MAX, Op.ROPE)]
    offsets = {plan.alloc.offsets[n] for n in nodes}
    assert len(offsets) == 1, "the chain was expected to run in place"
    _check(Adhoc(Op.ROPE, build), {"seed": 4})
