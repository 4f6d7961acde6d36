"""Memory bookkeeping: KV slots and masks, seq_* semantics, recurrent snapshot validity and
rollback, the hybrid's all-or-nothing refusals, and a state machine against a list-based
reference. (The data reference that recomputes from scratch comes with the model graphs.)"""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import event, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule
from hypothesis_profiles import examples

import graphir as gr
from graphir.models.batch import Batch, BatchError, split
from graphir.models.hparams import Qwen35HParams
from graphir.models.memory import (
    HybridMemory,
    KVCache,
    Memory,
    MemoryFullError,
    RecurrentMemory,
    UBatchInputs,
    make_memory,
)

# ---- helpers -----------------------------------------------------------------------------------


def decode(mem: Memory, batch: Batch, n_ubatch: int = 8, n_rs_seq: int = 0) -> list[UBatchInputs]:
    ctx = mem.init_batch(split(batch, n_ubatch, n_rs_seq))
    return [ctx.apply() for _ in ctx.ubatches]


def tokens(pos0: int, n: int, seq: int = 0) -> Batch:
    return Batch(np.zeros(n, np.int64), pos=np.arange(pos0, pos0 + n), seq_id=seq)


def same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


def hybrid(n_ctx: int = 32, n_seq_max: int = 2, n_rs_seq: int = 2, kv_pad: int = 8) -> HybridMemory:
    kv = KVCache([3], 4, 4, n_ctx, n_seq_max, kv_pad=kv_pad)
    return HybridMemory(kv, RecurrentMemory([0, 1, 2], 6, 8, n_seq_max, n_rs_seq))


def kv_positions(kv: KVCache, seq: int) -> list[int]:
    return sorted(kv.pos[kv.seqs[:, seq]].tolist())


# ---- KV cache: slots ---------------------------------------------------------------------------


def test_kv_slots_contiguous_first_then_any_free() -> None:
    kv = KVCache([0], 4, 4, n_ctx=8, n_seq_max=2, kv_pad=4)
    (inp,) = decode(kv, tokens(0, 6))
    assert inp.kv.slots.tolist() == [0, 1, 2, 3, 4, 5] and inp.kv.slots.dtype == np.int32
    assert kv.seq_rm(0, 1, 2) and kv.seq_rm(0, 3, 5)  # free: 1, 3, 4, 6, 7
    (inp,) = decode(kv, tokens(0, 2, seq=1))
    assert inp.kv.slots.tolist() == [3, 4], "the first contiguous run"
    (inp,) = decode(kv, tokens(2, 3, seq=1))
    assert inp.kv.slots.tolist() == [1, 6, 7], "no run of 3: the lowest free cells"
    assert kv_positions(kv, 1) == [0, 1, 2, 3, 4] and kv_positions(kv, 0) == [0, 2, 5]
    assert kv.pos.tolist() == [0, 2, 2, 0, 1, 5, 3, 4]


def test_kv_context_full_leaves_memory_unchanged() -> None:
    kv = KVCache([0], 4, 4, n_ctx=8, n_seq_max=2)
    decode(kv, tokens(0, 5))
    before = kv.bookkeeping()
    with pytest.raises(MemoryFullError, match=r"context full: need 4 cells, 3 free"):
        kv.init_batch(split(tokens(0, 4, seq=1), 2))  # 2 ubatches: the first would fit
    assert same(before, kv.bookkeeping())
    decode(kv, tokens(0, 3, seq=1))  # exactly fits
    assert kv.n_used == 8


def test_init_batch_plans_without_mutating_and_contexts_go_stale() -> None:
    mem = hybrid()
    before = mem.bookkeeping()
    ctx = mem.init_batch(split(tokens(0, 10), 4))
    assert same(before, mem.bookkeeping()) and len(ctx.ubatches) == 3
    ctx.apply()
    assert not same(before, mem.bookkeeping())
    mem.seq_rm(1)  # any seq_* call outdates the plan
    with pytest.raises(RuntimeError, match="changed since init_batch"):
        ctx.apply()
    ctx = mem.init_batch(split(tokens(4, 1), 4))
    ctx.apply()
    with pytest.raises(RuntimeError, match="all 1 ubatches were applied"):
        ctx.apply()


def test_positions_must_continue_the_memory() -> None:
    mem = hybrid()
    decode(mem, tokens(0, 4))
    before = mem.bookkeeping()
    for pos0 in (5, 3, 0):
        with pytest.raises(BatchError, match=f"seq 0 starts at pos {pos0} but its memory ends at pos 3"):
            mem.init_batch(split(tokens(pos0, 2), 8))
    with pytest.raises(BatchError, match=r"seq_id 2 out of range \[0, 2\)"):
        mem.init_batch(split(tokens(0, 2, seq=2), 8))
    assert same(before, mem.bookkeeping())
    decode(mem, tokens(7, 2, seq=1))  # a new sequence may start anywhere
    assert mem.seq_pos_min(1) == 7 and mem.seq_pos_max(1) == 8


# ---- KV cache: masks -----------------------------------------------------------------------------


