"""Self-speculative decoding with the MTP head (DESIGN section 9), and plain decoding.

    gen = Generator(model, spec="mtp", draft_max=3, sampler=Sampler(SamplerConfig(greedy=True)))
    for tok in gen.generate(prompt_ids, n_predict=64):
        ...
    print(gen.stats.summary())

One round (spec="mtp"), with `last` the newest sampled token (position n_past, not yet decoded
on the target) and the target holding positions 0 .. n_past-1:
  1. draft: the MTP head runs (last, h_{n_past-1}) at n_past, then chains its own hidden state
     and greedy token for up to draft_max drafts (stopping early when the draft's probability
     is below p_min);
  2. verify: the target decodes [last, d1..dk] at n_past.. in ONE batch, every row an output;
  3. the user's sampler picks the target's token at each row, drafts are accepted while they
     equal it; the first differing (or the bonus) token is the next `last`. One sample per
     emitted token, at the same logits as plain decoding: greedy output and a seeded sampler's
     draws are those of plain decoding;
  4. the rejected tail is removed from the target (`seq_rm`: partial rollback through the
     recurrent snapshots, so n_rs_seq >= draft_max) and the MTP cache's draft-time entries
     (made from chained hidden states) are removed; the accepted rows, with the target's own
     hidden states, are fed to the MTP head together with the next round's first draft step.

MTP cache invariant: its entry at position p is computed from the target's h_{p-1} and token x_p
(positions 1 .. n_past once the next round's first draft step has run). Every round speculates;
a round whose first draft falls below p_min verifies [last] alone.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np

from .batch import Batch
from .context import Context
from .model import Model
from .mtp import MtpContext, mtp_layer
from .sampling import Sampler, SamplerConfig


@dataclass
class SpecStats:
    """Counters of one `generate` call."""

    n_prompt: int = 0
    n_generated: int = 0
    rounds: int = 0  # verify batches (plain decoding: single-token decodes)
    drafted: int = 0  # draft tokens proposed
    accepted: int = 0  # draft tokens accepted
    drafted_at: list[int] = field(default_factory=list)  # per draft position i (0-based): drafts proposed
    accepted_at: list[int] = field(default_factory=list)  # ... and accepted
    t_prompt: float = 0.0
    t_draft: float = 0.0  # MTP head (feeding the accepted rows + drafting)
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

    def summary(self) -> str:
        per_pos = " ".join(f"{r:.2f}" for r in self.acceptance_at)
        return (f"rounds {self.rounds}, drafted {self.drafted}, accepted {self.accepted} "
                f"(rate {self.acceptance_rate:.3f}, per position [{per_pos}]), "
                f"mean accepted/round {self.mean_accepted:.2f}, draft {self.t_draft:.3f} s, "
                f"verify {self.t_verify:.3f} s, {self.n_generated} tokens in {self.t_generate:.3f} s "
                f"({self.tokens_per_s:.1f} tok/s)")  # fmt: skip


class Generator:
    """Generates from one sequence of a model, plainly (spec=None) or with MTP self-speculation.

    Args:
        model: the loaded model (for spec="mtp" it needs a nextn block: NoMtpHeadError otherwise).
        spec: None or "mtp".
        draft_max: the most drafts per round (>= 1).
        p_min: stop drafting when the draft's probability (softmax of the head's logits) is below.
        sampler: the user's sampler (default: greedy).
        n_ctx, n_ubatch, backends, type_k, type_v: the target context's (and the head's) sizes.
        n_rs_seq: rollback snapshots of the target (default draft_max); must be >= draft_max.
        n_seq: the most sequences `generate_batch` runs together.
    """

    def __init__(self, model: Model, spec: str | None = "mtp", draft_max: int = 3, p_min: float = 0.0,
                 sampler: Sampler | None = None, n_ctx: int = 512, n_ubatch: int = 128,
                 n_rs_seq: int | None = None, backends: Sequence[str] = ("cpu",), type_k: str = "f16",
                 type_v: str = "f16", n_seq: int = 1) -> None:  # fmt: skip
        if spec not in (None, "mtp"):
            raise ValueError(f"[spec] unknown speculative mode {spec!r} (None or 'mtp')")
        if not isinstance(draft_max, (int, np.integer)) or draft_max < 1:
            raise ValueError(f"[spec] draft_max must be an integer >= 1, got {draft_max!r}")
        if not 0.0 <= p_min <= 1.0:
            raise ValueError(f"[spec] p_min must be in [0, 1], got {p_min!r}")
        n_rs = int(draft_max) if n_rs_seq is None else int(n_rs_seq)
        if spec == "mtp":
            mtp_layer(model.weights)  # NoMtpHeadError before allocating anything
            if draft_max > n_rs:
                raise ValueError(f"[spec] draft_max ({draft_max}) > n_rs_seq ({n_rs}): a rejected draft could "
                                 "not be rolled back")  # fmt: skip
        else:
            n_rs = 0
        self.model, self.spec = model, spec
        self.draft_max, self.p_min = int(draft_max), float(p_min)
        self.sampler = sampler or Sampler(SamplerConfig(greedy=True))
        n_ubatch = max(min(n_ubatch, n_ctx), 1 + n_rs)
        self.target = Context(model, n_ctx=n_ctx, n_batch=n_ctx, n_ubatch=n_ubatch, n_rs_seq=n_rs, backends=backends,
                              type_k=type_k, type_v=type_v, embeddings_nextn=spec == "mtp", n_seq_max=n_seq)  # fmt: skip
        self.mtp = (MtpContext(model, n_ctx=n_ctx, n_batch=n_ctx, n_ubatch=n_ubatch, backends=backends,
                               type_k=type_k, type_v=type_v, n_seq_max=n_seq) if spec == "mtp" else None)  # fmt: skip
        self.stats = SpecStats()
        self.tokens: list[int] = []  # the sequence so far: prompt + generated
        # MTP rows waiting to be fed (true entries: token x_p with the target's h_{p-1})
        self._pend_tok: list[int] = []
        self._pend_h: list[np.ndarray] = []
        self._pend_pos0 = 0

    # ---- drafting ---------------------------------------------------------------------------
    def _pick_draft(self, logits: np.ndarray, pos: int, seq: int = 0) -> tuple[int, float]:
        """The head's draft for position pos + 1 (of sequence seq) from its logits at pos:
        (argmax, its probability)."""
        x = np.asarray(logits, np.float64)
        tok = int(np.argmax(x))
        return tok, float(1.0 / np.exp(x - x[tok]).sum())

    def _draft(self, n_max: int) -> list[int]:
        """Feed the pending true rows (the last one is the first draft step), then chain up to
        n_max drafts; the chained entries stay in the MTP cache until the next round drops them."""
        assert self.mtp is not None
        drafts: list[int] = []
        n = len(self._pend_tok)
        pos = np.arange(self._pend_pos0, self._pend_pos0 + n)
        out = np.zeros(n, bool)
        out[-1] = n_max >= 1
        res = self.mtp.decode(Batch(self._pend_tok, embd=np.stack(self._pend_h), pos=pos, output=out))
        self._pend_tok, self._pend_h = [], []
        if n_max < 1:
            return drafts
        p = int(pos[-1])
        while True:
            tok, prob = self._pick_draft(res.logits[-1], p)
            if prob < self.p_min:
                break
            drafts.append(tok)
            if len(drafts) >= n_max:
                break
            p += 1
            res = self.mtp.decode(Batch([tok], embd=res.hidden[-1:], pos=[p]))
        return drafts

    # ---- generation -------------------------------------------------------------------------
    def generate(self, prompt: Sequence[int], n_predict: int, *, stop_at_eog: bool = False) -> Iterator[int]:
        """Yield up to n_predict tokens continuing `prompt` (a fresh sequence 0 in both contexts);
        `self.stats` holds the counters. stop_at_eog: end after an end-of-generation token."""
        prompt = [int(t) for t in prompt]
        if not prompt:
            raise ValueError("[spec] the prompt is empty")
        if n_predict < 0:
            raise ValueError(f"[spec] n_predict must be >= 0, got {n_predict}")
        if len(prompt) + n_predict > self.target.n_ctx:
            raise ValueError(f"[spec] prompt ({len(prompt)}) + n_predict ({n_predict}) exceed n_ctx "
                             f"({self.target.n_ctx})")  # fmt: skip
        self.target.clear()
        if self.mtp is not None:
            self.mtp.clear()
        st = self.stats = SpecStats(n_prompt=len(prompt), drafted_at=[0] * self.draft_max,
                                    accepted_at=[0] * self.draft_max)  # fmt: skip
        self.tokens = list(prompt)
        if n_predict == 0:
            return
        t0 = time.perf_counter()
        spec = self.mtp is not None
        # NOTE: every prompt row is an output: the MTP head needs h_{p-1} for every position
        res = self.target.decode(Batch.simple(prompt, 0, all_outputs=True))
        st.t_prompt = time.perf_counter() - t0
        t_gen0 = time.perf_counter()
        last = self.sampler.sample(res.logits[-1])
        if spec:  # rows p = 1 .. N: x_p with h_{p-1}
            self._pend_tok = prompt[1:] + [last]
            self._pend_h = list(res.h_nextn)
            self._pend_pos0 = 1
        is_eog = self.model.tokenizer.is_eog
        n_past = len(prompt)  # position of `last`
        try:
            while True:
                self.tokens.append(last)
                st.n_generated += 1
                yield last
                if st.n_generated >= n_predict or (stop_at_eog and is_eog(last)):
                    return
                if not spec:
                    t = time.perf_counter()
                    logits = self.target.decode(Batch.simple([last], n_past)).logits[-1]
                    st.t_verify += time.perf_counter() - t
                    st.rounds += 1
                    n_past += 1
                    last = self.sampler.sample(logits)
                    continue
                # ---- one speculative round ----
                k_max = min(self.draft_max, n_predict - st.n_generated - 1)
                t = time.perf_counter()
                drafts = self._draft(k_max)
                st.t_draft += time.perf_counter() - t
                k = len(drafts)
                t = time.perf_counter()
                res = self.target.decode(Batch.simple([last, *drafts], n_past, all_outputs=True))
                st.t_verify += time.perf_counter() - t
                st.rounds += 1
                emitted: list[int] = []
                n_acc = 0
                for i in range(k + 1):
                    tok = self.sampler.sample(res.logits[i])
                    emitted.append(tok)
                    if i < k and tok == drafts[i]:
                        n_acc += 1
                        if stop_at_eog and is_eog(tok):
                            break
                        continue
                    break
                st.drafted += k
                st.accepted += n_acc
                for i in range(k):
                    st.drafted_at[i] += 1
                    st.accepted_at[i] += int(i < n_acc)
                t = time.perf_counter()
                keep = n_past + n_acc + 1  # target positions kept: .. last, d1..d_nacc
                if n_acc < k and not self.target.seq_rm(0, keep, -1):
                    raise RuntimeError(f"[spec] the target refused to roll back {k - n_acc} tokens")
                # drop the MTP head's draft-time entries (chained hidden states), queue the true rows
                self.mtp.seq_rm(0, n_past + 1, -1)
                self._pend_tok = [*drafts[:n_acc], emitted[n_acc]] if len(emitted) > n_acc else list(drafts[:n_acc])
                self._pend_h = list(res.h_nextn[: len(self._pend_tok)])
                self._pend_pos0 = n_past + 1
                st.t_draft += time.perf_counter() - t
                for tok in emitted[:-1]:
                    self.tokens.append(tok)
                    st.n_generated += 1
                    yield tok
                    if stop_at_eog and is_eog(tok):
                        return
                n_past = keep
                last = emitted[-1]
        finally:
            st.t_generate = time.perf_counter() - t_gen0

    # ---- several sequences ------------------------------------------------------------------
    def generate_batch(self, prompts: Sequence[Sequence[int]], n_predict: int,
                       samplers: Sequence[Sampler] | None = None) -> list[list[int]]:  # fmt: skip
        """n_predict tokens for each prompt (sequence s continues prompts[s]); every round runs the
        drafting steps of all sequences in one MTP batch per step and all their verify rows in one
        target batch, then accepts and rolls back per sequence. samplers: one per sequence
        (default greedy). Not streaming; `self.stats` counts all sequences together."""
        S = len(prompts)
        if not 1 <= S <= self.target.n_seq_max:
            raise ValueError(f"[spec] {S} prompts: need 1 .. n_seq ({self.target.n_seq_max})")
        prompts = [[int(t) for t in p] for p in prompts]
        if any(not p for p in prompts):
            raise ValueError("[spec] a prompt is empty")
        if n_predict < 0:
            raise ValueError(f"[spec] n_predict must be >= 0, got {n_predict}")
        if sum(len(p) + n_predict for p in prompts) > self.target.n_ctx:
            raise ValueError(f"[spec] the prompts + n_predict each exceed n_ctx ({self.target.n_ctx})")
        samplers = list(samplers) if samplers is not None else [Sampler(SamplerConfig(greedy=True))] * S
        if len(samplers) != S:
            raise ValueError(f"[spec] {len(samplers)} samplers for {S} prompts")
        self.target.clear()
        if self.mtp is not None:
            self.mtp.clear()
        st = self.stats = SpecStats(n_prompt=sum(map(len, prompts)), drafted_at=[0] * self.draft_max,
                                    accepted_at=[0] * self.draft_max)  # fmt: skip
        out: list[list[int]] = [[] for _ in range(S)]
        if n_predict == 0:
            return out
        spec = self.mtp is not None
        t0 = time.perf_counter()
        seq_ids = np.concatenate([np.full(len(p), s) for s, p in enumerate(prompts)])
        res = self.target.decode(Batch(np.concatenate(prompts), pos=np.concatenate([np.arange(len(p)) for p in prompts]),
                                       seq_id=seq_ids, output=np.ones(len(seq_ids), bool)))  # fmt: skip
        st.t_prompt = time.perf_counter() - t0
        t_gen0 = time.perf_counter()
        ends = np.cumsum([len(p) for p in prompts])
        last = [samplers[s].sample(res.logits[ends[s] - 1]) for s in range(S)]
        n_past = [len(p) for p in prompts]
        pend: dict[int, tuple[list[int], list[np.ndarray], int]] = {}
        for s in range(S):
            out[s].append(last[s])
            if spec:
                pend[s] = (prompts[s][1:] + [last[s]], list(res.h_nextn[ends[s] - len(prompts[s]) : ends[s]]), 1)
        while True:
            active = [s for s in range(S) if len(out[s]) < n_predict]
            if not active:
                break
            drafts: dict[int, list[int]] = {s: [] for s in active}
            if spec:
                t = time.perf_counter()
                drafts = self._draft_batch(active, pend, {s: min(self.draft_max, n_predict - len(out[s]) - 1)
                                                          for s in active})  # fmt: skip
                st.t_draft += time.perf_counter() - t
            t = time.perf_counter()
            rows = [(s, [last[s], *drafts[s]]) for s in active]
            res = self.target.decode(Batch(np.concatenate([r for _, r in rows]),
                                           pos=np.concatenate([np.arange(n_past[s], n_past[s] + len(r)) for s, r in rows]),
                                           seq_id=np.concatenate([np.full(len(r), s) for s, r in rows]),
                                           output=np.ones(sum(len(r) for _, r in rows), bool)))  # fmt: skip
            st.t_verify += time.perf_counter() - t
            st.rounds += 1
            t = time.perf_counter()
            row0 = 0
            for s, r in rows:
                k, ds = len(r) - 1, drafts[s]
                emitted: list[int] = []
                for i in range(k + 1):
                    emitted.append(samplers[s].sample(res.logits[row0 + i]))
                    if i == k or emitted[-1] != ds[i]:
                        break
                n_acc = len(emitted) - 1
                st.drafted += k
                st.accepted += n_acc
                for i in range(k):
                    st.drafted_at[i] += 1
                    st.accepted_at[i] += int(i < n_acc)
                keep = n_past[s] + n_acc + 1
                if n_acc < k and not self.target.seq_rm(s, keep, -1):
                    raise RuntimeError(f"[spec] the target refused to roll back {k - n_acc} tokens of seq {s}")
                if spec:
                    self.mtp.seq_rm(s, n_past[s] + 1, -1)
                    pend[s] = ([*ds[:n_acc], emitted[-1]], list(res.h_nextn[row0 : row0 + n_acc + 1]), n_past[s] + 1)
                out[s].extend(emitted)
                n_past[s], last[s] = keep, emitted[-1]
                row0 += len(r)
            st.t_draft += time.perf_counter() - t
        st.n_generated = sum(map(len, out))
        st.t_generate = time.perf_counter() - t_gen0
        return out

    def _draft_batch(self, active: list[int], pend: dict, k_max: dict[int, int]) -> dict[int, list[int]]:
        """Feed every active sequence's pending rows in one MTP batch, then chain drafts of all the
        sequences still drafting, one MTP batch per step."""
        assert self.mtp is not None
        toks, embd, pos, seq, outp = [], [], [], [], []
        for s in active:
            t, h, p0 = pend.pop(s)
            toks += t
            embd += h
            pos += range(p0, p0 + len(t))
            seq += [s] * len(t)
            outp += [False] * (len(t) - 1) + [k_max[s] >= 1]
        res = self.mtp.decode(Batch(toks, embd=np.stack(embd), pos=pos, seq_id=seq, output=outp))
        flagged = [s for s in active if k_max[s] >= 1]
        last_pos = {s: p for s, p in zip(seq, pos)}
        cur = {s: (res.logits[i], res.hidden[i], last_pos[s]) for i, s in enumerate(flagged)}
        drafts: dict[int, list[int]] = {s: [] for s in active}
        while cur:
            step = []
            for s, (lg, hid, p) in cur.items():
                tok, prob = self._pick_draft(lg, p, s)
                if prob < self.p_min:
                    continue
                drafts[s].append(tok)
                if len(drafts[s]) < k_max[s]:
                    step.append((s, tok, hid, p + 1))
            if not step:
                break
            res = self.mtp.decode(Batch([x[1] for x in step], embd=np.stack([x[2] for x in step]),
                                        pos=[x[3] for x in step], seq_id=[x[0] for x in step]))  # fmt: skip
            cur = {x[0]: (res.logits[i], res.hidden[i], x[3]) for i, x in enumerate(step)}
        return drafts
