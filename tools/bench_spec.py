"""Self-speculative decoding with the MTP head, measured: for every backend, greedy and sampled, the
acceptance per draft position and tokens/s with and without MTP, side by side in one run.

    python -m graphir.tools.bench_spec [--model F] [-b cpu -b opencl] [--draft-max 1 2 3 4] [--p-min 0 0.3]
                                       [--mode greedy sampled] [--textbook] [--prompts 6] [--n-predict 128]
                                       [--repeat 1]

Prompts are the openings of held-out standard-library files (the files `train-tiny` never trained
on), so acceptance is measured on text like the training data but not in it. Per backend and
mode, every prompt runs plain decoding and each (draft_max, p_min) setting one after the other,
so a change in machine load hits every setting alike (the order rotates from prompt to prompt, so
no setting always follows the same one); tok/s is the median over prompts of each prompt's
generated tokens / generation time, "vs plain" the median over prompts of the ratio to plain
decoding on the same prompt (plans are compiled by a warm-up run of the longest prompt first).
--repeat R runs the prompts R times over (each run one more sample per prompt and setting; the
medians are then over R x prompts): a ratio within a few percent of 1 needs it on a shared machine,
where single 128-token runs vary by 10-20%. The load average before and after each backend is
printed with its table.
Acceptance per position i is the fraction of proposed i-th drafts that were accepted (all prompts).

--textbook adds, for the sampled mode, textbook speculative sampling (Generator(accept="textbook"),
`Sampler.verify`: the draft is a draw from the head's distribution q, accepted with probability
min(1, p/q), else the token is drawn from the residual max(0, p - q)): distribution-lossless like
the coupled draws, but not seed-identical to plain decoding (`graphir generate --spec-accept`).

Rows draft in every round (Generator(adaptive=False): speculation's own acceptance and cost), except
the "adaptive" row of each draft_max: what `graphir generate --spec mtp` runs, drafting only in the
rounds its policy measured cheaper than plain ones.

--uncoupled adds the sampled mode with argmax drafts (the sampler before coupled draws) as a
reference row. --projection prints the speedup the measured acceptance projects at a given
verify/head cost (defaults: the 0.8B-shaped model's llama.cpp figures). With llama-cpp-python
installed, llama.cpp's plain greedy decode of the same file is timed too.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from graphir import progress
from graphir.models.sampling import Sampler, SamplerConfig
from graphir.models.speculative import Generator, SeqState

# a verify of k drafts / one decode on the 0.8B-shaped Q8_0 file, cpu, 2 threads (bench_verify,
# session 8, repacked Q8_0 with verify tiles prefetching; llama.cpp in the same run: 1.82 2.01 2.24 3.11)
VERIFY_COST_08B = (1.11, 1.14, 1.16, 1.26)
HEAD_COST_08B = 0.36
BACKENDS = ("ref", "cpu", "opencl", "vulkan")
MODES = {"greedy": SamplerConfig(greedy=True), "sampled": SamplerConfig()}


def heldout_prompts(n: int, chars: int, val_percent: int = 2) -> list[str]:
    """The first `chars` characters (cut at a line end) of n held-out stdlib files, largest first."""
    from .train_tiny import corpus_files, is_validation, stdlib_dir

    root = stdlib_dir()
    texts = []
    for p in corpus_files(root):
        if is_validation(p.relative_to(root).as_posix(), val_percent):
            text = p.read_text(encoding="utf-8", errors="replace")
            if len(text) > chars:
                texts.append(text[: text.rfind("\n", 0, chars) + 1])
    if not texts:
        raise ValueError(f"[bench-spec] no held-out stdlib files under {root}")
    step = max(1, len(texts) // n)
    return texts[::step][:n]


def expected_tokens(acc: Sequence[float], k: int) -> float:
    """Tokens per round with k drafts and acceptance acc[i] of the i-th draft (given it was proposed)."""
    return 1.0 + sum(acc[:k])


# ---- a reference drafter ------------------------------------------------------------------------
class UncoupledGenerator(Generator):
    """The drafter before coupled draws: the head's argmax, whatever the sampler (a reference row)."""

    def _pick_draft(self, s: SeqState, logits: np.ndarray, pos: int) -> tuple[int, float]:
        x = np.asarray(logits, np.float64)
        tok = int(np.argmax(x))
        return tok, float(1.0 / np.exp(x - x[tok]).sum())


