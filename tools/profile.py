"""`graphir profile`: where the time of one plan run goes, node by node and per op type.

    graphir profile [--model F | --example] -b cpu [--tokens N] [--runs 10] [--top 20] [--json]

Two measurements of the same plan, each the median over `--runs` runs after a warm-up:
  - the run: `plan.run()` as decoding pays it (whole-split calls, one synchronize at the end);
  - the profiling run: the per-node plan (`Plan.run(callback)`'s, one prepared call per node),
    each call followed by its backend's synchronize and timed alone. Copies between backends
    are timed as their own rows;
  - on cpu, the records of each whole split timed inside one native call (`gr_run_timed`: each
    op's slowest thread and its barrier), fusions included: a per-op table of what a run pays.
Per node: time, its share of the per-node sum, bytes and FLOPs (graphir.cost, from shapes and
types) and the achieved GB/s and GFLOP/s; per op type: the same summed.
Time outside kernels: each node's time less what an empty call costs on its backend (a 1-element
add, launched and synchronized the same way), summed, is the kernel time; the run's time beyond
kernels and copies is Python, launch and synchronize overhead (shown with its share of the run).
NOTE: OpenCL event timestamps are not used (the backend's queue is created without profiling), so
device backends are timed with a synchronize per node too.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from collections import defaultdict
from dataclasses import dataclass, field

import numpy as np

import graphir as gr
from graphir import report
from graphir.backends import Backend
from graphir.backends.base import default_threads
from graphir.report import Filter, si

from .subject import Subject, add_setup_args, add_spec_args, setup_from, spec_from


@dataclass
class Profile:
    """Medians in seconds: the whole run, each step of the per-node plan, an empty call per backend."""

    subject: Subject
    runs: int
    run_s: float = 0.0
    node_s: dict[int, float] = field(default_factory=dict)  # tensor id -> seconds (computing nodes)
    copies: list[tuple[str, float]] = field(default_factory=list)  # (backend, seconds) per copy step
    empty_s: dict[str, float] = field(default_factory=dict)  # backend -> one empty call + synchronize
    # cpu: each record of the whole-split runs timed in place (fused records stand for their node)
    record_s: dict[int, float] = field(default_factory=dict)  # tensor id -> seconds

    @property
    def step_sum(self) -> float:
        return sum(self.node_s.values()) + self.copy_s

    @property
    def copy_s(self) -> float:
        return sum(s for _, s in self.copies)

    @property
    def kernel_s(self) -> float:
        """The per-node times, each less what an empty call on its backend costs."""
        tensors = list(self.subject.graph.tensors())
        plan = self.subject.plan
        return sum(max(0.0, s - self.empty_s[plan.backend_of(tensors[i]).name]) for i, s in self.node_s.items())

    @property
    def outside_s(self) -> float:
        """The run's time that is neither kernels nor copies: Python, launches, synchronizing."""
        return max(0.0, self.run_s - self.kernel_s - self.copy_s)

    def results(self) -> dict[int, dict]:
        """Per-node results for `report.rows(results={"profile": ...})` (bytes/flops are in the rows)."""
        total = self.step_sum or 1.0
        return {i: {"us": s * 1e6, "share": s / total} for i, s in self.node_s.items()}


def _median_time(fn, runs: int) -> float:
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def empty_call(be: Backend, n: int = 200) -> float:
    """Seconds of one prepared call of a 1-element add on `be`, with its synchronize: what a
    profiled node costs beyond its kernel."""
    x = gr.new_input(gr.F32, [1], "x")
    plan = gr.compile(gr.build_graph(gr.add(x, x)), [be], cache=False)
    plan.set_input(x, np.zeros(1, np.float32))
    ((_, on, call),) = [s for s in plan._per_node_steps() if s[0] is not None]

    def step() -> None:
        call()
        on.synchronize()

    step()
    return _median_time(step, n)


