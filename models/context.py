"""The decoding context: memory + cached compiled plans over a loaded `Model` (DESIGN section 8).

    ctx = Context(Model.load(path), n_ctx=512, n_ubatch=128)
    out = ctx.decode(Batch.simple(prompt))           # logits of the last prompt token
    out = ctx.decode(Batch.simple([tok], len(prompt)))

`decode(batch)` validates the batch against the context (token ids, sequence ids, size) and the
memory (positions continue each sequence, the context has room) BEFORE anything changes: a
refused batch raises (BatchError / MemoryFullError) with the memory untouched. It then splits
the batch into ubatches (`models.batch.split`, keeping the last 1 + n_rs_seq tokens of every
sequence together), and per ubatch applies the memory, runs the pending state updates
(seq_cp row copies, fresh-row zeroing, K-shift) and the model graph.

Plan reuse: the built graph and its compiled plan are cached per `UBatchShape` (the dims that
fix the topology, with n_kv padded to 256 cells by the memory), so decode steps of the same
shape only set inputs and run: no graph building, no compiling. `stats` counts builds, runs
and cache hits.

The worst-case graph (n_ubatch tokens, every row an output, n_kv = n_ctx, the most snapshots)
is built and compiled at creation, so a context too large to run fails there, and its compute
buffer is what `compute_buffer_bytes()` reports.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np

import graphir as gr
from graphir import debug
from graphir.backends.base import default_threads
from graphir.backends.host import HostMemoryBackend
from graphir.compile import Plan, PlanStats
from graphir.compile.schedule import resolve_backends
from graphir.types import DType

from .argcheck import INT32_MAX, bool_arg, int_arg, opt_int_arg, show
from .batch import Batch, BatchError, UBatch, split
from .graph_context import GraphResult, StateTensors, UBatchShape
from .memory import MemorySizes, UBatchInputs, build_state_update, make_memory
from .model import Model


class NonFiniteError(FloatingPointError):
    """A decode produced NaN or infinite outputs (logits or h_nextn). The message names the first
    such row (batch index, sequence, position) and, when GRAPHIR_DEBUG is set, the first graph node
    that held a NaN (or, if there was none, an infinity): with the flag every run of the model
    graph goes node by node through the eval callback to find it."""


@dataclass(frozen=True, eq=False)
class DecodeResult:
    """The outputs of one decode, for the tokens the batch flagged as outputs, in batch order.

    Attributes:
        logits: float32 (n_outputs, n_vocab).
        h_nextn: float32 (n_outputs, n_embd), the post-output-norm hidden state the MTP head reads;
            only when the context was created with `embeddings_nextn=True` (and decode's h_nextn
            was not False), else None.
        out_idx: int64 (n_outputs,) the batch index of each row.
    """

    logits: np.ndarray
    h_nextn: np.ndarray | None
    out_idx: np.ndarray


@dataclass
class ContextStats:
    """Counters since creation (the worst-case reservation counts as one build and compile)."""

    decodes: int = 0  # successful decode calls
    tokens: int = 0  # tokens they decoded
    ubatches: int = 0
    t_decode: float = 0.0  # seconds spent in decode (successful or not)
    graph_builds: int = 0  # model graphs built (a cache miss builds and compiles one)
    plan_compiles: int = 0  # model plans compiled
    # seconds spent building and compiling them, the worst-case reservation at creation apart (it also
    # makes one-off copies of the weights: the cpu backend repacks Q8_0 weights at first lowering)
    t_compile: float = 0.0
    t_reserve: float = 0.0
    plan_hits: int = 0  # ubatches that reused a cached graph + plan
    plan_runs: int = 0  # model plan runs
    state_updates: int = 0  # update graphs run (K-shift; on device backends also seq_cp and fresh rows)


@dataclass(eq=False)
class _Entry:
    result: GraphResult
    plan: gr.Plan


class Context:
    """Runs a model's trunk on batches of tokens, with a KV cache + recurrent state memory.

    Args:
        model: the loaded model (shared; a context owns only its memory and plans).
        n_ctx: KV cells (the most positions all sequences together can hold).
        n_batch: the most tokens one `decode` call accepts.
        n_ubatch: the most tokens one graph run takes; clamped to n_batch (as llama.cpp does).
            Must be >= 1 + n_rs_seq (a rollback-able tail is decoded in one ubatch).
        n_seq_max: sequence ids are 0 .. n_seq_max-1.
        n_rs_seq: recurrent snapshot planes per sequence: how many tokens `seq_rm` can roll
            back after a multi-token ubatch (0: no rollback, no extra memory).
        backends: backend names in priority order (the cpu backend is the fallback).
        type_k, type_v: KV cache types, "f16" (default) or "f32".
        embeddings_nextn: also return each output row's post-norm hidden state (`h_nextn`).
        plan_cache_size: how many (shape -> graph + plan) entries to keep (least recently used
            are dropped; each holds a compute buffer).
        n_threads: threads of the cpu backend for this context's runs (default: the CPUs this
            process may use, `os.sched_getaffinity`).
    Raises:
        ValueError on bad sizes or types (integers must be ints, never bools or floats),
        BackendUnavailable for a backend that cannot run, MemoryError when the memory or the
        worst-case compute buffer cannot be allocated.

    Thread safety: a Context serves one thread at a time. A call (decode, seq_*, clear) that finds
    it busy with another one -- from another thread, or from an eval callback inside decode --
    raises RuntimeError at once instead of corrupting its memory. Contexts are independent: use
    one per thread (they may share one Model, whose weights, leafs and tokenizer are safe to share;
    their runs on the cpu backend take turns), or guard one Context with your own lock.
    """

    def __init__(self, model: Model, n_ctx: int = 512, n_batch: int = 512, n_ubatch: int = 512, n_seq_max: int = 1,
                 n_rs_seq: int = 0, backends: Sequence[str] = ("cpu",), type_k: str = "f16", type_v: str = "f16",
                 *, embeddings_nextn: bool = False, plan_cache_size: int = 16,
                 n_threads: int | None = None) -> None:  # fmt: skip
        n_ctx, n_batch, n_ubatch, n_seq_max, plan_cache_size = (
            int_arg("context", name, v, 1, INT32_MAX) for name, v in (("n_ctx", n_ctx), ("n_batch", n_batch),
            ("n_ubatch", n_ubatch), ("n_seq_max", n_seq_max), ("plan_cache_size", plan_cache_size)))  # fmt: skip
        n_threads = opt_int_arg("context", "n_threads", n_threads, 1)
        n_rs_seq = int_arg("context", "n_rs_seq", n_rs_seq, 0, INT32_MAX)
        embeddings_nextn = bool_arg("context", "embeddings_nextn", embeddings_nextn)
        for name, t in (("type_k", type_k), ("type_v", type_v)):
            if not isinstance(t, str | DType):
                raise ValueError(f"[context] {name} must be a type name such as 'f16', got {show(t)}")
        n_ubatch = min(n_ubatch, n_batch)
        if n_ubatch < 1 + n_rs_seq:
            raise ValueError(f"[context] n_ubatch ({n_ubatch}, after clamping to n_batch) must be >= 1 + n_rs_seq "
                             f"({1 + n_rs_seq}): a verify batch that may be rolled back runs in one ubatch")  # fmt: skip
        self.model = model
        self.hp = model.hp
        self.n_ctx, self.n_batch, self.n_ubatch = int(n_ctx), int(n_batch), int(n_ubatch)
        self.n_seq_max, self.n_rs_seq = int(n_seq_max), int(n_rs_seq)
        self.embeddings_nextn = bool(embeddings_nextn)
        resolved = resolve_backends(backends)
        self.backends = [b.name for b in resolved]
        # backends with a thread pool get this context's thread count before each run
        self._threaded = [b for b in resolved if hasattr(b, "n_threads")]
        # host-memory backends (cpu, ref) use the state leafs' own arrays in place (zero-copy)
        self._host_state = all(isinstance(b, HostMemoryBackend) for b in resolved)
        self.n_threads = int(n_threads) if n_threads is not None else default_threads()
        self.stats = ContextStats()
        self._busy = threading.Lock()  # held by every call; a second one raises (see the class docstring)
        self._plans: OrderedDict[UBatchShape, _Entry] = OrderedDict()
        self._plan_cache_size = int(plan_cache_size)
        try:
            self.memory = make_memory(self.hp, model.trunk_layers, self.n_ctx, self.n_seq_max, self.n_rs_seq,
                                      type_k, type_v)  # fmt: skip
            self.state = StateTensors.of(self.memory)
            self._reserve = self._entry(UBatchShape.of(self.memory.init_full(self.n_ubatch)), reserve=True)
        except MemoryError as e:
            raise MemoryError(f"[context] cannot allocate a context of n_ctx={n_ctx}, n_ubatch={n_ubatch}, "
                              f"n_seq_max={n_seq_max}, n_rs_seq={n_rs_seq}: {e}") from e  # fmt: skip

    # ---- sizes --------------------------------------------------------------------------------
    def memory_sizes(self) -> MemorySizes:
        """Bytes of persistent state: KV caches and recurrent states (snapshot planes included)."""
        return self.memory.sizes()

    def compute_buffer_bytes(self) -> int:
        """Compute-buffer bytes of the worst-case plan (all backends together)."""
        return sum(self._reserve.plan.stats.compute_bytes.values())

    @property
    def reserve_stats(self) -> PlanStats:
        """The worst-case plan's statistics (nodes, calls, per-backend compute and naive bytes)."""
        return self._reserve.plan.stats

    # ---- decoding -----------------------------------------------------------------------------
    def check(self, batch: Batch) -> None:
        """The context's checks of a batch (what `decode` refuses before touching memory);
        memory-side checks (positions, room) come from `memory.init_batch`."""
        if not isinstance(batch, Batch):
            raise TypeError(f"[context] decode takes a models.batch.Batch, got {type(batch).__name__}")
        batch.check(self.n_seq_max, self.hp.n_vocab, self.hp.n_embd)
        if batch.n_tokens > self.n_batch:
            raise BatchError(f"[context] batch has {batch.n_tokens} tokens, more than n_batch={self.n_batch}")

    def decode(self, batch: Batch, *, h_nextn: bool = True) -> DecodeResult:
        """Decode `batch`: tokens (or embedding rows) with positions, one sequence id each and
        output flags. Returns the outputs of the flagged tokens in batch order. h_nextn=False: do
        not read the h_nextn rows of a context made with `embeddings_nextn` (DecodeResult.h_nextn
        None): a caller that will not use them saves their copy and check.

        Raises (memory unchanged): TypeError / BatchError for a bad batch (token id, sequence
        id, n_embd, more than n_batch tokens, positions that do not continue a sequence),
        MemoryFullError when the KV cache has no room. An exception from a graph run itself
        (a bug, out of memory) cannot leave half-written state behind silently: the sequences
        of the failing ubatch are removed (their state may be half written; earlier ubatches
        of the batch stay decoded, later ones were never applied, so seq_pos_max says where
        each sequence stands), or, when the state-update graph failed (its row copies and
        K-shift may touch any sequence), the whole memory is cleared.
        """
        t0 = time.perf_counter()
        try:
            self._acquire("decode")  # NOTE: not `with self._exclusive(...)`: a generator costs ~3 us a call
            try:
                return self._decode(batch, h_nextn)
            finally:
                self._busy.release()
        finally:
            self.stats.t_decode += time.perf_counter() - t0

    def _decode(self, batch: Batch, h_nextn: bool) -> DecodeResult:
        self.check(batch)
        ubatches = split(batch, self.n_ubatch, self.n_rs_seq)
        mctx = self.memory.init_batch(ubatches)  # raises before any change
        out_idx = np.flatnonzero(batch.output)
        logits = np.empty((out_idx.shape[0], self.hp.n_vocab), np.float32)
        want_h = self.embeddings_nextn and h_nextn
        h = np.empty((out_idx.shape[0], self.hp.n_embd), np.float32) if want_h else None
        for _ in ubatches:
            ubi = mctx.apply()
            self._run_ubatch(ubi, np.searchsorted(out_idx, ubi.ubatch.out_idx), logits, h)
        self.stats.decodes += 1
        self.stats.tokens += batch.n_tokens
        self.stats.ubatches += len(ubatches)
        return DecodeResult(logits, h, out_idx)

    def _acquire(self, what: str) -> None:
        """One call at a time: a call that finds the context busy (another thread, or a callback
        re-entering decode) raises at once instead of corrupting the memory or the plans."""
        if not self._busy.acquire(blocking=False):
            raise RuntimeError(f"[context] {what}: this Context is in use by another call (another thread, or a "
                               "callback inside decode); a Context serves one thread at a time: use one Context "
                               "per thread, or guard its calls with a lock")  # fmt: skip

    @contextmanager
    def _exclusive(self, what: str) -> Iterator[None]:
        """`_acquire` for a block."""
        self._acquire(what)
        try:
            yield
        finally:
            self._busy.release()

    def _run_ubatch(self, ubi: UBatchInputs, rows: np.ndarray, logits: np.ndarray, h: np.ndarray | None) -> None:
        """State updates, then the model graph; outputs land in logits[rows] / h[rows]."""
        try:
            self._update_state(ubi)
        except BaseException as e:
            self.memory.clear()
            e.add_note("[context] the state update failed: the memory was cleared")
            raise
        try:
            entry = self._entry(UBatchShape.of(ubi))
            res, plan = entry.result, entry.plan
            res.inputs.set_from(plan, ubi)
            self._use_threads()
            finder = _FirstNonFinite() if debug.enabled(debug.SCHEDULE) else None
            plan.run(finder)
            self.stats.plan_runs += 1
            if res.logits is not None:
                _read_rows(plan, res.logits, logits, rows, "logits", ubi.ubatch, finder)
                if h is not None:
                    _read_rows(plan, res.h_nextn, h, rows, "h_nextn", ubi.ubatch, finder)
        except BaseException as e:
            for s in ubi.ubatch.seqs:
                self.memory.seq_rm(s, -1, -1)
            e.add_note(f"[context] the graph run failed: sequences {list(ubi.ubatch.seqs)} were removed from memory")
            raise

    def _update_state(self, ubi: UBatchInputs) -> None:
        """Run the memory's pending updates (values baked into a one-off graph: rare events). Row
        copies and zeroed rows alone (a new or copied sequence: every prompt starts one) are done on
        the state arrays directly where the plans use them in place: the graph's compile cost
        ~0.8 ms per prompt on the tiny model, a third of a one-token generate."""
        rs, kv = ubi.rs, ubi.kv
        shift = kv is not None and kv.k_shift is not None and np.any(kv.k_shift)
        if not shift and (rs is None or not (rs.copies or rs.zero_rows)):
            return  # the usual case: nothing pending
        if self._host_state and rs is not None and not shift:
            for leaf in (*self.state.r_l.values(), *self.state.s_l.values()):
                rows = leaf.data  # (n_rows, n_embd): the bytes every plan reads and writes
                for src, dst in rs.copies:  # in order, then the zeroed rows: as the graph does
                    rows[dst] = rows[src]
                rows[list(rs.zero_rows)] = 0
            return
        gf = build_state_update(self.hp, self.state, copies=rs.copies if rs else (),
                                zero_rows=rs.zero_rows if rs else (), k_shift=kv.k_shift if kv else None)  # fmt: skip
        if gf is not None:
            self._use_threads()
            gr.compile(gf, self.backends, cache=False).run()
            self.stats.state_updates += 1

    def _use_threads(self) -> None:
        for be in self._threaded:  # NOTE: backends are shared; each context sets its own count
            be.n_threads = self.n_threads

    def _entry(self, shape: UBatchShape, reserve: bool = False) -> _Entry:
        """The cached graph + plan of a ubatch shape, built and compiled on a miss."""
        entry = self._plans.get(shape)
        if entry is not None:
            self._plans.move_to_end(shape)
            self.stats.plan_hits += 1
            return entry
        t0 = time.perf_counter()
        res = self.model.build_graph(self.model.weights, shape, self.state, want_h_nextn=self.embeddings_nextn)
        self.stats.graph_builds += 1
        # NOTE: not through the global plan cache: this context keys and holds its own plans
        plan = gr.compile(res.graph, self.backends, cache=False)
        self.stats.plan_compiles += 1
        if reserve:
            self.stats.t_reserve = time.perf_counter() - t0
        else:
            self.stats.t_compile += time.perf_counter() - t0
        entry = self._plans[shape] = _Entry(res, plan)
        while len(self._plans) > self._plan_cache_size:
            self._plans.popitem(last=False)
        return entry

    def last_graph(self) -> tuple[GraphResult, gr.Plan]:
        """The graph and compiled plan of the most recently run ubatch shape (for dumps)."""
        if not self._plans:
            raise RuntimeError("[context] no graph has been built yet")
        entry = next(reversed(self._plans.values()))
        return entry.result, entry.plan

    @property
    def n_cached_plans(self) -> int:
        return len(self._plans)

    # ---- sequences (memory passthroughs; see models/memory/) --------------------------------
    def seq_rm(self, seq: int, p0: int = -1, p1: int = -1) -> bool:
        """Remove positions [p0, p1) of `seq` (every sequence if seq < 0; p0 < 0 -> 0, p1 < 0 -> end).
        On recurrent state only whole sequences, or a tail of at most the snapshots the sequence's
        last ubatch wrote (partial rollback, one pending at a time), can be removed: otherwise
        False, and nothing changed."""
        with self._exclusive("seq_rm"):
            return self.memory.seq_rm(seq, p0, p1)

    def can_seq_rm(self, seq: int, p0: int = -1, p1: int = -1) -> bool:
        """Whether seq_rm(seq, p0, p1) would succeed (changes nothing)."""
        with self._exclusive("can_seq_rm"):
            return self.memory.can_seq_rm(seq, p0, p1)

    def seq_cp(self, src: int, dst: int, p0: int = -1, p1: int = -1) -> None:
        """Copy the tokens of `src` at positions [p0, p1) to `dst` (llama.cpp's seq_cp). With recurrent
        state dst must be empty (seq_rm it first) and the range must cover all of src; otherwise
        ValueError, nothing changed. Copying an empty src does nothing."""
        with self._exclusive("seq_cp"):
            self.memory.seq_cp(src, dst, p0, p1)

    def seq_keep(self, seq: int) -> None:
        """Remove every sequence but `seq`."""
        with self._exclusive("seq_keep"):
            self.memory.seq_keep(seq)

    def seq_add(self, seq: int, p0: int, p1: int, delta: int) -> None:
        """Add delta to the positions in [p0, p1) of `seq` (K is re-rotated before the next ubatch;
        tokens moved below 0 are dropped). With recurrent state all of the sequence's positions
        move or none, and cells shared with another sequence (seq_cp) never move: ValueError
        otherwise, nothing changed."""
        with self._exclusive("seq_add"):
            self.memory.seq_add(seq, p0, p1, delta)

    def seq_pos_min(self, seq: int) -> int:
        """The smallest position of `seq` in memory, -1 when empty."""
        with self._exclusive("seq_pos_min"):
            return self.memory.seq_pos_min(seq)

    def seq_pos_max(self, seq: int) -> int:
        """The largest position of `seq` in memory, -1 when empty."""
        with self._exclusive("seq_pos_max"):
            return self.memory.seq_pos_max(seq)

    def clear(self) -> None:
        """Forget every sequence (cached plans stay)."""
        with self._exclusive("clear"):
            self.memory.clear()

    def __repr__(self) -> str:
        return (f"Context({self.model.arch}, n_ctx={self.n_ctx}, n_batch={self.n_batch}, n_ubatch={self.n_ubatch}, "
                f"n_seq_max={self.n_seq_max}, n_rs_seq={self.n_rs_seq}, backends={self.backends})")  # fmt: skip


