"""Fusions of the cpu lowering: node patterns of a split that one record computes with less
memory traffic than the records of its nodes.

State I/O of gated_delta_net. A recurrent layer reads each sequence's state out of the state
cache and stores the new states (the snapshots) back (models/graph_context.py, as llama.cpp):

    state = reshape(get_rows(cache, src_ids))              [S_v, S_v, H_v, n_seqs]
    out   = gated_delta_net(q, k, v, g, beta, state, P)    outputs, then P snapshots per seq
    set_rows(cache, view(out, the snapshot rows), dst_ids)

Run as written, a decode step moves each layer's state (1 MiB on a 0.8B model) three times
over (gather, compute, scatter) and a verify of k drafts its k+1 snapshots twice. Fused, the
gated_delta_net record reads the cache rows at src_ids and writes each snapshot straight into
its cache row (shaders/cpu/ssm.c, `gr_state_io`); the get_rows and set_rows records are
dropped. Only where nothing else can tell: the gathered state and the snapshot rows are read
by nothing but this pattern (not after the split either: `live_out`), and the cache by nothing
else in the split. The kernel checks the indices on every run and, where they alias (never in
a model's graphs), does what the dropped records did.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass

from graphir.ops import VIEW_OPS, Op
from graphir.tensor import Tensor
from graphir.types import DType


@dataclass(frozen=True)
class StateIO:
    """gated_delta_net `node` reads its state from `cache` at `src_ids` and stores its snapshots
    at `dst_ids`; `dropped`: the get_rows and set_rows records it replaces."""

    node: Tensor
    cache: Tensor
    src_ids: Tensor
    dst_ids: Tensor
    dropped: tuple[Tensor, Tensor]


def _rows_f32(t: Tensor) -> bool:
    """F32 rows of a 2-D tensor, each contiguous."""
    return t.type == DType.F32 and t.ne[2] == t.ne[3] == 1 and t.nb[0] == 4 and t.nb[1] >= 4 * t.ne[0]


def _index_vector(t: Tensor, n: int) -> bool:
    return t.type == DType.I32 and t.ne == (n, 1, 1, 1) and t.nb[0] == 4


def find_state_io(nodes: list[Tensor], live_out: Collection[Tensor] | None) -> list[StateIO]:
    """The gated_delta_net state I/O patterns of a split (its nodes, views included, in order)."""
    if live_out is None:
        return []
    users: dict[Tensor, list[Tensor]] = {}  # direct readers
    views: dict[Tensor, list[Tensor]] = {}  # the views of a storage owner, at any depth
    for n in nodes:
        for s in n.src:
            if s is not None:
                users.setdefault(s, []).append(n)
        if n.view_src is not None:
            views.setdefault(n.view_src, []).append(n)
    found = []
    for n in nodes:
        if n.op is Op.GATED_DELTA_NET:
            io = _match(n, users, views.get(n, []), live_out)
            if io is not None:
                found.append(io)
    return found


def _only_user(t: Tensor, users: dict[Tensor, list[Tensor]], live_out: Collection[Tensor]) -> Tensor | None:
    u = users.get(t, [])
    return u[0] if len(u) == 1 and t not in live_out and not t.is_output else None


def _end(t: Tensor) -> int:
    """One past the last byte of view t in its storage."""
    return t.view_offs + sum((n - 1) * b for n, b in zip(t.ne, t.nb)) + t.nb[0]


def _match(gdn: Tensor, users: dict[Tensor, list[Tensor]], views: list[Tensor], live_out: Collection[Tensor]
           ) -> StateIO | None:  # fmt: skip
    S_v, H_v, n_tokens, n_seqs = gdn.src[2].ne
    P = gdn.params["snapshots"]
    n_embd_s, first = S_v * S_v * H_v, n_tokens * n_seqs * gdn.nb[1]  # first: the snapshot rows' offset
    if P > n_tokens or gdn in live_out or gdn.is_output or gdn.nb[0] != 4 or gdn.nb[1] != 4 * gdn.ne[0]:
        return None  # slots past the ubatch are never written; the fallback scatter reads dst as rows
    # the state: a reshape of get_rows(cache, src_ids), both read only on the way to gdn
    state = gdn.src[5]
    if state.op is not Op.RESHAPE or _only_user(state, users, ()) is not gdn:
        return None
    gather = state.src[0]
    if gather.op is not Op.GET_ROWS or _only_user(gather, users, live_out) is not state:
        return None
    cache, src_ids = gather.src
    if not (cache.op is Op.NONE and _rows_f32(cache) and cache.ne[0] == n_embd_s and _index_vector(src_ids, n_seqs)):
        return None
    # the snapshot rows: one view of them, read only by set_rows(cache, view, dst_ids); gdn is
    # read only through views, and the others (at any depth) end before them (the outputs)
    snaps = [v for v in views if v.op is Op.VIEW and v.view_offs == first]
    if len(snaps) != 1 or any(u.op not in VIEW_OPS for u in users.get(gdn, [])):
        return None
    snaps = snaps[0]
    if any(v is not snaps and _end(v) > first for v in views):
        return None
    if snaps.ne != (n_embd_s, P * n_seqs, 1, 1) or snaps.nb[:2] != (4, 4 * n_embd_s):
        return None
    store = _only_user(snaps, users, ())
    if store is None or store.op is not Op.SET_ROWS or store.src[0] is not cache or store.src[1] is not snaps:
        return None
    if users.get(store):
        return None
    dst_ids = store.src[2]
    if not _index_vector(dst_ids, P * n_seqs):
        return None
    # the cache: read and written by nothing else in the split (its writes move to gdn's turn)
    if len(users[cache]) != 2 or users[cache][0] is not gather or users[cache][1] is not store:
        return None
    return StateIO(gdn, cache, src_ids, dst_ids, (gather, store))
