"""Check a backend against the reference (the `ref` backend), one case at a time.

`check_case(case, params, backend)` builds the case twice (one graph each), runs one on
the reference and one on the backend under test alone, and checks, in order:

  1. support: every compute node (and the case's own op node) must be accepted by the
     backend's `supports_op`, else the result is NOT SUPPORTED (the fallback must
     never silently take the op);
  2. sentinels: every compute buffer is filled with a sentinel pattern before the run;
     afterwards every byte outside the live tensors' extents must still hold it;
  3. inputs and weights are unchanged, and write-into ops (cpy, set_rows) left the
     elements they do not write as they were;
  4. each output matches the reference (NaN/inf checks, then NMSE or exact).

`run_all` runs every case over a profile's examples on several backends and returns a
table of pass / fail / not-supported counts (what `graphir parity` prints).
"""

from __future__ import annotations

import traceback
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from hypothesis import given

from graphir import progress
from graphir.backends import REFERENCE, Backend, availability, get_backend, names
from graphir.compile import Plan, compile
from graphir.graph import Graph, build_graph
from graphir.layout import host_array
from graphir.ops import VIEW_OPS
from graphir.tensor import Tensor, storage_of, write_target
from graphir.types import TYPE_INFO

from . import strategies as S
from .cases import CASES, Built, Case
from .compare import Result, Status, compare, failed, not_supported, passed

# Repeated over every compute buffer. As f32 (0x7FC35AA5) it is a NaN and as f16 its high
# half is one too, so a kernel that reads bytes nobody wrote produces NaNs, not plausible numbers.
SENTINEL = np.array([0xA5, 0x5A, 0xC3, 0x7F], dtype=np.uint8)


class ParityFailure(AssertionError):
    """A case failed on a backend (raised inside hypothesis so the example is shrunk)."""


def _desc(t: Tensor) -> str:
    return f"{t.op.value} {t.name!r} ({TYPE_INFO[t.type].name} {t.shape_str()})"


def _exc(e: BaseException) -> str:
    frame = traceback.extract_tb(e.__traceback__)[-1] if e.__traceback__ else None
    where = f" at {frame.filename.rsplit('/', 1)[-1]}:{frame.lineno}" if frame else ""
    return f"{type(e).__name__}: {e}{where}"


def _where(idx: tuple[int, ...]) -> str:
    return "[" + ", ".join(str(int(i)) for i in reversed(idx)) + "]"


def _fill_sentinel(plan: Plan) -> None:
    for buf in plan.buffers.values():
        buf.backend.write_bytes(buf, 0, np.resize(SENTINEL, buf.nbytes))


def _live_spans(plan: Plan, backend_name: str) -> list[tuple[int, int, Tensor]]:
    """[start, end) of every tensor the plan placed in that backend's compute buffer."""
    spans = [(off, off + t.nbytes, t) for t, off in plan.alloc.offsets.items()
             if plan.schedule.home[t].name == backend_name]  # fmt: skip
    spans += [(off, off + t.nbytes, t) for (bn, t), off in plan.alloc.copy_offsets.items() if bn == backend_name]
    return sorted(spans, key=lambda s: s[0])


def sentinel_damage(plan: Plan) -> str | None:
    """Why a compute buffer's bytes outside every live tensor no longer hold the sentinel."""
    for name, buf in plan.buffers.items():
        raw = buf.backend.read_bytes(buf, 0, buf.nbytes)
        bad = raw != np.resize(SENTINEL, buf.nbytes)
        spans = _live_spans(plan, name)
        for start, end, _ in spans:
            bad[start:end] = False
        if bad.any():
            first = int(np.flatnonzero(bad)[0])
            before = [(end, t) for _, end, t in spans if end <= first]
            after = ""
            if before:
                end, t = max(reversed(before), key=lambda s: s[0])  # ties: the latest tensor (in-place results)
                after = f", {first - end} bytes past the end of {t.name or t.op.value!r}"
            return (f"sentinel overwritten: {int(bad.sum())} bytes of the {name} compute buffer outside "
                    f"every live tensor, first at byte {first}{after}")  # fmt: skip
    return None


def _bits(a: np.ndarray) -> np.ndarray:
    """The raw bits of each element (so NaNs compare equal to themselves)."""
    a = np.ascontiguousarray(a)
    return a.view(f"u{a.dtype.itemsize}") if a.dtype.itemsize in (1, 2, 4, 8) else a


