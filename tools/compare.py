"""`graphir compare`: the same graph on two backends (or settings), node by node.

    graphir compare [--model F | --example] -b cpu [--against ref] [--tokens N | --prompt P] [--json]
    graphir compare -b cpu --threads 1 --against cpu --against-threads 2      # two settings
    graphir compare -b cpu --kv f16 --against cpu --against-kv f32

Both sides run the graph through the eval callback (`Plan.run(callback)`, node by node). The
reference side (`--against`, default `ref`) runs first and its node values are kept; the side
under test (`-b`) then runs twice:
  - end to end: its own values all the way; a node's NMSE includes what its inputs brought;
  - isolated: after each node its value is replaced by the reference's, so every node starts
    from the reference's inputs and its error is its own (the parity harness's setting).
Per node: NMSE (ggml's, over the finite elements), max |diff|, NaN/inf the reference does not
have, and the op's parity bound (graphir.parity.compare). The FIRST node beyond its bound in
the isolated run (`--no-isolate`: the end-to-end run) is where the backend starts to diverge; it
is printed with its sources' errors.
"""

from __future__ import annotations

import argparse
import importlib
import json
from dataclasses import asdict, dataclass, field

import numpy as np

from graphir import report
from graphir.ops import Op
from graphir.report import Filter
from graphir.tensor import Tensor, is_empty_op, storage_of, write_target
from graphir.types import TYPE_INFO, DType

from .subject import Setup, Spec, Subject, add_setup_args, add_spec_args, setup_from, spec_from


def _parity():
    """graphir.parity.compare (its package imports the parity cases, which need hypothesis)."""
    try:
        return importlib.import_module("graphir.parity.compare")
    except ImportError as e:  # pragma: no cover - the test extra is missing
        raise ImportError(f"[compare] the parity bounds need the test extra (pip install -e '.[test]'): {e}") from e


@dataclass
class Error:
    """One node's error against the reference (float64 over the elements the op defines)."""

    nmse: float | None = None  # None: nothing finite to compare
    max_abs: float | None = None
    nan: int = 0  # NaNs where the reference has none
    inf: int = 0  # infinities where the reference is finite
    status: str = "ok"  # ok | over (NMSE > bound) | differs (exact op) | nan | inf | shape

    @property
    def ok(self) -> bool:
        return self.status == "ok"


def defined_mask(t: Tensor) -> np.ndarray | None:
    """The elements a node defines, where it leaves some unwritten (None: all of them).
    gated_delta_net writes a snapshot slot only when the ubatch has that many tokens."""
    if t.op is not Op.GATED_DELTA_NET:
        return None
    S_v, H_v, n_tokens, n_seqs = t.src[2].ne
    rows = np.zeros(t.ne[1], bool)
    rows[: n_tokens * n_seqs + min(t.params["snapshots"], n_tokens) * S_v * n_seqs] = True
    return rows[:, None]  # numpy (ne1, ne0)


def node_error(out: np.ndarray, t_out: DType, ref: np.ndarray, t_ref: DType, bound: float,
               defined: np.ndarray | None = None) -> Error:  # fmt: skip
    """Compare a host copy of a node (`out`, the backend under test) with the reference's."""
    pc = _parity()
    a, r = pc.to_float(out, t_out), pc.to_float(ref, t_ref)
    if a.shape != r.shape:
        return Error(status="shape")
    if defined is not None:
        keep = np.broadcast_to(defined.reshape((1,) * (a.ndim - defined.ndim) + defined.shape), a.shape)
        a, r = np.where(keep, a, 0.0), np.where(keep, r, 0.0)
    a_nan, r_nan = np.isnan(a), np.isnan(r)
    finite = np.isfinite(a) & np.isfinite(r)
    err = Error(nan=int((a_nan & ~r_nan).sum()), inf=int((np.isinf(a) & np.isfinite(r)).sum()))
    if finite.any():
        d = np.abs(a[finite] - r[finite])
        err.nmse, err.max_abs = pc.nmse(a[finite], r[finite]), float(d.max())
    if err.nan:
        err.status = "nan"
    elif err.inf:
        err.status = "inf"
    elif bound == pc.EXACT or t_out == DType.I32:
        same = (a == r) | (a_nan & r_nan)
        err.status = "ok" if same.all() else "differs"
    elif err.nmse is not None and err.nmse > bound:
        err.status = "over"
    return err


