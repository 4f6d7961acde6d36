"""Graph dumps: a text table (like ggml_graph_print), Graphviz DOT (like ggml_graph_dump_dot)
and JSON. Each row shows op, name, type, ne, nb, view source, backend and buffer offset
(the last two when a compiled Plan is given). Filters select by layer or name so one layer
of a large model can be drawn."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

from .compile import Plan
from .graph import Graph
from .tensor import Tensor
from .types import TYPE_INFO


@dataclass(frozen=True)
class Filter:
    """Keep tensors whose name matches `name` (a regex, searched) and/or that belong to layer
    `layer` (names end in `-<layer>`, as `cb(cur, "attn_norm", il)` makes them)."""

    name: str | None = None
    layer: int | None = None

    def __call__(self, t: Tensor) -> bool:
        if self.layer is not None and not t.name.endswith(f"-{self.layer}"):
            return False
        return self.name is None or re.search(self.name, t.name) is not None


def rows(graph: Graph, plan: Plan | None = None, keep: Filter | None = None) -> list[dict]:
    """One dict per tensor (leafs first, then nodes in execution order)."""
    index = {t: i for i, t in enumerate(graph.tensors())}
    out = []
    for t in graph.tensors():
        if keep is not None and not keep(t):
            continue
        row = {
            "id": index[t],
            "kind": "leaf" if t.is_leaf else "node",
            "op": t.op.value,
            "name": t.name,
            "type": TYPE_INFO[t.type].name,
            "ne": list(t.ne),
            "nb": list(t.nb),
            "src": [None if s is None else index[s] for s in t.src],
            "view_src": None if t.view_src is None else index[t.view_src],
            "view_offs": t.view_offs,
            "flags": [f.name.lower() for f in type(t.flags) if f and f in t.flags],
            "params": {k: (list(v) if isinstance(v, tuple) else v) for k, v in t.params.items()},
        }
        if plan is not None:
            row["backend"] = plan.backend_of(t).name
            row["offset"] = plan.offset_of(t)
        out.append(row)
    return out


def _label(t: Tensor, index: dict) -> str:
    return t.name or f"#{index[t]}"


def to_text(graph: Graph, plan: Plan | None = None, keep: Filter | None = None) -> str:
    """A fixed-width table of the graph, one line per tensor."""
    index = {t: i for i, t in enumerate(graph.tensors())}
    lines = [f"graph: {len(graph.leafs)} leafs, {len(graph.nodes)} nodes"]
    if plan is not None:
        lines.append(f"plan: {plan.stats.summary()}")
    head = f"{'id':>5} {'op':<16} {'name':<28} {'type':<5} {'ne':<24} {'nb':<28} {'view of':<20}"
    if plan is not None:
        head += f" {'backend':<8} {'offset':>10}"
    lines.append(head)
    by_id = list(graph.tensors())
    for r in rows(graph, plan, keep):
        t = by_id[r["id"]]
        view = "" if t.view_src is None else f"{_label(t.view_src, index)}+{t.view_offs}"
        flags = "".join(f[0].upper() for f in r["flags"])
        line = (f"{r['id']:>5} {r['op']:<16} {(r['name'] or '-')[:28]:<28} {r['type']:<5} "
                f"{str(r['ne']):<24} {str(r['nb']):<28} {view[:20]:<20}")  # fmt: skip
        if plan is not None:
            off = "-" if r["offset"] is None else str(r["offset"])
            line += f" {r['backend']:<8} {off:>10}"
        lines.append(line + (f" [{flags}]" if flags else ""))
    return "\n".join(lines) + "\n"


def to_json(graph: Graph, plan: Plan | None = None, keep: Filter | None = None) -> str:
    doc = {"leafs": len(graph.leafs), "nodes": len(graph.nodes), "tensors": rows(graph, plan, keep)}
    if plan is not None:
        doc["plan"] = {"compute_bytes": plan.stats.compute_bytes, "naive_bytes": plan.stats.naive_bytes,
                       "splits": plan.stats.n_splits, "copies": plan.stats.n_copies}  # fmt: skip
    return json.dumps(doc, indent=1)


_COLORS = {"leaf": "#e8f0ff", "param": "#fff2cc", "output": "#d9f2d9", "view": "#f2f2f2", "node": "#ffffff"}


def to_dot(graph: Graph, plan: Plan | None = None, keep: Filter | None = None) -> str:
    """Graphviz source. Filtered graphs also draw the direct sources of kept tensors (dashed)."""
    index = {t: i for i, t in enumerate(graph.tensors())}
    kept = [t for t in graph.tensors() if keep is None or keep(t)]
    kept_set = set(kept)
    context = {s for t in kept for s in (*t.src, t.view_src) if s is not None and s not in kept_set}
    out = ["digraph graphir {", "  rankdir=TB;", '  node [shape=record, fontname="monospace", fontsize=10];']
    for t in [*kept, *sorted(context, key=index.__getitem__)]:
        kind = ("param" if t.is_param else "leaf") if t.is_leaf else "output" if t.is_output else (
            "view" if t.view_src is not None else "node")  # fmt: skip
        desc = f"{t.op.value}|{TYPE_INFO[t.type].name} {list(t.ne)}"
        if plan is not None:
            off = plan.offset_of(t)
            desc += f"|{plan.backend_of(t).name} @{'-' if off is None else off}"
        label = f"{{{_esc(_label(t, index))}|{_esc(desc)}}}"
        style = ', style="filled,dashed"' if t in context else ", style=filled"
        out.append(f'  t{index[t]} [label="{label}", fillcolor="{_COLORS[kind]}"{style}];')
    for t in kept:
        for i, s in enumerate(t.src):
            if s is not None:
                out.append(f'  t{index[s]} -> t{index[t]} [label="{i}"];')
        if t.view_src is not None and t.view_src not in t.src:
            out.append(f"  t{index[t.view_src]} -> t{index[t]} [style=dashed];")
    out.append("}")
    return "\n".join(out) + "\n"


def _esc(s: str) -> str:
    return re.sub(r'([{}|<>"\\])', r"\\\1", s)


FORMATS = {"text": to_text, "dot": to_dot, "json": to_json}


def dump(graph: Graph, fmt: str = "text", plan: Plan | None = None, keep: Filter | None = None) -> str:
    """The graph in `fmt` ('text', 'dot' or 'json')."""
    if fmt not in FORMATS:
        raise ValueError(f"[dump] unknown format {fmt!r}; choose one of {', '.join(FORMATS)}")
    return FORMATS[fmt](graph, plan, keep)
