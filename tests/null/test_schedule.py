"""Scheduling onto several backends: fallback to cpu, splits, cross-backend copies, weight
placement. A second backend is simulated by a cpu subclass with its own buffers and a
reduced KERNELS table, so every path runs without a device."""

from __future__ import annotations

import numpy as np
import pytest

import graphir as gr
from graphir.backends.ref import RefBackend as CPUBackend
from graphir.compile import ScheduleError
from graphir.ops import Op


def make_backend(name: str, missing: set[Op]) -> CPUBackend:
    cls = type(
        name,
        (CPUBackend,),
        {"name": name, "KERNELS": {op: k for op, k in CPUBackend.KERNELS.items() if op not in missing}},
    )
    return cls()


def chain(x: gr.Tensor, w: gr.Tensor) -> gr.Tensor:
    a = gr.scale(x, 0.5).set_name("a")
    b = gr.silu(a).set_name("b")
    c = gr.mul(b, w).set_name("c")
    d = gr.sigmoid(c).set_name("d")
    return gr.add(d, x).set_name("out")


def run(backends, seed: int = 0) -> tuple[gr.Plan, np.ndarray]:
    x = gr.new_input(gr.F32, [16, 3], "x")
    w = gr.from_numpy(np.linspace(-1, 1, 16, dtype=np.float32), "w")
    graph = gr.build_graph(chain(x, w))
    plan = gr.compile(graph, backends, cache=False)
    plan.set_input("x", np.random.default_rng(seed).standard_normal((3, 16)).astype(np.float32))
    plan.run()
    return plan, plan.get("out")


def test_unsupported_ops_fall_back_to_cpu_with_identical_results():
    _, ref = run(["ref"])
    fake = make_backend("fake_nosilu", {Op.SILU})
    plan, out = run([fake])
    # NOTE: the fallback (native cpu) rounds silu in its own way: equal to the last bits
    np.testing.assert_allclose(out, ref, rtol=1e-6)
    by_name = {n.name: plan.backend_of(n).name for n in plan.graph.nodes}
    assert by_name["b"] == "cpu"
    assert by_name["a"] == by_name["c"] == by_name["out"] == "fake_nosilu"
    assert [s.backend.name for s in plan.schedule.splits] == ["fake_nosilu", "cpu", "fake_nosilu"]


def test_copies_once_per_split_for_storage_from_another_backend():
    fake = make_backend("fake_nosilu2", {Op.SILU})
    plan, _ = run([fake])
    splits = plan.schedule.splits
    # the silu split reads a (made on fake); the last split reads b (made on cpu) and x stays home
    assert [t.name for t in splits[1].inputs] == ["a"]
    assert [t.name for t in splits[2].inputs] == ["b"]
    assert plan.stats.n_copies == 2


def test_input_read_on_two_backends_is_copied_to_the_second():
    fake = make_backend("fake_noadd", {Op.ADD})
    plan, out = run([fake])
    _, ref = run(["ref"])
    np.testing.assert_allclose(out, ref, rtol=1e-6)
    last = plan.schedule.splits[-1]
    assert last.backend.name == "cpu"
    assert {t.name for t in last.inputs} == {"d", "x"}


def test_pinned_weight_pulls_its_consumer_to_its_backend():
    fake = make_backend("fake_all", set())
    x = gr.new_input(gr.F32, [16, 3], "x")
    w = gr.from_numpy(np.ones(16, dtype=np.float32), "w")
    w.backend = "cpu"
    plan = gr.compile(gr.build_graph(chain(x, w)), [fake], cache=False)
    names = {n.name: plan.backend_of(n).name for n in plan.graph.nodes}
    assert names["c"] == "cpu"
    assert names["a"] == names["b"] == "fake_all"


def test_write_into_state_on_a_backend_that_cannot_write_is_an_error():
    fake = make_backend("fake_noset", {Op.SET_ROWS})
    cache = gr.from_numpy(np.zeros((4, 8), np.float32), "cache")
    cache.flags &= ~gr.Flag.PARAM  # writable state, not a weight
    cache.backend = "fake_noset"
    rows = gr.new_input(gr.F32, [8, 2], "rows")
    idx = gr.new_input(gr.I32, [2], "idx")
    out = gr.set_rows(cache, rows, idx)
    with pytest.raises(ScheduleError, match=r"\[schedule\] set_rows .* fake_noset"):
        gr.compile(gr.build_graph(out), [fake], cache=False)


def test_no_backend_list_is_an_error():
    x = gr.new_input(gr.F32, [4], "x")
    with pytest.raises(ScheduleError):
        gr.compile(gr.build_graph(gr.neg(x)), [], cache=False)


def test_unknown_backend_name_is_a_clear_error():
    x = gr.new_input(gr.F32, [4], "x")
    with pytest.raises(ValueError, match="unknown backend 'nope'"):
        gr.compile(gr.build_graph(gr.neg(x)), ["nope"], cache=False)