def profile(subject: Subject, runs: int = 10) -> Profile:
    """Time `runs` whole runs and `runs` profiling runs of the subject's plan, alternating, after one of each.
    The plan runs on the inputs its subject last set; the state it updates keeps changing, which
    does not change the work."""
    plan = subject.plan
    index = {t: i for i, t in enumerate(subject.graph.tensors())}
    rev = getattr(plan, "_rev", {})
    prof = Profile(subject, runs)
    # NOTE: Plan keeps the per-node plan private; it is what a run with a callback executes
    steps = plan._per_node_steps()
    times: list[list[float]] = [[] for _ in steps]
    whole: list[float] = []
    timed = [c for c in plan._calls if hasattr(c, "timed")]  # cpu splits (backends/cpu/backend.py)
    records: dict[int, list[float]] = defaultdict(list)
    for _ in range(runs + 1):  # the kinds alternate, so a busy machine slows them alike
        t0 = time.perf_counter()
        plan.run()
        whole.append(time.perf_counter() - t0)
        for call in timed:
            for n, s in zip(call.program.nodes, call.timed()):
                records[index[rev.get(n, n)]].append(s)
        for k, (_, be, call) in enumerate(steps):
            t0 = time.perf_counter()
            call()
            be.synchronize()
            times[k].append(time.perf_counter() - t0)
    prof.run_s = statistics.median(whole[1:])  # the first of each warms up
    prof.record_s = {i: statistics.median(ts[1:]) for i, ts in records.items()}
    times = [ts[1:] for ts in times]
    for (n, be, _), ts in zip(steps, times):
        med = statistics.median(ts)
        if n is None:
            prof.copies.append((be.name, med))
        else:
            prof.node_s[index[rev.get(n, n)]] = med
        if be.name not in prof.empty_s:
            prof.empty_s[be.name] = empty_call(be)
    return prof


# ======================================================================================
# output
# ======================================================================================


def _rate(amount: int, seconds: float) -> float | None:
    return amount / seconds / 1e9 if seconds > 0 and amount else None


def _g(v: float | None, fmt: str = ".2f") -> str:
    return "-" if v is None else f"{v:{fmt}}"


def node_rows(prof: Profile, keep: Filter | None = None) -> list[dict]:
    """Report rows of the timed nodes, with GB/s and GFLOP/s added to their profile entry."""
    out = []
    for r in report.rows(prof.subject.graph, prof.subject.plan, keep, {"profile": prof.results()}):
        if "profile" in r:
            s = r["profile"]["us"] / 1e6
            r["profile"].update(gb_s=_rate(r["bytes"], s), gflop_s=_rate(r["flops"], s))
            out.append(r)
    return out


def record_rows(prof: Profile) -> list[dict]:
    """Report rows of the cpu records timed inside whole-split runs (their time under "profile")."""
    total = sum(prof.record_s.values()) or 1.0
    res = {i: {"us": s * 1e6, "share": s / total} for i, s in prof.record_s.items()}
    return [r for r in report.rows(prof.subject.graph, prof.subject.plan, None, {"profile": res}) if "profile" in r]


def op_rows(nodes: list[dict], total_s: float) -> list[dict]:
    """One row per op type: calls, time, share, bytes, FLOPs, rates; slowest first."""
    acc: dict[str, dict] = defaultdict(lambda: {"calls": 0, "us": 0.0, "bytes": 0, "flops": 0})
    for r in nodes:
        a = acc[r["op"]]
        a["calls"] += 1
        a["us"] += r["profile"]["us"]
        a["bytes"] += r["bytes"]
        a["flops"] += r["flops"]
    out = []
    for op, a in sorted(acc.items(), key=lambda kv: -kv[1]["us"]):
        s = a["us"] / 1e6
        out.append({"op": op, **a, "share": s / total_s if total_s else 0.0, "gb_s": _rate(a["bytes"], s),
                    "gflop_s": _rate(a["flops"], s)})  # fmt: skip
    return out


def summary(prof: Profile) -> dict:
    plan = prof.subject.plan
    return {
        "graph": prof.subject.spec.describe(), "backends": prof.subject.label, "runs": prof.runs,
        "described": {be.name: be.describe() for be in plan.schedule.backends if plan.stats.compute_bytes.get(be.name)},
        "run_us": prof.run_s * 1e6, "per_node_sum_us": prof.step_sum * 1e6, "kernel_us": prof.kernel_s * 1e6,
        "outside_kernels_us": prof.outside_s * 1e6,
        "outside_kernels_share": prof.outside_s / prof.run_s if prof.run_s else 0.0,
        "calls": len(prof.node_s), "copies": len(prof.copies), "copy_us": sum(s for _, s in prof.copies) * 1e6,
        "empty_call_us": {k: v * 1e6 for k, v in prof.empty_s.items()},
        "load_average": os.getloadavg()[0], "cpus": default_threads(),
    }  # fmt: skip


OP_COLUMNS = [
    report.Column("op", 16, lambda r: r["op"]), report.Column("calls", 5, lambda r: r["calls"], ">"),
    report.Column("us", 10, lambda r: f"{r['us']:.1f}", ">"), report.Column("%", 5, lambda r: f"{100 * r['share']:.1f}", ">"),
    report.Column("bytes", 8, lambda r: si(r["bytes"], "B"), ">"), report.Column("flops", 8, lambda r: si(r["flops"]), ">"),
    report.Column("GB/s", 8, lambda r: _g(r["gb_s"]), ">"), report.Column("GFLOP/s", 8, lambda r: _g(r["gflop_s"]), ">"),
]  # fmt: skip

