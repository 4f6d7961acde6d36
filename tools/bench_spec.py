"""Self-speculative decoding with the MTP head, measured: acceptance per draft position, tokens/s
with and without MTP (graphir's own `Generator`), llama.cpp's plain decode on the same file
(llama-cpp-python, when installed), and the speedup these acceptance rates project at a given
verify cost.

Prompts are the openings of held-out standard-library files (the files `train-tiny` never trained
on), so acceptance is measured on text like the training data but not in it.

    python -m graphir.tools.bench_spec [--model F] [--prompts 6] [--n-predict 128] [--draft-max 1 2 3 4]

Projection: with conditional acceptance a_i at draft position i, a round of k drafts yields
1 + sum_i prod_{j<=i} a_j tokens and costs k * head + verify(k) single-token decodes; the
defaults are the 0.8B-shaped model's measured llama.cpp figures (verify(k) = 1.87, 2.11, 2.22,
2.97; a head step ~0.36 of a decode by bytes read).
"""

from __future__ import annotations

import argparse
import math
import statistics
import time
from collections.abc import Sequence

import numpy as np

VERIFY_COST_08B = (1.87, 2.11, 2.22, 2.97)
HEAD_COST_08B = 0.36


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
    """Tokens per round with k drafts and conditional acceptance acc[i] at position i."""
    total, p = 1.0, 1.0
    for i in range(k):
        p *= acc[i]
        total += p
    return total


def run_graphir(model, prompts: list[list[int]], n_predict: int, ks: list[int], sampler_cfg) -> dict:
    from graphir.models.sampling import Sampler
    from graphir.models.speculative import Generator

    out = {}
    for k in [0, *ks]:
        agg = {"gen": 0, "t": 0.0, "rounds": 0, "drafted_at": [0] * max(k, 1), "accepted_at": [0] * max(k, 1),
               "t_draft": 0.0, "t_verify": 0.0}  # fmt: skip
        gen = Generator(model, spec="mtp" if k else None, draft_max=max(k, 1), n_ctx=1024,
                        sampler=Sampler(sampler_cfg))  # fmt: skip
        for prompt in prompts:
            n = sum(1 for _ in gen.generate(prompt, n_predict))
            st = gen.stats
            agg["gen"] += n
            agg["t"] += st.t_generate
            agg["rounds"] += st.rounds
            agg["t_draft"] += st.t_draft
            agg["t_verify"] += st.t_verify
            for i in range(k):
                agg["drafted_at"][i] += st.drafted_at[i]
                agg["accepted_at"][i] += st.accepted_at[i]
        agg["tok_s"] = agg["gen"] / agg["t"]
        agg["acc"] = [a / d if d else 0.0 for a, d in zip(agg["accepted_at"][:k], agg["drafted_at"][:k])]
        agg["tokens_per_round"] = agg["gen"] / agg["rounds"]
        out[k] = agg
    return out


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


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="bench_spec", description=__doc__.splitlines()[0])
    p.add_argument("--model", help="GGUF with an MTP head (default: the embedded model)")
    p.add_argument("--prompts", type=int, default=6, help="held-out prompts (default 6)")
    p.add_argument("--prompt-chars", type=int, default=400)
    p.add_argument("--n-predict", type=int, default=128)
    p.add_argument("--draft-max", type=int, nargs="+", default=[1, 2, 3, 4])
    p.add_argument("--sample", action="store_true", help="the default sampler (seeded) instead of greedy")
    p.add_argument("--threads", type=int, default=2, help="llama.cpp threads (default 2)")
    p.add_argument(
        "--verify-cost",
        type=float,
        nargs="+",
        default=list(VERIFY_COST_08B),
        help="verify(k) / single decode for k = 1.. (default: 0.8B-shaped llama.cpp figures)",
    )
    p.add_argument("--head-cost", type=float, default=HEAD_COST_08B, help="a head step / single decode")
    args = p.parse_args(argv)

    from graphir.models.model import Model
    from graphir.models.sampling import SamplerConfig

    if args.model is None:
        from graphir.models.tiny import default_model_path

        args.model = str(default_model_path())
    model = Model.load(args.model)
    prompts = [model.tokenizer.encode(t, add_special=False) for t in heldout_prompts(args.prompts, args.prompt_chars)]
    cfg = SamplerConfig() if args.sample else SamplerConfig(greedy=True)
    print(f"model {args.model}; {len(prompts)} held-out prompts ({statistics.median(map(len, prompts)):.0f} tokens "
          f"median), {args.n_predict} tokens each, {'sampled (seed ' + str(cfg.seed) + ')' if args.sample else 'greedy'}")  # fmt: skip
    res = run_graphir(model, prompts, args.n_predict, args.draft_max, cfg)
    base = res[0]["tok_s"]
    print(
        f"\n{'draft_max':>9} {'tok/s':>8} {'vs plain':>8} {'tok/round':>9} {'draft s':>8} {'verify s':>8}  acceptance per position"
    )
    for k, r in res.items():
        acc = " ".join(f"{a:.2f}" for a in r["acc"]) if k else "-"
        print(f"{k or 'plain':>9} {r['tok_s']:>8.1f} {r['tok_s'] / base:>8.2f} {r['tokens_per_round']:>9.2f} "
              f"{r['t_draft']:>8.2f} {r['t_verify']:>8.2f}  {acc}")  # fmt: skip
    llama = run_llama(args.model, prompts, args.n_predict, args.threads)
    if llama is not None:
        print(f"\nllama.cpp plain greedy decode on the same file: {llama:.1f} tok/s "
              f"(graphir plain / llama.cpp = {base / llama:.3f})")  # fmt: skip
    else:
        print("\nllama.cpp: not installed (pip install llama-cpp-python==0.3.36)")
    kmax = max(args.draft_max)
    acc = res[kmax]["acc"]
    print(f"\nprojection with acceptance at draft_max {kmax} [{' '.join(f'{a:.2f}' for a in acc)}], head step "
          f"{args.head_cost} and verify(k) {args.verify_cost} single-decode units:")  # fmt: skip
    for k in range(1, min(kmax, len(args.verify_cost)) + 1):
        tokens = expected_tokens(acc, k)
        cost = k * args.head_cost + args.verify_cost[k - 1]
        print(f"  k={k}: {tokens:.2f} tokens per round for {cost:.2f} decodes -> {tokens / cost:.2f}x plain decoding")
    if not math.isfinite(base):
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
