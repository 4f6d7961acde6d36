"""Batches and the equal split: the split's invariants on random batches (hypothesis), the row
layout of a ubatch, output mapping, and a clear error for every malformed batch."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis_profiles import examples

from graphir.models.batch import Batch, BatchError, UBatch, split

# ---- strategies --------------------------------------------------------------------------------


@st.composite
def batches(draw) -> Batch:
    """1..4 sequences of 1..12 tokens each, interleaved in a random order that keeps each
    sequence's own order; random start positions, token ids and output flags."""
    n_seqs = draw(st.integers(1, 4))
    seq_ids = draw(st.lists(st.integers(0, 7), min_size=n_seqs, max_size=n_seqs, unique=True))
    lens = [draw(st.integers(1, 12)) for _ in seq_ids]
    owners = [s for s, n in zip(seq_ids, lens) for _ in range(n)]
    owners = draw(st.permutations(owners))
    start = {s: draw(st.integers(0, 50)) for s in seq_ids}
    pos, seen = [], dict.fromkeys(seq_ids, 0)
    for s in owners:
        pos.append(start[s] + seen[s])
        seen[s] += 1
    n = len(owners)
    tokens = draw(st.lists(st.integers(0, 999), min_size=n, max_size=n))
    output = draw(st.lists(st.booleans(), min_size=n, max_size=n))
    return Batch(tokens, pos=pos, seq_id=owners, output=output)


@st.composite
def split_args(draw) -> tuple[Batch, int, int]:
    n_rs_seq = draw(st.integers(0, 4))
    n_ubatch = draw(st.integers(1 + n_rs_seq, 16))
    return draw(batches()), n_ubatch, n_rs_seq


# ---- split invariants ---------------------------------------------------------------------------


def check_split(batch: Batch, ubs: list[UBatch], n_ubatch: int, n_rs_seq: int) -> None:
    all_idx = np.concatenate([u.idx for u in ubs])
    assert sorted(all_idx.tolist()) == list(range(batch.n_tokens)), "every token exactly once"
    per_seq: dict[int, list[int]] = {}
    last_ub: dict[int, int] = {}
    for i, u in enumerate(ubs):
        assert 1 <= u.n_tokens <= n_ubatch
        assert u.n_tokens == u.n_seqs * u.n_seq_tokens, "equal lengths per ubatch"
        assert len(set(u.seqs)) == u.n_seqs, "a sequence appears once per ubatch"
        for g, s in enumerate(u.seqs):
            rows = u.idx[g * u.n_seq_tokens : (g + 1) * u.n_seq_tokens]
            assert (batch.seq_id[rows] == s).all(), "row g*n_seq_tokens+t belongs to group g"
            per_seq.setdefault(s, []).extend(rows.tolist())
            last_ub[s] = i
        # the ubatch carries the batch's values in row order
        np.testing.assert_array_equal(u.pos, batch.pos[u.idx])
        np.testing.assert_array_equal(u.tokens, batch.tokens[u.idx])
        np.testing.assert_array_equal(u.seq_id, batch.seq_id[u.idx])
        np.testing.assert_array_equal(u.out_idx, u.idx[u.out_rows])
        assert batch.output[u.out_idx].all() and u.out_rows.dtype == np.int32
    for s, rows in per_seq.items():
        assert rows == sorted(rows), f"seq {s}: order preserved across and within ubatches"
        tail = rows[-min(len(rows), 1 + n_rs_seq) :]
        assert set(tail) <= set(ubs[last_ub[s]].idx.tolist()), f"seq {s}: last 1+n_rs_seq tokens in one ubatch"
    for i, u in enumerate(ubs):  # final: the ubatch ends one of its sequences (it can be rolled back)
        assert u.final == any(last_ub[s] == i for s in u.seqs)


@settings(max_examples=examples(150), deadline=None)
@given(split_args())
def test_split_invariants(args: tuple[Batch, int, int]) -> None:
    batch, n_ubatch, n_rs_seq = args
    check_split(batch, split(batch, n_ubatch, n_rs_seq), n_ubatch, n_rs_seq)


def test_split_row_layout_is_seq_major() -> None:
    # two sequences interleaved token by token, decoded in lockstep: one ubatch, seq-major rows
    b = Batch([10, 20, 11, 21, 12, 22], pos=[5, 0, 6, 1, 7, 2], seq_id=[3, 1, 3, 1, 3, 1])
    (u,) = split(b, 8)
    assert u.seqs == (3, 1) and u.n_seq_tokens == 3
    assert u.tokens.tolist() == [10, 11, 12, 20, 21, 22]
    assert u.pos.tolist() == [5, 6, 7, 0, 1, 2]
    assert u.seq_pos(1).tolist() == [0, 1, 2]


def test_split_sizes() -> None:
    # a long prompt fills ubatches; with n_rs_seq the tail of 1+n_rs_seq stays whole
    assert [u.n_tokens for u in split(Batch.simple(range(10)), 4)] == [4, 4, 2]
    assert [u.n_tokens for u in split(Batch.simple(range(10)), 4, n_rs_seq=3)] == [4, 2, 4]
    assert [u.n_tokens for u in split(Batch.simple(range(10)), 8, n_rs_seq=3)] == [6, 4]
    assert [u.final for u in split(Batch.simple(range(10)), 4, n_rs_seq=3)] == [False, False, True]
    # a decode step of several sequences is one ubatch
    step = Batch([1, 2, 3], pos=[9, 4, 0], seq_id=[0, 1, 2])
    (u,) = split(step, 8, n_rs_seq=2)
    assert u.n_seqs == 3 and u.n_seq_tokens == 1
    # verify batches of equal length go together
    verify = Batch(list(range(8)), pos=[4, 5, 6, 7, 0, 1, 2, 3], seq_id=[0] * 4 + [1] * 4)
    assert [(u.n_seqs, u.n_seq_tokens) for u in split(verify, 8, n_rs_seq=3)] == [(2, 4)]
    assert [(u.n_seqs, u.n_seq_tokens) for u in split(verify, 6, n_rs_seq=3)] == [(1, 4), (1, 4)]