def _inputs_changed(plan: Plan, built: Built, graph: Graph) -> str | None:
    """Inputs that no write-into op targets, and weights, must be exactly as they were set."""
    targets = {storage_of(w) for n in graph.nodes if (w := write_target(n)) is not None}
    for t, data in built.inputs.items():
        if t not in targets and not np.array_equal(_bits(plan.get(t)), _bits(host_array(data, t))):
            return f"input {t.name!r} was modified"
    for t in graph.leafs:
        if t.data is not None and not np.array_equal(_bits(plan.get(t)), _bits(host_array(t.data, t))):
            return f"weight {t.name!r} was modified"
    return None


def _keep_changed(plan: Plan, built: Built) -> str | None:
    """Elements a write-into op must not write (rows it does not index, bytes outside its view)."""
    for t, mask in built.keep:
        got, want = _bits(plan.get(t)), _bits(host_array(built.inputs[t], t))
        bad = mask & (got != want)
        if bad.any():
            i = tuple(int(j) for j in np.argwhere(bad)[0])
            return (f"{int(bad.sum())} elements of {t.name!r} that the op must leave untouched changed, "
                    f"first at {_where(i)}")  # fmt: skip
    return None


def unsupported(case: Case, graph: Graph, be: Backend) -> list[Tensor]:
    """The compute nodes of a case's graph (and its own op node, even a view) that `be` refuses."""
    return [n for n in graph.nodes if (n.op not in VIEW_OPS or n.op is case.op) and not be.supports_op(n)]


def scheduled_elsewhere(plan: Plan, graph: Graph, be: Backend) -> list[Tensor]:
    """The compute nodes that a plan compiled for `be` alone did not place on it."""
    return [n for n in graph.nodes if n.op not in VIEW_OPS and plan.schedule.node_backend[n] is not be]


def _run(built: Built, be: Backend, label: str, graph: Graph | None = None) -> list[np.ndarray] | Result:
    """Compile `built` onto `be` alone, run it over sentinel-filled buffers, check memory,
    and return host copies of its outputs (or a FAIL)."""
    graph = graph or build_graph(*built.outputs)
    try:
        plan = compile(graph, [be], cache=False)
    except Exception as e:
        return failed(f"{label}: compile raised {_exc(e)}")
    elsewhere = scheduled_elsewhere(plan, graph, be)
    if elsewhere:
        return failed(f"{label}: scheduled elsewhere: " + ", ".join(_desc(n) for n in elsewhere))
    try:
        _fill_sentinel(plan)
        for t, data in built.inputs.items():
            plan.set_input(t, data)
        plan.run()
        outputs = [plan.get(t) for t in built.outputs]
        why = sentinel_damage(plan) or _inputs_changed(plan, built, graph) or _keep_changed(plan, built)
    except Exception as e:
        return failed(f"{label}: raised {_exc(e)}")
    return failed(f"{label}: {why}") if why else outputs


def resolve(backend: str | Backend) -> Backend | Result:
    """The backend instance, or NOT SUPPORTED with the reason it is unavailable."""
    if isinstance(backend, Backend):
        return backend
    av = availability(backend)
    if not av.ok:
        return not_supported(f"backend {backend!r} is unavailable: {av.reason}")
    return get_backend(backend)


def check_case(case: Case, params: dict, backend: str | Backend) -> Result:
    """Run `case` with `params` on `backend` and on the reference backend; compare (see module doc)."""
    be = resolve(backend)
    if isinstance(be, Result):
        return be
    built = case.build(params)
    graph = build_graph(*built.outputs)
    lacking = unsupported(case, graph, be)
    if lacking:
        return not_supported(f"{be.name} does not support " + ", ".join(_desc(n) for n in lacking))
    ref = _run(case.build(params), get_backend(REFERENCE), f"reference {REFERENCE}")
    if isinstance(ref, Result):
        return ref
    got = _run(built, be, be.name, graph)
    if isinstance(got, Result):
        return got
    worst = 0.0
    for i, t in enumerate(built.outputs):
        r = compare(got[i], ref[i], t.type, case.nmse_threshold, f"{be.name} {t.name}", built.defined.get(i))
        if r.failed:
            return r
        worst = max(worst, r.nmse or 0.0)
    return passed(worst)


