"""`graphir profile` and the per-node work model (graphir.cost): timings that add up, bytes and
FLOPs by hand, and agreement with the op benchmark's formulas (graphir/parity/perf.py)."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest

import graphir as gr
from graphir.backends.ref.backend import RefBackend
from graphir.cost import node_cost
from graphir.graph import build_graph
from graphir.ops import Op
from graphir.tensor import is_empty_op
from graphir.tools.cli import main
from graphir.tools.profile import format_text, node_rows, op_rows, profile, summary, to_json
from graphir.tools.subject import Setup, Spec, Subject
from graphir.types import row_size

F32, F16 = gr.F32, gr.F16


def _weight(type, *ne: int) -> gr.Tensor:
    return gr.new_weight(type, ne, np.zeros(row_size(type, ne[0]) * ne[1], np.uint8), "w")


def test_mul_mat_bytes_and_flops_by_hand():
    x = gr.new_input(F32, [64, 8], "x")
    for wtype, weight_bytes in ((F16, 64 * 32 * 2), (gr.DType.Q8_0, 32 * 2 * 34), (F32, 64 * 32 * 4)):
        y = gr.mul_mat(_weight(wtype, 64, 32), x)  # [32, 8]
        cost = node_cost(y)
        assert cost.flops == 2 * 64 * 32 * 8
        assert cost.bytes == weight_bytes + 64 * 8 * 4 + 32 * 8 * 4


def test_flash_attn_ext_bytes_and_flops_by_hand():
    """One layer's decode attention: q 4 heads x 2 rows, K/V views of 32 cells of a 256-cell F16
    cache with 2 KV heads, a padded F16 mask: the views count the cells they span, the mask its
    n_q rows."""
    D, n_q, H, H_kv, n_kv, n_ctx = 64, 2, 4, 2, 32, 256
    q = gr.new_input(F32, [D, n_q, H], "q")
    caches = [gr.new_input(F16, [D * H_kv, n_ctx], name) for name in ("k_cache", "v_cache")]
    k, v = (gr.permute(gr.view_3d(c, D, H_kv, n_kv, c.nb[0] * D, c.nb[1], 0), 0, 2, 1, 3) for c in caches)
    mask = gr.new_input(F16, [n_kv, 4], "mask")  # rows padded past n_q
    out = gr.flash_attn_ext(q, k, v, mask, 0.125)  # [D, H, n_q]
    cost = node_cost(out)
    assert cost.flops == 2 * (D + D) * n_kv * n_q * H
    assert cost.bytes == D * n_q * H * 4 + 2 * (D * n_kv * H_kv * 2) + n_kv * n_q * 2 + D * H * n_q * 4
    assert node_cost(k).bytes == node_cost(k).flops == 0  # views move nothing


def test_node_costs_agree_with_the_op_benchmark():
    """Every single-op perf shape of bench-ops: the node's bytes and FLOPs are the profile's."""
    pytest.importorskip("hypothesis")
    from graphir.parity.cases import CASES
    from graphir.parity.perf import PERF, QUICK

    checked = 0
    for name, pf in PERF.items():
        for p in pf.shapes(QUICK):
            work = [n for n in build_graph(*CASES[name].build(p).outputs).nodes if not is_empty_op(n)]
            if len(work) != 1:  # a multi-op case (decomposed attention) counts its intermediates too
                continue
            assert (node_cost(work[0]).flops, node_cost(work[0]).bytes) == (pf.flops(p), pf.bytes(p)), (name, p)
            checked += 1
    assert checked >= 20


def _example(backend: str = "ref") -> Subject:
    return Subject.build(Spec(example=True, layers=2, tokens=16), Setup((backend,)))


def test_per_node_times_sum_to_the_run_time():
    """On the reference the whole-split call runs the same per-node calls in a loop: their sum is
    the run's time, within what a shared machine's noise allows (three tries)."""
    subject = _example()
    for _ in range(3):
        prof = profile(subject, runs=15)
        if abs(prof.step_sum - prof.run_s) <= 0.3 * prof.run_s:
            break
    assert prof.step_sum == pytest.approx(prof.run_s, rel=0.3)
    assert len(prof.node_s) == sum(not is_empty_op(n) for n in subject.graph.nodes)
    assert 0 < prof.kernel_s <= prof.step_sum
    assert prof.outside_s == pytest.approx(max(0.0, prof.run_s - prof.kernel_s - prof.copy_s))


def test_tables_and_shares():
    subject = _example()
    prof = profile(subject, runs=3)
    nodes = node_rows(prof)
    assert sum(r["profile"]["share"] for r in nodes) == pytest.approx(1.0)
    ops = op_rows(nodes, prof.step_sum)
    assert sum(o["calls"] for o in ops) == len(nodes)
    mm = next(o for o in ops if o["op"] == "mul_mat")
    assert mm["flops"] == sum(r["flops"] for r in nodes if r["op"] == "mul_mat")
    assert mm["gflop_s"] == pytest.approx(mm["flops"] / (mm["us"] / 1e6) / 1e9)
    text = format_text(prof, top=5)
    assert "per op type:" in text and "outside kernels:" in text and "flash_attn_ext" in text
    assert summary(prof)["calls"] == len(nodes)


def test_cpu_records_timed_inside_the_run():
    """On cpu each record of a whole-split run is timed inside its native call: one time per
    record (a computing node of the split), none negative, their sum the run's time within a shared
    machine's noise; the text and JSON carry the per-op table."""
    from graphir.backends import availability

    if not availability("cpu").ok:
        pytest.skip(f"native cpu: {availability('cpu').reason}")
    subject = _example("cpu")
    calls = [c for c in subject.plan._calls if hasattr(c, "timed")]
    assert calls
    for call in calls:
        t0 = time.perf_counter()
        times = call.timed()
        wall = time.perf_counter() - t0
        assert times.shape == (call.program.n,) and (times >= 0).all() and times.sum() <= wall
    for _ in range(3):
        prof = profile(subject, runs=7)
        if abs(sum(prof.record_s.values()) - prof.run_s) <= 0.3 * prof.run_s:
            break
    assert sum(prof.record_s.values()) == pytest.approx(prof.run_s, rel=0.3)
    computing = {i for i, n in enumerate(subject.graph.tensors()) if not n.is_leaf and not is_empty_op(n)}
    assert set(prof.record_s) <= computing and len(prof.record_s) == sum(c.program.n for c in calls)
    assert "cpu records timed inside the whole-split runs" in format_text(prof)
    ops = to_json(prof)["cpu_record_ops"]
    assert sum(o["calls"] for o in ops) == len(prof.record_s)