# coupled / textbook / uncoupled rows draft in every round (speculation's own figures); the adaptive
# row is what `graphir generate --spec mtp` runs: coupled, drafting only where a policy measured it
# cheaper than plain rounds (models/speculative.py SpecPolicy; its state carries over the prompts)
VARIANTS = {"coupled": Generator, "textbook": Generator, "uncoupled": UncoupledGenerator, "adaptive": Generator}


# ---- measuring ------------------------------------------------------------------------------------
@dataclass
class Setting:
    """One row of the table: plain (draft_max 0) or MTP with (draft_max, p_min), and its counters."""

    draft_max: int
    p_min: float = 0.0
    variant: str = "coupled"
    tok_s: list[float] = field(default_factory=list)  # per prompt
    gen: int = 0
    rounds: int = 0
    t_draft: float = 0.0
    t_verify: float = 0.0
    drafted_at: list[int] = field(default_factory=list)
    accepted_at: list[int] = field(default_factory=list)

    @property
    def label(self) -> str:
        if not self.draft_max:
            return "plain"
        extra = "" if self.variant == "coupled" else f" {self.variant}"
        return f"mtp {self.draft_max} p>={self.p_min:g}{extra}"

    @property
    def acc(self) -> list[float]:
        return [a / d if d else 0.0 for a, d in zip(self.accepted_at, self.drafted_at)]

    def add(self, n: int, st) -> None:
        self.tok_s.append(n / st.t_generate if st.t_generate > 0 else 0.0)
        self.gen += n
        self.rounds += st.rounds
        self.t_draft += st.t_draft
        self.t_verify += st.t_verify
        if not self.drafted_at:
            self.drafted_at, self.accepted_at = [0] * len(st.drafted_at), [0] * len(st.accepted_at)
        for i in range(len(st.drafted_at)):
            self.drafted_at[i] += st.drafted_at[i]
            self.accepted_at[i] += st.accepted_at[i]


def make_generator(model, s: Setting, cfg: SamplerConfig, backend: str, n_ctx: int, threads: int | None) -> Generator:
    cls = VARIANTS[s.variant]
    return cls(model, spec="mtp" if s.draft_max else None, draft_max=max(s.draft_max, 1), p_min=s.p_min,
               sampler=Sampler(cfg), n_ctx=n_ctx, backends=(backend,), n_threads=threads,
               accept="textbook" if s.variant == "textbook" else "coupled", adaptive=s.variant == "adaptive")  # fmt: skip


def run_backend(model, backend: str, mode: str, settings: list[Setting], prompts: list[list[int]], n_predict: int,
                threads: int | None, progress, repeat: int = 1) -> None:  # fmt: skip
    """Fill `settings` for one backend and mode: a warm-up run each, then prompt by prompt, every
    setting in turn (all the prompts `repeat` times)."""
    cfg = MODES[mode]
    n_ctx = max(map(len, prompts)) + n_predict + 8
    gens = []
    longest = max(prompts, key=len)
    for j, s in enumerate(settings):
        progress(f"{backend} {mode}: warm-up {s.label} ({j + 1}/{len(settings)})")
        g = make_generator(model, s, cfg, backend, n_ctx, threads)
        for _ in g.generate(longest, n_predict):  # compiles the plans of every shape the runs will see
            pass
        gens.append(g)
    pairs, n = list(zip(settings, gens)), len(settings)
    for r in range(repeat):
        for i, prompt in enumerate(prompts):
            # the order rotates from prompt to prompt: no setting always runs right after the same one
            # (a setting that touches more memory slows the one after it: caches, not the setting)
            j = (r * len(prompts) + i) % n
            for s, g in pairs[j:] + pairs[:j]:
                again = f" (run {r + 1}/{repeat})" if repeat > 1 else ""
                progress(f"{backend} {mode}: prompt {i + 1}/{len(prompts)}{again}, {s.label}")
                s.add(sum(1 for _ in g.generate(prompt, n_predict)), g.stats)