class _FirstNonFinite:
    """An eval callback that remembers the first node holding a NaN, and the first holding an
    infinity (GRAPHIR_DEBUG runs; masks and masked scores hold -inf by design, so NaN comes first)."""

    def __init__(self) -> None:
        self.nan: str | None = None
        self.inf: str | None = None

    def __call__(self, node: gr.Tensor, value: np.ndarray) -> None:
        if self.nan is not None or value.dtype.kind != "f":
            return
        if np.isnan(value).any():
            self.nan = f"{node.name or '?'} ({node.op.value})"
        elif self.inf is None and np.isposinf(value).any():
            self.inf = f"{node.name or '?'} ({node.op.value})"


def _read_rows(plan: Plan, t: gr.Tensor, out: np.ndarray, rows: np.ndarray, what: str, ub: UBatch,
               finder: _FirstNonFinite | None) -> None:  # fmt: skip
    """out[rows] = the output tensor t's rows, checked finite. The ubatch's rows are almost always
    consecutive and in order: then t is copied once, straight into them (a 248k-entry vocabulary
    makes each extra pass ~0.1 ms per row). Not when sequences interleave in the batch: the ubatch
    holds its rows sequence by sequence, so its outputs can be a permutation of the batch's."""
    if len(rows) == 1 or (len(rows) and bool((np.diff(rows) == 1).all())):
        dst = out[int(rows[0]) : int(rows[-1]) + 1]
        plan.get(t, out=dst)
    else:
        dst = plan.get(t).reshape(len(rows), -1)
        out[rows] = dst
    _check_finite(dst, what, ub, finder)


