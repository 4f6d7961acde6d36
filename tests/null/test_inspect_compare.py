"""`graphir compare`: node-by-node errors between two backends/settings and the first node beyond
its op's parity bound, located with deliberately broken fake backends."""

from __future__ import annotations

import json

import numpy as np
import pytest

from graphir import backends
from graphir.backends import availability
from graphir.backends.ref.backend import RefBackend
from graphir.ops import Op
from graphir.tensor import is_empty_op
from graphir.tools.cli import main
from graphir.tools.compare import compare, compare_subjects, format_text, summary
from graphir.tools.subject import Setup, Spec, Subject

EXAMPLE = Spec(example=True, layers=2, tokens=4)


class Broken(RefBackend):
    """The reference, except that nodes of `op` from computing node number `start` on (in the
    order the graph runs them) come out `delta` off, or with one NaN when `nan`."""

    name = "broken"

    def __init__(self, op: Op, start: int, delta: float = 1e-2, nan: bool = False) -> None:
        self.op, self.start, self.delta, self.nan = op, start, delta, nan
        self.position: dict[int, int] = {}  # id(node) -> its number among the computing nodes

    def watch(self, subject: Subject) -> None:
        work = [n for n in subject.graph.nodes if not is_empty_op(n)]
        self.position = {id(n): k for k, n in enumerate(work)}

    def lower(self, node, dst, srcs):
        call, out = super().lower(node, dst, srcs), self.view(dst, node)

        def run() -> None:
            call()
            k = self.position.get(id(node), -1)
            if node.op is self.op and k >= self.start:
                if self.nan:
                    out.reshape(-1)[0] = np.nan if k == self.start else out.reshape(-1)[0]
                else:
                    out[...] += self.delta

        return run


def _broken_pair(nan: bool = False, start: int = 6):
    """The example graph on ref and on a backend broken from the 7th computing node on, and that node."""
    a = Subject.build(EXAMPLE, Setup(("ref",)))
    probe = Subject.build(EXAMPLE, Setup(("ref",)))
    target_op = [n for n in probe.graph.nodes if not is_empty_op(n)][start].op
    fake = Broken(target_op, start, nan=nan)
    b = Subject.build(EXAMPLE, Setup((fake,)))
    fake.watch(b)
    work = [n for n in b.graph.nodes if not is_empty_op(n)]
    index = {t: i for i, t in enumerate(b.graph.tensors())}
    return a, b, work, index


def test_a_broken_op_is_located_at_the_7th_node():
    a, b, work, index = _broken_pair()
    target = work[6]
    cmp = compare_subjects(a, b)
    assert cmp.first == index[target], format_text(cmp)
    for n in work[:6]:  # everything before is the reference, bit for bit
        assert cmp.nodes[index[n]].e2e.nmse == 0.0
    first = cmp.nodes[cmp.first]
    assert first.local.status == "over" and first.e2e.max_abs == pytest.approx(1e-2, rel=1e-3)
    # later nodes of the same op are beyond their bound too, in isolation
    later = [n for n in work[7:] if n.op is target.op]
    assert later and all(cmp.nodes[index[n]].local.status == "over" for n in later)
    # nodes of other ops downstream inherit the error end to end, but are fine in isolation
    downstream = [n for n in work[7:] if n.op is not target.op and n.op is not Op.MUL_MAT]
    assert any(cmp.nodes[index[n]].e2e.nmse > 0 for n in downstream)
    assert all(cmp.nodes[index[n]].local.ok for n in downstream)
    doc = summary(cmp)
    assert doc["first"]["name"] == target.name and doc["first"]["op"] == target.op.value
    assert [s["id"] for s in doc["first"]["sources"]] == [index[s] for s in target.src if s is not None]
    assert f"FIRST node beyond its bound: #{index[target]}" in format_text(cmp)


def test_end_to_end_only_finds_the_same_node():
    a, b, work, index = _broken_pair()
    cmp = compare_subjects(a, b, isolate=False)
    assert cmp.first == index[work[6]]
    assert all(n.local is None for n in cmp.nodes.values())


def test_identical_backends_give_zero_divergence():
    a, b = Subject.build(EXAMPLE, Setup(("ref",))), Subject.build(EXAMPLE, Setup(("ref",)))
    cmp = compare_subjects(a, b)
    assert cmp.first is None
    assert len(cmp.nodes) == sum(not is_empty_op(n) for n in b.graph.nodes)
    assert all(n.e2e.nmse == 0.0 and n.local.nmse == 0.0 and n.e2e.max_abs == 0.0 for n in cmp.nodes.values())
    assert "no node beyond its op's parity bound" in format_text(cmp)