def test_split_rejects_small_ubatch() -> None:
    with pytest.raises(BatchError, match=r"n_ubatch \(3\) must be >= 1 \+ n_rs_seq \(4\)"):
        split(Batch.simple([1, 2]), 3, n_rs_seq=3)
    with pytest.raises(BatchError, match="n_ubatch >= 1"):
        split(Batch.simple([1, 2]), 0)


# ---- batches --------------------------------------------------------------------------------------


def test_batch_defaults() -> None:
    b = Batch([5, 6, 7, 8], pos=[0, 1, 3, 4], seq_id=[0, 0, 1, 1])
    assert b.output.tolist() == [False, True, False, True], "default: the last token of each sequence"
    assert b.seqs == (0, 1) and b.n_tokens == 4
    e = Batch(embd=np.zeros((3, 8)), pos=[2, 3, 4])
    assert e.tokens is None and e.seq_id.tolist() == [0, 0, 0] and e.embd.dtype == np.float32
    s = Batch.simple([1, 2, 3], pos0=7, seq_id=2, all_outputs=True)
    assert s.pos.tolist() == [7, 8, 9] and s.output.all() and (s.seq_id == 2).all()


def test_simple_with_embd_rows_equals_the_general_batch() -> None:
    rows = np.arange(24, dtype=np.float64).reshape(3, 8)
    s = Batch.simple([1, 2, 3], pos0=4, seq_id=1, embd=rows)
    g = Batch([1, 2, 3], embd=rows, pos=[4, 5, 6], seq_id=1)
    for name in ("tokens", "embd", "pos", "seq_id", "output"):
        a, b = getattr(s, name), getattr(g, name)
        assert a.dtype == b.dtype and np.array_equal(a, b), name
    assert s.seqs == g.seqs == (1,)
    with pytest.raises(BatchError, match="embd has 2 rows, tokens has 3"):
        Batch.simple([1, 2, 3], embd=rows[:2])
    with pytest.raises(BatchError, match="NaN or an infinity"):
        Batch.simple([1, 2, 3], embd=np.full((3, 8), np.nan))


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(pos=[]), "needs tokens or embd"),
        (dict(tokens=[], pos=[]), "empty"),
        (dict(tokens=[1, 2], pos=[0]), "pos has 1 entries, the batch has 2 tokens"),
        (dict(tokens=[1, 2], pos=[0, 1], seq_id=[0]), "seq_id has 1 entries"),
        (dict(tokens=[1, 2], pos=[0, 1], output=[True]), r"output must have shape \(2,\)"),
        (dict(tokens=[[1, 2]], pos=[0, 1]), "tokens must be 1-D"),
        (dict(tokens=[1.5, 2.0], pos=[0, 1]), "tokens must be integers"),
        (dict(tokens=[1, 2], embd=np.zeros((3, 4)), pos=[0, 1]), "embd has 3 rows, tokens has 2"),
        (dict(embd=np.zeros(4), pos=[0]), "embd must be 2-D"),
        (dict(tokens=[1, 2], pos=[0, -1]), "token 1 has pos -1"),
        (dict(tokens=[1, 2], pos=[0, 1], seq_id=[0, -2]), "token 1 has seq_id -2"),
        (dict(tokens=[1, 2, 3], pos=[4, 5, 7]), "token 2 .seq 0. has pos 7, expected 6"),
        (dict(tokens=[1, 2, 3], pos=[4, 5, 5]), "token 2 .seq 0. has pos 5, expected 6"),
        (dict(tokens=[1, 2, 3], pos=[0, 3, 1], seq_id=[0, 1, 0]), None),  # interleaved: fine
        (dict(tokens=[1, 2, 3], pos=[1, 3, 0], seq_id=[0, 1, 0]), "token 2 .seq 0. has pos 0, expected 2"),
    ],
)
def test_bad_batches(kwargs: dict, match: str | None) -> None:
    if match is None:
        Batch(**kwargs)
        return
    with pytest.raises(BatchError, match=match):
        Batch(**kwargs)


def test_batch_check_against_context() -> None:
    b = Batch([1, 2, 99], pos=[0, 0, 1], seq_id=[0, 3, 3])
    b.check(n_seq_max=4, n_vocab=100)
    with pytest.raises(BatchError, match=r"token 1 has seq_id 3, must be in \[0, 3\)"):
        b.check(n_seq_max=3)
    with pytest.raises(BatchError, match=r"token 2 has id 99, must be in \[0, 99\)"):
        b.check(n_seq_max=4, n_vocab=99)
    e = Batch(embd=np.zeros((2, 8)), pos=[0, 1])
    with pytest.raises(BatchError, match="embd rows have 8 values, the model needs n_embd=16"):
        e.check(n_seq_max=1, n_embd=16)


def test_dummy_ubatch_shape() -> None:
    u = UBatch.dummy(3, 4)
    assert (u.n_seqs, u.n_seq_tokens, u.n_tokens) == (3, 4, 12)
    assert u.seq_pos(2).tolist() == [0, 1, 2, 3]
