"""compile(graph, backends) -> Plan: schedule, allocate, lower; plans are cached by a key
of the graph's topology, shapes, parameters and weights, so a graph rebuilt with the same
key reuses the compiled plan (llama.cpp's graph reuse)."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

from graphir.backends import FALLBACK, Backend
from graphir.graph import Graph

from .alloc import Allocation, BestFit, allocate
from .plan import Plan, PlanStats
from .schedule import Schedule, ScheduleError, Split, resolve_backends, schedule


def graph_key(graph: Graph) -> tuple:
    """Topology, types, shapes, strides, parameters, flags, names and weight identity."""
    index = {t: i for i, t in enumerate(graph.tensors())}
    key = []
    for t in graph.tensors():
        key.append((
            t.op, t.type, t.ne, t.nb, t.view_offs, int(t.flags), t.name,
            tuple(sorted(t.params.items())),
            tuple(-1 if s is None else index[s] for s in t.src),
            -1 if t.view_src is None else index[t.view_src],
            id(t.data) if t.data is not None else 0,
        ))  # fmt: skip
    return tuple(key)


class PlanCache:
    """Least-recently-used cache of compiled plans."""

    def __init__(self, maxsize: int = 32) -> None:
        self.maxsize = maxsize
        self._plans: OrderedDict[tuple, Plan] = OrderedDict()
        self.hits = 0
        self.misses = 0

    def get(self, key: tuple) -> Plan | None:
        plan = self._plans.get(key)
        if plan is not None:
            self._plans.move_to_end(key)
            self.hits += 1
        return plan

    def put(self, key: tuple, plan: Plan) -> None:
        self.misses += 1
        self._plans[key] = plan
        while len(self._plans) > self.maxsize:
            self._plans.popitem(last=False)

    def clear(self) -> None:
        self._plans.clear()


plan_cache = PlanCache()


def compile(graph: Graph, backends: Sequence[str | Backend] | str = (FALLBACK,), *, cache: bool = True,
            reuse: bool = True) -> Plan:  # fmt: skip
    """Schedule, allocate and lower `graph` onto `backends` (priority order; cpu is the fallback).

    Args:
        graph: the graph; its OUTPUT tensors are kept intact, INPUT tensors are set by the caller.
        backends: backend names or instances.
        cache: reuse a compiled plan for a graph with the same key.
        reuse: allow memory reuse (off gives every tensor its own bytes).
    """
    if not graph.nodes:
        raise ValueError("[compile] the graph has no nodes; call build_forward_expand first")
    bes = resolve_backends(backends)
    key = None
    if cache:
        # NOTE: weights are keyed by id(data); the cached plan holds them, so ids stay unique
        key = (tuple(b.name for b in bes), reuse, graph_key(graph))
        plan = plan_cache.get(key)
        if plan is not None:
            return plan if plan.graph is graph else plan.bind(graph)
    sched = schedule(graph, bes)
    plan = Plan(graph, sched, allocate(graph, sched, reuse=reuse))
    if cache:
        plan_cache.put(key, plan)
    return plan


__all__ = [
    "Allocation", "BestFit", "Plan", "PlanCache", "PlanStats", "Schedule", "ScheduleError", "Split",
    "allocate", "compile", "graph_key", "plan_cache", "schedule",
]  # fmt: skip
