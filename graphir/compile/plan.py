"""Lower a scheduled, allocated graph into a Plan: one prepared call per split (plus the
copies that bring a split's inputs from other backends).

Each backend lowers a whole split at once (`Backend.lower_split`), so it can turn the split
into one native call, one recorded command buffer or one graph launch. `Plan.run()` only
walks the list of split calls; every decision (kernel, views, offsets, copies) was made here
once. A run with an eval callback goes node by node through a per-node plan built lazily on
first use (as ggml's scheduler cuts its splits at callback nodes).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from graphir.backends import Backend, Place
from graphir.backends.base import Call
from graphir.graph import Graph
from graphir.tensor import Tensor, is_empty_op, storage_of

from .alloc import Allocation
from .schedule import Schedule, is_static

EvalCallback = Callable[[Tensor, np.ndarray], object]


@dataclass
class PlanStats:
    n_nodes: int
    n_calls: int
    n_splits: int
    n_copies: int
    compute_bytes: dict[str, int]
    naive_bytes: dict[str, int]
    inplace: int
    refused: list[str] = field(default_factory=list)

    def summary(self) -> str:
        parts = [f"{self.n_nodes} nodes, {self.n_calls} calls, {self.n_splits} splits, {self.n_copies} copies"]
        for name, size in self.compute_bytes.items():
            if self.naive_bytes.get(name):
                parts.append(f"{name} compute buffer {size / 2**20:.2f} MiB "
                             f"(naive {self.naive_bytes[name] / 2**20:.2f} MiB)")  # fmt: skip
        return "; ".join(parts)


class Plan:
    """A compiled graph: buffers, places and prepared calls. Create with `graphir.compile`.

    Tensors are addressed by object or by name. A cached plan handed back for a new graph
    of the same key is `bind`-ed to it, so the new graph's tensors address the same slots.
    """

    def __init__(self, graph: Graph, sched: Schedule, alloc: Allocation) -> None:
        self.graph = graph
        self.schedule = sched
        self.alloc = alloc
        self._alias: dict[Tensor, Tensor] = {}  # tensors of a bound graph -> this plan's
        self._rev: dict[Tensor, Tensor] = {}
        self.buffers = {b.name: b.alloc_buffer(alloc.sizes[b.name]) for b in sched.backends if alloc.sizes[b.name]}
        self._steps: list[tuple[Backend, Call]] = []  # copies and whole splits, in order
        live_out = self._live_out() if alloc.reuse else None
        for split in sched.splits:
            be = split.backend
            self._steps.extend((be, call) for call in self._copies(split))
            place = lambda t, be=be: self.place(t, be)  # noqa: E731
            self._steps.append((be, be.lower_split(split.nodes, place, live_out=live_out)))
        self._calls = [c for _, c in self._steps]
        self._node_steps: list[tuple[Tensor | None, Backend, Call]] | None = None  # built by run(callback)
        self._io_cache: dict[tuple[Tensor, bool], tuple[Backend, Place]] = {}
        self._used = list({id(be): be for be, _ in self._steps}.values())
        self._names = {t.name: t for t in graph.tensors() if t.name}
        self.stats = PlanStats(
            n_nodes=len(graph.nodes),
            n_calls=sum(len(s.nodes) - sum(map(is_empty_op, s.nodes)) for s in sched.splits) + sum(
                len(s.inputs) for s in sched.splits),
            n_splits=len(sched.splits),
            n_copies=sum(len(s.inputs) for s in sched.splits),
            compute_bytes=dict(alloc.sizes),
            naive_bytes=dict(alloc.naive),
            inplace=alloc.inplace,
            refused=list(alloc.refused),
        )

    def _live_out(self) -> frozenset[Tensor]:
        """Storage owners read after the split that computes them: by another split, or by the
        caller (outputs). Everything else a split computes is its own business (a backend may
        fuse it away). A plan without memory reuse passes None: every tensor stays readable."""
        split_of = {n: i for i, s in enumerate(self.schedule.splits) for n in s.nodes if n.view_src is None}
        live = {storage_of(t) for t in self.graph.tensors() if t.is_output}
        for i, split in enumerate(self.schedule.splits):
            for n in split.nodes:
                for s in n.src:
                    if s is not None and split_of.get(storage_of(s), i) != i:
                        live.add(storage_of(s))
        return frozenset(live)

    def _copies(self, split) -> list[Call]:
        """Prepared calls copying the split's inputs from the backends that hold them."""
        be, home = split.backend, self.schedule.home
        return [be.copy_from(self.place(o, be), o, home[o], self.place(o, home[o])) for o in split.inputs]

    def _per_node_steps(self) -> list[tuple[Tensor | None, Backend, Call]]:
        """Copies and one call per computing node: the plan of a run with an eval callback."""
        if self._node_steps is None:
            steps: list[tuple[Tensor | None, Backend, Call]] = []
            for split in self.schedule.splits:
                be = split.backend
                steps.extend((None, be, call) for call in self._copies(split))
                for n in split.nodes:
                    if not is_empty_op(n):
                        srcs = [None if s is None else self.place(s, be) for s in n.src]
                        steps.append((n, be, be.lower(n, self.place(n, be), srcs)))
            self._node_steps = steps
        return self._node_steps

    # ---- places ----
    def place(self, t: Tensor, backend: Backend | None = None) -> Place:
        """Where t's bytes are on `backend` (default: where t lives)."""
        t = self._alias.get(t, t)
        owner = storage_of(t)
        home = self.schedule.home[owner]
        be = backend or home
        view_offs = t.view_offs if t.view_src is not None else 0
        if is_static(owner):
            base = be.static_place(owner)
        elif be is home:
            base = Place(self.buffers[be.name], self.alloc.offsets[owner])
        else:
            base = Place(self.buffers[be.name], self.alloc.copy_offsets[(be.name, owner)])
        return Place(base.buffer, base.offset + view_offs)

    def offset_of(self, t: Tensor) -> int | None:
        """Byte offset of t in its backend's compute buffer (None for weights/state)."""
        owner = storage_of(self._alias.get(t, t))
        if is_static(owner):
            return None
        return self.alloc.offsets[owner] + (t.view_offs if t.view_src is not None else 0)

    def backend_of(self, t: Tensor) -> Backend:
        return self.schedule.backend_of(self._alias.get(t, t))

    # ---- addressing ----
    def _tensor(self, t: Tensor | str) -> Tensor:
        if isinstance(t, str):
            if t not in self._names:
                raise KeyError(f"[plan] no tensor named {t!r}")
            return self._names[t]
        return self._alias.get(t, t)

    def bind(self, graph: Graph) -> Plan:
        """This plan, addressed through the tensors of `graph` (same key, new objects)."""
        twin = object.__new__(Plan)
        twin.__dict__.update(self.__dict__)
        mine = list(self.graph.tensors())
        theirs = list(graph.tensors())
        twin._alias = dict(zip(theirs, mine))
        twin._rev = dict(zip(mine, theirs))
        twin._names = {t.name: t for t in mine if t.name}
        twin.graph = graph
        return twin

    # ---- data ----
    def _io(self, t: Tensor, home: bool) -> tuple[Backend, Place, np.ndarray | None]:
        """(backend, place, host view or None) through which t is written (home) or read (where it
        is computed), memoized: decode steps set and read the same tensors on every run."""
        key = (t, home)
        hit = self._io_cache.get(key)
        if hit is None:
            be = self.schedule.home[storage_of(t)] if home else self.backend_of(t)
            place = self.place(t, be)
            hit = self._io_cache[key] = (be, place, be.host_view(place, t))
        return hit

    def set_input(self, t: Tensor | str, data: np.ndarray) -> None:
        """Write host data into an input tensor (numpy shape (ne3, ne2, ne1, ne0) or flat)."""
        t = self._tensor(t)
        be, place, view = self._io(t, True)
        if view is None:
            be.set_tensor(place, t, data)
            return
        data = np.asarray(data)
        if data.size != view.size:
            raise ValueError(f"[plan] {t.name or t.op.value}: expected {view.size} elements for ne={list(t.ne)}, "
                             f"got an array of shape {data.shape}")  # fmt: skip
        np.copyto(view, data.reshape(view.shape), casting="unsafe")  # as host_array/set_tensor convert

    def get(self, t: Tensor | str, out: np.ndarray | None = None) -> np.ndarray:
        """A host copy of t after a run, numpy shape (ne3, ne2, ne1, ne0); with `out` (an array of
        t's element count and dtype, any shape), copied into it instead (one copy, no temporary)."""
        t = self._tensor(t)
        be, place, view = self._io(t, False)
        be.synchronize()
        if out is None:
            return be.get_tensor(place, t) if view is None else view.copy()
        src = be.get_tensor(place, t) if view is None else view
        if out.size != src.size or out.dtype != src.dtype:
            raise ValueError(f"[plan] get {t.name or t.op.value}: out must hold {src.size} {src.dtype} elements "
                             f"(ne={list(t.ne)}), got shape {out.shape} {out.dtype}")  # fmt: skip
        np.copyto(out, src.reshape(out.shape))
        return out

    # ---- run ----
    def run(self, callback: EvalCallback | None = None) -> None:
        """Run every prepared call in order. With `callback`, it is called as
        callback(node, value) after each node (value: a host copy), like llama-eval-callback;
        such a run goes node by node (see `_per_node_steps`)."""
        if callback is None:
            for call in self._calls:
                call()
        else:
            for n, be, call in self._per_node_steps():
                call()
                if n is not None:
                    be.synchronize()
                    callback(self._rev.get(n, n), be.get_tensor(self.place(n, be), n))
        for be in self._used:
            be.synchronize()
