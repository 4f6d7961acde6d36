"""Rows of a compiled graph: the one place that turns a graph, its plan and optional per-node
results (a `graphir compare`, a `graphir profile`) into plain dicts, and the renderers over them.

    table = rows(graph, plan, results={"profile": {tensor_id: {...}}})
    print(format_table(table, [ID, OP, NAME, Column("us", 9, lambda r: ...)]))
    to_dot(table)            # Graphviz source (`graphir dump -f dot`, `graphir view`)
    json.dumps(table)        # the rows are JSON as they are

`graphir dump` (text/DOT/JSON), `compare`, `profile` and `view` (HTML) all render these rows.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from .compile import Plan
from .cost import node_cost
from .graph import Graph
from .tensor import Tensor
from .types import TYPE_INFO

Row = dict  # one tensor: see `rows`


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


def layer_of(name: str) -> int | None:
    """The layer a tensor name belongs to (`attn_norm-3` -> 3), None for global tensors."""
    m = re.search(r"-(\d+)$", name)
    return None if m is None else int(m.group(1))


def split_index(plan: Plan) -> dict[int, int]:
    """id(tensor) -> the index of the plan split that runs it (views: where their storage runs)."""
    out = {id(n): i for i, s in enumerate(plan.schedule.splits) for n in s.nodes}
    rev = getattr(plan, "_rev", {})  # NOTE: a bound plan addresses its own tensors; map them back
    return {**out, **{id(rev[t]): out[id(t)] for t in rev if id(t) in out}}


def rows(graph: Graph, plan: Plan | None = None, keep: Filter | Callable[[Tensor], bool] | None = None,
         results: Mapping[str, Mapping[int, dict]] | None = None, context: bool = False) -> list[Row]:  # fmt: skip
    """One dict per tensor: leafs first, then nodes in execution order.

    Keys: id (the tensor's index in `graph.tensors()`, the same for every tool), kind (leaf/node),
    op, name, type, ne, nb, src and view_src (ids), view_offs, view (the view source's label +
    offset), flags, params, layer, flops and bytes (graphir.cost); with a plan: backend, split (the
    index of the split that runs it) and offset (in its backend's compute buffer; None for weights
    and state). `results[key][id]` (per-node results of a tool) lands under row[key].
    With `context`, the direct sources of kept tensors that `keep` dropped follow, with
    row["context"] = True (a filtered drawing shows where its inputs come from).
    """
    tensors = list(graph.tensors())
    index = {t: i for i, t in enumerate(tensors)}
    kept = [t for t in tensors if keep is None or keep(t)]
    extra: list[Tensor] = []
    if context and keep is not None:
        kept_set = set(kept)
        near = {s for t in kept for s in (*t.src, t.view_src) if s is not None and s not in kept_set}
        extra = sorted(near, key=index.__getitem__)
    extra_ids = {id(t) for t in extra}
    splits = split_index(plan) if plan is not None else {}
    out = []
    for t in [*kept, *extra]:
        cost = node_cost(t)
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
            "view": None if t.view_src is None else f"{label(t.view_src, index)}+{t.view_offs}",
            "flags": [f.name.lower() for f in type(t.flags) if f and f in t.flags],
            "params": {k: (list(v) if isinstance(v, tuple) else v) for k, v in t.params.items()},
            "layer": layer_of(t.name),
            "flops": cost.flops,
            "bytes": cost.bytes,
        }
        if plan is not None:
            row["backend"] = plan.backend_of(t).name
            row["split"] = splits.get(id(t))
            row["offset"] = plan.offset_of(t)
        for key, per_node in (results or {}).items():
            if index[t] in per_node:
                row[key] = per_node[index[t]]
        if id(t) in extra_ids:
            row["context"] = True
        out.append(row)
    return out


def label(t: Tensor, index: Mapping[Tensor, int]) -> str:
    return t.name or f"#{index[t]}"


def kind_of(row: Row) -> str:
    """leaf / param / output / view / node: the dump's colour classes."""
    if row["kind"] == "leaf":
        return "param" if "param" in row["flags"] else "leaf"
    if "output" in row["flags"]:
        return "output"
    return "view" if row["view_src"] is not None else "node"


# ======================================================================================
# text
# ======================================================================================


@dataclass(frozen=True)
class Column:
    """A fixed-width text column: `get(row)` gives the cell; `align` is a format alignment;
    cells longer than `width` are cut when `clip`."""

    head: str
    width: int
    get: Callable[[Row], object]
    align: str = "<"
    clip: bool = False

    def cell(self, row: Row | None) -> str:
        text = self.head if row is None else str(self.get(row))
        if self.clip:
            text = text[: self.width]
        return f"{text:{self.align}{self.width}}"


def format_row(row: Row | None, columns: list[Column]) -> str:
    """One line (the header for row None)."""
    return " ".join(c.cell(row) for c in columns)


def format_table(table: list[Row], columns: list[Column]) -> str:
    """The header line and one line per row, trailing blanks removed."""
    return "\n".join(format_row(r, columns).rstrip() for r in [None, *table])


def dash(v: object) -> object:
    return "-" if v is None else v


def si(v: float | None, unit: str = "") -> str:
    """3 significant digits with a k/M/G/T prefix: 1.23M."""
    if v is None:
        return "-"
    for div, p in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(v) >= div:
            return f"{v / div:.3g}{p}{unit}"
    return f"{v:.3g}{unit}"


# the columns of the dump table; the tools start from these
ID = Column("id", 5, lambda r: r["id"], ">")
OP = Column("op", 16, lambda r: r["op"])
NAME = Column("name", 28, lambda r: r["name"] or "-", clip=True)
TYPE = Column("type", 5, lambda r: r["type"])
NE = Column("ne", 24, lambda r: r["ne"])
NB = Column("nb", 28, lambda r: r["nb"])
VIEW = Column("view of", 20, lambda r: r["view"] or "", clip=True)
BACKEND = Column("backend", 8, lambda r: r["backend"])
OFFSET = Column("offset", 10, lambda r: dash(r["offset"]), ">")


# ======================================================================================
# Graphviz
# ======================================================================================

COLORS = {"leaf": "#e8f0ff", "param": "#fff2cc", "output": "#d9f2d9", "view": "#f2f2f2", "node": "#ffffff"}


def to_dot(table: list[Row], fill: Callable[[Row], str] | None = None, attrs: Callable[[Row], str] | None = None,
           edge_labels: bool = True, leaf_copies: bool = False, svg_ids: bool = False) -> str:  # fmt: skip
    """Graphviz source of the rows: one record per tensor (name | op | type ne | backend @offset),
    an edge per source and a dashed one to a view's storage. Context rows are drawn dashed.

    Args:
        fill: the fill colour of a row (default: by kind); attrs: more node attributes (", k=v").
        edge_labels: label each edge with the source slot. NOTE: dot lays labelled edges out as
            extra nodes: a model's graph takes ~10x longer.
        leaf_copies: draw a leaf with several consumers once next to each (`t<id>`, `t<id>_2`, ...),
            so an input read by every layer does not stretch edges across the whole graph.
        svg_ids: give each node its DOT name as `id` (the SVG group's id).
    """
    ids = {r["id"] for r in table}
    edges: list[tuple[int, int, str]] = []  # (source id, row id, attributes)
    for r in table:
        if r.get("context"):
            continue
        edges += [(s, r["id"], f' [label="{i}"]' if edge_labels else "") for i, s in enumerate(r["src"])
                  if s is not None and s in ids]  # fmt: skip
        if r["view_src"] is not None and r["view_src"] not in r["src"] and r["view_src"] in ids:
            edges.append((r["view_src"], r["id"], " [style=dashed]"))
    fan = {r["id"]: 0 for r in table}
    for s, _, _ in edges:
        fan[s] += 1
    copies = {r["id"] for r in table if leaf_copies and r["kind"] == "leaf" and fan[r["id"]] > 1}
    out = ["digraph graphir {", "  rankdir=TB;", '  node [shape=record, fontname="monospace", fontsize=10];']
    decl = {}
    for r in table:
        desc = f"{r['op']}|{r['type']} {r['ne']}"
        if "backend" in r:
            desc += f"|{r['backend']} @{dash(r['offset'])}"
        text = f"{{{_esc(r['name'] or '#' + str(r['id']))}|{_esc(desc)}}}"
        style = ', style="filled,dashed"' if r.get("context") else ", style=filled"
        color = fill(r) if fill is not None else COLORS[kind_of(r)]
        more = attrs(r) if attrs is not None else ""
        decl[r["id"]] = f'[label="{text}", fillcolor="{color}"{style}{more}'
        if r["id"] not in copies:
            out.append(_node(f"t{r['id']}", decl[r["id"]], svg_ids))
    seen: dict[int, int] = {}
    lines = []
    for s, d, attr in edges:
        name = f"t{s}"
        if s in copies:
            seen[s] = seen.get(s, 0) + 1
            name += f"_{seen[s]}" if seen[s] > 1 else ""
            out.append(_node(name, decl[s], svg_ids))
        lines.append(f"  {name} -> t{d}{attr};")
    out += lines
    out.append("}")
    return "\n".join(out) + "\n"


def _node(name: str, decl: str, svg_ids: bool) -> str:
    svg_id = f', id="{name}"' if svg_ids else ""
    return f"  {name} {decl}{svg_id}];"


def _esc(s: str) -> str:
    return re.sub(r'([{}|<>"\\])', r"\\\1", s)
