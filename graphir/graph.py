"""The compute graph: nodes (tensors produced by ops, views included) in dependency order,
and leafs (inputs, weights, constants)."""

from __future__ import annotations

from collections.abc import Iterable

from .ops import Op
from .tensor import Tensor


class Graph:
    """Nodes in a valid execution order plus the leafs they read.

    `build_forward_expand(graph, t)` appends t and every ancestor not yet present.
    """

    def __init__(self) -> None:
        self.nodes: list[Tensor] = []
        self.leafs: list[Tensor] = []
        self._seen: set[int] = set()

    def __len__(self) -> int:
        return len(self.nodes)

    def __contains__(self, t: Tensor) -> bool:
        return id(t) in self._seen

    def tensors(self) -> Iterable[Tensor]:
        yield from self.leafs
        yield from self.nodes

    def find(self, name: str) -> Tensor:
        """The tensor called `name` (leafs and nodes)."""
        for t in self.tensors():
            if t.name == name:
                return t
        raise KeyError(f"no tensor named {name!r} in the graph")

    @property
    def outputs(self) -> list[Tensor]:
        return [t for t in self.nodes if t.is_output]

    @property
    def inputs(self) -> list[Tensor]:
        return [t for t in self.tensors() if t.is_input]


def build_forward_expand(graph: Graph, t: Tensor) -> Graph:
    """Add t and its ancestors to graph in dependency order (iterative post-order DFS: the sources
    in order, then the view source, each subtree whole before the next)."""
    seen = graph._seen
    stack: list[tuple[Tensor, bool]] = [(t, False)]
    while stack:
        cur, done = stack.pop()
        if id(cur) in seen:
            continue
        if done:  # every dependency is in the graph now
            seen.add(id(cur))
            (graph.leafs if cur.op is Op.NONE else graph.nodes).append(cur)
            continue
        stack.append((cur, True))
        if cur.view_src is not None and id(cur.view_src) not in seen:
            stack.append((cur.view_src, False))
        for s in reversed(cur.src):  # popped in order: src[0] first
            if s is not None and id(s) not in seen:
                stack.append((s, False))
    return graph


def build_graph(*outputs: Tensor) -> Graph:
    """A graph computing `outputs` (each flagged OUTPUT)."""
    g = Graph()
    for t in outputs:
        t.set_output()
        build_forward_expand(g, t)
    return g
