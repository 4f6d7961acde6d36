"""Allocate: one compute buffer per backend, offsets chosen as ggml-alloc does.

  - inputs first, at non-overlapping offsets, live for the whole run;
  - outputs (and anything an output views) are never freed or overwritten;
  - a node reuses its parent's memory in place when the op may work in place, the parent
    has one consumer and no live views, and the layouts match;
  - everything else is freed after its last consumer and reused (best fit).
Copies of storage that lives on another backend get a slot for the length of their split.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from graphir import debug
from graphir.graph import Graph
from graphir.ops import INPLACE_OPS, Op
from graphir.tensor import Tensor, storage_of

from .schedule import Schedule, is_static


def _align(n: int, a: int) -> int:
    return (n + a - 1) // a * a


class BestFit:
    """Offsets in one growing buffer: best-fit over merged free blocks (ggml_dyn_tallocr)."""

    def __init__(self, alignment: int) -> None:
        self.alignment = alignment
        self.free_blocks: list[list[int]] = []  # [offset, size], sorted by offset
        self.end = 0  # high-water mark = buffer size needed

    def alloc(self, size: int) -> int:
        size = _align(max(size, 1), self.alignment)
        best = None
        for i, (_, bsize) in enumerate(self.free_blocks):
            if bsize >= size and (best is None or bsize < self.free_blocks[best][1]):
                best = i
        if best is None:
            # grow from the end, swallowing a free block that touches the end
            if self.free_blocks and sum(self.free_blocks[-1]) == self.end:
                off = self.free_blocks.pop()[0]
            else:
                off = self.end
            self.end = max(self.end, off + size)
            return off
        off, bsize = self.free_blocks[best]
        if bsize == size:
            self.free_blocks.pop(best)
        else:
            self.free_blocks[best] = [off + size, bsize - size]
        return off

    def free(self, offset: int, size: int) -> None:
        size = _align(max(size, 1), self.alignment)
        blocks = self.free_blocks
        i = 0
        while i < len(blocks) and blocks[i][0] < offset:
            i += 1
        blocks.insert(i, [offset, size])
        if i + 1 < len(blocks) and offset + size == blocks[i + 1][0]:  # merge with next
            blocks[i][1] += blocks.pop(i + 1)[1]
        if i > 0 and sum(blocks[i - 1]) == offset:  # merge with previous
            blocks[i - 1][1] += blocks.pop(i)[1]


@dataclass
class Allocation:
    offsets: dict[Tensor, int]  # storage owners in a compute buffer -> offset (on their home)
    copy_offsets: dict[tuple[str, Tensor], int]  # (backend name, owner) -> offset of its copy
    sizes: dict[str, int]  # backend name -> compute-buffer bytes
    naive: dict[str, int]  # backend name -> bytes with no reuse at all
    inplace: int = 0  # nodes that took their parent's memory
    refused: list[str] = field(default_factory=list)  # why in-place reuse was refused
    reuse: bool = True  # False: every tensor has its own bytes (each readable after a run)


def allocate(graph: Graph, sched: Schedule, reuse: bool = True) -> Allocation:
    """Offsets for every tensor that needs compute memory. reuse=False gives every tensor
    its own bytes (the naive layout, for checking that reuse changes no result)."""
    allocators = {b.name: BestFit(b.alignment) for b in sched.backends}
    res = Allocation({}, {}, {}, {b.name: 0 for b in sched.backends}, reuse=reuse)

    def needs_memory(t: Tensor) -> bool:
        return t.view_src is None and not is_static(t)

    def new(t: Tensor, backend: str) -> int:
        res.naive[backend] += _align(max(t.nbytes, 1), allocators[backend].alignment)
        return allocators[backend].alloc(t.nbytes)

    # reference counts (ggml-alloc's n_children / n_views)
    children: Counter[Tensor] = Counter()
    views: Counter[Tensor] = Counter()
    for n in graph.nodes:
        for s in n.src:
            if s is not None:
                children[s] += 1
        if n.view_src is not None:
            views[n.view_src] += 1
    pinned = {storage_of(t) for t in graph.tensors() if t.is_output or t.is_input}
    moved: set[Tensor] = set()  # parents whose memory a node took in place

    def maybe_free(o: Tensor) -> None:
        if not reuse or children[o] or views[o] or o in pinned or o in moved or o not in res.offsets:
            return
        allocators[sched.home[o].name].free(res.offsets[o], o.nbytes)

    def release(p: Tensor) -> None:
        children[p] -= 1
        if children[p] == 0 and views[p] == 0 and p.view_src is not None:
            views[p.view_src] -= 1
            maybe_free(p.view_src)
        else:
            maybe_free(p)

    for t in graph.tensors():  # inputs first
        if t.is_input and needs_memory(t):
            res.offsets[t] = new(t, sched.home[t].name)

    for split in sched.splits:
        be = split.backend.name
        for o in split.inputs:
            res.copy_offsets[(be, o)] = new(o, be)
        for n in split.nodes:
            # a data-less leaf that is not an input (a scratch destination) gets its bytes at
            # its first use, as in ggml-alloc; placed later, it could share a block with a
            # tensor that is live while the leaf holds data
            for s in (*n.src, n.view_src):
                o = None if s is None else storage_of(s)
                if o is not None and o.op is Op.NONE and needs_memory(o) and o not in res.offsets:
                    res.offsets[o] = new(o, sched.home[o].name)
            if needs_memory(n) and n not in res.offsets:
                parent = _inplace_parent(n, sched, res, children, views, pinned, moved) if reuse else None
                if parent is not None:
                    res.offsets[n] = res.offsets[parent]
                    moved.add(parent)
                    res.inplace += 1
                    res.naive[be] += _align(max(n.nbytes, 1), allocators[be].alignment)  # naive counts every tensor
                else:
                    res.offsets[n] = new(n, sched.home[n].name)
            for s in n.src:
                if s is not None:
                    release(s)
            if needs_memory(n) and children[n] == 0 and views[n] == 0:
                maybe_free(n)  # a node nobody reads
        if reuse:
            for o in split.inputs:
                allocators[be].free(res.copy_offsets[(be, o)], o.nbytes)

    # (leafs that no node reads still get bytes)
    for t in graph.leafs:
        if needs_memory(t) and t not in res.offsets:
            res.offsets[t] = new(t, sched.home[t].name)
    res.sizes = {name: a.end for name, a in allocators.items()}
    if debug.enabled(debug.ALLOC):
        for name in res.sizes:
            debug.log(debug.ALLOC, f"{name}: compute buffer {res.sizes[name]} B (naive {res.naive[name]} B), "
                                   f"{res.inplace} in place")  # fmt: skip
        for why in res.refused:
            debug.log(debug.ALLOC, why)
    return res


def _inplace_parent(n, sched, res, children, views, pinned, moved) -> Tensor | None:
    if n.op not in INPLACE_OPS or not n.src or n.src[0] is None:
        return None
    p = n.src[0]
    why = None
    if p.view_src is not None or p not in res.offsets:
        why = "parent is a view or not in the compute buffer"
    elif sched.home[p] is not sched.home[n]:
        why = "parent lives on another backend"
    elif p in pinned:
        why = "parent is an input or output"
    elif p in moved:
        why = "parent's memory was already taken"
    elif children[p] != 1:
        why = f"parent has {children[p]} consumers"
    elif views[p]:
        why = f"parent has {views[p]} live views"
    elif not n.same_layout(p):
        why = "layouts differ"
    if why is None:
        return p
    if debug.enabled(debug.ALLOC):
        res.refused.append(f"no in-place for {n.op.value} {n.name!r} over {p.name!r}: {why}")
    return None


__all__ = ["Allocation", "BestFit", "allocate", "Op"]