@dataclass
class NodeResult:
    id: int
    bound: float
    e2e: Error
    local: Error | None = None  # the isolated run's

    def judged(self, isolate: bool) -> Error:
        return self.local if isolate and self.local is not None else self.e2e


@dataclass
class Comparison:
    """Every computing node's errors, by tensor id, and the first node beyond its bound."""

    spec: Spec
    a: Subject  # the reference side
    b: Subject  # the side under test
    isolate: bool
    nodes: dict[int, NodeResult] = field(default_factory=dict)
    first: int | None = None

    def results(self) -> dict[int, dict]:
        """Per-node results for `report.rows(results={"compare": ...})`."""
        out = {}
        for i, n in self.nodes.items():
            judged = n.judged(self.isolate)
            out[i] = {"nmse": n.e2e.nmse, "max_abs": n.e2e.max_abs, "nan": n.e2e.nan, "inf": n.e2e.inf,
                      "local_nmse": None if n.local is None else n.local.nmse, "bound": n.bound,
                      "status": judged.status, "first": i == self.first}  # fmt: skip
        return out

    def sources(self, i: int) -> list[dict]:
        """The errors of node i's sources: through views to the node that computed the bytes,
        and through a state leaf to the node that last wrote into it before node i."""
        tensors = list(self.b.graph.tensors())
        index = {t: j for j, t in enumerate(tensors)}
        out = []
        for slot, s in enumerate(tensors[i].src):
            if s is None:
                continue
            origin = storage_of(s)
            if origin.is_leaf:
                writers = [n for n in self.b.graph.nodes[: self.b.graph.nodes.index(tensors[i])]
                           if write_target(n) is not None and storage_of(write_target(n)) is origin]  # fmt: skip
                origin = writers[-1] if writers else origin
            res = self.nodes.get(index[origin])
            entry = {"slot": slot, "id": index[s], "name": s.name, "op": s.op.value, "via": None}
            if origin is not s:
                entry["via"] = {"id": index[origin], "name": origin.name, "op": origin.op.value}
            if res is None:
                entry["note"] = self._leaf_note(origin, index[origin]) if origin.is_leaf else "not compared"
            else:
                entry.update(nmse=res.e2e.nmse, max_abs=res.e2e.max_abs, nan=res.e2e.nan,
                             local_nmse=None if res.local is None else res.local.nmse, status=res.e2e.status)  # fmt: skip
            out.append(entry)
        return out

    def _leaf_note(self, t: Tensor, i: int) -> str:
        """What a leaf source is, and its type on both sides where they differ (a weight-type comparison)."""
        kind = "weight" if t.is_param else "input" if t.is_input else "state"
        theirs = list(self.a.graph.tensors())[i]
        if theirs.type != t.type:
            return f"{kind}: {TYPE_INFO[t.type].name} here, {TYPE_INFO[theirs.type].name} on the reference"
        return f"{kind}: not compared (the same {TYPE_INFO[t.type].name} leaf on both sides)"


def _cast(value: np.ndarray, src: DType, dst: DType) -> np.ndarray | None:
    """The reference's value in the tested side's type, when the two differ (KV f32 vs f16)."""
    if src == dst:
        return value
    if dst in (DType.F32, DType.F16) and not TYPE_INFO[src].is_quantized and src != DType.I32:
        return _parity().to_float(value, src).astype(np.float32 if dst == DType.F32 else np.float16)
    return None


def _check_same_graph(a: Subject, b: Subject) -> None:
    na, nb = a.graph.nodes, b.graph.nodes
    if len(na) != len(nb):
        raise ValueError(f"[compare] the two sides built different graphs: {len(na)} vs {len(nb)} nodes")
    for x, y in zip(na, nb):
        if x.op is not y.op or x.ne != y.ne:
            raise ValueError(f"[compare] the graphs differ at node {x.name!r}: {x.op.value} {list(x.ne)} vs "
                             f"{y.op.value} {list(y.ne)}")  # fmt: skip


