"""`graphir bench-ops`: the time of each op on every chosen backend, side by side.

    graphir bench-ops -b opencl -b ref [--case mul_mat] [--quick] [--check] [--json]

One tool for every backend, reusing the parity cases as test-backend-ops' perf mode reuses its
test cases: every case with a perf profile (graphir/parity/perf.py: fixed, model-sized shapes
and the flops / bytes read + written of each) builds its graph as the parity harness does, is
compiled for one backend alone, and `plan.run()` (which ends with the backend's synchronize) is
timed: one warm-up, then the median of up to `--reps` runs (at least 3, fewer only when `--reps`
says so; a cell stops early after `--max-time` seconds). A table row is one shape: time (us),
GB/s and GFLOP/s per backend; "n/s" where the backend lacks an op (the fallback never takes it);
unavailable backends are listed with their reason. `--check` also compares each output with the
reference backend's (NMSE against the case's parity threshold), so a fast wrong kernel shows.
NOTE: the NumPy `ref` backend's mat-vec goes through numpy's BLAS; on a loaded machine a threaded
BLAS waits on busy cores: OPENBLAS_NUM_THREADS=1 gives steadier figures.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from graphir.backends import REFERENCE, Backend, availability, get_backend, names
from graphir.compile import compile
from graphir.graph import build_graph

if TYPE_CHECKING:
    from graphir.parity.perf import Dims

# NOTE: graphir.parity is imported when a bench runs, not with this module: the parity cases need
# hypothesis (a test dependency) and the `graphir` CLI builds every subcommand's parser.


@dataclass
class Cell:
    """One (shape, backend) measurement: seconds per run, or why there is none."""

    seconds: float | None = None
    runs: int = 0
    status: str = "ok"  # ok | n/s (an op the backend lacks) | error | wrong (--check: past the NMSE threshold)
    reason: str = ""
    nmse: float | None = None  # --check: the worst NMSE of its outputs against the reference


@dataclass
class Row:
    """One perf shape of a case and its cells per backend."""

    case: str
    shape: str
    flops: int
    bytes: int
    cells: dict[str, Cell] = field(default_factory=dict)

    def rates(self, b: str) -> tuple[float, float, float] | None:
        """(us, GB/s, GFLOP/s) on backend b, or None without a time."""
        s = self.cells[b].seconds
        if s is None:
            return None
        s = max(s, 1e-9)
        return s * 1e6, self.bytes / s / 1e9, self.flops / s / 1e9


@dataclass
class BenchTable:
    """Every measured shape; backends that ran and those unavailable (with the reason)."""

    backends: list[str]
    rows: list[Row] = field(default_factory=list)
    unavailable: dict[str, str] = field(default_factory=dict)
    described: dict[str, str] = field(default_factory=dict)  # backend -> its describe()

    def format(self) -> str:
        """The text table: case, shape, then us / GB/s / GFLOP/s of each backend; notes below."""
        wc = max([len(r.case) for r in self.rows] + [4])
        ws = max([len(r.shape) for r in self.rows] + [5])
        head = f"{'case':<{wc}}  {'shape':<{ws}}" + f" | {'us':>10} {'GB/s':>8} {'GFLOP/s':>8}" * len(self.backends)
        lines = [" " * (wc + ws + 2) + "".join(f" | {b:^28}" for b in self.backends), head, "-" * len(head)]
        for r in self.rows:
            lines.append(f"{r.case:<{wc}}  {r.shape:<{ws}}" + "".join(_cell_text(r, b) for b in self.backends))
        lines += [f"{b}: {d}" for b, d in self.described.items()]
        lines += [f"{b}: unavailable: {why}" for b, why in self.unavailable.items()]
        checked = {b: [c.nmse for r in self.rows if (c := r.cells[b]).nmse is not None] for b in self.backends}
        lines += [f"{b}: worst NMSE against {REFERENCE} {max(v):.2g}" for b, v in checked.items() if v]
        for r in self.rows:
            bad = [(b, c) for b, c in r.cells.items() if c.status in ("error", "wrong")]
            lines += [f"{r.case} [{r.shape}] on {b}: {c.status.upper()}: {c.reason}" for b, c in bad]
        return "\n".join(line.rstrip() for line in lines)

    def to_json(self) -> dict:
        """The table as plain data (one entry per row and backend)."""
        rows = []
        for r in self.rows:
            res = {}
            for b, c in r.cells.items():
                rates = r.rates(b)
                res[b] = {"status": c.status, "reason": c.reason, "runs": c.runs, "nmse": c.nmse}
                if rates is not None:
                    res[b].update(us=rates[0], gb_s=rates[1], gflop_s=rates[2])
            rows.append({"case": r.case, "shape": r.shape, "flops": r.flops, "bytes": r.bytes, "results": res})
        return {"backends": self.backends, "described": self.described, "unavailable": self.unavailable, "rows": rows}


def _cell_text(r: Row, b: str) -> str:
    rates = r.rates(b)
    if rates is None:
        return f" | {r.cells[b].status:>10} {'':>8} {'':>8}"
    us, gbs, gflops = rates
    flag = "!" if r.cells[b].status == "wrong" else " "
    return f" |{flag}{us:>10.1f} {gbs:>8.2f} " + (f"{gflops:>8.2f}" if r.flops else f"{'-':>8}")


# ======================================================================================
# measuring
# ======================================================================================


def time_plan(plan, reps: int, max_time: float) -> tuple[float, int]:
    """Median seconds of `plan.run()` after one warm-up run, and how many runs it took."""
    t0 = time.perf_counter()
    plan.run()  # warm-up: first touch of buffers, lazy kernel builds
    warm = time.perf_counter() - t0
    n = min(reps, max(3, int(max_time / max(warm, 1e-9))))
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        plan.run()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), n


def measure(case_name: str, params: dict, be: Backend, reps: int, max_time: float,
            want: list[np.ndarray] | None = None) -> Cell:  # fmt: skip
    """Build the case's graph (as the parity harness does), compile it for `be` alone and time it;
    with `want` (the reference's outputs) also compare its outputs."""
    from graphir.parity.cases import CASES
    from graphir.parity.harness import scheduled_elsewhere, unsupported

    case = CASES[case_name]
    built = case.build(params)
    graph = build_graph(*built.outputs)
    lacking = unsupported(case, graph, be)
    if lacking:
        return Cell(status="n/s", reason=f"{be.name} does not support " + ", ".join(n.op.value for n in lacking))
    try:
        plan = compile(graph, [be], cache=False)
        elsewhere = scheduled_elsewhere(plan, graph, be)
        if elsewhere:
            return Cell(status="n/s", reason="scheduled elsewhere: " + ", ".join(n.op.value for n in elsewhere))
        for t, data in built.inputs.items():
            plan.set_input(t, data)
        cell = Cell(*time_plan(plan, reps, max_time))
        if want is not None:
            _check(cell, case, built, [plan.get(t) for t in built.outputs], want)
    except Exception as e:  # a backend bug must not end the whole profile
        return Cell(status="error", reason=f"{type(e).__name__}: {e}")
    return cell


def _check(cell: Cell, case, built, got: list[np.ndarray], want: list[np.ndarray]) -> None:
    """Record the worst NMSE of the outputs against the reference's; "wrong" past the case's threshold."""
    from graphir.parity.compare import compare

    for i, t in enumerate(built.outputs):
        r = compare(got[i], want[i], t.type, case.nmse_threshold, t.name, built.defined.get(i))
        cell.nmse = max(cell.nmse or 0.0, r.nmse or 0.0)
        if r.failed:
            cell.status, cell.reason = "wrong", r.reason
            return


def reference_outputs(case_name: str, params: dict) -> list[np.ndarray]:
    """The outputs of one run of the case on the reference backend."""
    from graphir.parity.cases import CASES

    built = CASES[case_name].build(params)
    plan = compile(build_graph(*built.outputs), [get_backend(REFERENCE)], cache=False)
    for t, data in built.inputs.items():
        plan.set_input(t, data)
    plan.run()
    return [plan.get(t) for t in built.outputs]


def _resolve(backend_names: Sequence[str], table: BenchTable) -> dict[str, Backend]:
    """The available backends by name; the others go to table.unavailable with their reason."""
    out = {}
    for b in backend_names:
        av = availability(b)
        if not av.ok:
            table.unavailable[b] = av.reason
            continue
        out[b] = get_backend(b)
        table.described[b] = out[b].describe()
    return out


def run_bench(backend_names: Sequence[str], cases: Sequence[str] | None = None, dims: Dims | None = None,
              reps: int = 10, max_time: float = 2.0, check: bool = False) -> BenchTable:  # fmt: skip
    """Time every perf shape of the chosen cases (default: every case with a perf profile) on each
    available backend, at `dims` (default perf.FULL); with `check`, compare every output with the
    reference backend's (so that a fast wrong kernel shows)."""
    from graphir.parity.perf import FULL, PERF

    dims = dims or FULL
    chosen = list(cases) if cases else list(PERF)
    bad = [c for c in chosen if c not in PERF]
    if bad:
        raise ValueError(f"[bench-ops] no perf profile for case(s) {', '.join(bad)}; known: {', '.join(PERF)}")
    table = BenchTable([])
    resolved = _resolve(backend_names, table)
    table.backends = list(resolved)
    for c in chosen:
        pf = PERF[c]
        for p in pf.shapes(dims):
            row = Row(c, pf.label(p), pf.flops(p), pf.bytes(p))
            want = reference_outputs(c, p) if check else None
            for b, be in resolved.items():
                row.cells[b] = measure(c, p, be, reps, max_time, want)
            table.rows.append(row)
    return table


# ======================================================================================
# command line
# ======================================================================================


def add_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--backend", "-b", action="append", help="backend(s) to time (default: every registered one)")
    p.add_argument("--case", "-c", action="append", help="only these cases (default: every case with a perf profile)")
    p.add_argument("--quick", action="store_true", help="tiny shapes (a smoke test of the tool, not a measurement)")
    p.add_argument("--reps", type=int, default=10, help="timed runs per cell, median (default 10, at least 3)")
    p.add_argument("--max-time", type=float, default=2.0, help="stop a cell's runs after ~S seconds (default 2)")
    p.add_argument("--check", action="store_true", help=f"also compare every output with {REFERENCE}'s (NMSE)")
    p.add_argument("--json", action="store_true", help="print the table as JSON")


def run(args: argparse.Namespace) -> int:
    """Run bench-ops from parsed arguments; prints the table (or JSON)."""
    if args.reps < 1:
        raise ValueError(f"[bench-ops] --reps must be >= 1, got {args.reps}")
    from graphir.parity.perf import FULL, QUICK

    dims = QUICK if args.quick else FULL
    table = run_bench(args.backend or names(), args.case, dims, args.reps, args.max_time, args.check)
    print(json.dumps(table.to_json(), indent=1) if args.json else table.format())
    return 0 if table.backends else 1


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="graphir bench-ops", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    add_args(ap)
    return run(ap.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
