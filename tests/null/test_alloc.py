"""The allocator (graphir/compile/alloc.py): best-fit offsets, in-place reuse rules, and its
invariants on random graphs: no two live tensors overlap (liveness computed here from the
graph order), reuse changes no result, outputs and inputs stay intact, reuse never needs more
memory than the naive layout, and a transformer-like chain needs far less."""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis_profiles import examples

import graphir as gr
from graphir import debug
from graphir.compile import BestFit, allocate, schedule
from graphir.compile.schedule import is_static, resolve_backends
from graphir.ops import INPLACE_OPS
from graphir.tensor import storage_of

F32 = gr.F32
AXES = list(itertools.permutations(range(4)))

# ======================================================================================
# BestFit
# ======================================================================================


def test_bestfit_aligns_sizes_and_offsets() -> None:
    a = BestFit(64)
    offs = [a.alloc(n) for n in (1, 64, 65, 0)]
    assert offs == [0, 64, 128, 256]
    assert a.end == 320  # 64 + 64 + 128 + 64 (an empty tensor still gets one aligned slot)


def test_bestfit_reuses_a_freed_block() -> None:
    a = BestFit(16)
    x, y = a.alloc(100), a.alloc(100)
    a.free(x, 100)
    assert a.alloc(50) == x  # fits in the hole
    assert a.alloc(40) == x + 64  # the rest of the hole, not the end
    assert a.end == y + 112


def test_bestfit_chooses_the_smallest_block_that_fits() -> None:
    a = BestFit(16)
    blocks = [a.alloc(n) for n in (256, 16, 128, 16, 192, 16)]
    for off, n in zip(blocks[::2], (256, 128, 192)):
        a.free(off, n)
    end = a.end
    assert a.alloc(128) == blocks[2]  # exact fit, although the 256 hole comes first
    assert a.alloc(150) == blocks[4]  # 192 beats 256
    assert a.alloc(200) == blocks[0]
    assert a.free_blocks == [[blocks[0] + 208, 48], [blocks[4] + 160, 32]]
    assert a.end == end


def test_bestfit_merges_neighbours() -> None:
    a = BestFit(32)
    x, y, z, w = (a.alloc(32) for _ in range(4))
    a.free(x, 32)
    a.free(z, 32)
    assert a.free_blocks == [[x, 32], [z, 32]]
    a.free(y, 32)  # joins both sides
    assert a.free_blocks == [[x, 96]]
    assert a.alloc(96) == x and a.free_blocks == []
    a.free(w, 32)
    a.free(x, 96)
    assert a.free_blocks == [[0, 128]]


def test_bestfit_high_water_mark() -> None:
    a = BestFit(64)
    x, y = a.alloc(64), a.alloc(64)
    assert a.end == 128
    a.free(y, 64)
    assert a.end == 128  # freeing does not shrink the buffer
    # too big for the hole at the end: grow from the hole's start, not past the end
    assert a.alloc(128) == y and a.end == 192
    a.free(x, 64)
    assert a.alloc(128) == 192 and a.end == 320  # the hole at 0 is too small and not at the end


# ======================================================================================
# random graphs
# ======================================================================================

RUN_UNARY: dict[str, Callable[[gr.Tensor], gr.Tensor]] = {
    "neg": gr.neg, "sigmoid": gr.sigmoid, "silu": gr.silu, "gelu": gr.gelu, "softplus": gr.softplus,
    "scale": lambda a: gr.scale(a, 0.5, 0.25), "clamp": lambda a: gr.clamp(a, -1.5, 1.5),
}  # fmt: skip
RUN_BINARY = {"add": gr.add, "sub": gr.sub, "mul": gr.mul}
# step kinds in groups, drawn group first so that rare kinds still come up often
RUN_KINDS = [list(RUN_UNARY), list(RUN_BINARY), ["permute", "transpose", "reshape", "view_rows"]]
# allocation does not run kernels, so any op may appear in allocation-only graphs
ALLOC_KINDS = [*RUN_KINDS, ["cont", "dup", "cpy_scratch", "cpy_into"],
               ["concat", "mul_mat", "rms_norm", "soft_max", "sum_rows"]]  # fmt: skip