# ======================================================================================
# running many examples
# ======================================================================================


def examples(case: Case, profile: str | None = None) -> list[dict]:
    """The parameter dicts the profile draws for `case` (the same every time under "ci")."""
    drawn: list[dict] = []

    @S.profile(profile)
    @given(case.strategy)
    def collect(p: dict) -> None:
        drawn.append(p)

    collect()
    return drawn


def check_examples(case: Case, backend: str | Backend, profile: str | None = None) -> list[tuple[dict, Result]]:
    """Run `case` on `backend` over the profile's examples. The first FAIL raises
    ParityFailure after hypothesis has shrunk it to a small example; otherwise every
    (params, result) pair is returned (PASS or NOT SUPPORTED)."""
    results: list[tuple[dict, Result]] = []
    label = backend if isinstance(backend, str) else backend.name

    @S.profile(profile)
    @given(case.strategy)
    def check(p: dict) -> None:
        r = check_case(case, p, backend)
        results.append((p, r))
        if r.failed:
            raise ParityFailure(f"[{case.name} on {label}] {r.reason}")

    check()
    return results


@dataclass
class Cell:
    """Counts of one (case, backend) pair."""

    passed: int = 0
    failed: int = 0
    not_supported: int = 0
    first_failure: str = ""

    def add(self, r: Result) -> None:
        if r.status is Status.PASS:
            self.passed += 1
        elif r.status is Status.NOT_SUPPORTED:
            self.not_supported += 1
        else:
            self.failed += 1
            self.first_failure = self.first_failure or r.reason

    def __str__(self) -> str:
        return f"{self.passed}/{self.failed}/{self.not_supported}"


@dataclass
class ParityTable:
    """case x backend counts of pass / fail / not supported."""

    cases: list[str]
    backends: list[str]
    cells: dict[tuple[str, str], Cell] = field(default_factory=dict)
    unavailable: dict[str, str] = field(default_factory=dict)  # backend -> why

    @property
    def ok(self) -> bool:
        return not any(c.failed for c in self.cells.values())

    def format(self) -> str:
        """A text table (cells: pass/fail/not-supported), then the first failure of each cell."""
        w = max([len(c) for c in self.cases] + [4])
        cols = [max(len(b), 9) for b in self.backends]
        lines = ["case".ljust(w) + "  " + "  ".join(b.rjust(n) for b, n in zip(self.backends, cols))]
        for c in self.cases:
            row = []
            for b, n in zip(self.backends, cols):
                row.append(("unavail" if b in self.unavailable else str(self.cells[c, b])).rjust(n))
            lines.append(c.ljust(w) + "  " + "  ".join(row))
        lines.append("(cells: pass/fail/not supported)")
        for b, why in self.unavailable.items():
            lines.append(f"{b}: unavailable: {why}")
        for (c, b), cell in self.cells.items():
            if cell.failed:
                lines.append(f"FAIL {c} on {b}: {cell.first_failure}")
        return "\n".join(lines)


def run_all(backends: Sequence[str | Backend] | None = None, profile: str | None = None,
            cases: Sequence[str] | None = None) -> ParityTable:  # fmt: skip
    """Every case (or those named) on every backend (default: all registered but the reference),
    over the profile's examples; unavailable backends are listed with their reason."""
    backends = list(backends) if backends is not None else [n for n in names() if n != REFERENCE]
    unknown = [c for c in cases or () if c not in CASES]
    if unknown:
        raise ValueError(f"[parity] unknown case(s) {', '.join(map(repr, unknown))}; known: {', '.join(CASES)}")
    chosen = [CASES[c] for c in cases] if cases is not None else list(CASES.values())
    labels = [b if isinstance(b, str) else b.name for b in backends]
    table = ParityTable([c.name for c in chosen], labels)
    resolved = {}
    for b, label in zip(backends, labels):
        r = resolve(b)
        if isinstance(r, Result):
            table.unavailable[label] = r.reason
        else:
            resolved[label] = r
    with progress.bar(total=len(chosen), desc="parity", unit="case") as bar:
        for c in chosen:
            bar.set_postfix_str(c.name)
            params = examples(c, profile) if resolved else []
            for label in labels:
                cell = table.cells.setdefault((c.name, label), Cell())
                for p in params if label in resolved else ():
                    cell.add(check_case(c, p, resolved[label]))
            bar.update(1)
    return table
