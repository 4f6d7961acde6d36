"""The memory's pending state updates as a graph (llama.cpp's `init_update`): `seq_cp` row copies,
the zeroing of fresh recurrent rows and the K re-rotation after `seq_add`.

They run before the next ubatch's graph, through a backend like any graph, so they land wherever
the state lives. The values are baked in as constants: these are rare events, a plan per event
is fine.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

import graphir as gr

from ..graph_context import GraphContext, StateTensors, rope

if TYPE_CHECKING:
    from ..hparams import Qwen35HParams

cb = GraphContext.cb


def build_state_update(hp: Qwen35HParams, state: StateTensors, *, copies: Sequence[tuple[int, int]] = (),
                       zero_rows: Sequence[int] = (), k_shift: np.ndarray | None = None) -> gr.Graph | None:  # fmt: skip
    """The memory's pending updates as one graph over the state leafs; None when there is nothing to do.

    - copies (src_row, dst_row), in order, then `zero_rows` set to zero, on every r and s state
      (`RSInputs.copies` / `RSInputs.zero_rows`);
    - k_shift (n_ctx,) per-cell position deltas (`KVInputs.k_shift`): the K rows of those cells
      are re-rotated by their delta (rotations compose, so K then sits at its new position).
    """
    if not copies and not zero_rows and (k_shift is None or not np.any(k_shift)):
        return None  # the usual case: nothing pending
    gf = gr.Graph()
    const = _Constants()
    for kind, states in (("r", state.r_l), ("s", state.s_l)):
        for il, leaf in states.items():
            cur = _copy_and_zero_rows(leaf, kind, il, copies, zero_rows, const)
            if cur is not leaf:
                gr.build_forward_expand(gf, cur)
    if k_shift is not None and np.any(k_shift):
        _k_shift(gf, hp, state, np.asarray(k_shift), const)
    return gf if gf.nodes else None


class _Constants:
    """Constant leafs, shared by the layers of one update graph."""

    def __init__(self) -> None:
        self.leafs: dict[str, gr.Tensor] = {}

    def get(self, name: str, values: np.ndarray) -> gr.Tensor:
        if name not in self.leafs:
            self.leafs[name] = gr.from_numpy(values, name)
        return self.leafs[name]

    def i32(self, name: str, values: Sequence[int] | np.ndarray) -> gr.Tensor:
        return self.get(name, np.asarray(values, np.int32))


def _copy_and_zero_rows(cur: gr.Tensor, kind: str, il: int, copies: Sequence[tuple[int, int]],
                        zero_rows: Sequence[int], const: _Constants) -> gr.Tensor:  # fmt: skip
    """Row copies then zeroed rows on one state leaf [n_embd_r or n_embd_s, n_rows]; returns the last write."""
    for i, (src, dst) in enumerate(copies):
        # reading the stored result orders each copy after the previous write
        rows = cb(gr.get_rows(cur, const.i32(f"copy_src_{i}", [src])), f"{kind}_copy_rows_{i}", il)
        cur = cb(gr.set_rows(cur, rows, const.i32(f"copy_dst_{i}", [dst])), f"{kind}_copy_{i}", il)
    if zero_rows:
        zeros = const.get(f"zeros_{kind}", np.zeros((len(zero_rows), cur.ne[0]), np.float32))
        cur = cb(gr.set_rows(cur, zeros, const.i32("zero_rows", zero_rows)), f"{kind}_zero", il)
    return cur


def _k_shift(gf: gr.Graph, hp: Qwen35HParams, state: StateTensors, k_shift: np.ndarray, const: _Constants) -> None:
    """Re-rotate the K rows of the shifted cells of every attention layer by their deltas."""
    cells = np.flatnonzero(k_shift)
    cells_t, pos_t = const.i32("shift_cells", cells), const.i32("shift_pos", np.tile(k_shift[cells], 4))
    n, hd = len(cells), hp.head_dim
    for il, k in state.k_l.items():
        rows = cb(gr.get_rows(k, cells_t), "k_shift_rows", il)  # F32 [n_embd_k_gqa, n]
        rows = cb(gr.reshape(rows, hd, k.ne[0] // hd, n), "k_shift_heads", il)  # [hd, H_kv, n]
        rows = cb(rope(hp, rows, pos_t), "k_shift_rope", il)
        rows = cb(gr.reshape(rows, k.ne[0], n), "k_shifted", il)  # [n_embd_k_gqa, n]
        gr.build_forward_expand(gf, cb(gr.set_rows(k, rows, cells_t), "k_shift_store", il))