@dataclass
class Recipe:
    ne: tuple[int, int, int]  # shape of the first input
    inputs: list[tuple[int, int, int]]  # shapes of the inputs (base shape with broadcast dims)
    weight: bool  # add a weight (static, outside the compute buffer) to the pool
    steps: list[tuple[str, int, int, int]]  # (kind, operand i, operand j, extra)
    outputs: list[int]  # indices (into the nodes made by steps) of extra outputs


@st.composite
def recipes(draw: st.DrawFn, kinds: list[list[str]]) -> Recipe:
    ne = (draw(st.integers(1, 5)), draw(st.integers(1, 4)), draw(st.integers(1, 3)))
    shapes = [ne]
    for _ in range(draw(st.integers(0, 2))):
        shapes.append(tuple(n if draw(st.booleans()) else 1 for n in ne))
    n_steps = draw(st.integers(1, 12))
    steps = [(draw(st.sampled_from(draw(st.sampled_from(kinds)))), draw(st.integers(0, 99)),
              draw(st.integers(0, 99)), draw(st.integers(0, 99))) for _ in range(n_steps)]  # fmt: skip
    outputs = draw(st.lists(st.integers(0, n_steps - 1), max_size=2))
    return Recipe(ne, shapes, draw(st.booleans()), steps, outputs)


def build(r: Recipe) -> tuple[gr.Graph, list[gr.Tensor]]:
    """The recipe's graph and its inputs. An op whose shapes do not fit falls back to neg(a)."""
    inputs = [gr.new_input(F32, list(ne), f"in{i}") for i, ne in enumerate(r.inputs)]
    pool = list(inputs)
    if r.weight:
        data = np.linspace(-1, 1, int(np.prod(r.inputs[-1])), dtype=np.float32).reshape(r.inputs[-1][::-1])
        pool.append(gr.from_numpy(data, "w"))
    made = []
    for k, (kind, i, j, x) in enumerate(r.steps):
        a, b = pool[-1 - i % len(pool)], pool[-1 - j % len(pool)]  # biased to recent tensors
        try:
            t = _step(kind, a, b, x)
        except gr.ShapeError:
            t = gr.neg(a)
        made.append(t.set_name(f"t{k}"))
        pool.append(t)
    outs = [made[-1]] + [made[i] for i in r.outputs]
    return gr.build_graph(*outs), inputs


def _step(kind: str, a: gr.Tensor, b: gr.Tensor, x: int) -> gr.Tensor:
    if kind in RUN_UNARY:
        return RUN_UNARY[kind](a)
    if kind in RUN_BINARY:
        return RUN_BINARY[kind](a, b) if gr.can_repeat(b, a) else RUN_BINARY[kind](b, a)
    if kind == "permute":
        return gr.permute(a, *AXES[x % 24])
    if kind == "transpose":
        return gr.transpose(a)
    if kind == "reshape":
        ne = (a.nelements,) if x % 2 else (a.ne[0] * a.ne[1], a.ne[2] * a.ne[3])
        return gr.reshape(a, *ne)
    if kind == "view_rows":  # drop the first or last row, keeping a's strides
        if a.ne[1] == 1:
            raise gr.ShapeError("[test] one row")
        return gr.view_4d(a, a.ne[0], a.ne[1] - 1, a.ne[2], a.ne[3], *a.nb[1:], offset=a.nb[1] * (x % 2))
    if kind == "cont":
        return gr.cont(a)
    if kind == "dup":
        return gr.dup(a)
    if kind == "concat":
        return gr.concat(a, b, x % 4)
    if kind == "mul_mat":
        return gr.mul_mat(a, b if a.ne[0] == b.ne[0] else a)
    if kind == "cpy_scratch":  # write into a data-less leaf, read through the returned view
        return gr.cpy(a, gr.new_tensor(F32, list(a.ne), "scratch"))
    if kind == "cpy_into":
        if a is b or b.is_param or b.is_input or a.nelements != b.nelements:
            raise gr.ShapeError("[test] no cpy target")
        return gr.cpy(a, b)
    if kind == "rms_norm":
        return gr.rms_norm(a, 1e-6)
    if kind == "soft_max":
        return gr.soft_max_ext(a)
    assert kind == "sum_rows"
    return gr.sum_rows(a)


