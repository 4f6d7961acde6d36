"""Batches of tokens and their split into ubatches (llama-batch's equal split).

A `Batch` is what a caller decodes: tokens and/or embedding rows, each with a position, ONE
sequence id and an output flag. `split` cuts it into `UBatch`es, the unit a graph runs on:
n_seqs sequences x n_seq_tokens tokens each (equal lengths, since `gated_delta_net` takes
[.., n_tokens, n_seqs]), rows seq-major: row `g * n_seq_tokens + t` is token t of the g-th
sequence of the ubatch (ggml's layout for equal splits).

The split keeps the last `1 + n_rs_seq` tokens of every sequence in ONE ubatch, so a verify
batch of up to `1 + n_rs_seq` tokens is always snapshotted whole and can be rolled back. Only
such a ubatch (`UBatch.final`: the batch's last tokens of one of its sequences) can be rolled
back -- the next ubatch of a sequence overwrites its state -- so only it writes recurrent
snapshots (DESIGN section 13): a long prompt's earlier ubatches pay nothing for rollback.

NOTE: a token belongs to exactly one sequence (llama.cpp allows several for KV-only caches;
share a prompt with `seq_cp` instead), so every memory type takes the same ubatches.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property

import numpy as np

from .argcheck import INT32_MAX, bool_arg, int_arg, int_array, show


class BatchError(ValueError):
    """A malformed batch or an impossible split; the message names the bad index and value."""


def _fail(msg: str) -> None:
    raise BatchError(f"[batch] {msg}")


def _int_array(name: str, values, n: int | None) -> np.ndarray:
    """A 1-D integer array (ids, positions, sequence ids: integer dtypes only, within int32) as int64."""
    arr = int_array("batch", name, values, BatchError)
    if n is not None and arr.shape[0] != n:
        _fail(f"{name} has {arr.shape[0]} entries, the batch has {n} tokens")
    return arr


def _embd_array(embd) -> np.ndarray:
    """Floating-point rows (n_tokens, n_embd), finite, as float32."""
    try:
        arr = np.asarray(embd)
    except (ValueError, TypeError) as e:
        raise BatchError(f"[batch] embd must be a 2-D array of floats (n_tokens, n_embd): {e}") from None
    if arr.dtype.kind != "f":
        _fail(f"embd must be floating point rows (n_tokens, n_embd), got dtype {arr.dtype}")
    if arr.ndim != 2:
        _fail(f"embd must be 2-D (n_tokens, n_embd), got shape {arr.shape}")
    with np.errstate(over="ignore"):  # a value beyond float32 becomes inf, refused just below
        arr = arr.astype(np.float32)
    if not np.isfinite(arr).all():
        bad = np.flatnonzero(~np.isfinite(arr).all(axis=1))
        _fail(f"embd row {bad[0]} holds a NaN or an infinity (as float32)")
    return arr


def _output_array(output, n: int) -> np.ndarray:
    """Output flags: bools (or integers 0/1), one per token."""
    out = np.asarray(output)
    if out.shape != (n,):
        _fail(f"output must have shape ({n},), got {out.shape}")
    if out.dtype.kind != "b" and not (out.dtype.kind in "iu" and np.isin(out, (0, 1)).all()):
        _fail(f"output must be booleans (one per token), got dtype {out.dtype}: {show(output)}")
    return out.astype(bool)


@dataclass(frozen=True, eq=False)
class Batch:
    """Tokens to decode; arrays are normalized and checked on construction.

    Attributes:
        tokens: int64 (n,) token ids, or None for an embeddings-only batch.
        embd: float32 (n, n_embd) input rows, or None (a batch may carry both: the MTP head).
        pos: int64 (n,) positions, >= 0; consecutive and increasing per sequence in batch order.
        seq_id: int64 (n,) the one sequence of each token, >= 0 (an int broadcasts).
        output: bool (n,) which tokens produce outputs; default: the last token of each sequence.
    """

    tokens: np.ndarray | None
    embd: np.ndarray | None
    pos: np.ndarray
    seq_id: np.ndarray
    output: np.ndarray
    seqs: tuple[int, ...]  # sequence ids in order of first appearance

    def __init__(self, tokens=None, embd=None, *, pos, seq_id=0, output=None) -> None:
        if tokens is None and embd is None:
            _fail("needs tokens or embd")
        n = None
        if tokens is not None:
            tokens = _int_array("tokens", tokens, None)
            n = tokens.shape[0]
        if embd is not None:
            embd = _embd_array(embd)
            if n is not None and embd.shape[0] != n:
                _fail(f"embd has {embd.shape[0]} rows, tokens has {n}")
            n = embd.shape[0]
        if n == 0:
            _fail("is empty (n_tokens == 0)")
        pos = _int_array("pos", pos, n)
        if np.ndim(seq_id) == 0 and not isinstance(seq_id, str | bytes):
            seq = np.full(n, int_arg("batch", "seq_id", seq_id, hi=INT32_MAX, error=BatchError), np.int64)
        else:
            seq = _int_array("seq_id", seq_id, n)
        if output is not None:
            output = _output_array(output, n)
        self._init(tokens, embd, pos, seq, output)

    def _init(self, tokens: np.ndarray | None, embd: np.ndarray | None, pos: np.ndarray, seq: np.ndarray,
              out: np.ndarray | None) -> None:  # fmt: skip
        """Set the normalized arrays (output None: the last token of each sequence), then check the order."""
        single = seq[0] == seq[-1] and (seq.shape[0] < 3 or (seq == seq[0]).all())
        if single:  # the common case (one sequence): no sort
            seqs = (int(seq[0]),)
        else:
            _, first = np.unique(seq, return_index=True)
            seqs = tuple(int(seq[i]) for i in sorted(first))
        if out is None:
            out = np.zeros(seq.shape[0], bool)
            if single:
                out[-1] = True
            else:
                for s in seqs:
                    out[np.flatnonzero(seq == s)[-1]] = True
        for name, val in (("tokens", tokens), ("embd", embd), ("pos", pos), ("seq_id", seq), ("output", out),
                          ("seqs", seqs)):  # fmt: skip
            object.__setattr__(self, name, val)
        self._check_order(single)

    @classmethod
    def simple(cls, tokens: Sequence[int], pos0: int = 0, seq_id: int = 0, all_outputs: bool = False,
               embd=None) -> Batch:  # fmt: skip
        """One sequence of tokens at positions pos0, pos0+1, ...; outputs for the last (or all).
        embd: input rows (n, n_embd) with the tokens (the MTP head's rows), or None."""
        tokens = _int_array("tokens", tokens, None)
        n = len(tokens)
        if embd is not None:
            embd = _embd_array(embd)
            if embd.shape[0] != n:
                _fail(f"embd has {embd.shape[0]} rows, tokens has {n}")
        pos0 = int_arg("batch", "pos0", pos0, None, INT32_MAX - max(n - 1, 0), BatchError)
        all_outputs = bool_arg("batch", "all_outputs", all_outputs, BatchError)
        if n == 0:
            _fail("is empty (n_tokens == 0)")
        if pos0 < 0:
            _fail(f"token 0 has pos {pos0}; positions must be >= 0")
        seq_id = int_arg("batch", "seq_id", seq_id, None, INT32_MAX, BatchError)
        if seq_id < 0:
            _fail(f"token 0 has seq_id {seq_id}; sequence ids must be >= 0")
        out = np.ones(n, bool) if all_outputs else np.arange(n) == n - 1
        batch = object.__new__(cls)
        # NOTE: built in place, every check done above (one sequence, consecutive positions)
        for name, val in (("tokens", tokens), ("embd", embd), ("pos", np.arange(pos0, pos0 + n, dtype=np.int64)),
                          ("seq_id", np.full(n, seq_id, np.int64)), ("output", out), ("seqs", (seq_id,))):  # fmt: skip
            object.__setattr__(batch, name, val)
        return batch

    @property
    def n_tokens(self) -> int:
        return int(self.pos.shape[0])

    def _check_order(self, single: bool) -> None:
        """Positions >= 0, sequence ids >= 0, each sequence's positions consecutive and increasing
        (single: the batch holds one sequence)."""
        if self.pos.min() < 0:
            bad = int(np.flatnonzero(self.pos < 0)[0])
            _fail(f"token {bad} has pos {self.pos[bad]}; positions must be >= 0")
        if self.seq_id.min() < 0:
            bad = int(np.flatnonzero(self.seq_id < 0)[0])
            _fail(f"token {bad} has seq_id {self.seq_id[bad]}; sequence ids must be >= 0")
        n = self.pos.shape[0]
        if single and (n == 1 or self.pos[-1] - self.pos[0] == n - 1 and (n == 2 or (np.diff(self.pos) == 1).all())):
            return
        for s in self.seqs:
            idx = np.flatnonzero(self.seq_id == s)
            step = np.diff(self.pos[idx])
            bad = np.flatnonzero(step != 1)
            if bad.size:
                i = idx[bad[0] + 1]
                _fail(f"token {i} (seq {s}) has pos {self.pos[i]}, expected {self.pos[idx[bad[0]]] + 1}: "
                      "positions of a sequence must be consecutive and increasing")  # fmt: skip

    def check(self, n_seq_max: int, n_vocab: int | None = None, n_embd: int | None = None) -> None:
        """The checks that need the context: seq ids < n_seq_max, token ids < n_vocab, embd width."""
        if max(self.seqs) >= n_seq_max:
            bad = np.flatnonzero(self.seq_id >= n_seq_max)
            _fail(f"token {bad[0]} has seq_id {self.seq_id[bad[0]]}, must be in [0, {n_seq_max}) (n_seq_max)")
        if n_vocab is not None and self.tokens is not None and (self.tokens.min() < 0 or self.tokens.max() >= n_vocab):
            bad = np.flatnonzero((self.tokens < 0) | (self.tokens >= n_vocab))
            if bad.size:
                _fail(f"token {bad[0]} has id {self.tokens[bad[0]]}, must be in [0, {n_vocab}) (n_vocab)")
        if n_embd is not None and self.embd is not None and self.embd.shape[1] != n_embd:
            _fail(f"embd rows have {self.embd.shape[1]} values, the model needs n_embd={n_embd}")


@dataclass(frozen=True, eq=False)
class UBatch:
    """n_seqs sequences x n_seq_tokens tokens; row `g * n_seq_tokens + t` = token t of sequence g.

    Attributes:
        seqs: the sequence id of each group g (distinct), len n_seqs.
        n_seq_tokens: tokens per sequence.
        idx: int64 (n_tokens,) the batch index of each row (maps outputs back to the batch).
        tokens / embd / pos / output: the batch's arrays gathered in row order.
        final: the ubatch holds the batch's last tokens of at least one of its sequences, i.e. it can
            be rolled back (the recurrent memory writes snapshots for it, and only for it).
    """

    seqs: tuple[int, ...]
    n_seq_tokens: int
    idx: np.ndarray
    tokens: np.ndarray | None
    embd: np.ndarray | None
    pos: np.ndarray
    output: np.ndarray
    final: bool = True

    @classmethod
    def from_batch(cls, batch: Batch, seqs: Sequence[int], rows: np.ndarray, final: bool = True) -> UBatch:
        """The ubatch of `batch` rows `rows` (n_seqs * n_seq_tokens batch indices, seq-major);
        final=False when none of its sequences ends in it (no rollback, no snapshots)."""
        rows = np.asarray(rows, np.int64)
        n_seq_tokens = rows.shape[0] // len(seqs)
        return cls(
            seqs=tuple(int(s) for s in seqs),
            n_seq_tokens=n_seq_tokens,
            idx=rows,
            tokens=None if batch.tokens is None else batch.tokens[rows],
            embd=None if batch.embd is None else batch.embd[rows],
            pos=batch.pos[rows],
            output=batch.output[rows],
            final=final,
        )

    @classmethod
    def dummy(cls, n_seqs: int, n_seq_tokens: int) -> UBatch:
        """A placeholder ubatch of the given shape (token 0, positions 0..), for worst-case graphs."""
        n = n_seqs * n_seq_tokens
        return cls(tuple(range(n_seqs)), n_seq_tokens, np.arange(n), np.zeros(n, np.int64), None,
                   np.tile(np.arange(n_seq_tokens), n_seqs), np.ones(n, bool))  # fmt: skip

    @property
    def n_seqs(self) -> int:
        return len(self.seqs)

    @property
    def n_tokens(self) -> int:
        return int(self.idx.shape[0])

    @cached_property
    def seq_id(self) -> np.ndarray:
        """int64 (n_tokens,) the sequence of each row."""
        return np.repeat(np.asarray(self.seqs, np.int64), self.n_seq_tokens)

    @cached_property
    def out_rows(self) -> np.ndarray:
        """int32 rows (within the ubatch) whose outputs were asked for: the graph's `out_ids`."""
        return np.flatnonzero(self.output).astype(np.int32)

    @cached_property
    def out_idx(self) -> np.ndarray:
        """int64 batch indices of `out_rows`, in the same order (to scatter outputs back)."""
        return self.idx[self.output]

    def seq_pos(self, g: int) -> np.ndarray:
        """Positions of group g's tokens (consecutive)."""
        return self.pos[g * self.n_seq_tokens : (g + 1) * self.n_seq_tokens]


def _allowed(k: int, remaining: int, tail: int) -> bool:
    """Taking k of a sequence's `remaining` tokens keeps its last `tail` tokens together."""
    return k == remaining or k <= remaining - tail


def split(batch: Batch, n_ubatch: int, n_rs_seq: int = 0) -> list[UBatch]:
    """Cut `batch` into equal-length ubatches of at most n_ubatch tokens.

    Guarantees: every token in exactly one ubatch; a sequence's tokens keep their order across
    and within ubatches; the last `min(len, 1 + n_rs_seq)` tokens of each sequence lie in one
    ubatch; `final` marks the ubatches that end one of their sequences. Each step takes the
    chunk length k (and the sequences that can give k tokens without breaking their tail) that
    puts the most tokens into the ubatch; ties go to larger k.
    """
    if n_ubatch < 1 or n_rs_seq < 0:
        raise BatchError(f"[split] need n_ubatch >= 1 and n_rs_seq >= 0, got {n_ubatch}, {n_rs_seq}")
    tail = 1 + n_rs_seq
    if n_ubatch < tail:
        raise BatchError(f"[split] n_ubatch ({n_ubatch}) must be >= 1 + n_rs_seq ({tail}): "
                         "the tokens a rollback may undo must fit one ubatch")  # fmt: skip
    order = batch.seqs
    if len(order) == 1 and batch.n_tokens <= n_ubatch:  # the common case: the whole batch is one ubatch
        n = batch.n_tokens
        return [UBatch(order, n, np.arange(n), batch.tokens, batch.embd, batch.pos, batch.output, True)]
    rows = {s: np.flatnonzero(batch.seq_id == s) for s in order}
    done = dict.fromkeys(order, 0)
    out: list[UBatch] = []
    while True:
        rem = {s: len(rows[s]) - done[s] for s in order if done[s] < len(rows[s])}
        if not rem:
            return out
        # the best k is one of these break points (score is piecewise increasing in k between them)
        cands = {n_ubatch // n for n in range(1, len(rem) + 1)}
        for r in rem.values():
            cands |= {min(r, n_ubatch), min(r - tail, n_ubatch)}
        best: tuple[int, int, list[int]] = (0, 0, [])
        for k in sorted((c for c in cands if c >= 1), reverse=True):
            members = [s for s, r in rem.items() if _allowed(k, r, tail)][: n_ubatch // k]
            if k * len(members) > best[0]:
                best = (k * len(members), k, members)
        _, k, members = best
        ub_rows = np.concatenate([rows[s][done[s] : done[s] + k] for s in members])
        for s in members:
            done[s] += k
        final = any(done[s] == len(rows[s]) for s in members)
        out.append(UBatch.from_batch(batch, members, ub_rows, final))
