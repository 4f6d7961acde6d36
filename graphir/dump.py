"""Graph dumps: a text table (like ggml_graph_print), Graphviz DOT (like ggml_graph_dump_dot)
and JSON. Each row shows op, name, type, ne, nb, view source, backend and buffer offset
(the last two when a compiled Plan is given). Filters select by layer or name so one layer
of a large model can be drawn. The rows and renderers are `graphir.report`'s, shared with
`graphir compare`, `profile` and `view`."""

from __future__ import annotations

import json

from . import report
from .compile import Plan
from .graph import Graph
from .report import Filter, rows

__all__ = ["FORMATS", "Filter", "dump", "rows", "to_dot", "to_json", "to_text"]

COLUMNS = [report.ID, report.OP, report.NAME, report.TYPE, report.NE, report.NB, report.VIEW]


def to_text(graph: Graph, plan: Plan | None = None, keep: Filter | None = None) -> str:
    """A fixed-width table of the graph, one line per tensor."""
    lines = [f"graph: {len(graph.leafs)} leafs, {len(graph.nodes)} nodes"]
    columns = COLUMNS + ([report.BACKEND, report.OFFSET] if plan is not None else [])
    if plan is not None:
        lines.append(f"plan: {plan.stats.summary()}")
    lines.append(report.format_row(None, columns))
    for r in rows(graph, plan, keep):
        flags = "".join(f[0].upper() for f in r["flags"])
        lines.append(report.format_row(r, columns) + (f" [{flags}]" if flags else ""))
    return "\n".join(lines) + "\n"


def to_json(graph: Graph, plan: Plan | None = None, keep: Filter | None = None) -> str:
    doc = {"leafs": len(graph.leafs), "nodes": len(graph.nodes), "tensors": rows(graph, plan, keep)}
    if plan is not None:
        doc["plan"] = plan_summary(plan)
    return json.dumps(doc, indent=1)


def plan_summary(plan: Plan) -> dict:
    return {"compute_bytes": plan.stats.compute_bytes, "naive_bytes": plan.stats.naive_bytes,
            "splits": plan.stats.n_splits, "copies": plan.stats.n_copies}  # fmt: skip


def to_dot(graph: Graph, plan: Plan | None = None, keep: Filter | None = None) -> str:
    """Graphviz source. Filtered graphs also draw the direct sources of kept tensors (dashed)."""
    return report.to_dot(rows(graph, plan, keep, context=True))


FORMATS = {"text": to_text, "dot": to_dot, "json": to_json}


def dump(graph: Graph, fmt: str = "text", plan: Plan | None = None, keep: Filter | None = None) -> str:
    """The graph in `fmt` ('text', 'dot' or 'json')."""
    if fmt not in FORMATS:
        raise ValueError(f"[dump] unknown format {fmt!r}; choose one of {', '.join(FORMATS)}")
    return FORMATS[fmt](graph, plan, keep)