# ======================================================================================
# the invariants
# ======================================================================================


def lifetimes(g: gr.Graph, offsets: dict) -> dict[gr.Tensor, tuple[int, int]]:
    """[first, last] graph step at which each storage owner in the compute buffer is live:
    from its producer (leafs: first use) to its last reader, through views; inputs from the
    start, and inputs, outputs and what they view to the end."""
    pos = {n: i for i, n in enumerate(g.nodes)}
    life = {o: [pos.get(o), pos.get(o)] for o in offsets}
    for i, n in enumerate(g.nodes):
        for s in (*n.src, n.view_src):
            if s is None or storage_of(s) not in life:
                continue
            span = life[storage_of(s)]
            span[0] = i if span[0] is None else min(span[0], i)
            span[1] = i if span[1] is None else max(span[1], i)
    for t in g.tensors():
        if storage_of(t) in life and t.is_input:
            life[storage_of(t)][0] = -1
        if storage_of(t) in life and (t.is_input or t.is_output):
            life[storage_of(t)][1] = len(g.nodes)
    return {o: (a, b) for o, (a, b) in life.items()}


def check_allocation(g: gr.Graph, alloc, reuse: bool = True) -> None:
    offsets, size = alloc.offsets, alloc.sizes["cpu"]
    for t in g.tensors():
        assert is_static(storage_of(t)) or storage_of(t) in offsets, f"{t} has no memory"
    for o, off in offsets.items():
        assert off % 64 == 0 and off + o.nbytes <= size, f"{o} at {off} outside the {size}-byte buffer"
    life = lifetimes(g, offsets)
    pos = {n: i for i, n in enumerate(g.nodes)}

    def inplace(p: gr.Tensor, n: gr.Tensor) -> bool:  # n took p's memory when p died
        return (n in pos and n.op in INPLACE_OPS and n.src[0] is p and offsets[n] == offsets[p]
                and n.same_layout(p) and life[p][1] == pos[n])  # fmt: skip

    for a, b in itertools.combinations(offsets, 2):
        if not a.nbytes or not b.nbytes:
            continue
        oa, ob = offsets[a], offsets[b]
        if not (oa < ob + b.nbytes and ob < oa + a.nbytes):
            continue
        assert reuse, f"no reuse, yet {a} and {b} share bytes"
        (a0, a1), (b0, b1) = life[a], life[b]
        if a1 < b0 or b1 < a0:
            continue
        assert inplace(a, b) or inplace(b, a), (
            f"{a} (live {life[a]}, bytes {oa}+{a.nbytes}) overlaps {b} (live {life[b]}, bytes {ob}+{b.nbytes})"
        )


@settings(max_examples=examples(300), deadline=None)
@given(recipes(ALLOC_KINDS))
def test_no_two_live_tensors_overlap(r: Recipe) -> None:
    g, _ = build(r)
    for reuse in (True, False):
        plan = gr.compile(g, ["cpu"], reuse=reuse, cache=False)
        check_allocation(g, plan.alloc, reuse)
        s = plan.stats
        assert s.compute_bytes["cpu"] <= s.naive_bytes["cpu"]
        if not reuse:
            assert s.compute_bytes["cpu"] == s.naive_bytes["cpu"] and s.inplace == 0
    naive = gr.compile(g, ["cpu"], reuse=False, cache=False).stats.naive_bytes
    assert gr.compile(g, ["cpu"], reuse=True, cache=False).stats.naive_bytes == naive


# ---- running: an independent numpy evaluation -----------------------------------------


