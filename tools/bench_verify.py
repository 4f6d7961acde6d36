"""The figure that bounds speculative speedup: the cost of verifying k drafts ([last, d1..dk] in
one batch) relative to one single-token decode, for k = 1..4, and the memory the n_rs_seq
snapshot planes add. With llama-cpp-python installed, the same ratios for llama.cpp.

Run: python -m graphir.tools.bench_verify [--model F] [--prompt-tokens 32] [--reps 3]
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np


def graphir_costs(path: str, prompt: list[int], ks: list[int], reps: int, threads: int | None = None
                  ) -> tuple[dict[int, float], dict]:  # fmt: skip
    from graphir.models.batch import Batch
    from graphir.models.context import Context
    from graphir.models.model import Model

    model = Model.load(path)
    n = len(prompt)
    ctx = Context(model, n_ctx=n + 16, n_batch=n, n_ubatch=n, n_rs_seq=max(ks), n_threads=threads)
    ctx.decode(Batch.simple(prompt, 0))

    def back_to_prompt() -> None:  # roll the batch back (a single token keeps no snapshot: redo)
        if not ctx.seq_rm(0, n, -1):
            ctx.clear()
            ctx.decode(Batch.simple(prompt, 0))

    times: dict[int, list[float]] = {k: [] for k in [0, *ks]}
    for _ in range(reps + 1):  # round robin over k (a busy spell hits every k alike); run 0 compiles
        for k in times:
            batch = Batch.simple(prompt[: k + 1], n, all_outputs=True)
            t0 = time.perf_counter()
            ctx.decode(batch)
            times[k].append(time.perf_counter() - t0)
            back_to_prompt()
    costs = {k: statistics.median(t[1:]) for k, t in times.items()}
    plain = Context(model, n_ctx=n + 16, n_batch=n, n_ubatch=n, n_rs_seq=0).memory_sizes()
    spec = ctx.memory_sizes()
    return costs, {"rs_plain": plain.rs_bytes, "rs_spec": spec.rs_bytes, "kv": spec.kv_bytes}


def llama_costs(path: str, prompt: list[int], ks: list[int], reps: int, threads: int) -> dict[int, float]:
    from llama_cpp import Llama

    n = len(prompt)
    llm = Llama(model_path=path, n_ctx=n + 16, n_batch=n, n_threads=threads, n_threads_batch=threads,
                logits_all=True, verbose=False)  # fmt: skip
    times: dict[int, list[float]] = {k: [] for k in [0, *ks]}
    for _ in range(reps + 1):
        for k in times:
            llm.reset()
            llm.eval(prompt)
            t0 = time.perf_counter()
            llm.eval(prompt[: k + 1])
            times[k].append(time.perf_counter() - t0)
    return {k: statistics.median(t[1:]) for k, t in times.items()}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", "-m")
    ap.add_argument("--prompt-tokens", type=int, default=32)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2, help="threads of both sides (default 2)")
    ap.add_argument("--no-llama", action="store_true")
    args = ap.parse_args(argv)
    from graphir.backends.cpu.backend import fixed_threads

    with fixed_threads():
        return _run(args)


def _run(args: argparse.Namespace) -> int:
    if args.model is None:
        from graphir.models.tiny import default_model_path

        args.model = str(default_model_path())
    prompt = np.random.default_rng(0).integers(3, 256, args.prompt_tokens).tolist()
    ks = [1, 2, 3, 4]
    ours, mem = graphir_costs(args.model, prompt, ks, args.reps, args.threads)
    rows = [("graphir", ours)]
    if not args.no_llama:
        try:
            rows.append(
                (f"llama.cpp ({args.threads} thr)", llama_costs(args.model, prompt, ks, args.reps, args.threads))
            )
        except ImportError:
            print("llama.cpp: not installed")
    print(f"model {args.model}; verify [last, d1..dk] cost / single-token decode (medians of {args.reps})")
    print(f"{'':20} {'1 token (ms)':>12} " + " ".join(f"{'k=' + str(k):>7}" for k in ks))
    for name, c in rows:
        print(f"{name:20} {c[0] * 1e3:12.2f} " + " ".join(f"{c[k] / c[0]:7.2f}" for k in ks))
    mib = 2**20
    print(f"recurrent state: {mem['rs_plain'] / mib:.3f} MiB with n_rs_seq=0, {mem['rs_spec'] / mib:.3f} MiB with "
          f"n_rs_seq={max(ks)} (+{(mem['rs_spec'] - mem['rs_plain']) / mib:.3f} MiB); KV {mem['kv'] / mib:.3f} MiB")  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
