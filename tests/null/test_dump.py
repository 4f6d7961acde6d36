"""Graph dumps (text, DOT, JSON), filters, and the `graphir dump` / `graphir ops` commands."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest

import graphir as gr
from graphir.dump import Filter, dump, rows
from graphir.ops import Op
from graphir.tools.cli import main
from graphir.tools.example import ExampleConfig, ExampleWeights, build_example

CFG = ExampleConfig(n_layer=2, n_embd=32, n_head=4, n_head_kv=2, n_ff=64, n_vocab=64, n_tokens=4)


@pytest.fixture
def compiled():
    graph = build_example(ExampleWeights(CFG))
    return graph, gr.compile(graph, ["cpu"])


def test_rows_carry_layout_backend_and_offsets(compiled):
    graph, plan = compiled
    table = rows(graph, plan)
    assert len(table) == len(graph.leafs) + len(graph.nodes)
    by_name = {r["name"]: r for r in table if r["name"]}
    logits = by_name["logits"]
    assert logits["ne"] == [CFG.n_vocab, CFG.n_tokens, 1, 1]
    assert logits["nb"] == [4, 4 * CFG.n_vocab, 4 * CFG.n_vocab * CFG.n_tokens, 4 * CFG.n_vocab * CFG.n_tokens]
    assert logits["backend"] == "cpu"
    assert logits["offset"] == plan.offset_of(graph.find("logits"))
    assert "output" in logits["flags"]
    assert by_name["token_embd.weight"]["offset"] is None  # weights live outside the compute buffer
    qcur = by_name["Qcur-0"]  # a reshape view of the q projection
    assert qcur["view_src"] is not None and qcur["op"] == "reshape"
    assert qcur["offset"] == table[qcur["view_src"]]["offset"]


def test_layer_and_name_filters():
    graph = build_example(ExampleWeights(CFG))
    names = [r["name"] for r in rows(graph, None, Filter(layer=1))]
    assert names and all(n.endswith("-1") for n in names)
    assert "attn_norm-1" in names and "attn_norm-0" not in names
    names = [r["name"] for r in rows(graph, None, Filter(name=r"^ffn_(gate|up)"))]
    assert sorted(names) == ["ffn_gate-0", "ffn_gate-1", "ffn_up-0", "ffn_up-1"]


def test_text_table_has_one_line_per_tensor(compiled):
    graph, plan = compiled
    text = dump(graph, "text", plan)
    lines = text.splitlines()
    assert lines[0] == f"graph: {len(graph.leafs)} leafs, {len(graph.nodes)} nodes"
    assert len(lines) == 3 + len(graph.leafs) + len(graph.nodes)
    line = next(ln for ln in lines if " logits " in ln)
    assert line.split()[-2:] == [str(plan.offset_of(graph.find("logits"))), "[O]"]


def test_dot_is_well_formed_and_filter_draws_context(compiled):
    graph, plan = compiled
    dot = dump(graph, "dot", plan, Filter(layer=0, name="ffn_out"))
    assert dot.startswith("digraph graphir {") and dot.rstrip().endswith("}")
    node_ids = set(re.findall(r"^\s+(t\d+) \[label=", dot, re.M))
    edges = re.findall(r"^\s+(t\d+) -> (t\d+)", dot, re.M)
    assert edges and all(a in node_ids and b in node_ids for a, b in edges)
    assert "ffn_out-0" in dot and "dashed" in dot  # its sources are drawn as context
    assert dot.count("{") == dot.count("}")


def test_json_round_trips(compiled):
    graph, plan = compiled
    doc = json.loads(dump(graph, "json", plan))
    assert doc["nodes"] == len(graph.nodes)
    assert doc["plan"]["compute_bytes"]["cpu"] == plan.stats.compute_bytes["cpu"]
    ops = {t["op"] for t in doc["tensors"]}
    assert {"mul_mat", "rope", "flash_attn_ext", "get_rows", "rms_norm"} <= ops


def test_unknown_format_is_an_error():
    graph = build_example(ExampleWeights(CFG))
    with pytest.raises(ValueError, match=r"\[dump\] unknown format 'svg'"):
        dump(graph, "svg")


def test_cli_ops_lists_every_op_as_supported_by_cpu(capsys):
    assert main(["ops"]) == 0
    out = capsys.readouterr().out
    header = out.splitlines()[0].split()
    cpu_col = header.index("cpu")
    for op in Op:
        if op is Op.NONE:
            continue
        line = next(ln for ln in out.splitlines() if ln.split() and ln.split()[0] == op.value)
        assert line.split()[cpu_col] == "yes", line
    assert f"cpu: {len(Op) - 1}/{len(Op) - 1}" in out


def test_cli_dump_runs_and_writes_a_file(tmp_path, capsys):
    out_file = tmp_path / "g.json"
    assert main(["dump", "--run", "--layers", "1", "--format", "json", "-o", str(out_file)]) == 0
    doc = json.loads(out_file.read_text())
    assert any(t["name"] == "logits" and t["offset"] is not None for t in doc["tensors"])
    assert "ran: logits" in capsys.readouterr().err


def test_cli_dump_bad_backend_is_a_clear_error(capsys):
    assert main(["dump", "--backend", "nope"]) == 2
    assert "unknown backend 'nope'" in capsys.readouterr().err


def test_eval_callback_values_match_a_rerun(compiled):
    graph, plan = compiled
    rng = np.random.default_rng(1)
    plan.set_input("tokens", rng.integers(0, CFG.n_vocab, CFG.n_tokens, dtype=np.int32))
    plan.set_input("pos", np.arange(CFG.n_tokens, dtype=np.int32))
    plan.set_input("kq_mask", np.zeros((CFG.n_tokens, CFG.n_tokens), np.float32))
    seen = {}
    plan.run(callback=lambda t, v: seen.__setitem__(t.name, v))
    assert "attn_norm-1" in seen and "logits" in seen
    np.testing.assert_array_equal(seen["logits"], plan.get("logits"))