def test_nan_injection_is_reported():
    a, b, work, index = _broken_pair(nan=True)
    cmp = compare_subjects(a, b)
    assert cmp.first == index[work[6]]
    first = cmp.nodes[cmp.first]
    assert first.e2e.status == "nan" and first.e2e.nan == 1 and first.local.nan == 1
    doc = summary(cmp)
    assert doc["nan_nodes"] >= 1 and doc["first"]["e2e"]["nan"] == 1
    assert "nan" in format_text(cmp)


def test_nan_in_a_model_is_located_and_its_non_finite_logits_noted(monkeypatch):
    """The shipped model on a backend that puts a NaN into the layer-0 attention norm (the 4th
    computing node): the context's non-finite guard fires on the logits; compare still names the
    node and reports the guard."""
    spec, start = Spec(tokens=1), 3
    a = Subject.build(spec, Setup(("ref",)))
    target_op = [n for n in a.graph.nodes if not is_empty_op(n)][start].op
    fake = Broken(target_op, start, nan=True)
    monkeypatch.setitem(backends._INSTANCES, fake.name, fake)  # the context resolves backends by name
    b = Subject.build(spec, Setup((fake.name,)))
    fake.watch(b)
    cmp = compare_subjects(a, b)
    work = [n for n in b.graph.nodes if not is_empty_op(n)]
    assert work[start].name == "attn_norm-0" and cmp.first == list(b.graph.tensors()).index(work[start])
    assert cmp.nodes[cmp.first].e2e.status == "nan"
    doc = summary(cmp)
    assert doc["nan_nodes"] > 1 and any("non-finite" in n for n in doc["notes"]["tested"])
    assert "note (tested)" in format_text(cmp)


def test_cli_on_the_shipped_model_reference_against_itself(capsys):
    assert main(["compare", "-b", "ref", "--against", "ref", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["tool"] == "compare" and doc["first"] is None and doc["worst_nmse"] == 0.0
    assert doc["compared"] == len(doc["nodes"]) > 100
    assert {"mul_mat", "gated_delta_net", "flash_attn_ext", "set_rows"} <= {n["op"] for n in doc["nodes"]}


@pytest.mark.skipif(not availability("cpu").ok, reason="the cpu backend is unavailable")
def test_cli_cpu_against_ref_on_the_shipped_model(capsys):
    rc = main(["compare", "-b", "cpu", "--tokens", "3"])
    out = capsys.readouterr().out
    assert rc == 0, out
    assert "no node beyond its op's parity bound" in out and "gdn_out-0" in out


def test_cli_compares_two_settings_kv_types(capsys):
    """KV f32 against f16: the cache writes differ by the f16 rounding and nothing else diverges."""
    main(["compare", "-b", "ref", "--kv", "f16", "--against", "ref", "--against-kv", "f32", "--tokens", "2",
          "--json"])  # fmt: skip
    doc = json.loads(capsys.readouterr().out)
    stores = [n for n in doc["nodes"] if n["op"] == "set_rows" and n["type"] == "f16"]
    assert stores and all(0 < n["compare"]["nmse"] < 1e-5 for n in stores)
    assert doc["worst_nmse"] < 1e-4


def test_cli_example_graph_and_errors(capsys):
    assert main(["compare", "--example", "-b", "ref", "--against", "ref", "--layer", "1"]) == 0
    out = capsys.readouterr().out
    assert "attn_norm-1" in out and "attn_norm-0" not in out
    assert main(["compare", "--example", "--prompt", "x"]) == 2
    assert "--prompt needs a model" in capsys.readouterr().err


def test_weight_types_compared_across_two_files(tmp_path):
    """The same tiny model written with F16 and with F32 weights: the embedding rows differ by the
    F16 rounding, and the first node's weight source says which type each side reads."""
    for dtype in ("f16", "f32"):
        assert main(["make-tiny", "-o", str(tmp_path / f"{dtype}.gguf"), "--dtype", dtype]) == 0
    cmp = compare(Spec(model=str(tmp_path / "f16.gguf")), Setup(("ref",), model=str(tmp_path / "f32.gguf")),
                  Setup(("ref",)))  # fmt: skip
    index = {t.name: i for i, t in enumerate(cmp.b.graph.tensors())}
    embd = cmp.nodes[index["inp_embd"]]
    assert 0 < embd.e2e.nmse < 1e-5 and embd.local.nmse == embd.e2e.nmse
    weight = cmp.sources(index["inp_embd"])[0]
    assert weight["name"] == "token_embd.weight" and weight["note"] == "weight: f16 here, f32 on the reference"