def compare(spec: Spec, against: Setup, tested: Setup, isolate: bool = True) -> Comparison:
    """Run the graph of `spec` on both setups and compare every computing node."""
    a, b = Subject.build(spec, against), Subject.build(spec, tested)
    return compare_subjects(a, b, isolate)


def compare_subjects(a: Subject, b: Subject, isolate: bool = True) -> Comparison:
    """Compare two built subjects of one graph (`a` the reference)."""
    _check_same_graph(a, b)
    pc = _parity()
    index_a = {t: i for i, t in enumerate(a.graph.tensors())}
    index_b = {t: i for i, t in enumerate(b.graph.tensors())}
    ref: dict[int, tuple[np.ndarray, DType]] = {}
    a.run(lambda t, v: ref.__setitem__(index_a[t], (v, t.type)))
    cmp = Comparison(a.spec, a, b, isolate)

    def judge(t: Tensor, v: np.ndarray) -> Error | None:
        i = index_b[t]
        if i not in ref:
            return None
        want, want_type = ref[i]
        return node_error(v, t.type, want, want_type, pc.threshold_for(t.op), defined_mask(t))

    def end_to_end(t: Tensor, v: np.ndarray) -> None:
        err = judge(t, v)
        if err is not None:
            cmp.nodes[index_b[t]] = NodeResult(index_b[t], pc.threshold_for(t.op), err)

    def isolated(t: Tensor, v: np.ndarray) -> None:
        i = index_b[t]
        err = judge(t, v)
        if err is None or i not in cmp.nodes:
            return
        cmp.nodes[i].local = err
        forced = _cast(*ref[i], t.type)
        if forced is not None:
            plan = b.plan
            be = plan.backend_of(t)
            be.set_tensor(plan.place(t, be), t, forced)

    b.run(end_to_end)
    if isolate:
        b.run(isolated)
    order = [index_b[n] for n in b.graph.nodes if not is_empty_op(n)]
    cmp.first = next((i for i in order if i in cmp.nodes and not cmp.nodes[i].judged(isolate).ok), None)
    return cmp


# ======================================================================================
# output
# ======================================================================================


def _g(v: float | None) -> str:
    return "-" if v is None else f"{v:.3g}"


COLUMNS = [
    report.ID, report.OP, report.Column("name", 26, lambda r: r["name"] or "-", clip=True), report.TYPE,
    report.Column("ne", 20, lambda r: r["ne"]), report.Column("backend", 7, lambda r: r["backend"]),
    report.Column("nmse", 9, lambda r: _g(r["compare"]["nmse"]), ">"),
    report.Column("max|d|", 9, lambda r: _g(r["compare"]["max_abs"]), ">"),
    report.Column("nan/inf", 7, lambda r: f"{r['compare']['nan']}/{r['compare']['inf']}", ">"),
    report.Column("local", 9, lambda r: _g(r["compare"]["local_nmse"]), ">"),
    report.Column("bound", 7, lambda r: _g(r["compare"]["bound"]), ">"),
    report.Column("", 12, lambda r: ("<- FIRST " if r["compare"]["first"] else "") + (
        "" if r["compare"]["status"] == "ok" else r["compare"]["status"])),
]  # fmt: skip


def table_rows(cmp: Comparison, keep: Filter | None = None) -> list[dict]:
    """The report rows of the compared nodes (the side under test's plan), filtered."""
    return [r for r in report.rows(cmp.b.graph, cmp.b.plan, keep, {"compare": cmp.results()}) if "compare" in r]


