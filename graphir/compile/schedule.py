"""Schedule: assign each node to a backend and split the graph into per-backend runs
(as ggml-backend-sched).

Rules, in order, for a node that computes something:
  1. a write-into op (cpy, set_rows) runs where its target's memory lives;
  2. a node reading a weight pinned to a backend (`t.backend`) runs there if it can;
  3. else the first backend, in priority order, whose `supports_op` accepts it;
  4. else the fallback backend (`cpu`), else the reference (`ref`, which supports every op).
Views run nowhere; they follow their storage. Leafs live where they are pinned, else with
their first consumer. A split reading storage that lives on another backend gets one copy
of it per split (weights are uploaded once per backend instead).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from graphir import debug
from graphir.backends import FALLBACK, REFERENCE, Backend, get_backend
from graphir.graph import Graph
from graphir.ops import VIEW_OPS, Op
from graphir.tensor import Tensor, storage_of, write_target


class ScheduleError(RuntimeError):
    """The graph cannot be placed on the given backends."""


@dataclass
class Split:
    backend: Backend
    nodes: list[Tensor] = field(default_factory=list)  # in execution order, views included
    inputs: list[Tensor] = field(default_factory=list)  # storage owners copied in from elsewhere


@dataclass
class Schedule:
    backends: list[Backend]
    home: dict[Tensor, Backend]  # storage owners -> the backend whose memory holds them
    node_backend: dict[Tensor, Backend]  # every node -> backend (views: their storage's)
    splits: list[Split]

    def backend_of(self, t: Tensor) -> Backend:
        return self.node_backend.get(t) or self.home[storage_of(t)]


def is_static(t: Tensor) -> bool:
    """A leaf with host data (weight, constant, persistent state): not in the compute buffer."""
    return t.op is Op.NONE and t.data is not None


def resolve_backends(backends) -> list[Backend]:
    """Backend instances in priority order, then the fallback (`cpu`) and, last, the reference
    (`ref`, which runs every op and every type combination), unless the list holds it already."""
    if isinstance(backends, (str, Backend)):
        backends = [backends]
    out = [get_backend(b) for b in backends]
    if not out:
        raise ScheduleError("compile needs at least one backend")
    names = {b.name for b in out}
    if REFERENCE not in names:
        if FALLBACK not in names:
            out.append(get_backend(FALLBACK))
        out.append(get_backend(REFERENCE))
    return out


def _choose(node: Tensor, backends: list[Backend], by_name: dict[str, Backend], home: dict) -> Backend:
    target = write_target(node)
    if target is not None:
        owner = storage_of(target)
        be = home.get(owner) or (by_name.get(owner.backend) if owner.backend else None)
        if be is not None:
            if not be.supports_op(node):
                raise ScheduleError(f"[schedule] {node.op.value} {node.name!r} writes into "
                                    f"{owner.name!r} on {be.name}, which cannot run it")  # fmt: skip
            return be
    for s in node.src:
        if s is not None:
            pin = storage_of(s).backend
            if pin and pin in by_name and by_name[pin].supports_op(node):
                return by_name[pin]
    for be in backends:
        if be.supports_op(node):
            return be
    raise ScheduleError(f"[schedule] no backend supports {node.op.value} {node.name!r}")


def schedule(graph: Graph, backends: list[Backend]) -> Schedule:
    by_name = {b.name: b for b in backends}
    home: dict[Tensor, Backend] = {}
    node_backend: dict[Tensor, Backend] = {}

    for n in graph.nodes:
        if n.op in VIEW_OPS:
            continue
        be = _choose(n, backends, by_name, home)
        node_backend[n] = be
        if n.view_src is None:
            home[n] = be
        for s in n.src:  # leafs live with their first consumer unless pinned
            owner = storage_of(s) if s is not None else None
            if owner is not None and owner.op is Op.NONE and owner not in home:
                home[owner] = by_name.get(owner.backend) or be
                if is_static(owner) and not owner.is_param and owner.backend is None:
                    owner.backend = be.name  # writable state must keep one home across plans
        target = write_target(n)
        if target is not None:
            home.setdefault(storage_of(target), be)
    for leaf in graph.leafs:
        home.setdefault(leaf, by_name.get(leaf.backend) or backends[0])
    for n in graph.nodes:
        if n not in node_backend:
            node_backend[n] = home[storage_of(n)]

    splits: list[Split] = []
    for n in graph.nodes:
        be = node_backend[n]
        if n.op not in VIEW_OPS and (not splits or splits[-1].backend is not be):
            splits.append(Split(be))
        if not splits:
            splits.append(Split(be))
        split = splits[-1]
        split.nodes.append(n)
        if n.op in VIEW_OPS:
            continue
        for s in n.src:
            if s is None:
                continue
            owner = storage_of(s)
            if owner.is_param or home[owner] is split.backend or owner in split.inputs:
                continue
            split.inputs.append(owner)
    if debug.enabled(debug.SCHEDULE):
        for i, sp in enumerate(splits):
            copies = ", ".join(t.name or t.op.value for t in sp.inputs)
            debug.log(debug.SCHEDULE, f"split {i}: {sp.backend.name}, {len(sp.nodes)} nodes, copies in: [{copies}]")
    return Schedule(backends, home, node_backend, splits)
