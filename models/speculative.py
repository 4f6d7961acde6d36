"""Self-speculative decoding with the MTP head (DESIGN section 9), and plain decoding.

    gen = Generator(model, spec="mtp", draft_max=3, sampler=Sampler(SamplerConfig(greedy=True)))
    for tok in gen.generate(prompt_ids, n_predict=64):
        ...
    print(gen.stats.summary())

Every sequence has a `SeqState`: `last`, the newest sampled token (position n_past, not yet
decoded on the target, which holds positions 0 .. n_past-1), and its pending MTP rows. One round
(`Generator._round`) runs over all the sequences still generating; `generate` is the
one-sequence case of `generate_batch`:
  1. draft: the MTP head runs (last, h_{n_past-1}) at n_past, then chains its own hidden state
     and token for up to draft_max drafts; every sequence's step is in one MTP batch. A draft is
     the sequence's sampler drawing from the head's logits with the noise of its position
     (coupled draws, models/sampling.py; greedy: the argmax); drafting stops early when the
     draft's probability under the sampler's chain is below p_min;
  2. verify: the target decodes [last, d1..dk] at n_past.. of every sequence in ONE batch,
     every row an output (spec=None: [last] alone, i.e. plain decoding);
  3. the sequence's sampler draws the target's token from each row i (for position n_past + 1 + i),
     drafts are accepted while they equal it; the first differing (or the bonus) token is the
     next `last`. Every draw is a function of (seed, seq, pos) and the logits, the same as plain
     decoding's there: the emitted tokens are plain decoding's, greedy or sampled, however the
     sequences are batched and whatever draft_max / p_min. (accept="textbook" instead accepts a
     draft with probability min(1, p/q) and resamples a rejected one from the residual,
     `Sampler.verify`: more drafts accepted, the target's distribution, not plain decoding's tokens);
  4. the rejected tail is removed from the target (`seq_rm`: partial rollback through the
     recurrent snapshots, so n_rs_seq >= draft_max) and the MTP cache's draft-time entries
     (made from chained hidden states) are removed; the accepted rows, with the target's own
     hidden states, are fed to the MTP head together with the next round's first draft step.

MTP cache invariant: its entry at position p is computed from the target's h_{p-1} and token x_p
(positions 1 .. n_past once the next round's first draft step has run). A round whose first draft
falls below p_min verifies [last] alone. With the adaptive policy (`SpecPolicy`) a round may also
be plain: the target decodes [last] alone and the head does not run; the rows wait for the next
spec round, and where none is coming soon they are not even read (the head's cache of the
sequence is dropped, and it restarts from the rows of the plain rounds just before the switch).
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np

from .argcheck import bool_arg, float_arg, int_arg, int_array
from .batch import Batch
from .context import Context
from .model import Model
from .mtp import MtpContext, mtp_layer
from .sampling import Sampler, SamplerConfig

ACCEPT = ("coupled", "textbook")  # acceptance rules of speculative decoding (Generator's `accept`)


@dataclass
class SpecStats:
    """Counters of one `generate` / `generate_batch` call (all sequences together)."""

    n_prompt: int = 0
    n_generated: int = 0
    rounds: int = 0  # verify batches (plain decoding: single-token decodes)
    plain_rounds: int = 0  # rounds of spec="mtp" that did not draft (the policy found plain rounds cheaper)
    drafted: int = 0  # draft tokens proposed
    accepted: int = 0  # draft tokens accepted
    drafted_at: list[int] = field(default_factory=list)  # per draft position i (0-based): drafts proposed
    accepted_at: list[int] = field(default_factory=list)  # ... and accepted
    t_prompt: float = 0.0
    t_draft: float = 0.0  # MTP head (feeding the accepted rows + drafting), acceptance and rollback
    t_verify: float = 0.0  # target decodes after the prompt (verify batches, or single tokens)
    t_generate: float = 0.0  # from the end of the prompt to the last token

    @property
    def acceptance_rate(self) -> float:
        return self.accepted / self.drafted if self.drafted else 0.0

    @property
    def mean_accepted(self) -> float:
        """Accepted drafts per round."""
        return self.accepted / self.rounds if self.rounds else 0.0

    @property
    def acceptance_at(self) -> list[float]:
        """Acceptance rate of each draft position (given it was proposed)."""
        return [a / d if d else 0.0 for a, d in zip(self.accepted_at, self.drafted_at)]

    @property
    def tokens_per_s(self) -> float:
        return self.n_generated / self.t_generate if self.t_generate > 0 else 0.0

    def count(self, k: int, n_acc: int) -> None:
        """Record one sequence's round: k drafts proposed, the first n_acc accepted."""
        self.drafted += k
        self.accepted += n_acc
        for i in range(k):
            self.drafted_at[i] += 1
            self.accepted_at[i] += int(i < n_acc)

    def summary(self) -> str:
        per_pos = " ".join(f"{r:.2f}" for r in self.acceptance_at)
        plain = f" ({self.plain_rounds} plain)" if self.plain_rounds else ""
        return (f"rounds {self.rounds}{plain}, drafted {self.drafted}, accepted {self.accepted} "
                f"(rate {self.acceptance_rate:.3f}, per position [{per_pos}]), "
                f"mean accepted/round {self.mean_accepted:.2f}, draft {self.t_draft:.3f} s, "
                f"verify {self.t_verify:.3f} s, {self.n_generated} tokens in {self.t_generate:.3f} s "
                f"({self.tokens_per_s:.1f} tok/s)")  # fmt: skip