def summary(cmp: Comparison) -> dict:
    judged = [n.judged(cmp.isolate) for n in cmp.nodes.values()]
    worst = max((n.e2e.nmse for n in cmp.nodes.values() if n.e2e.nmse is not None), default=None)
    doc = {"graph": cmp.spec.describe(), "reference": cmp.a.label, "tested": cmp.b.label, "isolated": cmp.isolate,
           "compared": len(cmp.nodes), "beyond_bound": sum(not e.ok for e in judged),
           "nan_nodes": sum(n.e2e.nan > 0 for n in cmp.nodes.values()), "worst_nmse": worst, "first": None,
           "notes": {"reference": sorted(set(cmp.a.notes)), "tested": sorted(set(cmp.b.notes))}}  # fmt: skip
    if cmp.first is not None:
        t = list(cmp.b.graph.tensors())[cmp.first]
        n = cmp.nodes[cmp.first]
        doc["first"] = {"id": cmp.first, "name": t.name, "op": t.op.value, "bound": n.bound,
                        "e2e": asdict(n.e2e), "local": None if n.local is None else asdict(n.local),
                        "sources": cmp.sources(cmp.first)}  # fmt: skip
    return doc


def format_text(cmp: Comparison, keep: Filter | None = None) -> str:
    s = summary(cmp)
    lines = [f"compare: {s['graph']}: {s['tested']} against {s['reference']} "
             f"({'isolated and end-to-end' if cmp.isolate else 'end-to-end'})",
             report.format_table(table_rows(cmp, keep), COLUMNS), ""]  # fmt: skip
    lines.append(f"{s['compared']} nodes compared, {s['beyond_bound']} beyond their bound"
                 f"{' (isolated)' if cmp.isolate else ''}, {s['nan_nodes']} with new NaNs; "
                 f"worst end-to-end NMSE {_g(s['worst_nmse'])}")  # fmt: skip
    lines += [f"note ({side}): {note}" for side, notes in s["notes"].items() for note in notes]
    f = s["first"]
    if f is None:
        lines.append("no node beyond its op's parity bound")
        return "\n".join(lines) + "\n"
    judged = f["local"] if cmp.isolate and f["local"] else f["e2e"]
    lines.append(f"FIRST node beyond its bound: #{f['id']} {f['op']} {f['name'] or '-'}: {judged['status']}, NMSE "
                 f"{_g(judged['nmse'])} (bound {_g(f['bound'])}), max |diff| {_g(judged['max_abs'])}, "
                 f"NaN {judged['nan']}, inf {judged['inf']}; end to end NMSE {_g(f['e2e']['nmse'])}")  # fmt: skip
    for src in f["sources"]:
        via = f" (via {src['via']['op']} #{src['via']['id']} {src['via']['name']})" if src["via"] else ""
        what = src.get("note") or (f"NMSE {_g(src['nmse'])}, local {_g(src['local_nmse'])}, "
                                   f"max |diff| {_g(src['max_abs'])}, NaN {src['nan']}")  # fmt: skip
        lines.append(f"  src[{src['slot']}] #{src['id']} {src['op']} {src['name'] or '-'}{via}: {what}")
    return "\n".join(lines) + "\n"


def to_json(cmp: Comparison, keep: Filter | None = None) -> dict:
    return {"tool": "compare", **summary(cmp), "nodes": table_rows(cmp, keep)}


def add_args(p: argparse.ArgumentParser) -> None:
    add_spec_args(p)
    add_setup_args(p)
    add_setup_args(p, "against", default=("ref",))
    p.add_argument("--no-isolate", dest="isolate", action="store_false",
                   help="judge nodes by their end-to-end error only (one run of the tested side, not two)")  # fmt: skip
    p.add_argument("--layer", type=int, help="print only nodes of this layer")
    p.add_argument("--name", help="print only nodes whose name matches this regex")


def run(args: argparse.Namespace) -> int:
    """Exit status 0 when no node is beyond its bound, 1 otherwise."""
    cmp = compare(spec_from(args), setup_from(args, "against"), setup_from(args), args.isolate)
    keep = Filter(args.name, args.layer) if args.name or args.layer is not None else None
    if args.json:
        print(json.dumps(to_json(cmp, keep), indent=1))
    else:
        print(format_text(cmp, keep), end="")
    return 0 if cmp.first is None else 1