def ref_mask(cells: dict[int, tuple[int, int]], seq: np.ndarray, pos: np.ndarray, n_rows: int, n_kv: int):
    """0 where row t sees cell c (same sequence, pos <= t's), -inf elsewhere, from a cell -> (pos, seq) map."""
    m = np.full((n_rows, n_kv), -np.inf, np.float32)
    for t in range(len(seq)):
        for c, (cp, cs) in cells.items():
            if c < n_kv and cs == seq[t] and cp <= pos[t]:
                m[t, c] = 0.0
    return m


def test_kv_masks_causal_per_sequence_and_padded() -> None:
    kv = KVCache([0], 4, 4, n_ctx=20, n_seq_max=3, kv_pad=8, mask_row_pad=4)
    cells: dict[int, tuple[int, int]] = {}
    steps = [
        Batch(np.zeros(5, np.int64), pos=[0, 1, 2, 0, 1], seq_id=[0, 0, 0, 2, 2]),
        Batch(np.zeros(4, np.int64), pos=[3, 2, 4, 0], seq_id=[0, 2, 0, 1]),
        Batch(np.zeros(2, np.int64), pos=[5, 3], seq_id=[0, 2]),  # one ubatch: 2 seqs x 1 token
        tokens(1, 8, seq=1),
    ]
    n_kvs = []
    for b in steps:
        for inp in decode(kv, b, n_ubatch=4):
            ub = inp.ubatch
            for row, c in enumerate(inp.kv.slots):
                cells[int(c)] = (int(ub.pos[row]), int(ub.seq_id[row]))
            n_kv = inp.kv.n_kv
            bound = max(cells) + 1
            assert n_kv == min(20, 8 * 2 ** max(0, math.ceil(math.log2(bound / 8)))), \
                "kv_pad doubled until it covers the used bound, at most n_ctx"  # fmt: skip
            n_rows = -(-ub.n_tokens // 4) * 4
            assert inp.kv.mask.shape == (n_rows, n_kv) and inp.kv.mask.dtype == np.float32
            np.testing.assert_array_equal(inp.kv.mask, ref_mask(cells, ub.seq_id, ub.pos, n_rows, n_kv))
            n_kvs.append(n_kv)
    assert n_kvs[0] == 8 and n_kvs[-1] == 20


def test_kv_reserve_shapes() -> None:
    kv = KVCache([0, 1], 4, 4, n_ctx=40, n_seq_max=1)
    before = kv.bookkeeping()
    full = kv.init_full(16)
    assert full.reserve and full.rs is None and full.kv.n_kv == 40 and full.kv.mask.shape == (16, 40)
    assert full.kv.slots.shape == (16,) and same(before, kv.bookkeeping())


# ---- KV cache: seq_* ------------------------------------------------------------------------------


def test_kv_seq_rm_cp_keep() -> None:
    kv = KVCache([0], 4, 4, n_ctx=32, n_seq_max=3)
    decode(kv, tokens(0, 6, seq=0))
    decode(kv, tokens(0, 4, seq=1))
    assert kv.seq_rm(0, 2, 4) and kv_positions(kv, 0) == [0, 1, 4, 5]
    assert kv.seq_rm(0, 5, -1) and kv_positions(kv, 0) == [0, 1, 4], "p1 < 0: to infinity"
    assert kv.seq_rm(1, -1, 2) and kv_positions(kv, 1) == [2, 3], "p0 < 0: from 0"
    kv.seq_cp(0, 2, 1, -1)
    assert kv_positions(kv, 2) == [1, 4] and kv.n_used == 5, "seq_cp shares cells"
    assert kv.seq_rm(0) and kv_positions(kv, 2) == [1, 4] and kv.n_used == 4, "shared cells stay for dst"
    assert kv.seq_pos_min(0) == -1 and kv.seq_pos_max(0) == -1
    assert kv.seq_rm(-1, 3, 4) and kv_positions(kv, 1) == [2] and kv_positions(kv, 2) == [1, 4]
    kv.seq_keep(2)
    assert kv_positions(kv, 1) == [] and kv_positions(kv, 2) == [1, 4] and kv.n_used == 2
    kv.clear()
    assert kv.n_used == 0 and kv.seq_pos_max(2) == -1


def test_kv_seq_add_records_the_k_shift_once() -> None:
    kv = KVCache([0], 4, 4, n_ctx=16, n_seq_max=2)
    decode(kv, tokens(0, 8))
    assert kv.seq_rm(0, 2, 5)
    kv.seq_add(0, 5, -1, -3)  # context shift: 5..7 -> 2..4
    assert kv_positions(kv, 0) == [0, 1, 2, 3, 4]
    shift = kv.pending_shift
    assert shift.tolist() == [0, 0, 0, 0, 0, -3, -3, -3] + [0] * 8
    (inp,) = decode(kv, tokens(5, 1))
    np.testing.assert_array_equal(inp.kv.k_shift, shift)
    assert kv.pending_shift is None
    (inp,) = decode(kv, tokens(6, 1))
    assert inp.kv.k_shift is None, "handed out once"
    kv.seq_add(0, 0, 2, -1)  # pos 0 -> -1: dropped, as llama.cpp
    assert kv_positions(kv, 0) == [0, 2, 3, 4, 5, 6]


def test_seq_ids_are_checked() -> None:
    mem = hybrid(n_seq_max=2)
    for call in (lambda: mem.seq_rm(2), lambda: mem.seq_cp(0, 2), lambda: mem.seq_keep(-1),
                 lambda: mem.seq_add(-1, 0, 1, 1), lambda: mem.seq_pos_max(5)):  # fmt: skip
        with pytest.raises(ValueError, match="(seq_id|dst) .* out of range"):
            call()
    with pytest.raises(ValueError, match=r"must be < 0 \(all\) or in \[0, 2\)"):
        mem.can_seq_rm(2)
    assert mem.seq_rm(-1) and mem.seq_rm(-5), "seq < 0: every sequence"


def test_seq_cp_never_desynchronizes_the_hybrid() -> None:
    """Issue 18: seq_cp(1, 0) from an empty sequence onto a populated one left the KV cache with 0..7
    and the recurrent state empty (seq_pos_min 0, seq_pos_max -1), and a decode at pos 8 ran on a
    zeroed state. Onto a populated dst a hybrid refuses (a state cannot merge); a KV cache merges."""
    mem = hybrid(n_seq_max=3)
    decode(mem, tokens(0, 8, seq=0))
    before = mem.bookkeeping()
    for src in (1, 2):
        with pytest.raises(ValueError, match=r"seq 0 is not empty \(positions 0..7\).*seq_rm\(0\) first"):
            mem.seq_cp(src, 0)
    assert same(before, mem.bookkeeping())
    for m in (mem, mem.kv, mem.rs):
        assert (m.seq_pos_min(0), m.seq_pos_max(0)) == (0, 7)
    (inp,) = decode(mem, tokens(8, 1, seq=0))  # continues from the real state
    assert not inp.rs.fresh.any() and inp.rs.zero_rows == ()
    mem.seq_cp(1, 2)  # empty onto empty: nothing happens
    assert mem.seq_pos_max(2) == -1 and mem.rs.pending_copies == ()
    mem.seq_cp(0, 1)
    assert [(m.seq_pos_min(1), m.seq_pos_max(1)) for m in (mem.kv, mem.rs)] == [(0, 8)] * 2
    kv = KVCache([0], 4, 4, n_ctx=16, n_seq_max=2)  # KV alone: llama.cpp's merge
    decode(kv, tokens(0, 3, seq=0))
    decode(kv, tokens(0, 2, seq=1))
    kv.seq_cp(0, 1)
    assert kv_positions(kv, 1) == [0, 0, 1, 1, 2]


def test_seq_add_moves_a_hybrid_sequence_whole_or_refuses() -> None:
    mem = hybrid(n_seq_max=2)
    decode(mem, tokens(0, 6, seq=0))
    before = mem.bookkeeping()
    for args, message in [((0, 3, -1, 5), "covers only part"), ((0, 0, 3, -2), "covers only part"),
                          ((0, -1, -1, -3), "cut at 0"), ((0, -1, -1, 2**31), "would pass")]:  # fmt: skip
        with pytest.raises(ValueError, match=message):
            mem.seq_add(*args)
        assert same(before, mem.bookkeeping())
    mem.seq_add(0, -1, -1, 4)  # every position: 4..9 in both
    assert [(m.seq_pos_min(0), m.seq_pos_max(0)) for m in (mem.kv, mem.rs)] == [(4, 9)] * 2
    mem.seq_add(0, 0, 100, -10)  # every token below 0: the sequence is gone from both
    assert [m.seq_pos_max(0) for m in (mem.kv, mem.rs)] == [-1, -1]
    decode(mem, tokens(0, 4, seq=0))
    mem.seq_cp(0, 1)
    with pytest.raises(ValueError, match=r"shared with seq \[1\]"):
        mem.seq_add(0, -1, -1, 1)
    for bad in (True, 1.0, np.float64(1), "1"):
        with pytest.raises(ValueError, match="must be an integer"):
            mem.seq_add(0, -1, -1, bad)


# ---- recurrent: planes, rows, rollback -----------------------------------------------------------


@pytest.mark.parametrize("n_rs_seq", [0, 1, 3])
@pytest.mark.parametrize("n", [1, 2, 4, 5])
@pytest.mark.parametrize("r", [1, 2, 3, 4, 6])
def test_rollback_allowed_exactly_within_validity(n_rs_seq: int, n: int, r: int) -> None:
    rs = RecurrentMemory([0], 2, 3, n_seq_max=2, n_rs_seq=n_rs_seq)
    P = 1 + n_rs_seq
    decode(rs, tokens(0, 8), n_rs_seq=n_rs_seq)
    (inp,) = decode(rs, tokens(8, n), n_rs_seq=n_rs_seq)  # one ubatch of n tokens
    valid = min(n - 1, n_rs_seq)
    assert inp.rs.n_snapshots == valid and inp.rs.dst_rows.tolist() == [[j] for j in range(1 + valid)]
    before = rs.bookkeeping()
    pos_max = 7 + n
    ok = rs.seq_rm(0, pos_max - r + 1, -1)
    assert ok == (r <= valid)
    if not ok:
        assert same(before, rs.bookkeeping())
        return
    assert rs.seq_pos_max(0) == pos_max - r and rs.seq_pos_min(0) == 0
    (inp,) = decode(rs, tokens(pos_max - r + 1, 1), n_rs_seq=n_rs_seq)
    assert inp.rs.src_rows.tolist() == [r], "the next ubatch reads plane r"
    (inp,) = decode(rs, tokens(pos_max - r + 2, 1), n_rs_seq=n_rs_seq)
    assert inp.rs.src_rows.tolist() == [0 * P], "then plane 0 again"


def test_rollback_refused_while_pending_and_for_cuts_that_keep_the_end() -> None:
    rs = RecurrentMemory([0], 2, 3, n_seq_max=1, n_rs_seq=3)
    decode(rs, tokens(0, 6), n_rs_seq=3)  # ubatches of 2 + 4: valid 3
    before = rs.bookkeeping()
    assert not rs.seq_rm(0, 1, 3), "a middle range"
    assert not rs.seq_rm(0, -1, 4), "the head: the state cannot forget early tokens"
    assert not rs.seq_rm(0, 2, -1), "r = 4 > 3 valid snapshots"
    assert same(before, rs.bookkeeping())
    assert rs.seq_rm(0, 6, -1) and rs.seq_rm(0, 3, 3), "ranges that miss the sequence: nothing to do"
    assert rs.seq_rm(0, 5, -1) and rs.seq_pos_max(0) == 4
    pending = rs.bookkeeping()
    assert not rs.seq_rm(0, 4, -1), "a rollback is pending"
    assert same(pending, rs.bookkeeping())
    assert rs.seq_rm(0, 0, -1) and rs.needs_zero(0), "removing everything always works"
    (inp,) = decode(rs, tokens(0, 1), n_rs_seq=3)
    assert inp.rs.src_rows.tolist() == [0] and inp.rs.fresh.tolist() == [True] and inp.rs.zero_rows == (0,)


def test_only_final_ubatches_write_snapshots() -> None:
    """A long prompt's earlier ubatches are never rolled back (the next ubatch overwrites their state):
    they write no snapshots; the one that ends the sequence does, and a rollback into it works."""
    rs = RecurrentMemory([0], 2, 3, n_seq_max=2, n_rs_seq=3)
    inps = decode(rs, tokens(0, 20), n_ubatch=8, n_rs_seq=3)  # ubatches of 8, 8, 4
    assert [i.ubatch.final for i in inps] == [False, False, True]
    assert [i.rs.n_snapshots for i in inps] == [0, 0, 3]
    assert [i.rs.dst_rows.shape[0] for i in inps] == [1, 1, 4]
    assert rs.seq_rm(0, 17, -1) and rs.seq_pos_max(0) == 16
    # two sequences: a ubatch that ends either of them is final
    b = Batch(np.zeros(12, np.int64), pos=[*range(20, 24), *range(8)], seq_id=[1] * 4 + [0] * 8)
    rs.seq_rm(0)
    inps = decode(rs, b, n_ubatch=8, n_rs_seq=3)
    assert all(i.rs.n_snapshots == (min(i.ubatch.n_seq_tokens - 1, 3) if i.ubatch.final else 0) for i in inps)
    assert inps[-1].ubatch.final and rs.valid.tolist() == [3, 3]
    # a single-token decode (plain decoding) writes none
    (inp,) = decode(rs, tokens(8, 1), n_rs_seq=3)
    assert inp.ubatch.final and inp.rs.n_snapshots == 0


def test_no_snapshots_without_n_rs_seq() -> None:
    rs = RecurrentMemory([0, 1], 6, 8, n_seq_max=3, n_rs_seq=0)
    assert rs.r_l[0].ne[:2] == (6, 3) and rs.s_l[1].ne[:2] == (8, 3), "one plane per cell, nothing else"
    (inp,) = decode(rs, tokens(0, 5, seq=2))
    assert inp.rs.n_snapshots == 0 and not inp.rs.snapshots and inp.rs.dst_rows.tolist() == [[2]]
    assert not rs.seq_rm(2, 4, -1)
    assert rs.sizes().rs_snapshot_bytes == 0 and rs.sizes().rs_bytes == 2 * 3 * (6 + 8) * 4


def test_recurrent_rows_for_several_sequences() -> None:
    rs = RecurrentMemory([0], 2, 3, n_seq_max=3, n_rs_seq=3)
    b = Batch(np.zeros(6, np.int64), pos=[0, 1, 2, 0, 1, 2], seq_id=[2, 2, 2, 0, 0, 0])
    (inp,) = decode(rs, b, n_rs_seq=3)
    assert inp.ubatch.seqs == (2, 0) and inp.rs.n_snapshots == 2
    assert inp.rs.src_rows.tolist() == [8, 0] and inp.rs.src_rows.dtype == np.int32
    assert inp.rs.fresh.all() and inp.rs.zero_rows == (8, 0), "fresh sequences: their rows are zeroed first"
    assert inp.rs.dst_rows.tolist() == [[8, 0], [9, 1], [10, 2]], "row = cell * (1 + n_rs_seq) + plane"
    (inp,) = decode(rs, Batch([0, 0], pos=[3, 3], seq_id=[0, 2]), n_rs_seq=3)
    assert inp.rs.src_rows.tolist() == [0, 8] and inp.rs.n_snapshots == 0 and inp.rs.zero_rows == ()


def test_recurrent_seq_cp_records_row_copies() -> None:
    rs = RecurrentMemory([0], 2, 3, n_seq_max=3, n_rs_seq=2)
    decode(rs, tokens(0, 4, seq=0), n_rs_seq=2)
    decode(rs, tokens(0, 3, seq=1), n_rs_seq=2)  # dst has valid snapshots of its own: they go
    assert rs.seq_rm(0, 2, -1)  # pending rollback of 2 -> the current state is plane 2
    before = rs.bookkeeping()
    with pytest.raises(ValueError, match=r"seq 1 is not empty \(positions 0..2\).*seq_rm\(1\) first"):
        rs.seq_cp(0, 1)
    assert same(before, rs.bookkeeping())
    assert rs.seq_rm(1)
    before = rs.bookkeeping()
    with pytest.raises(ValueError, match="copied whole"):
        rs.seq_cp(0, 1, 1, -1)
    assert same(before, rs.bookkeeping())
    rs.seq_cp(0, 1)
    assert rs.pending_copies == ((2, 3),) and rs.seq_pos_max(1) == 1 and rs.seq_pos_min(1) == 0
    assert not rs.seq_rm(1, 1, -1), "a copy has no snapshots"
    with pytest.raises(ValueError, match="not empty"):
        rs.seq_cp(2, 1)  # from an empty sequence onto a populated one: refused
    assert rs.seq_rm(1)
    rs.seq_cp(2, 1)  # from an empty sequence onto an empty one: nothing to do
    assert rs.needs_zero(1)
    (inp,) = decode(rs, tokens(2, 1, seq=0), n_rs_seq=2)
    assert inp.rs.copies == ((2, 3),) and rs.pending_copies == ()
    (inp,) = decode(rs, tokens(3, 1, seq=0), n_rs_seq=2)
    assert inp.rs.copies == ()
    rs.seq_keep(1)
    assert rs.seq_pos_max(0) == -1


def test_recurrent_seq_add_moves_positions_only() -> None:
    rs = RecurrentMemory([0], 2, 3, n_seq_max=1, n_rs_seq=2)
    decode(rs, tokens(4, 3), n_rs_seq=2)
    rs.seq_add(0, -1, -1, 10)
    assert (rs.seq_pos_min(0), rs.seq_pos_max(0)) == (14, 16) and rs.valid[0] == 2
    rs.seq_add(0, 0, -1, -20)
    assert rs.seq_pos_max(0) == -1, "shifted below 0: dropped, like KV cells"


# ---- hybrid -----------------------------------------------------------------------------------------


def test_hybrid_refusal_changes_neither_side() -> None:
    mem = hybrid(n_rs_seq=2)
    decode(mem, tokens(0, 6), n_ubatch=4, n_rs_seq=2)  # ubatches 3 + 3: valid 2
    before = mem.bookkeeping()
    assert not mem.can_seq_rm(0, 3, -1) and not mem.seq_rm(0, 3, -1)
    assert same(before, mem.bookkeeping()) and kv_positions(mem.kv, 0) == list(range(6))
    assert mem.seq_rm(0, 4, -1)
    assert kv_positions(mem.kv, 0) == [0, 1, 2, 3] and mem.seq_pos_max(0) == 3 and mem.rs.pending[0] == 2


def test_hybrid_context_full_changes_neither_side() -> None:
    mem = hybrid(n_ctx=8)
    decode(mem, tokens(0, 6))
    before = mem.bookkeeping()
    with pytest.raises(MemoryFullError, match="context full"):
        mem.init_batch(split(tokens(6, 3), 8))
    assert same(before, mem.bookkeeping())


def test_hybrid_init_full_and_sizes() -> None:
    mem = hybrid(n_ctx=32, n_seq_max=2, n_rs_seq=2)
    full = mem.init_full(n_seq_tokens=4, n_seqs=2)
    assert full.reserve and full.kv.mask.shape == (8, 32) and full.rs.dst_rows.shape == (3, 2)
    assert mem.seq_pos_max(0) == -1
    s = mem.sizes()
    rows = 2 * 3
    assert s.kv_bytes == 2 * 4 * 32 * 2, "K and V, F16, one attention layer"
    assert s.rs_bytes == 3 * rows * (6 + 8) * 4 and s.rs_snapshot_bytes == 3 * 2 * 2 * (6 + 8) * 4
    assert s.total == s.kv_bytes + s.rs_bytes


def tiny_hparams() -> Qwen35HParams:
    return Qwen35HParams(arch="qwen35", n_vocab=32, n_ctx_train=64, n_embd=16, block_count=5, n_ff=32,
                         n_head=2, n_head_kv=1, head_dim_k=8, head_dim_v=8, rms_eps=1e-6, n_rot=4,
                         rope_sections=(1, 1, 0, 0), rope_freq_base=1e4, ssm_d_conv=4, ssm_d_inner=8,
                         ssm_d_state=4, ssm_dt_rank=2, ssm_n_group=1, nextn_predict_layers=1)  # fmt: skip


def test_make_memory_splits_layers_and_creates_state_leaves() -> None:
    hp = tiny_hparams()
    mem = make_memory(hp, range(hp.n_layer_trunk), n_ctx=16, n_seq_max=2, n_rs_seq=3)
    assert isinstance(mem, HybridMemory) and mem.kv.layers == (3,) and mem.rs.layers == (0, 1, 2)
    k, r, s = mem.kv.k_l[3], mem.rs.r_l[1], mem.rs.s_l[2]
    assert (k.type, k.ne[:2], k.name) == (gr.F16, (8, 16), "cache_k_l3")
    assert (r.type, r.ne[:2], r.name) == (gr.F32, (3 * (8 + 2 * 4), 8), "cache_r_l1")
    assert (s.type, s.ne[:2], s.name) == (gr.F32, (4 * 4 * 2, 8), "cache_s_l2")
    for t in (k, r, s):
        assert not t.is_param and t.is_leaf and not t.data.any()
    mtp = make_memory(hp, [4], n_ctx=16, type_k="f32")
    assert isinstance(mtp, KVCache) and mtp.k_l[4].type == gr.F32


def test_state_leaves_take_set_rows_and_get_rows() -> None:
    """The inputs fit the graph ops: K rows land in the cache's host data (cpu), states read back by row."""
    mem = hybrid(n_rs_seq=2)
    (inp,) = decode(mem, Batch(np.zeros(4, np.int64), pos=[0, 1, 0, 1], seq_id=[0, 0, 1, 1]), n_rs_seq=2)
    k_cur, slots = gr.new_input(gr.F32, [4, 4]), gr.new_input(gr.I32, [4])
    new_s, dst = gr.new_input(gr.F32, [8, 2]), gr.new_input(gr.I32, [2])
    writes = [gr.set_rows(mem.kv.k_l[3], k_cur, slots), gr.set_rows(mem.rs.s_l[0], new_s, dst)]
    plan = gr.compile(gr.build_graph(*writes), ["cpu"], cache=False)
    k_val, s_val = np.arange(16, dtype=np.float32).reshape(4, 4), np.ones((2, 8), np.float32)
    for t, v in ((k_cur, k_val), (slots, inp.kv.slots), (new_s, s_val), (dst, inp.rs.dst_rows[0])):
        plan.set_input(t, v)
    plan.run()
    np.testing.assert_array_equal(mem.kv.k_l[3].data[inp.kv.slots], k_val.astype(np.float16))
    assert mem.rs.s_l[0].data[[0, 3]].all() and not mem.rs.s_l[0].data[[1, 2, 4, 5]].any()
    # the next ubatch reads plane 0 of both sequences
    (nxt,) = decode(mem, Batch([0, 0], pos=[2, 2], seq_id=[0, 1]), n_rs_seq=2)
    src = gr.new_input(gr.I32, [2])
    out = gr.get_rows(mem.rs.s_l[0], src).set_output()
    plan = gr.compile(gr.build_graph(out), ["cpu"], cache=False)
    plan.set_input(src, nxt.rs.src_rows)
    plan.run()
    np.testing.assert_array_equal(plan.get(out).reshape(2, 8), s_val)


# ---- state machine against a list-based reference ---------------------------------------------------

N_CTX, N_SEQ = 24, 3


class MemoryMachine(RuleBasedStateMachine):
    """Random decodes / seq_rm / rollbacks / seq_cp / seq_add / seq_keep on a hybrid memory, checked against
    a reference: per sequence a list of positions, the token count of its last ubatch and the
    pending rollback; KV cells as a list of [pos, seqs] (no slot ids); expected row copies."""

    @initialize(n_rs_seq=st.integers(0, 3))
    def setup(self, n_rs_seq: int) -> None:
        self.n_rs_seq, self.P = n_rs_seq, 1 + n_rs_seq
        self.mem = hybrid(n_ctx=N_CTX, n_seq_max=N_SEQ, n_rs_seq=n_rs_seq)
        self.positions: dict[int, list[int]] = {s: [] for s in range(N_SEQ)}
        self.last_n = dict.fromkeys(range(N_SEQ), 0)
        self.pending = dict.fromkeys(range(N_SEQ), 0)
        self.cells: list[list] = []  # [pos, set of seqs]
        self.copies: list[tuple[int, int]] = []

    # ---- reference ----
    def ref_rm_ok(self, s: int, lo: float, hi: float) -> bool:
        ps = self.positions[s]
        cut = [p for p in ps if lo <= p < hi]
        if not cut:
            return True
        if cut[-1] != ps[-1]:
            return False  # keeps the last token: the state cannot drop earlier ones
        if cut[0] == ps[0]:
            return True  # everything
        return self.pending[s] == 0 and len(cut) <= min(self.last_n[s] - 1, self.n_rs_seq)

    def ref_rm(self, seq: int, lo: float, hi: float) -> None:
        for s in range(N_SEQ) if seq < 0 else [seq]:
            ps = self.positions[s]
            keep = [p for p in ps if not lo <= p < hi]
            if not keep:
                self.last_n[s] = self.pending[s] = 0
            elif len(keep) < len(ps):
                self.pending[s] = len(ps) - len(keep)
            self.positions[s] = keep
        for c in self.cells:
            if lo <= c[0] < hi:
                c[1] -= set(range(N_SEQ)) if seq < 0 else {seq}
        self.cells = [c for c in self.cells if c[1]]

    # ---- rules ----
    @rule(data=st.data())
    def decode(self, data) -> None:
        seqs = data.draw(st.lists(st.integers(0, N_SEQ - 1), min_size=1, max_size=N_SEQ, unique=True))
        owners, pos = [], []
        for s in seqs:
            n = data.draw(st.integers(1, 6))
            start = self.positions[s][-1] + 1 if self.positions[s] else data.draw(st.integers(0, 3))
            owners += [s] * n
            pos += list(range(start, start + n))
        batch = Batch(np.zeros(len(pos), np.int64), pos=pos, seq_id=owners)
        ubs = split(batch, data.draw(st.integers(self.P, 10)), self.n_rs_seq)
        before = self.mem.bookkeeping()
        if len(pos) > N_CTX - len(self.cells):
            with pytest.raises(MemoryFullError):
                self.mem.init_batch(ubs)
            assert same(before, self.mem.bookkeeping())
            return
        ctx = self.mem.init_batch(ubs)
        assert same(before, self.mem.bookkeeping()), "init_batch does not mutate"
        for ub in ubs:
            free_before = self.mem.kv.pos < 0
            inp = ctx.apply()
            self.check_rs_inputs(inp)
            assert free_before[inp.kv.slots].all() and len(set(inp.kv.slots.tolist())) == ub.n_tokens
            for g, s in enumerate(ub.seqs):
                self.positions[s] += ub.seq_pos(g).tolist()
                self.last_n[s], self.pending[s] = ub.n_seq_tokens, 0
            self.cells += [[int(p), {int(s)}] for p, s in zip(ub.pos, ub.seq_id)]
            self.check_mask(inp)

    def check_rs_inputs(self, inp: UBatchInputs) -> None:
        ub, rs = inp.ubatch, inp.rs
        for g, s in enumerate(ub.seqs):
            want = s * self.P + self.pending[s]
            assert rs.src_rows[g] == want, f"seq {s}: src row {rs.src_rows[g]}, reference {want}"
        assert list(rs.zero_rows) == [s * self.P for s in ub.seqs if not self.positions[s]]
        n_snap = min(ub.n_seq_tokens - 1, self.n_rs_seq) if ub.final else 0  # only a final ubatch can roll back
        assert rs.n_snapshots == n_snap
        assert rs.dst_rows.tolist() == [[s * self.P + j for s in ub.seqs] for j in range(1 + n_snap)]
        assert list(rs.copies) == self.copies
        self.copies = []

    def check_mask(self, inp: UBatchInputs) -> None:
        kv, ub = inp.kv, inp.ubatch
        bound = int(np.flatnonzero(self.mem.kv.pos >= 0).max()) + 1
        assert kv.n_kv == min(N_CTX, -(-bound // 8) * 8)
        assert (kv.mask[:, bound:] == -np.inf).all()
        for t in range(ub.n_tokens):
            s, p = int(ub.seq_id[t]), int(ub.pos[t])
            seen = sorted(self.mem.kv.pos[: kv.n_kv][kv.mask[t] == 0].tolist())
            assert seen == sorted(c[0] for c in self.cells if s in c[1] and c[0] <= p)

    @rule(data=st.data())
    def seq_rm(self, data) -> None:
        seq = data.draw(st.integers(-1, N_SEQ - 1))
        top = max((ps[-1] for ps in self.positions.values() if ps), default=0)
        p0, p1 = data.draw(st.integers(-1, top + 2)), data.draw(st.integers(-1, top + 3))
        self.do_rm(seq, p0, p1)

    @rule(data=st.data())
    def rollback(self, data) -> None:
        live = [s for s, ps in self.positions.items() if ps]
        if not live:
            return
        s = data.draw(st.sampled_from(live))
        r = data.draw(st.integers(1, self.last_n[s] + 1))
        ok = self.do_rm(s, self.positions[s][-1] - r + 1, -1)
        event(f"rollback {'done' if ok else 'refused'}")
        then = data.draw(st.sampled_from(["again", "copy", "none"]))
        if ok and then == "again" and self.positions[s]:  # refused while pending (unless it empties s)
            self.do_rm(s, self.positions[s][-1], -1)
        elif ok and then == "copy":
            self.seq_cp(s, (s + 1) % N_SEQ)  # copies the rolled-back plane

    def do_rm(self, seq: int, p0: int, p1: int) -> bool:
        lo, hi = (0 if p0 < 0 else p0), (np.inf if p1 < 0 else p1)
        want = all(self.ref_rm_ok(s, lo, hi) for s in (range(N_SEQ) if seq < 0 else [seq]))
        before = self.mem.bookkeeping()
        assert self.mem.seq_rm(seq, p0, p1) == want, f"seq_rm({seq}, {p0}, {p1})"
        if want:
            self.ref_rm(seq, lo, hi)
        else:
            assert same(before, self.mem.bookkeeping()), "a refusal changes nothing"
        return want

    @rule(src=st.integers(0, N_SEQ - 1), dst=st.integers(0, N_SEQ - 1), clear=st.booleans(),
          p0=st.integers(-1, 6), p1=st.integers(-1, 40))  # fmt: skip
    def seq_cp(self, src: int, dst: int, clear: bool = True, p0: int = -1, p1: int = -1) -> None:
        """llama.cpp's seq_cp; on a hybrid dst must be empty and the range must cover all of src."""
        if clear and src != dst:
            assert self.mem.seq_rm(dst)
            self.ref_rm(dst, 0, np.inf)
        ps_src, ps_dst = self.positions[src], self.positions[dst]
        lo, hi = (0 if p0 < 0 else p0), (np.inf if p1 < 0 else p1)
        covers = not ps_src or (lo <= ps_src[0] and ps_src[-1] < hi)
        before = self.mem.bookkeeping()
        if src != dst and (ps_dst or not covers):
            with pytest.raises(ValueError, match="not empty" if ps_dst else "copied whole"):
                self.mem.seq_cp(src, dst, p0, p1)
            assert same(before, self.mem.bookkeeping()), "a refused seq_cp changes nothing"
            event(f"seq_cp refused ({'dst not empty' if ps_dst else 'partial range'})")
            return
        self.mem.seq_cp(src, dst, p0, p1)
        if src == dst or not ps_src:
            assert same(before, self.mem.bookkeeping()), "nothing to copy"
            return
        self.copies.append((src * self.P + self.pending[src], dst * self.P))
        self.positions[dst] = list(ps_src)
        for c in self.cells:
            if src in c[1]:
                c[1].add(dst)

    @rule(data=st.data())
    def seq_add(self, data) -> None:
        """llama.cpp's seq_add; on a hybrid all of a sequence's positions move (or none), none may be
        cut at 0 alone, and no cell shared with another sequence moves."""
        s = data.draw(st.integers(0, N_SEQ - 1))
        ps = self.positions[s]
        top = ps[-1] if ps else 0
        p0, p1 = data.draw(st.integers(-1, top + 2)), data.draw(st.integers(-1, top + 3))
        delta = data.draw(st.integers(-12, 12))
        lo, hi = (0 if p0 < 0 else p0), (np.inf if p1 < 0 else p1)
        moved = [p for p in ps if lo <= p < hi]
        shared = any(s in c[1] and len(c[1]) > 1 and lo <= c[0] < hi for c in self.cells)
        before = self.mem.bookkeeping()
        if delta == 0 or not moved:
            self.mem.seq_add(s, p0, p1, delta)
            assert same(before, self.mem.bookkeeping()), "nothing moves"
            return
        if shared or len(moved) < len(ps) or ps[0] + delta < 0 <= ps[-1] + delta:
            with pytest.raises(ValueError, match="shared|part of positions|cut at 0"):
                self.mem.seq_add(s, p0, p1, delta)
            assert same(before, self.mem.bookkeeping()), "a refused seq_add changes nothing"
            event("seq_add refused")
            return
        self.mem.seq_add(s, p0, p1, delta)
        event("seq_add done")
        if ps[-1] + delta < 0:  # every token dropped, as llama.cpp drops cells moved below 0
            self.ref_rm(s, 0, np.inf)
            return
        self.positions[s] = [p + delta for p in ps]
        for c in self.cells:
            if s in c[1]:
                c[0] += delta

    @rule(seq=st.integers(0, N_SEQ - 1))
    def seq_keep(self, seq: int) -> None:
        self.mem.seq_keep(seq)
        for s in range(N_SEQ):
            if s != seq:
                self.ref_rm(s, 0, np.inf)

    @invariant()
    def positions_agree(self) -> None:
        """After every step the KV cache and the recurrent state describe the same sequences, the
        reference's: the same first and last positions, every position in a KV cell."""
        if not hasattr(self, "mem"):
            return
        for s, ps in self.positions.items():
            lo, hi = (ps[0], ps[-1]) if ps else (-1, -1)
            for m in (self.mem, self.mem.kv, self.mem.rs):
                assert (m.seq_pos_min(s), m.seq_pos_max(s)) == (lo, hi), f"seq {s} in {type(m).__name__}"
            assert kv_positions(self.mem.kv, s) == ps
            assert self.mem.rs.needs_zero(s) == (not ps)
        assert self.mem.kv.n_used == len(self.cells)
        assert list(self.mem.rs.pending_copies) == self.copies
        used = np.flatnonzero(self.mem.kv.pos >= 0)  # the cache's kept bound (n_kv) as recomputed
        assert self.mem.kv._used_bound() == (int(used[-1]) + 1 if used.size else 0)


MemoryMachine.TestCase.settings = settings(max_examples=examples(60), stateful_step_count=30, deadline=None)
test_memory_machine = MemoryMachine.TestCase