class SpecPolicy:
    """Whether the next round speculates (drafts with the head) or decodes plainly, from the measured
    wall time per emitted token of each kind of round.

    Coupled speculation is lossless however often it runs, so speculating is purely a question of
    cost: where a head step costs about what an accepted draft saves (a very small model, a backend
    with a high fixed cost per run) plain rounds are faster, and the generator should make them.
    The policy keeps the last `window` measurements (seconds per emitted token) of each kind and
    compares their medians (a round preempted by another process is an outlier, not a trend).

    Plain rounds come first (`probe_len` of them): every generation can run them, and they cost
    nothing beyond plain decoding. Finding out whether speculation pays costs more than its rounds:
    the first spec rounds compile the plans of a verify batch and of the head (`setup`, the
    generator's estimate from the target's measured compile time per graph node: 13 ms on the
    shipped tiny model, where 64 tokens take ~30 ms; 52 ms on a 0.8B-shaped file, under two
    decodes). So the first probe of spec waits until `first_budget` (5%) of the time run so far
    covers that plus `probe_len` rounds at twice a plain round's cost: a short generation on a model
    where spec cannot pay does not pay for finding out (at 10%, 256 tokens of the tiny model on cpu
    measured 0.86-0.96x plain: the try landed inside them), and on the 0.8B-shaped file the first
    try comes after ~120 tokens.

    Then the policy runs the cheaper kind and re-measures the other for `probe_len` rounds every
    `probe_every` rounds or more: probes grow rarer while they confirm the choice (the interval
    doubles up to `probe_max` rounds) and frequent again when one changes it; a probe's rounds
    replace the probed kind's older samples. A probe also waits until the time since the last one
    is at least its extra cost over the preferred kind divided by the budget (`budget`, 0.05:
    probing costs at most ~5% of the run, however expensive the probed kind; halved by every probe
    that confirms the choice, down to budget / 8, and back to `budget` when one changes it: where
    speculation keeps losing, what finding that out again costs falls below 1%). Rounds whose cost
    is not their kind's are not counted (`record(..., counted=False)`): one that compiles a plan,
    or a spec round that first feeds the head the rows it missed during plain rounds (that grows
    with the plain stretch before it); what they cost beyond the preferred kind still counts
    against the budget.

    `speculate()` decides the next round; `record()` reports the round that ran; `spec_within(n)` tells
    whether a spec round may come soon (the generator keeps the head's rows only then);
    `expect_setup(s)` sets the first probe's one-off cost. A policy lives as long as its Generator,
    so a later `generate` call starts from the measurements of earlier ones.
    """

    BUDGET_FLOOR = 8  # the budget falls to budget / BUDGET_FLOOR while probes confirm the choice

    def __init__(self, probe_every: int = 32, probe_len: int = 4, window: int = 9, probe_max: int = 1024,
                 margin: float = 0.15, budget: float = 0.05, first_budget: float = 0.05) -> None:  # fmt: skip
        if not 1 <= probe_every <= probe_max or probe_len < 1 or window < 1 or not 0 <= margin < 1 \
                or not 0 < budget <= 1 or not 0 < first_budget <= 1:  # fmt: skip
            raise ValueError(f"[spec] bad policy settings probe_every={probe_every}, probe_len={probe_len}, "
                             f"window={window}, probe_max={probe_max}, margin={margin}, budget={budget}, "
                             f"first_budget={first_budget}")  # fmt: skip
        self.probe_every, self.probe_len, self.probe_max = probe_every, probe_len, probe_max
        self.margin, self.budget, self.first_budget = margin, budget, first_budget
        self._budget = budget  # the budget now: halved by every probe that confirms the choice
        self.setup = 0.0  # seconds the first spec rounds are expected to cost beyond their own (compiles)
        self._first = False  # the first probe of spec has begun
        self._spec_chosen = False  # `preferred`, updated as the measurements come
        self._t_since = 0.0  # seconds of every round since the last probe began (before the first: the start)
        self._extra = 0.0  # what rounds of the kind not preferred cost beyond the preferred kind, since then
        self.samples: dict[bool, deque[float]] = {True: deque(maxlen=window), False: deque(maxlen=window)}
        self._tokens: dict[bool, deque[int]] = {True: deque(maxlen=window), False: deque(maxlen=window)}
        self._costs: dict[bool, float | None] = {True: None, False: None}
        self.counted: dict[bool, int] = {True: 0, False: 0}  # rounds measured, per kind
        self._rounds = 0  # rounds decided
        self._probe: list[bool] = []  # the kinds of the next rounds, when probing
        self._interval = probe_every  # rounds between probes
        self._next_probe: int | None = None
        self._last_choice: bool | None = None

    def expect_setup(self, seconds: float) -> None:
        """The one-off cost (seconds) the first spec rounds will add beyond their own: the plans they
        compile. Only the first probe of spec waits for it."""
        self.setup = max(0.0, float(seconds))

    def cost(self, spec: bool) -> float | None:
        """The median seconds per emitted token of the kind's recent rounds (None: unmeasured)."""
        return self._costs[spec]

    @property
    def measured(self) -> bool:
        """Both kinds have been measured (the first probe of spec is over)."""
        return self.counted[True] >= self.probe_len and self.counted[False] >= self.probe_len

    @property
    def preferred(self) -> bool:
        """The kind of round that measured cheaper (plain while either is unmeasured). Spec rounds
        must be cheaper than plain ones by more than `margin` (a fraction) to be chosen: what the
        medians leave out costs spec more (a switch to spec rounds first feeds the head the rows
        it missed, and drafting compiles more ubatch shapes), and inside that band noise would
        flip the choice back and forth (0.15: on a loaded 2-core machine the medians of one-token
        plain rounds move by 20-30% between probes). Once chosen, spec stays while it measures
        cheaper than plain at all: leaving it costs nothing, coming back costs the switch again."""
        return self._spec_chosen

    def _choose(self) -> bool:
        spec, plain = self.cost(True), self.cost(False)
        if spec is None or plain is None:
            return False
        return spec < plain * (1.0 if self._spec_chosen else 1.0 - self.margin)

    def _first_due(self, n: int) -> bool:
        """Whether the first probe of spec may begin n rounds from now: `first_budget` of the time
        run by then covers its expected cost, `setup` plus probe_len rounds at twice a plain one's."""
        t_round = self._costs[False] * _median(self._tokens[False])
        return (self._t_since + n * t_round) * self.first_budget >= self.setup + self.probe_len * t_round

    def speculate(self) -> bool:
        """The kind of the next round: True = draft with the head, False = plain."""
        self._rounds += 1
        if not self._probe:
            if self.counted[False] < self.probe_len:
                return False  # plain rounds first
            if self.counted[True] < self.probe_len:  # the first probe of spec, once affordable, until measured
                if not self._first and self._first_due(0):
                    self._first, self._t_since = True, 0.0  # it begins: the budget counts from here
                return self._first
            choice = self.preferred
            if self._next_probe is None:
                self._next_probe, self._last_choice = self._rounds + self._interval, choice
                # the first probe of spec cost `_extra` beyond plain rounds (its compiles included): the
                # next probe waits for the budget to cover that much again. Where spec won, the plain
                # rounds measured first are the probe to go by.
                if choice:
                    tok = _median(self._tokens[False])
                    self._extra = self.probe_len * tok * max(0.0, self.cost(False) - self.cost(True))
            elif self._rounds >= self._next_probe and self._t_since * self._budget >= self._extra:
                # the last probe confirmed the choice: probe less often; it changed it: probe soon again
                same = choice == self._last_choice
                self._interval = min(self._interval * 2, self.probe_max) if same else self.probe_every
                self._budget = max(self._budget / 2, self.budget / self.BUDGET_FLOOR) if same else self.budget
                self._last_choice = choice
                self._probe = [not choice] * self.probe_len
                # the probed kind's older samples are stale (another context length, another load):
                # the probe's rounds alone measure it (its cost stays the old one until they arrive)
                self.samples[not choice].clear()
                self._next_probe = self._rounds + self.probe_len + self._interval
                self._t_since = self._extra = 0.0
        return self._probe.pop() if self._probe else self.preferred

    def spec_within(self, n: int) -> bool:
        """Whether a spec round may come in the next n rounds (after the one just decided): while
        probing, when the first probe of spec is due by then, when spec is preferred, when spec is
        cheaper than plain but not by the margin (a few plain rounds dearer would flip the choice),
        or when a probe of spec is due by then (its interval and its budget). False means plain
        rounds for a while: the generator then lets the head's rows go. A flip it did not foresee
        (noise moving the plain median far) only costs the head some context."""
        if self._probe:
            return True
        if not self.measured:
            return self._first or (self.counted[False] >= self.probe_len and self._first_due(n + 1))
        if self.preferred or self._costs[True] < self._costs[False]:
            return True
        if self._next_probe is None or self._rounds + n < self._next_probe:
            return False
        # the rounds until then cost about what plain rounds cost now (one more: rounding)
        t_round = self._costs[False] * _median(self._tokens[False])
        return (self._t_since + (n + 1) * t_round) * self._budget >= self._extra

    def record(self, spec: bool, seconds: float, tokens: int, counted: bool = True) -> None:
        """Report a round: its kind, wall seconds and emitted tokens."""
        self._t_since += seconds
        preferred = self.preferred
        if spec != preferred and self.cost(preferred) is not None:  # a probe (or what a switch costs)
            self._extra += seconds - max(tokens, 0) * self.cost(preferred)
        if not counted or tokens <= 0:
            return
        self.samples[spec].append(seconds / tokens)
        self._costs[spec] = _median(self.samples[spec])  # once per round, not per question
        self._spec_chosen = self._choose()
        self._tokens[spec].append(tokens)
        self.counted[spec] += 1

    def summary(self) -> str:
        def ms(c: float | None) -> str:
            return "-" if c is None else f"{c * 1e3:.3f}"

        head = (f"spec {ms(self.cost(True))} ms/token ({self.counted[True]} rounds), plain {ms(self.cost(False))} "
                f"ms/token ({self.counted[False]} rounds): {'spec' if self.preferred else 'plain'} preferred")  # fmt: skip
        if self._first or self.counted[False] < self.probe_len:
            return head
        t_round = self._costs[False] * _median(self._tokens[False])
        due = (self.setup + self.probe_len * t_round) / self.first_budget
        return (f"{head} (drafting not tried yet: it waits until {self.first_budget:.0%} of the time run covers "
                f"what trying costs, {self.setup * 1e3:.0f} ms of plans to compile: after ~{due:.2f} s)")  # fmt: skip


