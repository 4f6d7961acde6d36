"""The KV cache of the attention layers: n_ctx cells, each with a position and a set of sequences.

Storage: per attention layer `il` two leaf tensors with writable host data (persistent state,
not weights): `k_l[il]` and `v_l[il]`, ne [n_embd_k_gqa, n_ctx] and [n_embd_v_gqa, n_ctx]
(F16 by default, or F32): column c holds cell c's K (V) row, heads contiguous. A ubatch's
graph writes its rows with `set_rows(k_l[il], k_cur, kv.slots)` and reads the first `kv.n_kv`
cells through a view, masked by `kv.mask` (see `KVInputs`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from graphir.types import DType, parse_type

from ..argcheck import INT32_MAX
from .base import (
    STATE_TYPES,
    KVInputs,
    MemoryComponent,
    MemoryFullError,
    MemorySizes,
    check_continuity,
    norm_range,
    state_leaf,
)

if TYPE_CHECKING:
    from ..batch import UBatch
    from ..hparams import Qwen35HParams


def _round_up(n: int, to: int) -> int:
    return -(-n // to) * to


class KVCache(MemoryComponent):
    """Cells with a position (-1: empty) and a set of sequences; slot finding and causal masks.

    Two derived values are kept instead of recomputed over all cells on every decode: the bound
    (one past the last used cell) and each sequence's largest position. A commit only fills
    free cells, so it raises them in place; every other change of the cells (seq_rm/cp/keep/add,
    clear) drops them, and they are computed again when next asked for.

    Args:
        layers: the attention layers (il) this cache serves.
        n_embd_k_gqa, n_embd_v_gqa: K and V row widths (head_dim * n_head_kv).
        n_ctx: cells.
        n_seq_max: sequence ids are 0..n_seq_max-1.
        type_k, type_v: F16 (default) or F32.
        kv_pad: n_kv is this doubled until it covers the used-cell bound (at most n_ctx).
        mask_row_pad: mask rows are n_tokens rounded up to this (padding rows are -inf).
    """

    _field = "kv"

    def __init__(self, layers: Sequence[int], n_embd_k_gqa: int, n_embd_v_gqa: int, n_ctx: int,
                 n_seq_max: int = 1, type_k: Any = DType.F16, type_v: Any = DType.F16, kv_pad: int = 256,
                 mask_row_pad: int = 1) -> None:  # fmt: skip
        super().__init__(n_seq_max)
        if n_ctx < 1 or kv_pad < 1 or mask_row_pad < 1:
            raise ValueError(f"[kv_cache] need n_ctx, kv_pad, mask_row_pad >= 1, got {n_ctx}, {kv_pad}, {mask_row_pad}")
        type_k, type_v = parse_type(type_k), parse_type(type_v)
        for what, t in (("type_k", type_k), ("type_v", type_v)):
            if t not in STATE_TYPES:
                raise ValueError(f"[kv_cache] {what} must be F16 or F32, got {t.name}")
        self.layers = tuple(layers)
        self.n_ctx, self.kv_pad, self.mask_row_pad = n_ctx, kv_pad, mask_row_pad
        self.k_l = {il: state_leaf(type_k, (n_embd_k_gqa, n_ctx), f"cache_k_l{il}") for il in self.layers}
        self.v_l = {il: state_leaf(type_v, (n_embd_v_gqa, n_ctx), f"cache_v_l{il}") for il in self.layers}
        self._clear()

    @classmethod
    def for_model(cls, hp: Qwen35HParams, layers: Sequence[int], n_ctx: int, n_seq_max: int = 1,
                  type_k: Any = DType.F16, type_v: Any = DType.F16, kv_pad: int = 256) -> KVCache:  # fmt: skip
        return cls(layers, hp.n_embd_k_gqa, hp.n_embd_v_gqa, n_ctx, n_seq_max, type_k, type_v, kv_pad)

    # ---- cells ----------------------------------------------------------------------------
    @property
    def n_used(self) -> int:
        return int((self.pos >= 0).sum())

    def _free_empty(self) -> None:
        empty = ~self.seqs.any(axis=1)
        self.pos[empty] = -1
        self.shift[empty] = 0
        self._changed()

    def _changed(self) -> None:
        """Cells changed other than by a commit: the derived values are computed again when asked."""
        self._bound: int | None = None
        self._pos_max: dict[int, int] = {}

    def _used_bound(self) -> int:
        """One past the last used cell (0 when none is)."""
        if self._bound is None:
            used = self.pos >= 0
            self._bound = used.shape[0] - int(used[::-1].argmax()) if used.any() else 0
        return self._bound

    @staticmethod
    def _find_slot(free: np.ndarray, n: int) -> np.ndarray | None:
        """n free cells: the first contiguous run if there is one, else the lowest free cells."""
        i = int(free.argmax())  # the first free cell: when a run of n starts there, it is the first run
        if n == 1:
            return np.array([i]) if free[i] else None
        if i + n <= free.shape[0] and free[i : i + n].all():
            return np.arange(i, i + n)
        c = np.concatenate([[0], np.cumsum(free)])
        runs = np.flatnonzero(c[n:] - c[:-n] == n) if n <= free.shape[0] else []
        if len(runs):
            return np.arange(runs[0], runs[0] + n)
        idx = np.flatnonzero(free)
        return idx[:n] if idx.shape[0] >= n else None

    def n_kv_for(self, bound: int) -> int:
        """The attention span for a used-cell bound: kv_pad cells doubled until it covers the
        bound (at most n_ctx). Each span is a ubatch shape of its own (a graph build and compile,
        ~10 ms on the tiny model), so spans that double keep their number logarithmic in the
        context instead of one per kv_pad cells; the cells past the bound are masked, and the
        attention kernels skip whole masked blocks."""
        n = self.kv_pad
        while n < bound:
            n *= 2
        return min(self.n_ctx, n)

    # ---- plan / commit --------------------------------------------------------------------
    def _plan(self, ubatches: Sequence[UBatch]) -> list[np.ndarray]:
        check_continuity("kv_cache", ubatches, self._seq_pos_max)
        free = self.pos < 0  # a fresh array: marked as the ubatches take their slots
        plan = []
        for i, ub in enumerate(ubatches):
            slots = self._find_slot(free, ub.n_tokens)
            if slots is None:
                n_free, need = int((self.pos < 0).sum()), sum(u.n_tokens for u in ubatches)
                raise MemoryFullError(f"[kv_cache] context full: need {need} cells, {n_free} free "
                                      f"(n_ctx={self.n_ctx}; ubatch {i} of {ub.n_tokens} tokens does not fit)")  # fmt: skip
            free[slots] = False
            plan.append(slots.astype(np.int32))
        return plan

    def _commit(self, ubatch: UBatch, slots: np.ndarray) -> KVInputs:
        known = {s: self._pos_max[s] for s in ubatch.seqs if s in self._pos_max}
        bound = max(self._used_bound(), int(slots.max()) + 1) if slots.size else self._used_bound()
        self.pos[slots] = ubatch.pos
        self.seqs[slots] = False
        self.seqs[slots, ubatch.seq_id] = True
        # the slots were free: the bound and the sequences' largest positions can only grow
        self._bound = bound
        for g, s in enumerate(ubatch.seqs):
            if s in known:
                self._pos_max[s] = max(known[s], int(ubatch.seq_pos(g)[-1]))  # consecutive: the last is the largest
        k_shift = None
        if self.has_shift:  # (without one, shift is all zero)
            self.shift[slots] = 0
            k_shift = self.shift.astype(np.int32)
            self.shift[:] = 0
            self.has_shift = False
        n_kv = self.n_kv_for(bound)
        return KVInputs(n_kv, slots, self.mask(ubatch, n_kv), k_shift)

    def mask(self, ubatch: UBatch, n_kv: int) -> np.ndarray:
        """F32 numpy (n_tokens_pad, n_kv): 0 where row t may see cell c (c holds t's sequence at a
        position <= t's), -inf elsewhere; rows past n_tokens are padding (-inf)."""
        n = ubatch.n_tokens
        if ubatch.n_seqs == 1:  # one sequence: one column of seqs
            see = self.seqs[:n_kv, ubatch.seqs[0]][None, :] & (self.pos[None, :n_kv] <= ubatch.pos[:, None])
        else:
            see = self.seqs[:n_kv][:, ubatch.seq_id].T & (self.pos[None, :n_kv] <= ubatch.pos[:, None])
        out = np.where(see, np.float32(0.0), np.float32(-np.inf))
        if out.shape[0] != _round_up(n, self.mask_row_pad):  # padding rows see nothing
            out = np.concatenate([out, np.full((_round_up(n, self.mask_row_pad) - n, n_kv), -np.inf, np.float32)])
        return out

    def _reserve(self, ubatch: UBatch) -> KVInputs:
        n = ubatch.n_tokens
        slots = (np.arange(n) % self.n_ctx).astype(np.int32)
        return KVInputs(self.n_ctx, slots, np.zeros((_round_up(n, self.mask_row_pad), self.n_ctx), np.float32))

    # ---- sequences ------------------------------------------------------------------------
    def _in_range(self, p0: int, p1: int) -> np.ndarray:
        lo, hi = norm_range(p0, p1)
        return (self.pos >= lo) & (self.pos < hi)

    def _can_seq_rm(self, seq: int, p0: int, p1: int) -> bool:
        return True

    def _seq_rm(self, seq: int, p0: int, p1: int) -> None:
        sel = self._in_range(p0, p1)
        if seq < 0:
            self.seqs[sel] = False
        else:
            self.seqs[sel, seq] = False
        self._free_empty()

    def _check_seq_cp(self, src: int, dst: int, p0: int, p1: int) -> None:
        return None

    def _seq_cp(self, src: int, dst: int, p0: int, p1: int) -> None:
        self.seqs[self.seqs[:, src] & self._in_range(p0, p1), dst] = True
        self._changed()

    def _seq_keep(self, seq: int) -> None:
        keep = self.seqs[:, seq].copy()
        self.seqs[:] = False
        self.seqs[keep, seq] = True
        self._free_empty()

    def _check_seq_add(self, seq: int, p0: int, p1: int, delta: int) -> None:
        sel = self.seqs[:, seq] & self._in_range(p0, p1)
        shared = np.flatnonzero(sel & (self.seqs.sum(axis=1) > 1))
        if shared.size:
            c = int(shared[0])
            others = [int(s) for s in np.flatnonzero(self.seqs[c]) if s != seq]
            raise ValueError(f"[kv_cache] seq_add({seq}, {p0}, {p1}, {delta}): the cell of pos {self.pos[c]} is shared "
                             f"with seq {others} (seq_cp): moving it would move their tokens too")  # fmt: skip
        if sel.any() and int(self.pos[sel].max()) + delta > INT32_MAX:
            raise ValueError(f"[kv_cache] seq_add({seq}, {p0}, {p1}, {delta}): positions would pass {INT32_MAX}")

    def _seq_add(self, seq: int, p0: int, p1: int, delta: int) -> None:
        sel = self.seqs[:, seq] & self._in_range(p0, p1)
        if not sel.any():
            return
        self.pos[sel] += delta
        self.shift[sel] += delta
        self.has_shift = True
        # as llama.cpp: a cell shifted below position 0 is dropped
        self.seqs[sel & (self.pos < 0)] = False
        self._free_empty()

    @property
    def pending_shift(self) -> np.ndarray | None:
        """Per-cell position deltas recorded by seq_add, not yet handed out by apply()."""
        return self.shift.copy() if self.has_shift else None

    def _seq_pos_min(self, seq: int) -> int:
        p = self.pos[self.seqs[:, seq]]
        return int(p.min()) if p.size else -1

    def _seq_pos_max(self, seq: int) -> int:
        got = self._pos_max.get(seq)
        if got is None:
            p = self.pos[self.seqs[:, seq]]
            got = self._pos_max[seq] = int(p.max()) if p.size else -1
        return got

    def _clear(self) -> None:
        self.pos = np.full(self.n_ctx, -1, np.int64)
        self.seqs = np.zeros((self.n_ctx, self.n_seq_max), bool)
        self.shift = np.zeros(self.n_ctx, np.int64)
        self.has_shift = False
        self._changed()

    def _sizes(self) -> MemorySizes:
        return MemorySizes(kv_bytes=sum(t.nbytes for t in (*self.k_l.values(), *self.v_l.values())))

    def _bookkeeping(self) -> dict[str, Any]:
        return {"kv.pos": self.pos.copy(), "kv.seqs": self.seqs.copy(), "kv.shift": self.shift.copy(),
                "kv.has_shift": self.has_shift}  # fmt: skip
