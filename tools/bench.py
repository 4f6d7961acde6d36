"""`graphir bench`: prefill and decode tokens/s and memory of a GGUF model, with llama.cpp
(llama-cpp-python) on the same file side by side when it is installed.

Both sides run in this process, one after the other, on the same random prompt; figures are
medians over --reps runs. `--make-08b DIR` writes a Qwen3.5-0.8B-shaped random GGUF to bench on.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np


def add_bench_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", "-m", help="GGUF file (default: the embedded tiny model)")
    p.add_argument("--prompt-tokens", type=int, default=128, help="prefill length (default 128)")
    p.add_argument("--gen-tokens", type=int, default=16, help="single-token decode steps (default 16)")
    p.add_argument("--reps", type=int, default=3, help="repetitions; medians are reported (default 3)")
    p.add_argument("--ubatch", type=int, default=512)
    p.add_argument("--backend", "-b", action="append", help="backend(s) (default cpu)")
    p.add_argument("--threads", type=int, default=2, help="llama.cpp threads (default 2)")
    p.add_argument("--no-llama", action="store_true", help="skip the llama.cpp side")
    p.add_argument("--make-08b", metavar="DIR", help="write qwen35-0.8b-shaped-{q8_0,f16}.gguf into DIR and exit")


def _median(xs: list[float]) -> float:
    return statistics.median(xs)


def bench_graphir(path: str, tokens: list[int], n_gen: int, reps: int, n_ubatch: int, backends) -> dict:
    from graphir.models.batch import Batch
    from graphir.models.context import Context
    from graphir.models.model import Model

    model = Model.load(path)
    n_ctx = len(tokens) + n_gen + 8
    ctx = Context(model, n_ctx=n_ctx, n_batch=max(len(tokens), 1), n_ubatch=min(n_ubatch, len(tokens)),
                  backends=tuple(backends))  # fmt: skip
    prefill, decode = [], []
    for _ in range(reps):
        ctx.clear()
        t0 = time.perf_counter()
        ctx.decode(Batch.simple(tokens, 0))
        prefill.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        for i in range(n_gen):  # fixed tokens, so both sides do the same work
            ctx.decode(Batch.simple([tokens[i % len(tokens)]], len(tokens) + i))
        decode.append(time.perf_counter() - t0)
    sizes = ctx.memory_sizes()
    return {
        "prefill_tps": len(tokens) / _median(prefill),
        "decode_tps": n_gen / _median(decode) if n_gen else float("nan"),
        "kv_bytes": sizes.kv_bytes,
        "rs_bytes": sizes.rs_bytes,
        "compute_bytes": ctx.compute_buffer_bytes(),
    }


def bench_llama(path: str, tokens: list[int], n_gen: int, reps: int, threads: int) -> dict:
    from llama_cpp import Llama

    llm = Llama(model_path=path, n_ctx=len(tokens) + n_gen + 8, n_batch=len(tokens), n_ubatch=len(tokens),
                n_threads=threads, n_threads_batch=threads, verbose=False)  # fmt: skip
    prefill, decode = [], []
    for _ in range(reps):
        llm.reset()
        t0 = time.perf_counter()
        llm.eval(tokens)
        prefill.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        for i in range(n_gen):
            llm.eval([tokens[i % len(tokens)]])
        decode.append(time.perf_counter() - t0)
    return {
        "prefill_tps": len(tokens) / _median(prefill),
        "decode_tps": n_gen / _median(decode) if n_gen else float("nan"),
    }


def run_bench(args: argparse.Namespace) -> int:
    if args.make_08b:
        from .bench_model import write_08b_models

        for p in write_08b_models(Path(args.make_08b)):
            print(p)
        return 0
    if args.prompt_tokens < 1 or args.gen_tokens < 0 or args.reps < 1:
        raise ValueError("--prompt-tokens and --reps must be >= 1, --gen-tokens >= 0")
    if args.model is None:
        from graphir.models.tiny import default_model_path

        args.model = str(default_model_path())
    from graphir.models.gguf import load_gguf

    n_vocab = len(load_gguf(args.model).metadata["tokenizer.ggml.tokens"])
    tokens = np.random.default_rng(0).integers(0, min(n_vocab, 256), args.prompt_tokens).tolist()
    print(f"model: {args.model}")
    print(f"prompt {args.prompt_tokens} tokens, {args.gen_tokens} decode steps, medians of {args.reps}")
    ours = bench_graphir(args.model, tokens, args.gen_tokens, args.reps, args.ubatch, args.backend or ["cpu"])
    rows = [("graphir", ours)]
    if not args.no_llama:
        try:
            rows.append(
                (
                    f"llama.cpp ({args.threads} thr)",
                    bench_llama(args.model, tokens, args.gen_tokens, args.reps, args.threads),
                )
            )
        except ImportError:
            print("llama.cpp: not installed (CMAKE_ARGS=-DGGML_NATIVE=ON pip install llama-cpp-python==0.3.36)",
                  file=sys.stderr)  # fmt: skip
    print(f"{'':22} {'prefill tok/s':>14} {'decode tok/s':>13}")
    for name, r in rows:
        print(f"{name:22} {r['prefill_tps']:14.2f} {r['decode_tps']:13.2f}")
    if len(rows) == 2:
        lp, ld = rows[1][1]["prefill_tps"], rows[1][1]["decode_tps"]
        print(f"{'graphir / llama.cpp':22} {ours['prefill_tps'] / lp:14.3f} {ours['decode_tps'] / ld:13.3f}")
    mib = 2**20
    print(f"graphir memory: KV {ours['kv_bytes'] / mib:.2f} MiB, recurrent state {ours['rs_bytes'] / mib:.2f} MiB, "
          f"compute buffer {ours['compute_bytes'] / mib:.2f} MiB")  # fmt: skip
    return 0