NODE_COLUMNS = [
    report.ID, report.OP, report.Column("name", 26, lambda r: r["name"] or "-", clip=True), report.TYPE,
    report.Column("ne", 20, lambda r: r["ne"]), report.Column("backend", 7, lambda r: r["backend"]),
    report.Column("us", 9, lambda r: f"{r['profile']['us']:.1f}", ">"),
    report.Column("%", 5, lambda r: f"{100 * r['profile']['share']:.1f}", ">"),
    report.Column("bytes", 8, lambda r: si(r["bytes"], "B"), ">"), report.Column("flops", 8, lambda r: si(r["flops"]), ">"),
    report.Column("GB/s", 8, lambda r: _g(r["profile"]["gb_s"]), ">"),
    report.Column("GFLOP/s", 8, lambda r: _g(r["profile"]["gflop_s"]), ">"),
]  # fmt: skip


def format_text(prof: Profile, keep: Filter | None = None, top: int | None = None) -> str:
    s = summary(prof)
    nodes = node_rows(prof, keep)
    shown = sorted(nodes, key=lambda r: -r["profile"]["us"])[:top] if top else nodes
    lines = [f"profile: {s['graph']} on {s['backends']}, median of {s['runs']} runs"]
    lines += [f"  {name}: {d}" for name, d in s["described"].items()]
    lines += [
        f"run (whole splits): {s['run_us']:9.1f} us",
        f"per-node plan:      {s['per_node_sum_us']:9.1f} us over {s['calls']} calls"
        + (f" and {s['copies']} copies ({s['copy_us']:.1f} us)" if s["copies"] else "")
        + f" ({s['per_node_sum_us'] - s['run_us']:+.1f} us against the run: the cost of going node by node)",
        f"kernels (estimate): {s['kernel_us']:9.1f} us (each call less an empty call: "
        + ", ".join(f"{k} {v:.1f} us" for k, v in s["empty_call_us"].items()) + ")",
        f"outside kernels:    {s['outside_kernels_us']:9.1f} us = {100 * s['outside_kernels_share']:.1f}% of the run "
        "(Python, launches, synchronizing, per-op dispatch)",
        *([f"NOTE: load average {s['load_average']:.1f} on {s['cpus']} CPUs: other processes' time is in these "
            "figures (the long whole runs more than the short per-node calls, whose medians skip most of it)"]
          if s["load_average"] > s["cpus"] else []),
        *(["NOTE: the per-node plan costs far more than the run: per-call costs dominate its figures (a thread "
            "pool woken per call on a busy machine?); compare with --threads 1"]
          if s["per_node_sum_us"] > 1.5 * s["run_us"] + 1000 else []),
        "", "per op type:", report.format_table(op_rows(nodes, prof.step_sum), OP_COLUMNS), "",
        *([f"per op type, cpu records timed inside the whole-split runs ({sum(prof.record_s.values()) * 1e6:.1f} us; "
           "fusions included, e.g. gated_delta_net with its state rows):",
           report.format_table(op_rows(record_rows(prof), sum(prof.record_s.values())), OP_COLUMNS), ""]
          if prof.record_s else []),
        f"per node ({f'the {top} slowest' if top else 'execution order'}):", report.format_table(shown, NODE_COLUMNS),
    ]  # fmt: skip
    return "\n".join(lines) + "\n"


def to_json(prof: Profile, keep: Filter | None = None) -> dict:
    nodes = node_rows(prof, keep)
    out = {"tool": "profile", **summary(prof), "ops": op_rows(nodes, prof.step_sum), "nodes": nodes}
    if prof.record_s:
        out["cpu_record_ops"] = op_rows(record_rows(prof), sum(prof.record_s.values()))
    return out


def add_args(p: argparse.ArgumentParser) -> None:
    add_spec_args(p)
    add_setup_args(p)
    p.add_argument("--runs", type=int, default=10, help="timed runs of each kind, median (default 10)")
    p.add_argument("--top", type=int, help="list only the N slowest nodes")
    p.add_argument("--layer", type=int, help="list only nodes of this layer")
    p.add_argument("--name", help="list only nodes whose name matches this regex")


def run(args: argparse.Namespace) -> int:
    if args.runs < 1:
        raise ValueError(f"[profile] --runs must be >= 1, got {args.runs}")
    prof = profile(Subject.build(spec_from(args), setup_from(args)), args.runs)
    keep = Filter(args.name, args.layer) if args.name or args.layer is not None else None
    if args.json:
        print(json.dumps(to_json(prof, keep), indent=1))
    else:
        print(format_text(prof, keep, args.top), end="")
    return 0