def _check_finite(rows: np.ndarray, what: str, ub: UBatch, finder: _FirstNonFinite | None) -> None:
    """NonFiniteError naming the first output row of `ub` with a NaN or an infinity in `rows`."""
    # NOTE: a NaN or an infinity makes the sum non-finite, so a finite sum proves every entry
    # finite in one pass without a temporary; a sum that overflowed falls through to the exact check
    if np.isfinite(rows.sum()) or np.isfinite(rows).all():
        return
    bad = ~np.isfinite(rows).all(axis=1)
    r = int(np.flatnonzero(bad)[0])
    row = int(ub.out_rows[r])
    kind = "NaN" if np.isnan(rows[r]).any() else "inf"
    where = f"batch token {int(ub.out_idx[r])} (seq {int(ub.seq_id[row])}, pos {int(ub.pos[row])})"
    if finder is None:
        origin = "; set GRAPHIR_DEBUG=1 to name the graph node where it started"
    elif finder.nan or finder.inf:
        origin = f"; the first non-finite node: {finder.nan or finder.inf}"
    else:
        origin = ""
    raise NonFiniteError(f"[context] the model produced non-finite {what} ({kind}) for {where}, "
                         f"{int(bad.sum())} of {len(rows)} output rows{origin}")  # fmt: skip