def run_llama(path: str, prompts: list[list[int]], n_predict: int, threads: int) -> float | None:
    """llama.cpp greedy single-token decode tokens/s on the same prompts (None without llama-cpp-python)."""
    try:
        from llama_cpp import Llama
    except ImportError:
        return None
    llm = Llama(model_path=path, n_ctx=1024, n_batch=512, n_threads=threads, n_threads_batch=threads, verbose=False)
    n_tot, t_tot = 0, 0.0
    for prompt in prompts:
        llm.reset()
        llm.eval(prompt)
        t0 = time.perf_counter()
        for _ in range(n_predict):
            tok = int(np.argmax(llm.scores[llm.n_tokens - 1]))
            llm.eval([tok])
        t_tot += time.perf_counter() - t0
        n_tot += n_predict
    return n_tot / t_tot


class Progress:
    """Progress of the runs: graphir's tqdm bar (graphir/progress.py) on a terminal, a plain line per
    update otherwise (a log for runs in the background; none with GRAPHIR_PROGRESS=0)."""

    def __init__(self, total: int) -> None:
        self.t0, self.total, self.done = time.perf_counter(), total, 0
        self.bar = progress.bar(total=total, desc="bench-spec", unit="run") if progress.enabled() else None

    def __call__(self, msg: str) -> None:
        self.done += 1
        if self.bar is not None:
            self.bar.set_postfix_str(msg, refresh=False)
            self.bar.update(1)
        elif not progress.is_quiet():
            print(f"[bench-spec {time.perf_counter() - self.t0:6.0f} s, step {self.done}/{self.total}] {msg}",
                  file=sys.stderr, flush=True)  # fmt: skip

    def end(self) -> None:
        if self.bar is not None:
            self.bar.close()


