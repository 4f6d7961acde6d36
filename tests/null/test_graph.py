"""The graph: build_forward_expand puts every node after its sources (views after the
tensor they alias), once; leafs and nodes are separated; outputs are marked; find by name."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis_profiles import examples

import graphir as gr
from graphir.ops import Op


def ancestors(*roots: gr.Tensor) -> set[gr.Tensor]:
    """Everything `roots` depend on (sources and view sources), roots included."""
    seen: set[gr.Tensor] = set()
    todo = list(roots)
    while todo:
        t = todo.pop()
        if t in seen:
            continue
        seen.add(t)
        todo.extend(s for s in t.src if s is not None)
        if t.view_src is not None:
            todo.append(t.view_src)
    return seen


def check_order(g: gr.Graph) -> None:
    """Every node after its sources and its view source; each tensor once; leafs are op NONE."""
    pos = {id(t): i for i, t in enumerate(g.nodes)}
    assert len(pos) == len(g.nodes), "duplicate node"
    assert len({id(t) for t in g.leafs}) == len(g.leafs), "duplicate leaf"
    assert all(t.op is Op.NONE for t in g.leafs)
    assert all(t.op is not Op.NONE for t in g.nodes)
    leafs = {id(t) for t in g.leafs}
    for i, n in enumerate(g.nodes):
        deps = [s for s in n.src if s is not None] + ([n.view_src] if n.view_src is not None else [])
        for s in deps:
            if s.op is Op.NONE:
                assert id(s) in leafs, f"leaf {s} of {n} missing"
            else:
                assert pos.get(id(s), len(g.nodes)) < i, f"{n} comes before its source {s}"


@st.composite
def random_dag(draw: st.DrawFn) -> tuple[list[gr.Tensor], list[gr.Tensor]]:
    """A random DAG over [4, 3] tensors: unary/binary ops, views and write-into copies.
    Returns (all tensors, chosen roots)."""
    pool: list[gr.Tensor] = [gr.new_input(gr.F32, [4, 3], f"in{i}") for i in range(draw(st.integers(1, 3)))]
    if draw(st.booleans()):
        pool.append(gr.new_tensor(gr.F32, [4, 3], "scratch"))
    for i in range(draw(st.integers(1, 15))):
        kind = draw(st.sampled_from(["unary", "binary", "view", "permute", "cpy"]))
        a = pool[draw(st.integers(0, len(pool) - 1))]
        b = pool[draw(st.integers(0, len(pool) - 1))]
        if kind == "unary":
            t = gr.silu(a)
        elif kind == "binary":
            t = gr.add(a, b) if a.ne == b.ne else gr.mul(a, a)
        elif kind == "view":
            t = gr.reshape(a, 4, 3) if a.is_contiguous() else gr.view_2d(a, 2, 3, a.nb[1], 0)
        elif kind == "permute":
            t = gr.transpose(gr.transpose(a))
        else:
            t = gr.cpy(a, b) if a is not b else gr.neg(a)
        pool.append(t.set_name(f"t{i}"))
    roots = draw(st.lists(st.sampled_from(pool), min_size=1, max_size=3))
    return pool, roots


@settings(max_examples=examples(60), deadline=None)
@given(random_dag())
def test_forward_expand_order(dag: tuple[list[gr.Tensor], list[gr.Tensor]]) -> None:
    _, roots = dag
    g = gr.Graph()
    for r in roots:
        before = list(g.nodes)
        gr.build_forward_expand(g, r)
        assert g.nodes[: len(before)] == before, "expanding must only append"
        check_order(g)
        assert r in g
    # exactly the ancestors of the roots, nothing else
    want = ancestors(*roots)
    assert {id(t) for t in g.tensors()} == {id(t) for t in want}
    assert len(g) == sum(t.op is not Op.NONE for t in want)
    # expanding again adds nothing
    n = len(g.nodes)
    for r in roots:
        gr.build_forward_expand(g, r)
    assert len(g.nodes) == n


def test_views_come_after_their_storage() -> None:
    x = gr.new_input(gr.F32, [4, 3], "x")
    s = gr.silu(x)
    v = gr.view_1d(gr.view_2d(s, 4, 2, 16, 16), 4, 4)  # a view of a view: src is the view
    out = gr.add(gr.neg(s), gr.reshape(v, 4))
    g = gr.build_graph(out)
    check_order(g)
    assert g.nodes.index(s) < g.nodes.index(v) < g.nodes.index(out)
    assert g.leafs == [x]


def test_cpy_target_is_scheduled_before_the_write() -> None:
    x = gr.new_input(gr.F32, [6], "x")
    dst = gr.exp(x)  # a computed destination
    w = gr.cpy(gr.neg(x), dst)
    g = gr.build_graph(w)
    assert g.nodes.index(dst) < g.nodes.index(w)
    check_order(g)


def test_leafs_and_nodes_are_separate() -> None:
    x = gr.new_input(gr.F32, [4], "x")
    w = gr.new_tensor(gr.F32, [4], "w")
    out = gr.mul(gr.add(x, w), w)
    g = gr.build_graph(out)
    assert g.leafs == [x, w]
    assert [n.op for n in g.nodes] == [Op.ADD, Op.MUL]
    assert list(g.tensors()) == [x, w, *g.nodes]
    assert g.inputs == [x]


def test_deep_chain_does_not_recurse() -> None:
    t = gr.new_input(gr.F32, [2], "x")
    for _ in range(5000):
        t = gr.neg(t)
    g = gr.build_graph(t)
    assert len(g) == 5000 and g.nodes[-1] is t


def test_build_graph_marks_outputs() -> None:
    x = gr.new_input(gr.F32, [4], "x")
    a = gr.exp(x).set_name("a")
    b = gr.silu(a).set_name("b")
    c = gr.neg(a).set_name("c")
    g = gr.build_graph(c, b)
    assert b.is_output and c.is_output
    assert not a.is_output and not x.is_output
    assert set(g.outputs) == {b, c}
    assert g.outputs == [n for n in g.nodes if n in (b, c)]  # in node order
    assert g.nodes.index(a) < min(g.nodes.index(b), g.nodes.index(c))


def test_find() -> None:
    x = gr.new_input(gr.F32, [4], "x")
    y = gr.sqr(x).set_name("y")
    g = gr.build_graph(gr.neg(y).set_name("out"))
    assert g.find("x") is x and g.find("y") is y and g.find("out") is g.nodes[-1]
    with pytest.raises(KeyError, match="nope"):
        g.find("nope")
    assert y in g and gr.neg(x) not in g