def _tile(b: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """b repeated to `shape` (ggml's broadcast: each dim of b divides the target's)."""
    return b[np.ix_(*[np.arange(n) % m for n, m in zip(shape, b.shape)])]


REF_UNARY: dict[gr.Op, Callable[[np.ndarray, dict], np.ndarray]] = {
    gr.Op.NEG: lambda x, p: -x,
    gr.Op.SIGMOID: lambda x, p: 1 / (1 + np.exp(-x)),
    gr.Op.SILU: lambda x, p: x / (1 + np.exp(-x)),
    gr.Op.GELU: lambda x, p: 0.5 * x * (1 + np.tanh(np.sqrt(2 / np.pi) * (x + 0.044715 * x**3))),
    gr.Op.SOFTPLUS: lambda x, p: np.where(x > 20, x, np.log1p(np.exp(np.minimum(x, 20)))),
    gr.Op.SCALE: lambda x, p: x * p["s"] + p["b"],
    gr.Op.CLAMP: lambda x, p: np.clip(x, p["min"], p["max"]),
}
REF_BINARY = {gr.Op.ADD: np.add, gr.Op.SUB: np.subtract, gr.Op.MUL: np.multiply}


def evaluate(g: gr.Graph, feeds: dict[gr.Tensor, np.ndarray]) -> dict[gr.Tensor, np.ndarray]:
    """Every tensor's value (numpy order), computed in float64 and stored as float32 like the
    graph; views read their owner's bytes through their own ne/nb/offset."""
    mem: dict[gr.Tensor, np.ndarray] = {}

    def read(t: gr.Tensor) -> np.ndarray:
        raw = mem[storage_of(t)]
        offs = t.view_offs if t.view_src is not None else 0
        shape, strides = (t.ne[3], t.ne[2], t.ne[1], t.ne[0]), (t.nb[3], t.nb[2], t.nb[1], t.nb[0])
        return np.ndarray(shape, np.float32, buffer=raw, offset=offs, strides=strides).astype(np.float64)

    for t in g.leafs:
        mem[t] = np.ascontiguousarray(feeds[t] if t.is_input else t.data, np.float32).reshape(-1)
    with np.errstate(all="ignore"):
        for n in g.nodes:
            if n.view_src is not None:
                continue
            x = [read(s) for s in n.src]
            if n.op in REF_BINARY:
                y = REF_BINARY[n.op](x[0], _tile(x[1], x[0].shape))
            else:
                y = REF_UNARY[n.op](x[0], n.params)
            mem[n] = np.ascontiguousarray(y, np.float32).reshape(-1)
    return {t: read(t).astype(np.float32) for t in g.tensors()}


def run(plan, feeds: dict) -> list[tuple[gr.Tensor, np.ndarray]]:
    for t, v in feeds.items():
        plan.set_input(t, v)
    seen: list[tuple[gr.Tensor, np.ndarray]] = []
    plan.run(lambda t, v: seen.append((t, v)))
    return seen


@settings(max_examples=examples(60), deadline=None)
@given(recipes(RUN_KINDS), st.integers(0, 2**32 - 1))
def test_reuse_changes_no_result(r: Recipe, seed: int) -> None:
    g, inputs = build(r)
    inputs = [x for x in inputs if x in g]
    rng = np.random.default_rng(seed)
    feeds = {x: rng.uniform(-2, 2, (x.ne[3], x.ne[2], x.ne[1], x.ne[0])).astype(np.float32) for x in inputs}
    ref = evaluate(g, feeds)
    plans = {reuse: gr.compile(g, ["cpu"], reuse=reuse, cache=False) for reuse in (False, True)}
    seen = {reuse: run(p, feeds) for reuse, p in plans.items()}
    check_allocation(g, plans[True].alloc)
    # every node's value, as the eval callback sees it, is bit-identical with and without reuse
    assert [t for t, _ in seen[True]] == [t for t, _ in seen[False]]
    for (t, with_reuse), (_, without) in zip(seen[True], seen[False]):
        assert np.array_equal(with_reuse, without, equal_nan=True), f"{t} differs with reuse"
    value_at_compute = {t: v for t, v in seen[True]}
    for p in plans.values():
        for out in g.outputs:  # outputs are intact after the whole run
            got = p.get(out)
            np.testing.assert_allclose(got, ref[out], rtol=1e-4, atol=1e-5, err_msg=str(out))
            if out in value_at_compute:
                assert np.array_equal(got, value_at_compute[out], equal_nan=True), f"{out} overwritten"
        for x in inputs:  # and so are the inputs
            assert np.array_equal(p.get(x), feeds[x]), f"input {x} overwritten"
    assert plans[True].stats.compute_bytes["cpu"] <= plans[False].stats.compute_bytes["cpu"]


def test_inplace_chain_runs_correctly() -> None:
    x = gr.new_input(F32, [8, 4], "x")
    t = gr.neg(x)
    for _ in range(5):
        t = gr.sigmoid(gr.scale(t, 2.0, -0.5))
    g = gr.build_graph(t)
    plan = gr.compile(g, ["cpu"], cache=False)
    assert plan.stats.inplace == 10  # everything after neg(x) works over its parent
    assert plan.stats.compute_bytes["cpu"] == 2 * 128  # x and one working slot
    data = np.linspace(-3, 3, 32, dtype=np.float32).reshape(1, 1, 4, 8)
    ref = evaluate(g, {x: data})
    run(plan, {x: data})
    np.testing.assert_allclose(plan.get(t), ref[t], rtol=1e-5, atol=1e-6)


# ---- a transformer-like chain ---------------------------------------------------------


def transformer(n_layer: int = 4, d: int = 64, n_tok: int = 16, n_ff: int = 128) -> gr.Graph:
    rng = np.random.default_rng(0)

    def w(*ne: int) -> gr.Tensor:
        return gr.from_numpy(rng.standard_normal(ne[::-1]).astype(np.float32))

    cur = gr.new_input(F32, [d, n_tok], "x")
    for _ in range(n_layer):
        h = gr.mul(gr.rms_norm(cur, 1e-6), w(d))
        q, k, v = gr.mul_mat(w(d, d), h), gr.mul_mat(w(d, d), h), gr.mul_mat(w(d, d), h)
        kq = gr.soft_max_ext(gr.mul_mat(k, q), None, d**-0.5)  # [n_tok(k), n_tok(q)]
        kqv = gr.mul_mat(gr.cont(gr.transpose(v)), kq)  # [d, n_tok]
        cur = gr.add(cur, gr.mul_mat(w(d, d), kqv))
        h = gr.mul(gr.rms_norm(cur, 1e-6), w(d))
        ff = gr.mul(gr.silu(gr.mul_mat(w(d, n_ff), h)), gr.mul_mat(w(d, n_ff), h))
        cur = gr.add(cur, gr.mul_mat(w(n_ff, d), ff))
    return gr.build_graph(gr.mul_mat(w(d, 100), gr.rms_norm(cur, 1e-6)))


def test_transformer_chain_needs_far_less_than_naive() -> None:
    g = transformer()
    plan = gr.compile(g, ["cpu"], cache=False)
    check_allocation(g, plan.alloc)
    s = plan.stats
    assert s.naive_bytes["cpu"] >= 2 * s.compute_bytes["cpu"], s.summary()
    assert s.inplace > 0
    # deeper models must not need more working memory per layer
    deeper = gr.compile(transformer(n_layer=8), ["cpu"], cache=False).stats
    assert deeper.compute_bytes["cpu"] == s.compute_bytes["cpu"]


# ======================================================================================
# in-place rules
# ======================================================================================


@pytest.fixture
def alloc_debug(monkeypatch: pytest.MonkeyPatch) -> Callable[[gr.Graph], object]:
    """allocate() with the allocation debug level on, so refusals are recorded."""
    monkeypatch.setattr(debug, "LEVEL", debug.ALLOC)

    def go(g: gr.Graph):
        return allocate(g, schedule(g, resolve_backends(["cpu"])))

    return go


def refusal(alloc, name: str) -> str:
    hits = [why for why in alloc.refused if f"{name!r}" in why.split(" over ")[0]]
    assert len(hits) == 1, alloc.refused
    return hits[0]


def test_inplace_over_a_single_consumer_parent(alloc_debug) -> None:
    x = gr.new_input(F32, [8, 4], "x")
    a = gr.neg(x).set_name("a")
    b = gr.sigmoid(a).set_name("b")
    g = gr.build_graph(gr.scale(b, 2.0).set_name("out"))
    al = alloc_debug(g)
    assert al.offsets[b] == al.offsets[a] == al.offsets[g.find("out")]  # an output may take it too
    assert al.inplace == 2 and al.offsets[x] != al.offsets[a]
    assert len(al.refused) == 1 and "input" in refusal(al, "a")
    check_allocation(g, al)


def test_inplace_refused_for_two_consumers(alloc_debug) -> None:
    x = gr.new_input(F32, [8, 4], "x")
    a = gr.neg(x).set_name("a")
    b = gr.sigmoid(a).set_name("b")
    al = alloc_debug(gr.build_graph(gr.add(b, a).set_name("out")))
    assert al.offsets[b] != al.offsets[a]
    assert "2 consumers" in refusal(al, "b")


def test_inplace_refused_over_an_input(alloc_debug) -> None:
    x = gr.new_input(F32, [8, 4], "x")
    al = alloc_debug(gr.build_graph(gr.sigmoid(x).set_name("out")))
    assert "input" in refusal(al, "out")


def test_inplace_refused_over_an_output(alloc_debug) -> None:
    x = gr.new_input(F32, [8, 4], "x")
    a = gr.neg(x).set_name("a")
    b = gr.sigmoid(a).set_name("b")
    al = alloc_debug(gr.build_graph(b, a))
    assert al.offsets[b] != al.offsets[a]
    assert "output" in refusal(al, "b")


def test_inplace_refused_while_a_view_is_live(alloc_debug) -> None:
    x = gr.new_input(F32, [8, 4], "x")
    a = gr.neg(x).set_name("a")
    v = gr.reshape(a, 8, 4).set_name("v")  # read after b: a's bytes must survive b
    b = gr.sigmoid(a).set_name("b")
    g = gr.build_graph(gr.add(v, b).set_name("out"))
    assert g.nodes.index(v) < g.nodes.index(b)
    al = alloc_debug(g)
    assert al.offsets[b] != al.offsets[a]
    assert "1 live views" in refusal(al, "b")


def test_inplace_refused_when_layouts_differ(alloc_debug) -> None:
    x = gr.new_input(F32, [8, 4], "x")
    a = gr.neg(x).set_name("a")
    c = gr.cont(a, 32).set_name("c")  # same bytes, other shape
    al = alloc_debug(gr.build_graph(gr.neg(c).set_name("out")))
    assert al.offsets[c] != al.offsets[a]
    assert "layouts differ" in refusal(al, "c")


def test_inplace_refused_over_a_view(alloc_debug) -> None:
    x = gr.new_input(F32, [8, 4], "x")
    p = gr.transpose(gr.neg(x)).set_name("p")
    al = alloc_debug(gr.build_graph(gr.neg(gr.sigmoid(p).set_name("s"))))
    assert "view" in refusal(al, "s")


def test_no_refusals_recorded_without_debug(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(debug, "LEVEL", 0)
    x = gr.new_input(F32, [8, 4], "x")
    g = gr.build_graph(gr.sigmoid(x))
    assert allocate(g, schedule(g, resolve_backends(["cpu"]))).refused == []


def test_scratch_leaf_lives_from_its_first_write() -> None:
    """A data-less leaf written by cpy and read later must not share bytes with a tensor
    that is live in between."""
    x = gr.new_input(F32, [16], "x")
    scratch = gr.new_tensor(F32, [16], "scratch")
    written = gr.cpy(gr.exp(x), scratch)
    t = gr.sqr(gr.sqr(gr.neg(x)))  # computed while `scratch` holds the copy
    g = gr.build_graph(gr.add(written, t))
    assert g.nodes.index(written) < g.nodes.index(t)
    check_allocation(g, gr.compile(g, ["cpu"], cache=False).alloc)
