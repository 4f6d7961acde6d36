"""The memory interface (KV cache + recurrent state), its per-ubatch graph inputs and helpers.

Only `MemoryContext.apply()` mutates what a graph depends on: `init_batch` plans every ubatch
of a batch on copies (slots, position checks) and raises before anything changes; `apply()`
then commits one ubatch at a time, in order, and returns the inputs its graph needs. The
`seq_*` calls mutate directly, but only after all their checks pass (a refusal returns False
or raises and changes nothing). Any mutation outdates a pending MemoryContext.

`Memory` is the interface (every public call); `MemoryComponent` is a memory that keeps state
itself and implements the per-component hooks (abstract: a missing hook fails at construction).
Implementations: `KVCache` (kv_cache.py, attention layers), `RecurrentMemory` (recurrent.py,
delta-net layers) and `HybridMemory` (hybrid.py: one of each, split by layer); `make_memory`
(hybrid.py) picks the right one for a model's layers. Imports run one way:
base <- kv_cache, recurrent <- hybrid; update.py builds the pending state updates as a graph.

A decode, as the Context drives it:

    ubs = split(batch, n_ubatch, n_rs_seq)            # models/batch.py
    mctx = memory.init_batch(ubs)                     # raises: nothing changed
    for ub in ubs:
        inp = mctx.apply()                            # UBatchInputs
        # before the graph runs, on the state tensors (through their backend):
        #   inp.kv.k_shift: re-rotate K of every attention layer by these per-cell deltas
        #   inp.rs.copies:  copy rows src -> dst of every r_l / s_l, in order
        #   inp.rs.zero_rows: then zero these rows of every r_l / s_l
        # then set the graph inputs (kv.slots, kv.mask, rs.src_rows, rs.dst_rows) and run
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np

import graphir as gr
from graphir.types import DType

from ..argcheck import int_arg, is_int, show
from ..batch import BatchError, UBatch

# the types a state leaf may have, and their numpy types (host data)
STATE_TYPES = {DType.F16: np.float16, DType.F32: np.float32}


class MemoryFullError(RuntimeError):
    """The ubatches of a batch do not fit the memory (nothing was changed)."""


@dataclass(frozen=True, eq=False)
class KVInputs:
    """What an attention layer's graph needs for one ubatch (shapes in ne order).

    Attributes:
        n_kv: cells the graph attends over: view K/V caches as [.., n_kv] (cells 0..n_kv-1).
            Padded (to 256 by default, at most n_ctx) so consecutive decode steps share a plan.
        slots: I32 (n_tokens,) the cell of each ubatch row: `set_rows(cache, k_cur, slots)`.
        mask: F32 ne [n_kv, n_tokens_pad] (numpy (n_tokens_pad, n_kv)): 0 where row t may attend
            cell c (same sequence, cell pos <= token pos), -inf elsewhere (other sequences,
            empty cells, padding rows).
        k_shift: I32 (n_ctx,) pending position deltas per cell from `seq_add`, or None. Before
            this ubatch's graph runs, re-rotate K rows by these deltas (rope with pos = delta).
    """

    n_kv: int
    slots: np.ndarray
    mask: np.ndarray
    k_shift: np.ndarray | None = None


@dataclass(frozen=True, eq=False)
class RSInputs:
    """What a delta-net layer's graph needs for one ubatch. Rows index the r/s state tensors.

    Attributes:
        src_rows: I32 (n_seqs,) rows to read each sequence's initial conv and ssm state from
            (`get_rows(cache, src_rows)`): plane 0 normally, plane r after a rollback of r tokens.
        dst_rows: I32 (1 + n_snapshots, n_seqs): `dst_rows[j]` receives the state j tokens before
            the end of the ubatch (j = 0: final state). Write gated_delta_net's slot j there, and
            the conv window ending j tokens before the end.
        n_snapshots: planes 1..n_snapshots to write; 0 when no snapshots are needed (then run
            gated_delta_net with snapshots=1). Else use snapshots = 1 + n_snapshots.
        fresh: bool (n_seqs,) which sequences start from the zero state.
        copies: (src_row, dst_row) state-row copies from `seq_cp` to perform, in order, on every
            r and s tensor before this ubatch's graph runs (empty for later ubatches).
        zero_rows: rows to set to zero on every r and s tensor before this ubatch's graph runs,
            after the copies: the src rows of the fresh sequences.
    """

    src_rows: np.ndarray
    dst_rows: np.ndarray
    n_snapshots: int
    fresh: np.ndarray
    copies: tuple[tuple[int, int], ...] = ()
    zero_rows: tuple[int, ...] = ()

    @property
    def snapshots(self) -> bool:
        return self.n_snapshots > 0


@dataclass(frozen=True, eq=False)
class UBatchInputs:
    """The graph inputs of one ubatch: `kv` for attention layers, `rs` for delta-net layers
    (None where the memory has no such layers). `reserve` marks init_full's placeholders:
    right shapes, values not meant to be run."""

    ubatch: UBatch
    kv: KVInputs | None = None
    rs: RSInputs | None = None
    reserve: bool = False


@dataclass(frozen=True)
class MemorySizes:
    """Bytes of persistent state."""

    kv_bytes: int = 0  # K and V caches of every attention layer
    rs_bytes: int = 0  # conv + ssm states of every delta-net layer, all planes
    rs_snapshot_bytes: int = 0  # the part of rs_bytes that n_rs_seq > 0 adds (planes 1..n_rs_seq)

    @property
    def total(self) -> int:
        return self.kv_bytes + self.rs_bytes

    def __add__(self, other: MemorySizes) -> MemorySizes:
        return MemorySizes(self.kv_bytes + other.kv_bytes, self.rs_bytes + other.rs_bytes,
                           self.rs_snapshot_bytes + other.rs_snapshot_bytes)  # fmt: skip


def norm_range(p0: int, p1: int) -> tuple[float, float]:
    """seq_* position ranges: p0 < 0 -> 0, p1 < 0 -> infinity; the range is [p0, p1)."""
    return (0 if p0 < 0 else p0), (np.inf if p1 < 0 else p1)


def check_continuity(name: str, ubatches: Sequence[UBatch], pos_max: Callable[[int], int]) -> None:
    """Each sequence's tokens must continue its memory: first pos == pos_max + 1 (when non-empty)."""
    last: dict[int, int] = {}
    for i, ub in enumerate(ubatches):
        for g, s in enumerate(ub.seqs):
            p = ub.seq_pos(g)
            prev = last.get(s, pos_max(s))
            if prev >= 0 and p[0] != prev + 1:
                raise BatchError(f"[{name}] ubatch {i}: seq {s} starts at pos {p[0]} but its memory ends at "
                                 f"pos {prev}; positions must continue at {prev + 1} (seq_rm first to redo)")  # fmt: skip
            last[s] = int(p[-1])


