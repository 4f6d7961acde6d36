"""Recurrent state of the gated delta net layers, with snapshot planes for bounded rollback.

One cell per sequence: sequence s always lives in cell s (n_seq_max cells). Each cell has
P = 1 + n_rs_seq planes: plane 0 is the current state; after a `final` ubatch (one that can be
rolled back, models/batch.py) of n > 1 tokens of a sequence, plane j holds the state j tokens
before its end, for j <= min(n - 1, n_rs_seq). Other ubatches write no snapshots.

Row layout of the state tensors (per delta-net layer `il`, leaves with writable host data):
    r_l[il]: F32 [n_embd_r, n_rows], n_embd_r = (d_conv - 1) * conv_channels, each row ordered
             as ne [d_conv - 1, conv_channels] (time innermost, the `ssm_conv` sx layout);
    s_l[il]: F32 [n_embd_s, n_rows], n_embd_s = S_v * S_v * H_v, each row the gated_delta_net
             state [S_v, S_v, H_v] of one sequence;
    row(cell, plane) = cell * P + plane, n_rows = n_seq_max * P.
With n_rs_seq = 0 there is one plane (P = 1): no extra rows, no snapshot writes.

A fresh sequence (empty: never decoded, or removed) must start from the zero state: its first
ubatch reads plane 0 as usual and hands out that row in `RSInputs.zero_rows`, which the
Context clears (every r and s tensor) before the graph runs; no row is reserved for it.

Rollback: seq_rm of the last r tokens (0 < p0 <= pos_max < p1, r = pos_max - p0 + 1) is allowed
when 1 <= r <= valid (the snapshot planes the last ubatch wrote) and no rollback is pending;
the next ubatch then reads plane r. Anything else that cuts into a sequence is refused.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from graphir.types import DType

from ..argcheck import INT32_MAX
from .base import MemoryComponent, MemorySizes, RSInputs, check_continuity, norm_range, state_leaf

if TYPE_CHECKING:
    from ..batch import UBatch
    from ..hparams import Qwen35HParams


class RecurrentMemory(MemoryComponent):
    """Per-sequence bookkeeping: pos_min/pos_max (-1: empty, the state must be zeroed), `valid`
    snapshot planes, `pending` rollback plane (0: none), and pending `seq_cp` row copies.

    Args:
        layers: the delta-net layers (il) this memory serves.
        n_embd_r: conv state values per row ((d_conv - 1) * conv_channels).
        n_embd_s: ssm state values per row (S_v * S_v * H_v).
        n_seq_max: sequences (= cells).
        n_rs_seq: snapshot planes per cell for rollback (0: none).
    """

    _field = "rs"

    def __init__(self, layers: Sequence[int], n_embd_r: int, n_embd_s: int, n_seq_max: int = 1,
                 n_rs_seq: int = 0) -> None:  # fmt: skip
        super().__init__(n_seq_max)
        if n_rs_seq < 0:
            raise ValueError(f"[recurrent] n_rs_seq must be >= 0, got {n_rs_seq}")
        self.layers = tuple(layers)
        self.n_rs_seq = n_rs_seq
        self.n_planes = 1 + n_rs_seq
        n_rows = n_seq_max * self.n_planes
        self.n_embd_r, self.n_embd_s = n_embd_r, n_embd_s
        self.r_l = {il: state_leaf(DType.F32, (n_embd_r, n_rows), f"cache_r_l{il}") for il in self.layers}
        self.s_l = {il: state_leaf(DType.F32, (n_embd_s, n_rows), f"cache_s_l{il}") for il in self.layers}
        self._clear()

    @classmethod
    def for_model(cls, hp: Qwen35HParams, layers: Sequence[int], n_seq_max: int = 1,
                  n_rs_seq: int = 0) -> RecurrentMemory:  # fmt: skip
        n_embd_r = (hp.d_conv - 1) * hp.conv_channels
        return cls(layers, n_embd_r, hp.S_v * hp.S_v * hp.H_v, n_seq_max, n_rs_seq)

    def row(self, seq: int, plane: int = 0) -> int:
        """The state row of a sequence's plane."""
        return seq * self.n_planes + plane

    def needs_zero(self, seq: int) -> bool:
        """Whether the sequence's next ubatch starts from the zero state (its row is zeroed first)."""
        return bool(self.pos_max[seq] < 0)

    # ---- plan / commit --------------------------------------------------------------------
    def _plan(self, ubatches: Sequence[UBatch]) -> list[None]:
        check_continuity("recurrent", ubatches, self._seq_pos_max)
        return [None] * len(ubatches)

    def _snapshots(self, n_seq_tokens: int, final: bool = True) -> int:
        """Snapshot planes a ubatch writes: none unless it can be rolled back (final)."""
        return min(n_seq_tokens - 1, self.n_rs_seq) if final else 0

    def _commit(self, ubatch: UBatch, _plan: None) -> RSInputs:
        seqs = np.asarray(ubatch.seqs, np.int64)
        fresh = self.pos_max[seqs] < 0
        src = seqs * self.n_planes + self.pending[seqs]  # pending is 0 for a fresh sequence
        n_snap = self._snapshots(ubatch.n_seq_tokens, ubatch.final)
        dst = seqs[None, :] * self.n_planes + np.arange(1 + n_snap)[:, None]
        pos, n = ubatch.pos.tolist(), ubatch.n_seq_tokens
        for g, s in enumerate(ubatch.seqs):
            if fresh[g]:
                self.pos_min[s] = pos[g * n]
            self.pos_max[s] = pos[g * n + n - 1]
            self.valid[s] = n_snap
            self.pending[s] = 0
        copies, self.copies = tuple(self.copies), []
        zero_rows = tuple(int(r) for r in src[fresh]) if fresh.any() else ()
        return RSInputs(src.astype(np.int32), dst.astype(np.int32), n_snap, fresh, copies, zero_rows)

    def _reserve(self, ubatch: UBatch) -> RSInputs:
        n_snap = self._snapshots(ubatch.n_seq_tokens)
        seqs = np.arange(ubatch.n_seqs) % self.n_seq_max
        dst = (seqs[None, :] * self.n_planes + np.arange(1 + n_snap)[:, None]).astype(np.int32)
        src = dst[0].copy()
        return RSInputs(src, dst, n_snap, np.ones(ubatch.n_seqs, bool))

    # ---- sequences ------------------------------------------------------------------------
    def _rm_action(self, seq: int, p0: int, p1: int) -> str | int | None:
        """What seq_rm does to one sequence: None (untouched), "reset", a rollback of r tokens
        (int), or "refuse"."""
        lo, hi = norm_range(p0, p1)
        pmin, pmax = int(self.pos_min[seq]), int(self.pos_max[seq])
        if pmax < 0 or hi <= pmin or lo > pmax or lo >= hi:
            return None
        if hi <= pmax:
            return "refuse"  # the state cannot forget tokens before its last one
        if lo <= pmin:
            return "reset"
        r = int(pmax - lo + 1)
        if self.pending[seq] or not 1 <= r <= self.valid[seq]:
            return "refuse"
        return r

    def _seqs(self, seq: int) -> range:
        return range(self.n_seq_max) if seq < 0 else range(seq, seq + 1)

    def _can_seq_rm(self, seq: int, p0: int, p1: int) -> bool:
        return all(self._rm_action(s, p0, p1) != "refuse" for s in self._seqs(seq))

    def _seq_rm(self, seq: int, p0: int, p1: int) -> None:
        for s in self._seqs(seq):
            act = self._rm_action(s, p0, p1)
            if act == "reset":
                self._reset(s)
            elif isinstance(act, int):
                self.pending[s] = act
                self.pos_max[s] -= act

    def _reset(self, s: int) -> None:
        self.pos_min[s] = self.pos_max[s] = -1
        self.valid[s] = self.pending[s] = 0

    def _check_seq_cp(self, src: int, dst: int, p0: int, p1: int) -> None:
        lo, hi = norm_range(p0, p1)
        if self.pos_max[dst] >= 0:
            raise ValueError(f"[recurrent] seq_cp({src}, {dst}, {p0}, {p1}): seq {dst} is not empty (positions "
                             f"{self.pos_min[dst]}..{self.pos_max[dst]}); a recurrent state cannot merge two "
                             f"sequences: seq_rm({dst}) first")  # fmt: skip
        if self.pos_max[src] >= 0 and not (lo <= self.pos_min[src] and self.pos_max[src] < hi):
            raise ValueError(f"[recurrent] seq_cp({src}, {dst}, {p0}, {p1}): a recurrent state is copied whole; "
                             f"the range must cover seq {src}'s positions {self.pos_min[src]}..{self.pos_max[src]}")  # fmt: skip

    def _seq_cp(self, src: int, dst: int, p0: int, p1: int) -> None:
        if self.pos_max[src] < 0:
            return  # nothing to copy (dst is empty: checked)
        self.copies.append((self.row(src, int(self.pending[src])), self.row(dst, 0)))
        self.pos_min[dst], self.pos_max[dst] = self.pos_min[src], self.pos_max[src]
        self.valid[dst] = self.pending[dst] = 0

    def _seq_keep(self, seq: int) -> None:
        for s in range(self.n_seq_max):
            if s != seq:
                self._reset(s)

    def _check_seq_add(self, seq: int, p0: int, p1: int, delta: int) -> None:
        pmin, pmax = int(self.pos_min[seq]), int(self.pos_max[seq])
        lo, hi = norm_range(p0, p1)
        if pmax < 0 or hi <= pmin or lo > pmax or lo >= hi:
            return  # no position in range: nothing moves
        why = None
        if lo > pmin or hi <= pmax:
            why = f"the range covers only part of positions {pmin}..{pmax}; a recurrent state moves them all or none"
        elif pmin + delta < 0 <= pmax + delta:
            why = f"positions {pmin}..{pmax} would be cut at 0; a recurrent state cannot forget its first tokens"
        elif pmax + delta > INT32_MAX:
            why = f"positions would pass {INT32_MAX}"
        if why:
            raise ValueError(f"[recurrent] seq_add({seq}, {p0}, {p1}, {delta}): {why}")

    def _seq_add(self, seq: int, p0: int, p1: int, delta: int) -> None:
        """Positions only (the state does not depend on them): all of them move (checked)."""
        lo, hi = norm_range(p0, p1)
        pmin, pmax = int(self.pos_min[seq]), int(self.pos_max[seq])
        if pmax < 0 or hi <= pmin or lo > pmax or lo >= hi:
            return
        if pmax + delta < 0:
            self._reset(seq)  # as the KV cache drops cells shifted below 0
            return
        self.pos_min[seq], self.pos_max[seq] = pmin + delta, pmax + delta

    @property
    def pending_copies(self) -> tuple[tuple[int, int], ...]:
        """(src_row, dst_row) copies recorded by seq_cp, not yet handed out by apply()."""
        return tuple(self.copies)

    def _seq_pos_min(self, seq: int) -> int:
        return int(self.pos_min[seq])

    def _seq_pos_max(self, seq: int) -> int:
        return int(self.pos_max[seq])

    def _clear(self) -> None:
        n = self.n_seq_max
        self.pos_min = np.full(n, -1, np.int64)
        self.pos_max = np.full(n, -1, np.int64)
        self.valid = np.zeros(n, np.int64)
        self.pending = np.zeros(n, np.int64)
        self.copies: list[tuple[int, int]] = []

    def _sizes(self) -> MemorySizes:
        total = sum(t.nbytes for t in (*self.r_l.values(), *self.s_l.values()))
        extra_rows = self.n_seq_max * self.n_rs_seq
        per_row = 4 * (self.n_embd_r + self.n_embd_s) * len(self.layers)
        return MemorySizes(rs_bytes=total, rs_snapshot_bytes=extra_rows * per_row)

    def _bookkeeping(self) -> dict[str, Any]:
        return {"rs.pos_min": self.pos_min.copy(), "rs.pos_max": self.pos_max.copy(),
                "rs.valid": self.valid.copy(), "rs.pending": self.pending.copy(),
                "rs.copies": list(self.copies)}  # fmt: skip