def _median(xs: Sequence[float]) -> float:
    """The median of a few numbers (statistics.median costs ~1 us more per round)."""
    s, n = sorted(xs), len(xs)
    return s[n // 2] if n % 2 else (s[n // 2 - 1] + s[n // 2]) / 2


@dataclass
class SeqState:
    """One sequence being generated: where it stands and the MTP rows it still has to feed.

    The target holds positions 0 .. n_past-1; `last` (the newest sampled token) sits at n_past and
    is not decoded yet. The pending rows are true MTP entries (token x_p with the target's h_{p-1})
    at positions pend_pos0 ..; the last of them is the next round's first draft step. None pending:
    plain rounds let them go (the head's cache of the sequence went with them) until the policy
    may speculate again; the rows start again there.
    """

    seq: int  # the sequence id in both contexts
    prompt: list[int]
    sampler: Sampler
    n_predict: int
    stop_at_eog: bool  # done after an end-of-generation token
    out: list[int] = field(default_factory=list)  # emitted tokens
    last: int = -1
    n_past: int = 0
    pend_tok: list[int] = field(default_factory=list)
    pend_h: list[np.ndarray] = field(default_factory=list)
    q_logits: list[np.ndarray] = field(default_factory=list)  # the head's logits of this round's drafts (textbook)
    pend_pos0: int = 0
    done: bool = False

    def k_max(self, draft_max: int) -> int:
        """The most drafts this round: never more tokens than n_predict allows."""
        return min(draft_max, self.n_predict - len(self.out) - 1)

    def queue(self, toks: Sequence[int], h: np.ndarray, pos0: int) -> None:
        """Queue true MTP rows: toks[i] at pos0 + i with the target's hidden state h[i]."""
        self.pend_tok, self.pend_h, self.pend_pos0 = list(toks), list(h[: len(toks)]), pos0

    def extend(self, tok: int, h: np.ndarray, pos: int, keep: int) -> None:
        """Append one true MTP row after a plain round (the head did not run: its rows wait). Only
        the newest `keep` rows can reach the head (`Generator._feed_backlog`): a longer wait drops
        the older ones, every `keep` rows at once."""
        if not self.pend_tok:
            self.pend_tok, self.pend_h, self.pend_pos0 = [tok], [h], pos
            return
        assert pos == self.pend_pos0 + len(self.pend_tok), "pending MTP rows must stay consecutive"
        self.pend_tok.append(tok)
        self.pend_h.append(h)
        if len(self.pend_tok) >= 2 * keep:
            cut = len(self.pend_tok) - keep
            self.pend_tok, self.pend_h, self.pend_pos0 = self.pend_tok[cut:], self.pend_h[cut:], pos + 1 - keep


def _seq_batch(rows: Sequence[Sequence[int]], pos0: Sequence[int], seq: Sequence[int]) -> Batch:
    """One target batch of several sequences' rows (rows[i] at pos0[i].. of sequence seq[i]), all outputs."""
    if len(rows) == 1:  # NOTE: one row is the last one: all_outputs would only cost time
        return Batch.simple(rows[0], pos0[0], seq[0], all_outputs=len(rows[0]) > 1)
    n = sum(map(len, rows))
    return Batch(np.concatenate([np.asarray(r, np.int64) for r in rows]),
                 pos=np.concatenate([np.arange(p, p + len(r)) for r, p in zip(rows, pos0)]),
                 seq_id=np.concatenate([np.full(len(r), s) for r, s in zip(rows, seq)]), output=np.ones(n, bool))  # fmt: skip


class Generator:
    """Generates from one or several sequences of a model, plainly (spec=None) or with MTP self-speculation.

    Args:
        model: the loaded model (for spec="mtp" it needs a nextn block: NoMtpHeadError otherwise).
        spec: None or "mtp".
        draft_max: the most drafts per round (>= 1).
        p_min: stop drafting when the draft's probability under the sampler's chain is below (greedy:
            the softmax of the head's logits); that draft is not proposed. The defaults (draft_max 1,
            p_min 0) measured fastest on the shipped model (tools/bench_spec.py): a head step costs
            most of a trunk decode there, and even a low-probability coupled draft is accepted about
            half the time, so every threshold lost more accepted tokens than it saved in head steps.
        sampler: the user's sampler of `generate` (default: greedy).
        n_ctx, n_ubatch, backends, type_k, type_v: the target context's (and the head's) sizes.
        n_rs_seq: rollback snapshots of the target (default draft_max); must be >= draft_max.
        n_seq: the most sequences `generate_batch` runs together.
        accept: "coupled" (a draft is accepted iff it equals the target's coupled draw: the tokens of
            plain decoding for the seed) or "textbook" (min(1, p/q) with residual resampling: accepts
            more under sampling, follows the target's distribution, not seed-identical to plain).
        adaptive: spec="mtp" with coupled acceptance: let a `SpecPolicy` choose, round by round, between
            speculating and plain rounds from their measured cost per emitted token, so speculation does
            not run where it is slower (default; the tokens are the same either way). False, and always
            with accept="textbook" (whose tokens depend on which rounds draft): every round speculates.

    Thread safety: a Generator runs one generation at a time. `generate` / `generate_batch` hold it
    from the first token asked for until the iterator is exhausted or closed; another one started
    meanwhile (a second iterator, or another thread) raises RuntimeError at its first step instead
    of corrupting the first. Use one Generator per concurrent stream (several may share a Model), or
    `generate_batch` for several sequences in one.
    """

    # the most rows a switch from plain to spec rounds feeds the head (see _feed_backlog); a power
    # of two, so the feed is one of the backlog's chunk shapes
    HEAD_WINDOW = 64
    # the first rounds after a prompt run slower than later ones (the prompt's ubatches evicted the
    # weights and plans from the caches: the first 3-4 one-token rounds of the shipped model took
    # 1.2-2x a later one); the policy does not count them, or the kind that happens to follow
    # prompts would look dearer than it is
    SETTLE_ROUNDS = 4

    def __init__(self, model: Model, spec: str | None = "mtp", draft_max: int = 1, p_min: float = 0.0,
                 sampler: Sampler | None = None, n_ctx: int = 512, n_ubatch: int = 128,
                 n_rs_seq: int | None = None, backends: Sequence[str] = ("cpu",), type_k: str = "f16",
                 type_v: str = "f16", n_seq: int = 1, n_threads: int | None = None,
                 accept: str = "coupled", adaptive: bool = True) -> None:  # fmt: skip
        if spec not in (None, "mtp"):
            raise ValueError(f"[spec] unknown speculative mode {spec!r} (None or 'mtp')")
        if accept not in ACCEPT:
            raise ValueError(f"[spec] unknown acceptance rule {accept!r} (one of {', '.join(ACCEPT)})")
        draft_max, p_min = int_arg("spec", "draft_max", draft_max, 1), float_arg("spec", "p_min", p_min, 0.0, 1.0)
        n_ctx, n_ubatch, n_seq = (int_arg("spec", k, v, 1) for k, v in (("n_ctx", n_ctx), ("n_ubatch", n_ubatch),
                                                                         ("n_seq", n_seq)))  # fmt: skip
        if sampler is not None and not isinstance(sampler, Sampler):
            raise ValueError(f"[spec] sampler must be a Sampler, got {type(sampler).__name__}")
        n_rs = draft_max if n_rs_seq is None else int_arg("spec", "n_rs_seq", n_rs_seq, 0)
        if spec == "mtp":
            mtp_layer(model.weights)  # NoMtpHeadError before allocating anything
            if draft_max > n_rs:
                raise ValueError(f"[spec] draft_max ({draft_max}) > n_rs_seq ({n_rs}): a rejected draft could "
                                 "not be rolled back")  # fmt: skip
        else:
            n_rs = 0
        self.model, self.spec = model, spec
        self.draft_max, self.p_min = int(draft_max), float(p_min)
        self.accept = accept
        self.sampler = sampler or Sampler(SamplerConfig(greedy=True))
        n_ubatch = max(min(n_ubatch, n_ctx), 1 + n_rs)
        self.target = Context(model, n_ctx=n_ctx, n_batch=n_ctx, n_ubatch=n_ubatch, n_rs_seq=n_rs, backends=backends,
                              type_k=type_k, type_v=type_v, embeddings_nextn=spec == "mtp", n_seq_max=n_seq,
                              n_threads=n_threads)  # fmt: skip
        self.mtp = (MtpContext(model, n_ctx=n_ctx, n_batch=n_ctx, n_ubatch=n_ubatch, backends=backends,
                               type_k=type_k, type_v=type_v, n_seq_max=n_seq, n_threads=n_threads)
                    if spec == "mtp" else None)  # fmt: skip
        # NOTE: coupled acceptance only: with textbook acceptance the tokens depend on which rounds draft,
        # and a choice made from timings would make them depend on the machine's load, not the seed alone
        adaptive = bool_arg("spec", "adaptive", adaptive)
        self.policy = SpecPolicy() if spec == "mtp" and adaptive and accept == "coupled" else None
        self.stats = SpecStats()
        self.states: list[SeqState] = []  # the sequences of the last call
        self._busy = threading.Lock()  # held by a running generate / generate_batch

    # ---- sequence 0 (the sequence of `generate`) ---------------------------------------------
    @property
    def tokens(self) -> list[int]:
        """Sequence 0 so far: prompt + generated."""
        return [*self.states[0].prompt, *self.states[0].out] if self.states else []

    @property
    def _pend_tok(self) -> list[int]:
        return self.states[0].pend_tok

    @property
    def _pend_h(self) -> list[np.ndarray]:
        return self.states[0].pend_h

    @property
    def _pend_pos0(self) -> int:
        return self.states[0].pend_pos0

    # ---- generation -------------------------------------------------------------------------
    def generate(self, prompt: Sequence[int], n_predict: int, *, stop_at_eog: bool = False) -> Iterator[int]:
        """Yield up to n_predict tokens continuing `prompt` (a fresh sequence 0 in both contexts) as they
        are accepted; `self.stats` holds the counters. stop_at_eog: end after an end-of-generation token."""
        for _, tok in self._run([prompt], n_predict, [self.sampler], stop_at_eog):
            yield tok

    def generate_batch(self, prompts: Sequence[Sequence[int]], n_predict: int,
                       samplers: Sequence[Sampler] | None = None, *, stop_at_eog: bool = False) -> list[list[int]]:  # fmt: skip
        """Up to n_predict tokens for each prompt (sequence s continues prompts[s]); every round runs the
        drafting steps of all sequences in one MTP batch per step and all their verify rows in one
        target batch, then accepts and rolls back per sequence. samplers: one per sequence
        (default greedy). Not streaming; `self.stats` counts all sequences together."""
        if samplers is None:
            samplers = [Sampler(SamplerConfig(greedy=True))] * len(prompts)
        out: list[list[int]] = [[] for _ in prompts]
        for s, tok in self._run(prompts, n_predict, samplers, stop_at_eog):
            out[s].append(tok)
        return out

    def _run(self, prompts: Sequence[Sequence[int]], n_predict: int, samplers: Sequence[Sampler],
             stop_at_eog: bool) -> Iterator[tuple[int, int]]:  # fmt: skip
        """Yield (sequence, token) as the rounds emit them, until every sequence is done."""
        if not self._busy.acquire(blocking=False):
            raise RuntimeError("[spec] this Generator is already generating: another generate()/generate_batch() "
                               "is still open (an unfinished iterator, or another thread); finish or close() it "
                               "first, or use one Generator per stream")  # fmt: skip
        try:
            states = self._start(prompts, n_predict, samplers, stop_at_eog)
            if n_predict == 0:
                return
            t0 = time.perf_counter()
            first = self._prefill(states)
            if self.policy is not None and not self.policy.measured:
                self.policy.expect_setup(self._setup_estimate())
            t_gen0 = time.perf_counter()
            self.stats.t_prompt = t_gen0 - t0
            try:
                yield from self._rounds(states, first)
            finally:
                self.stats.t_generate = time.perf_counter() - t_gen0
        finally:
            self._busy.release()

    def _start(self, prompts: Sequence[Sequence[int]], n_predict: int, samplers: Sequence[Sampler],
               stop_at_eog: bool) -> list[SeqState]:  # fmt: skip
        """Check the request, clear both contexts and the counters; one fresh state per prompt."""
        S = len(prompts)
        if not 1 <= S <= self.target.n_seq_max:
            raise ValueError(f"[spec] {S} prompts: need 1 .. n_seq ({self.target.n_seq_max})")
        n_vocab = self.model.n_vocab
        prompts = [int_array("spec", f"prompts[{i}]" if S > 1 else "prompt", p).tolist() for i, p in enumerate(prompts)]
        if any(not p for p in prompts):
            raise ValueError("[spec] a prompt is empty")
        bad = next(((i, j, t) for i, p in enumerate(prompts) for j, t in enumerate(p) if not 0 <= t < n_vocab), None)
        if bad is not None:
            raise ValueError(f"[spec] prompt{f's[{bad[0]}]' if S > 1 else ''}[{bad[1]}] = {bad[2]} is not a token id "
                             f"in [0, {n_vocab})")  # fmt: skip
        n_predict = int_arg("spec", "n_predict", n_predict, 0)
        stop_at_eog = bool_arg("spec", "stop_at_eog", stop_at_eog)
        if any(not isinstance(sp, Sampler) for sp in samplers):
            raise ValueError("[spec] samplers must be Sampler objects")
        n_tok = sum(len(p) + n_predict for p in prompts)
        if n_tok > self.target.n_ctx:
            raise ValueError(f"[spec] the prompts + n_predict ({n_tok} tokens) exceed n_ctx ({self.target.n_ctx})")
        if len(samplers) != S:
            raise ValueError(f"[spec] {len(samplers)} samplers for {S} prompts")
        self.target.clear()
        if self.mtp is not None:
            self.mtp.clear()
        self.stats = SpecStats(n_prompt=sum(map(len, prompts)), drafted_at=[0] * self.draft_max,
                               accepted_at=[0] * self.draft_max)  # fmt: skip
        self.states = [SeqState(s, p, samplers[s], n_predict, stop_at_eog) for s, p in enumerate(prompts)]
        return self.states

    def _prefill(self, states: list[SeqState]) -> list[list[int]]:
        """Decode every prompt in one batch and sample each sequence's first token; queue the MTP rows
        p = 1 .. N (x_p with h_{p-1}). NOTE: every prompt row is an output: the head needs every h."""
        res = self.target.decode(_seq_batch([s.prompt for s in states], [0] * len(states), [s.seq for s in states]))
        row0 = 0
        for s in states:
            n = len(s.prompt)
            s.last, s.n_past = s.sampler.sample(res.logits[row0 + n - 1], n, s.seq), n
            if self.mtp is not None:
                s.queue([*s.prompt[1:], s.last], res.h_nextn[row0 : row0 + n], 1)
            row0 += n
        return [[s.last] for s in states]

    def _rounds(self, states: list[SeqState], emitted: list[list[int]]) -> Iterator[tuple[int, int]]:
        """Append each sequence's emitted tokens and yield them, then run a round over the sequences not
        done, until none is left. A sequence is done at n_predict tokens or (stop_at_eog) after an
        end-of-generation token. NOTE: one loop, not a generator per round: a plain round of the tiny
        model costs ~0.3 ms, and every microsecond shows."""
        is_eog, active = self.model.tokenizer.is_eog, states
        while True:
            for s, toks in zip(active, emitted):
                for tok in toks:
                    s.out.append(tok)
                    self.stats.n_generated += 1
                    yield s.seq, tok
                    if len(s.out) >= s.n_predict or (s.stop_at_eog and is_eog(tok)):
                        s.done = True
                        break
            active = [s for s in active if not s.done]
            if not active:
                return
            emitted = self._round(active)

    # ---- one round --------------------------------------------------------------------------
    def _round(self, states: list[SeqState]) -> list[list[int]]:
        """One round over the given sequences, speculative (`_spec_round`) or plain (`_plain_round`) as
        the policy chooses; returns each sequence's emitted tokens. Times it for the stats and the policy."""
        st = self.stats
        t_round, t_verify = time.perf_counter(), st.t_verify
        adaptive = self.policy is not None and self.accept == "coupled"
        spec = self.mtp is not None and (not adaptive or self.policy.speculate())
        # not typical: one of the first rounds after the prompt, a round that feeds the head rows it
        # missed (plain rounds before it), or one that compiles a plan (a new ubatch shape); their
        # costs are not the kind of round's
        typical = st.rounds >= self.SETTLE_ROUNDS and (not spec or all(len(s.pend_tok) <= self.draft_max + 1
                                                                        for s in states))  # fmt: skip
        keep_h = self.mtp is not None
        if spec and not all(s.pend_tok for s in states):
            # a switch the policy did not foresee (`SpecPolicy.spec_within`): plain rounds let the head's
            # rows go, and its first draft step needs the target's hidden state of this round
            spec = typical = False
        elif not spec and adaptive:
            keep_h = self.policy.spec_within(self.HEAD_WINDOW + self.draft_max + 1)
        compiles = self._compiles()
        emitted = self._spec_round(states) if spec else self._plain_round(states, keep_h)
        st.rounds += 1
        t_end = time.perf_counter()
        st.t_draft += t_end - t_round - (st.t_verify - t_verify)
        if adaptive:
            typical = typical and self._compiles() == compiles
            self.policy.record(spec, t_end - t_round, sum(map(len, emitted)), typical)
        return emitted

    def _spec_round(self, states: list[SeqState]) -> list[list[int]]:
        """The module docstring's steps 1-4: each sequence's accepted drafts, then its next `last`."""
        drafts = self._draft(states)
        t = time.perf_counter()
        res = self.target.decode(_seq_batch([[s.last, *d] for s, d in zip(states, drafts)],
                                            [s.n_past for s in states], [s.seq for s in states]))  # fmt: skip
        self.stats.t_verify += time.perf_counter() - t
        emitted, row0 = [], 0
        for s, ds in zip(states, drafts):
            n = len(ds) + 1
            toks, n_acc = self._accept(s, res.logits[row0 : row0 + n], ds)
            self.stats.count(len(ds), n_acc)
            self._advance(s, len(ds), toks, n_acc, res.h_nextn[row0 : row0 + n])
            emitted.append(toks)
            row0 += n
        return emitted

    def _plain_round(self, states: list[SeqState], keep_h: bool) -> list[list[int]]:
        """Decode each sequence's `last` alone and sample its next token. keep_h: queue the rows for
        the head (with the target's hidden state); otherwise the hidden states are not even read,
        and a sequence's waiting rows go, with the head's cache of it (they would no longer be
        consecutive): a plain stretch then costs what plain decoding does."""
        t = time.perf_counter()
        res = self.target.decode(_seq_batch([[s.last] for s in states], [s.n_past for s in states],
                                            [s.seq for s in states]), h_nextn=keep_h)  # fmt: skip
        self.stats.t_verify += time.perf_counter() - t
        self.stats.plain_rounds += int(self.mtp is not None)
        emitted = []
        for i, s in enumerate(states):
            pos = s.n_past + 1
            tok = s.sampler.sample(res.logits[i], pos, s.seq)
            if keep_h:  # NOTE: one row more than a switch feeds, so the feed still sees a cut backlog
                s.extend(tok, res.h_nextn[i], pos, self.HEAD_WINDOW + self.draft_max + 2)
            elif s.pend_tok:
                self.mtp.seq_rm(s.seq, -1, -1)
                s.pend_tok, s.pend_h = [], []
            s.n_past, s.last = pos, tok
            emitted.append([tok])
        return emitted

    def _setup_estimate(self) -> float:
        """Seconds the first spec rounds add by compiling plans plain rounds do not need (the policy's
        `setup`): a verify batch of the target and about 3 + draft_max shapes of the head (the rows
        it missed, a round's accepted rows, a draft step), at the target's measured compile time per
        graph node (its decodes' plans; before any, its worst-case plan's, which also paid one-off
        weight copies) times each graph's nodes (the worst-case plans' counts)."""
        st = self.target.stats
        n = st.plan_compiles - 1  # the worst-case reservation is timed apart
        per_plan = st.t_compile / n if n > 0 else st.t_reserve
        nodes = self.target.reserve_stats.n_nodes
        return per_plan * (1 + (3 + self.draft_max) * self.mtp.reserve_stats.n_nodes / max(nodes, 1))

    def _compiles(self) -> int:
        """Plans compiled so far by both contexts (state-update graphs included)."""
        n = self.target.stats.plan_compiles + self.target.stats.state_updates
        return n + (self.mtp.stats.plan_compiles + self.mtp.stats.state_updates if self.mtp is not None else 0)

    def _accept(self, s: SeqState, logits: np.ndarray, drafts: list[int]) -> tuple[list[int], int]:
        """Sample the target's token at each verify row; drafts are accepted while they equal it.
        Returns (emitted, n_acc): the accepted drafts and the first differing (or the bonus) token, or
        the accepted drafts alone when one of them ends generation (stop_at_eog)."""
        is_eog, emitted = self.model.tokenizer.is_eog, []
        for i in range(len(drafts) + 1):
            pos = s.n_past + 1 + i
            if i < len(drafts) and self.accept == "textbook":
                tok, accepted = s.sampler.verify(logits[i], s.q_logits[i], drafts[i], pos, s.seq)
                emitted.append(tok)
            else:
                emitted.append(s.sampler.sample(logits[i], pos, s.seq))
                accepted = i < len(drafts) and emitted[-1] == drafts[i]
            if not accepted or (s.stop_at_eog and is_eog(emitted[-1])):
                return emitted, i + int(accepted)
        raise AssertionError("unreachable: the bonus row is never accepted")

    def _advance(self, s: SeqState, k: int, emitted: list[int], n_acc: int, h: np.ndarray) -> None:
        """Roll back the rejected drafts of the target, drop the MTP head's draft-time entries (chained
        hidden states) and queue the true rows; `last` becomes the newest emitted token."""
        keep = s.n_past + n_acc + 1  # target positions kept: .. last, d1..d_nacc
        if n_acc < k and not self.target.seq_rm(s.seq, keep, -1):
            raise RuntimeError(f"[spec] the target refused to roll back {k - n_acc} tokens of seq {s.seq}")
        self.mtp.seq_rm(s.seq, s.n_past + 1, -1)
        s.queue(emitted, h, s.n_past + 1)
        s.n_past, s.last = keep, emitted[-1]

    # ---- drafting ---------------------------------------------------------------------------
    def _pick_draft(self, s: SeqState, logits: np.ndarray, pos: int) -> tuple[int, float]:
        """The head's draft for position pos + 1 of sequence s from its logits at pos: the sequence's
        sampler drawing with the noise of (seq, pos + 1), as the target's draw there will (greedy: the
        argmax), and the draft's probability under the sampler's chain (1.0 without p_min: the
        probability only gates drafting, and computing it is a softmax over the vocabulary)."""
        if self.p_min <= 0:
            return s.sampler.sample(logits, pos + 1, s.seq), 1.0
        return s.sampler.sample_p(logits, pos + 1, s.seq)

    def _draft(self, states: list[SeqState]) -> list[list[int]]:
        """Feed every sequence's pending rows in one MTP batch (the last row of each is its first draft
        step), then chain the drafts of the sequences still drafting, one MTP batch per step. The
        chained entries stay in the MTP cache until the round drops them."""
        assert self.mtp is not None
        for s in states:
            self._feed_backlog(s)
        k_max = [s.k_max(self.draft_max) for s in states]
        res = self.mtp.decode(self._pending_batch(states, k_max))
        flagged = [i for i, k in enumerate(k_max) if k >= 1]
        cur = [(i, res.logits[j], res.hidden[j], states[i].pend_pos0 + len(states[i].pend_tok) - 1)
               for j, i in enumerate(flagged)]  # fmt: skip
        for s in states:
            s.pend_tok, s.pend_h, s.q_logits = [], [], []
        drafts: list[list[int]] = [[] for _ in states]
        while cur:
            step = []
            for i, lg, hid, p in cur:
                tok, prob = self._pick_draft(states[i], lg, p)
                if prob < self.p_min:
                    continue
                drafts[i].append(tok)
                if self.accept == "textbook":
                    states[i].q_logits.append(np.array(lg))
                if len(drafts[i]) < k_max[i]:
                    step.append((i, tok, hid, p + 1))
            if not step:
                break
            if len(step) == 1:  # one sequence drafting: the cheaper constructor
                ((i, tok, hid, p),) = step
                batch = Batch.simple([tok], p, states[i].seq, embd=hid[None])
            else:
                batch = Batch([x[1] for x in step], embd=np.stack([x[2] for x in step]), pos=[x[3] for x in step],
                              seq_id=[states[x[0]].seq for x in step])  # fmt: skip
            res = self.mtp.decode(batch)
            cur = [(i, res.logits[j], res.hidden[j], p) for j, (i, _, _, p) in enumerate(step)]
        return drafts

    def _feed_backlog(self, s: SeqState) -> None:
        """Feed the head the pending rows beyond the usual draft_max + 1 (those plain rounds left
        waiting), in chunks of power-of-two lengths without outputs: however long the backlog, its
        decodes take a handful of ubatch shapes, whose plans are compiled once.

        A backlog longer than HEAD_WINDOW rows is not fed whole: the head's cache of the sequence is
        dropped and only the last HEAD_WINDOW rows are fed, so switching to spec rounds after a
        long plain stretch costs one short head prefill, not one as long as the stretch. The head
        then attends over those rows and the ones after them; drafts may be a little worse for a
        while, the emitted tokens are the same (a draft is only ever checked against the target)."""
        extra = len(s.pend_tok) - (self.draft_max + 1)
        if extra <= 0:
            return
        if extra > self.HEAD_WINDOW:
            self.mtp.seq_rm(s.seq, -1, -1)
            cut = extra - self.HEAD_WINDOW
            s.pend_tok, s.pend_h, s.pend_pos0 = s.pend_tok[cut:], s.pend_h[cut:], s.pend_pos0 + cut
            extra = self.HEAD_WINDOW
        cap = 1 << (self.mtp.n_ubatch.bit_length() - 1)
        i = 0
        while i < extra:
            n = min(1 << ((extra - i).bit_length() - 1), cap)
            self.mtp.decode(Batch(s.pend_tok[i : i + n], embd=np.stack(s.pend_h[i : i + n]),
                                  pos=np.arange(s.pend_pos0 + i, s.pend_pos0 + i + n), seq_id=s.seq,
                                  output=np.zeros(n, bool)))  # fmt: skip
            i += n
        s.pend_tok, s.pend_h, s.pend_pos0 = s.pend_tok[extra:], s.pend_h[extra:], s.pend_pos0 + extra

    @staticmethod
    def _pending_batch(states: list[SeqState], k_max: list[int]) -> Batch:
        """The pending MTP rows of every sequence; the last row of a sequence is an output iff it drafts."""
        toks, embd, pos, seq, outp = [], [], [], [], []
        for s, k in zip(states, k_max):
            n = len(s.pend_tok)
            toks += s.pend_tok
            embd += s.pend_h
            pos += range(s.pend_pos0, s.pend_pos0 + n)
            seq += [s.seq] * n
            outp += [False] * (n - 1) + [k >= 1]
        if len(states) == 1 and outp[-1]:  # one sequence, its last row drafting: the cheaper constructor
            return Batch.simple(toks, states[0].pend_pos0, states[0].seq, embd=np.stack(embd))
        return Batch(toks, embd=np.stack(embd), pos=pos, seq_id=seq, output=outp)