def state_leaf(type: DType, ne: tuple[int, int], name: str) -> gr.Tensor:
    """A zeroed leaf with host data that graphs may write (set_rows/cpy): state, not a weight."""
    dtype = np.dtype(STATE_TYPES[type])
    nbytes = ne[0] * ne[1] * dtype.itemsize
    buf = np.zeros(nbytes + 64, np.uint8)  # 64-byte aligned: kernels stream rows into it
    off = -buf.ctypes.data % 64
    t = gr.new_weight(type, ne, buf[off : off + nbytes].view(dtype).reshape(ne[1], ne[0]), name)
    t.flags &= ~gr.Flag.PARAM
    return t


class Memory(abc.ABC):
    """The memory interface. A memory is made of `components` (itself, or its parts), each a
    `MemoryComponent` that keeps state; every call below goes to every component.

    The seq_* API, with `seq < 0` meaning every sequence where noted and [p0, p1) ranges
    normalized by `norm_range`:
        seq_rm(seq, p0, p1) -> bool; can_seq_rm(...) -> bool (the dry run);
        seq_cp(src, dst, p0=-1, p1=-1); seq_keep(seq); seq_add(seq, p0, p1, delta);
        seq_pos_min(seq) / seq_pos_max(seq) -> int (-1 when the sequence is empty).
    """

    n_seq_max: int

    def __init__(self, n_seq_max: int) -> None:
        if n_seq_max < 1:
            raise ValueError(f"[memory] n_seq_max must be >= 1, got {n_seq_max}")
        self.n_seq_max = n_seq_max
        self._version = 0

    @property
    @abc.abstractmethod
    def components(self) -> tuple[MemoryComponent, ...]:
        """The parts that keep state, in a fixed order (one plan item and one input each)."""

    # ---- planning / applying --------------------------------------------------------------
    def init_batch(self, ubatches: Sequence[UBatch]) -> MemoryContext:
        """Plan all ubatches (no mutation). Raises BatchError (bad seq ids, positions that do not
        continue the memory) or MemoryFullError (e.g. "context full: need N cells, M free")."""
        for i, ub in enumerate(ubatches):
            bad = [s for s in ub.seqs if not 0 <= s < self.n_seq_max]
            if bad:
                raise BatchError(f"[memory] ubatch {i}: seq_id {bad[0]} out of range [0, {self.n_seq_max})")
        plans = [c._plan(ubatches) for c in self.components]
        return MemoryContext(self, list(ubatches), [list(p) for p in zip(*plans)] if ubatches else [])

    def init_full(self, n_seq_tokens: int, n_seqs: int = 1) -> UBatchInputs:
        """Placeholder inputs of the worst-case shapes (n_kv = n_ctx, snapshots for this
        ubatch shape) for a ubatch of n_seqs x n_seq_tokens, to compile/reserve the largest
        graph at creation. No mutation; `reserve=True`: never run a graph on them."""
        ub = UBatch.dummy(n_seqs, n_seq_tokens)
        parts = {type(c)._field: c._reserve(ub) for c in self.components}
        return UBatchInputs(ub, reserve=True, **parts)

    # ---- versions: a mutation outdates pending contexts ------------------------------------
    def _touch(self) -> None:
        self._version += 1

    def _versions(self) -> tuple[int, ...]:
        return tuple(c._version for c in self.components)

    # ---- sequences ----------------------------------------------------------------------------
    def _check_seq(self, seq: object, allow_all: bool = False, name: str = "seq_id") -> int:
        """seq must be an integer in [0, n_seq_max); with allow_all any negative seq (= every
        sequence) too. Returns it as an int."""
        if not is_int(seq):
            raise ValueError(f"[memory] {name} must be an integer, got {show(seq)} ({type(seq).__name__})")
        if seq >= self.n_seq_max or (seq < 0 and not allow_all):
            what = "< 0 (all) or in " if allow_all else ""
            raise ValueError(f"[memory] {name} {seq} out of range: must be {what}[0, {self.n_seq_max})")
        return int(seq)

    @staticmethod
    def _check_range(p0: object, p1: object) -> tuple[int, int]:
        return int_arg("memory", "p0", p0), int_arg("memory", "p1", p1)

    def seq_rm(self, seq: int, p0: int = -1, p1: int = -1) -> bool:
        """Remove positions [p0, p1) of `seq` (all sequences if seq < 0). False: refused, nothing changed."""
        if not self.can_seq_rm(seq, p0, p1):
            return False
        seq, (p0, p1) = int(seq), self._check_range(p0, p1)
        for c in self.components:
            c._seq_rm(seq, p0, p1)
            c._touch()
        return True

    def can_seq_rm(self, seq: int, p0: int = -1, p1: int = -1) -> bool:
        """Whether seq_rm(seq, p0, p1) would succeed (no mutation)."""
        seq, (p0, p1) = self._check_seq(seq, allow_all=True), self._check_range(p0, p1)
        return all(c._can_seq_rm(seq, p0, p1) for c in self.components)

    def seq_cp(self, src: int, dst: int, p0: int = -1, p1: int = -1) -> None:
        """Copy the tokens of `src` at positions [p0, p1) to `dst` (llama.cpp's llama_memory_seq_cp).

        A KV cache adds dst to those cells (onto a populated dst the two merge, as in llama.cpp). A
        recurrent state is copied whole: the range must cover all of src, and dst must be empty (a
        state cannot merge two sequences; seq_rm(dst) first), so in a hybrid the KV cache and the
        recurrent state always describe the same sequences. Copying an empty src changes nothing.
        Raises ValueError, before anything changes, for a copy some component cannot make."""
        src, dst = self._check_seq(src, name="src"), self._check_seq(dst, name="dst")
        p0, p1 = self._check_range(p0, p1)
        if src == dst:
            return
        for c in self.components:
            c._check_seq_cp(src, dst, p0, p1)
        for c in self.components:
            c._seq_cp(src, dst, p0, p1)
            c._touch()

    def seq_keep(self, seq: int) -> None:
        """Remove every sequence but `seq`."""
        seq = self._check_seq(seq)
        for c in self.components:
            c._seq_keep(seq)
            c._touch()

    def seq_add(self, seq: int, p0: int, p1: int, delta: int) -> None:
        """Add `delta` to the positions in [p0, p1) of `seq`'s tokens (llama.cpp's llama_memory_seq_add;
        KV: records the K re-rotation; a token moved below position 0 is dropped).

        Raises ValueError, before anything changes, when a component cannot make the shift: a KV
        cache refuses to move cells `seq` shares with another sequence (that would move the other
        one's tokens too); a recurrent state keeps only where its tokens start and end, so it moves
        all of a sequence's positions or none, and drops all of them or none; and no position may
        leave llama.cpp's int32."""
        seq, (p0, p1) = self._check_seq(seq), self._check_range(p0, p1)
        delta = int_arg("memory", "delta", delta)
        if delta == 0:
            return
        for c in self.components:
            c._check_seq_add(seq, p0, p1, delta)
        for c in self.components:
            c._seq_add(seq, p0, p1, delta)
            c._touch()

    def seq_pos_min(self, seq: int) -> int:
        seq = self._check_seq(seq)
        return max(c._seq_pos_min(seq) for c in self.components)

    def seq_pos_max(self, seq: int) -> int:
        seq = self._check_seq(seq)
        return min(c._seq_pos_max(seq) for c in self.components)

    def clear(self) -> None:
        """Forget every sequence (data stays: masks hide KV cells, fresh states are zeroed on use)."""
        for c in self.components:
            c._clear()
            c._touch()

    def sizes(self) -> MemorySizes:
        return sum((c._sizes() for c in self.components), MemorySizes())

    def bookkeeping(self) -> dict[str, Any]:
        """A deep copy of all bookkeeping (for tests and debugging)."""
        return {k: v for c in self.components for k, v in c._bookkeeping().items()}