class NoSqrt(RefBackend):
    """The reference without sqrt: a graph with a sqrt falls back to cpu for it (two splits)."""

    name = "nosqrt"
    KERNELS = {op: k for op, k in RefBackend.KERNELS.items() if op is not Op.SQRT}


def test_copies_between_backends_are_timed():
    x = gr.new_input(F32, [64, 4], "x")
    y = gr.silu(gr.sqrt(gr.silu(gr.mul_mat(_weight(F32, 64, 64), x))))
    graph = build_graph(y)
    plan = gr.compile(graph, [NoSqrt()], cache=False)
    assert plan.stats.n_copies >= 2
    subject = Subject(Spec(), Setup(("nosqrt",)), graph, plan, lambda cb: plan.run(cb))
    plan.set_input(x, np.ones((4, 64), np.float32))
    prof = profile(subject, runs=2)
    assert len(prof.copies) == plan.stats.n_copies and len(prof.node_s) == 4
    assert prof.step_sum == pytest.approx(sum(prof.node_s.values()) + prof.copy_s)
    assert "copies" in format_text(prof)


def test_cli_profile_on_the_shipped_model(capsys):
    assert main(["profile", "-b", "ref", "--runs", "2", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["tool"] == "profile" and doc["calls"] == len(doc["nodes"]) > 100
    assert doc["run_us"] > 0 and 0 <= doc["outside_kernels_share"] <= 1
    fattn = next(n for n in doc["nodes"] if n["op"] == "flash_attn_ext")
    assert fattn["flops"] > 0 and fattn["profile"]["us"] > 0
    assert main(["profile", "--example", "-b", "ref", "--runs", "1", "--top", "3"]) == 0
    out = capsys.readouterr().out
    assert "per node (the 3 slowest):" in out


def test_a_verify_subject_is_the_speculative_verify_graph(capsys):
    """--verify K: the graph is a K+1-row batch after the ubatch, every row an output, and its
    delta-net layers write K+1 state planes (the final state and K rollback snapshots)."""
    subject = Subject.build(Spec(tokens=3, verify=2), Setup(("cpu",)))
    nodes = list(subject.graph.tensors())
    gdn = [n for n in nodes if n.op == Op.GATED_DELTA_NET]
    assert gdn and all(n.params["snapshots"] == 3 for n in gdn)
    logits = next(n for n in nodes if n.name == "result_output")
    assert logits.ne[1] == 3, "every row of the verify batch produces logits"
    subject.run()
    assert np.isfinite(subject.plan.get(logits)).all()
    assert "verify of 2 drafts" in subject.spec.describe()
    assert main(["profile", "--example", "--verify", "2"]) != 0
    assert "--verify needs a model" in capsys.readouterr().err
