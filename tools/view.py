"""`graphir view`: a self-contained HTML page of a compiled graph (no server, no network).

    graphir view [--model F | --example] [-b cpu] [--tokens N] [-o graph.html]
    graphir view --compare [--against ref]          # colour by divergence (graphir compare)
    graphir view --profile                          # colour by time (graphir profile)
    graphir view --overlay result.json              # a saved `graphir compare/profile --json`

The layout is Graphviz's (`dot -Tsvg`, run once when the page is made; Debian's `graphviz`
package). The page inlines the SVG, the report rows (graphir.report) as JSON and a small script:
nodes coloured by backend split, a search box (by name; Enter steps through the matches), a
layer filter, zoom, and a side panel with every field of the clicked node (op, params, type,
ne/nb, view source, sources, backend, split, buffer offset, bytes/FLOPs and the overlay's values).
"""

from __future__ import annotations

import argparse
import colorsys
import html
import json
import shutil
import subprocess
import sys
from pathlib import Path

from graphir import report
from graphir.dump import plan_summary
from graphir.report import Filter

from .subject import Subject, add_setup_args, add_spec_args, setup_from, spec_from
from .view_page import CSS, JS, PAGE

# ======================================================================================
# colours
# ======================================================================================

HUES = {"cpu": 0.58, "native": 0.33, "opencl": 0.08, "ref": 0.0, "vulkan": 0.78, "cuda": 0.45}
LEAF_COLORS = {"param": "#fff2cc", "input": "#e8f0ff", "leaf": "#efe3f7"}


def _hsl(h: float, light: float, sat: float = 0.55) -> str:
    return "#" + "".join(f"{round(v * 255):02x}" for v in colorsys.hls_to_rgb(h, light, sat))


def backend_fill(row: dict) -> str:
    """Leafs by kind; nodes by backend, alternate splits a shade apart; views paler."""
    if row["kind"] == "leaf":
        return LEAF_COLORS["param" if "param" in row["flags"] else "input" if "input" in row["flags"] else "leaf"]
    hue = HUES.get(row.get("backend"), 0.15) if "backend" in row else 0.6
    if row["view_src"] is not None:
        return _hsl(hue, 0.95, 0.3)
    return _hsl(hue, 0.86 if (row.get("split") or 0) % 2 == 0 else 0.78)


def _ramp(t: float, stops: list[tuple[int, int, int]]) -> str:
    t = min(max(t, 0.0), 1.0) * (len(stops) - 1)
    i = min(int(t), len(stops) - 2)
    f = t - i
    c = [round(a + (b - a) * f) for a, b in zip(stops[i], stops[i + 1])]
    return "#" + "".join(f"{v:02x}" for v in c)


def compare_fill(row: dict) -> str:
    """Green (no error) through yellow (near the bound) for nodes within it; red beyond, purple NaN/inf."""
    c = row.get("compare")
    if c is None:
        return "#f4f4f4"
    if c["status"] in ("nan", "inf"):
        return "#d7a6f0"
    if c["status"] != "ok":
        return "#ff6b6b" if c["first"] else "#f7a8a8"
    err = c["local_nmse"] if c["local_nmse"] is not None else c["nmse"]
    if not err or not c["bound"]:
        return "#c8ecc8"
    import math

    return _ramp((math.log10(err / c["bound"]) + 10) / 10, [(200, 236, 200), (250, 240, 160)])


def profile_fill(row: dict, max_us: float) -> str:
    p = row.get("profile")
    if p is None:
        return "#f4f4f4"
    return _ramp((p["us"] / max_us) ** 0.5 if max_us else 0.0, [(255, 255, 255), (255, 196, 120), (255, 70, 40)])


# ======================================================================================
# the page
# ======================================================================================