class MemoryComponent(Memory):
    """A memory that keeps state itself (its one component). Subclasses set `_field` (the
    `UBatchInputs` field its inputs go to) and implement every hook below; the public calls of
    `Memory` check arguments first and call a mutating hook only once every component agreed."""

    _field: ClassVar[str]  # "kv" or "rs"

    @property
    def components(self) -> tuple[MemoryComponent, ...]:
        return (self,)

    # ---- planning / applying --------------------------------------------------------------
    @abc.abstractmethod
    def _plan(self, ubatches: Sequence[UBatch]) -> list[Any]:
        """One plan item per ubatch (pure: no mutation); raises when the ubatches do not fit."""

    @abc.abstractmethod
    def _commit(self, ubatch: UBatch, plan_item: Any) -> KVInputs | RSInputs:
        """Apply one planned ubatch; returns its graph inputs."""

    @abc.abstractmethod
    def _reserve(self, ubatch: UBatch) -> KVInputs | RSInputs:
        """Placeholder inputs of the worst-case shapes for `ubatch` (no mutation)."""

    # ---- sequences (arguments already checked by Memory) --------------------------------------
    @abc.abstractmethod
    def _can_seq_rm(self, seq: int, p0: int, p1: int) -> bool: ...

    @abc.abstractmethod
    def _seq_rm(self, seq: int, p0: int, p1: int) -> None: ...

    @abc.abstractmethod
    def _check_seq_cp(self, src: int, dst: int, p0: int, p1: int) -> None:
        """Raise ValueError when this component cannot copy (before any component mutates)."""

    @abc.abstractmethod
    def _seq_cp(self, src: int, dst: int, p0: int, p1: int) -> None: ...

    @abc.abstractmethod
    def _seq_keep(self, seq: int) -> None: ...

    @abc.abstractmethod
    def _check_seq_add(self, seq: int, p0: int, p1: int, delta: int) -> None:
        """Raise ValueError when this component cannot shift (before any component mutates)."""

    @abc.abstractmethod
    def _seq_add(self, seq: int, p0: int, p1: int, delta: int) -> None: ...

    @abc.abstractmethod
    def _seq_pos_min(self, seq: int) -> int: ...

    @abc.abstractmethod
    def _seq_pos_max(self, seq: int) -> int: ...

    @abc.abstractmethod
    def _clear(self) -> None: ...

    @abc.abstractmethod
    def _sizes(self) -> MemorySizes: ...

    @abc.abstractmethod
    def _bookkeeping(self) -> dict[str, Any]: ...


@dataclass(eq=False)
class MemoryContext:
    """The plan of one batch. `apply()` commits the next ubatch and returns its graph inputs;
    call it once per ubatch, in order (`for ub in ctx.ubatches: inputs = ctx.apply()`)."""

    memory: Memory
    ubatches: list[UBatch]
    plans: list[list[Any]]  # per ubatch, one plan item per component
    next: int = 0
    _versions: tuple[int, ...] = field(default=(), repr=False)

    def __post_init__(self) -> None:
        self._versions = self.memory._versions()

    @property
    def done(self) -> bool:
        return self.next >= len(self.ubatches)

    def apply(self) -> UBatchInputs:
        if self.done:
            raise RuntimeError(f"[memory] all {len(self.ubatches)} ubatches were applied already")
        if self.memory._versions() != self._versions:
            raise RuntimeError("[memory] the memory changed since init_batch; plan the batch again")
        ub = self.ubatches[self.next]
        parts = {}
        for c, item in zip(self.memory.components, self.plans[self.next]):
            parts[type(c)._field] = c._commit(ub, item)
            c._touch()
        self.next += 1
        self._versions = self.memory._versions()
        return UBatchInputs(ub, **parts)