def print_table(backend: str, mode: str, settings: list[Setting], load: tuple[float, float]) -> None:
    """One backend and mode: "vs plain" is the median over prompts of each prompt's tok/s against plain
    decoding's on the same prompt (run in the same pass over the settings), so slow drifts of the
    machine's load cancel."""
    plain = settings[0].tok_s
    print(f"\n{backend}, {mode} (load average {load[0]:.1f} -> {load[1]:.1f} on {os.cpu_count()} CPUs):")
    print(f"  {'setting':<24} {'tok/s':>7} {'vs plain':>8} {'tok/round':>9} {'draft s':>8} {'verify s':>8}  "
          "acceptance per position")  # fmt: skip
    for s in settings:
        ratio = statistics.median(t / b for t, b in zip(s.tok_s, plain) if b > 0)
        acc = " ".join(f"{a:.2f}" for a in s.acc) if s.draft_max else "-"
        print(f"  {s.label:<24} {statistics.median(s.tok_s):>7.1f} {ratio:>8.2f} {s.gen / max(s.rounds, 1):>9.2f} "
              f"{s.t_draft:>8.2f} {s.t_verify:>8.2f}  {acc}")  # fmt: skip


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="bench_spec", description=__doc__.splitlines()[0])
    p.add_argument("--model", help="GGUF with an MTP head (default: the embedded model)")
    p.add_argument("--backend", "-b", action="append", help=f"backends (default: the available of {BACKENDS})")
    p.add_argument("--mode", nargs="+", choices=list(MODES), default=list(MODES), help="greedy and/or sampled "
                   "(the default sampler: temperature 0.8, top-k 40, top-p 0.95, seed 0)")  # fmt: skip
    p.add_argument("--prompts", type=int, default=6, help="held-out prompts (default 6)")
    p.add_argument("--prompt-chars", type=int, default=400)
    p.add_argument("--n-predict", type=int, default=128)
    p.add_argument("--repeat", type=int, default=1, help="run the prompts this many times (more samples per ratio)")
    p.add_argument("--draft-max", type=int, nargs="+", default=[1, 2, 3, 4])
    p.add_argument("--p-min", type=float, nargs="+", default=[0.0], help="drafting thresholds (default 0)")
    p.add_argument("--textbook", action="store_true", help="also textbook speculative sampling (sampled mode)")
    p.add_argument("--uncoupled", action="store_true", help="also argmax drafts under sampling (the old drafter)")
    p.add_argument("--threads", type=int, default=None, help="cpu threads (default: the affinity mask)")
    p.add_argument("--llama", action="store_true", help="also time llama.cpp's plain greedy decode (llama-cpp-python)")
    p.add_argument("--projection", action="store_true", help="project speedups at --verify-cost / --head-cost")
    p.add_argument("--verify-cost", type=float, nargs="+", default=list(VERIFY_COST_08B),
                   help="verify(k) / single decode for k = 1.. (default: 0.8B-shaped llama.cpp figures)")  # fmt: skip
    p.add_argument("--head-cost", type=float, default=HEAD_COST_08B, help="a head step / single decode")
    args = p.parse_args(argv)
    if args.repeat < 1 or args.prompts < 1 or args.n_predict < 1:
        p.error("--repeat, --prompts and --n-predict must be >= 1")

    from graphir.backends import availability
    from graphir.models.model import Model

    backends = args.backend or [b for b in BACKENDS if availability(b).ok]
    for b in backends:
        if not availability(b).ok:
            p.error(f"backend {b} is not available: {availability(b).reason}")
    if args.model is None:
        from graphir.models.tiny import default_model_path

        args.model = str(default_model_path())
    model = Model.load(args.model)
    prompts = [model.tokenizer.encode(t, add_special=False) for t in heldout_prompts(args.prompts, args.prompt_chars)]
    print(f"model {args.model}; {len(prompts)} held-out prompts ({statistics.median(map(len, prompts)):.0f} tokens "
          f"median), {args.n_predict} tokens each; backends {' '.join(backends)}; tok/s: median over prompts")  # fmt: skip

    def settings_for(mode: str) -> list[Setting]:
        out = [Setting(0)] + [Setting(k, pm) for k in args.draft_max for pm in args.p_min]
        out += [Setting(k, 0.0, "adaptive") for k in args.draft_max]
        extra = [v for v, on in (("textbook", args.textbook), ("uncoupled", args.uncoupled)) if on]
        if mode == "sampled":
            out += [Setting(k, 0.0, v) for v in extra for k in args.draft_max]
        return out

    plan = [(b, m, settings_for(m)) for b in backends for m in args.mode]
    progress = Progress(sum(len(s) * (1 + args.repeat * len(prompts)) for _, _, s in plan))
    loads = []
    for b, m, settings in plan:
        load0 = os.getloadavg()[0]
        run_backend(model, b, m, settings, prompts, args.n_predict, args.threads, progress, args.repeat)
        loads.append((load0, os.getloadavg()[0]))
    progress.end()
    for (b, m, settings), load in zip(plan, loads):
        print_table(b, m, settings, load)
    if args.llama:
        llama = run_llama(args.model, prompts, args.n_predict, args.threads or 2)
        print("\nllama.cpp plain greedy decode on the same file: "
              + (f"{llama:.1f} tok/s" if llama else "not installed (pip install llama-cpp-python==0.3.36)"))  # fmt: skip
    if args.projection:
        for b, m, settings in plan:
            best = max((s for s in settings if s.draft_max), key=lambda s: s.draft_max, default=None)
            if best is None:
                continue
            print(f"\nprojection ({b}, {m}) with acceptance [{' '.join(f'{a:.2f}' for a in best.acc)}], head step "
                  f"{args.head_cost} and verify(k) {args.verify_cost} single-decode units:")  # fmt: skip
            for k in range(1, min(best.draft_max, len(args.verify_cost)) + 1):
                tokens, cost = expected_tokens(best.acc, k), k * args.head_cost + args.verify_cost[k - 1]
                print(f"  k={k}: {tokens:.2f} tokens per round for {cost:.2f} decodes -> {tokens / cost:.2f}x plain")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