def layout_svg(dot_source: str, timeout: float = 600) -> str:
    """The SVG Graphviz's `dot` lays out, without its XML prolog."""
    exe = shutil.which("dot")
    if exe is None:
        raise FileNotFoundError("[view] Graphviz `dot` was not found on PATH; install Graphviz "
                                "(Debian/Ubuntu: apt-get install graphviz) or use `graphir dump -f dot`")  # fmt: skip
    proc = subprocess.run([exe, "-Tsvg"], input=dot_source, capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        raise RuntimeError(f"[view] dot failed ({proc.returncode}): {proc.stderr.strip()[:500]}")
    return proc.stdout[proc.stdout.index("<svg") :]


def page(
    rows: list[dict], title: str, summary: dict, color_by: str = "backend", names: dict[int, str] | None = None
) -> str:
    """The HTML page of report rows: the SVG layout, the rows as JSON, the script and styles inline.
    `names`: id -> name of every tensor of the graph, for the sources a filtered drawing leaves out."""
    if color_by == "compare":
        fill = compare_fill
    elif color_by == "profile":
        top = max((r["profile"]["us"] for r in rows if "profile" in r), default=0.0)
        fill = lambda r: profile_fill(r, top)
    else:
        fill = backend_fill

    def attrs(r: dict) -> str:
        return ', penwidth=4, color="#d00000"' if r.get("compare", {}).get("first") else ""

    # NOTE: no edge labels and a copy of a shared leaf per consumer: dot lays out a 0.8B model's
    # decode graph in seconds this way, in over ten minutes with them
    svg = layout_svg(report.to_dot(rows, fill, attrs, edge_labels=False, leaf_copies=True, svg_ids=True))
    backends = sorted({r["backend"] for r in rows if "backend" in r and r["kind"] == "node"})
    legend = {b: backend_fill({"kind": "node", "backend": b, "view_src": None, "split": 0, "flags": []})
              for b in backends}  # fmt: skip
    data = {"title": title, "summary": summary, "color_by": color_by, "legend": legend, "rows": rows,
            "names": names or {}}  # fmt: skip
    blob = json.dumps(data, separators=(",", ":")).replace("</", "<\\/")
    parts = {"{{TITLE}}": html.escape(title), "{{STYLE}}": CSS, "{{SCRIPT}}": JS, "{{DATA}}": blob, "{{SVG}}": svg}
    out = PAGE
    for key, value in parts.items():  # NOTE: the SVG and the data last: their text may hold anything
        out = out.replace(key, value)
    return out


def load_overlay(path: str, rows: list[dict]) -> tuple[str, dict[int, dict]]:
    """(tool, per-node results) of a saved `graphir compare --json` / `graphir profile --json`,
    checked against the graph's rows (same ids, same names)."""
    doc = json.loads(Path(path).read_text())
    tool = doc.get("tool")
    if tool not in ("compare", "profile") or "nodes" not in doc:
        raise ValueError(f"[view] {path} is not the JSON of `graphir compare` or `graphir profile`")
    names = {r["id"]: r["name"] for r in rows}
    for n in doc["nodes"]:
        if names.get(n["id"], n["name"]) != n["name"]:
            raise ValueError(f"[view] {path} is from another graph: node #{n['id']} is {n['name']!r} there, "
                             f"{names[n['id']]!r} here")  # fmt: skip
    return tool, {n["id"]: n[tool] for n in doc["nodes"]}


def add_args(p: argparse.ArgumentParser) -> None:
    add_spec_args(p)
    add_setup_args(p)
    add_setup_args(p, "against", default=("ref",))
    p.add_argument("--output", "-o", default="graph.html", help="the HTML file to write (default graph.html)")
    p.add_argument("--layer", type=int, help="draw only this layer (and the direct sources of its tensors)")
    p.add_argument("--name", help="draw only tensors whose name matches this regex (and their direct sources)")
    p.add_argument("--no-weights", action="store_true", help="leave weight leafs out of the drawing")
    g = p.add_mutually_exclusive_group()
    g.add_argument(
        "--compare", action="store_true", help="run `graphir compare` (-b against --against) and colour by it"
    )
    g.add_argument("--profile", action="store_true", help="run `graphir profile` (-b) and colour by time")
    g.add_argument("--overlay", help="colour by a saved `graphir compare --json` or `graphir profile --json`")
    p.add_argument("--runs", type=int, default=5, help="--profile: timed runs (default 5)")


def run(args: argparse.Namespace) -> int:
    spec, results, color_by = spec_from(args), {}, "backend"
    if args.compare:
        from .compare import compare

        cmp = compare(spec, setup_from(args, "against"), setup_from(args))
        subject, results["compare"], color_by = cmp.b, cmp.results(), "compare"
    else:
        subject = Subject.build(spec, setup_from(args))
    if args.profile:
        from .profile import profile

        results["profile"], color_by = profile(subject, args.runs).results(), "profile"
    name_keep = Filter(args.name, args.layer) if args.name or args.layer is not None else None

    def keep(t) -> bool:
        return not (args.no_weights and t.is_param) and (name_keep is None or name_keep(t))

    filtering = name_keep is not None or args.no_weights
    rows = report.rows(subject.graph, subject.plan, keep if filtering else None, results, context=name_keep is not None)
    if args.overlay:
        tool, per_node = load_overlay(args.overlay, rows)
        for r in rows:
            if r["id"] in per_node:
                r[tool] = per_node[r["id"]]
        color_by = tool
    title = f"{spec.describe()} on {subject.label}"
    summary = {"plan": subject.plan.stats.summary(), **plan_summary(subject.plan)}
    names = {i: t.name for i, t in enumerate(subject.graph.tensors())} if filtering else None
    text = page(rows, title, summary, color_by, names)
    Path(args.output).write_text(text)
    print(f"wrote {args.output}: {len(rows)} tensors of {title} ({len(text) / 1e6:.1f} MB)", file=sys.stderr)
    return 0
