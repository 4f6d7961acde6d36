"""`graphir bench`: prefill and decode tokens/s and memory of a GGUF model, with llama.cpp
(llama-cpp-python) on the same file side by side when it is installed.

Each side runs in its own worker process (so each one's peak RSS is its own), loads the model
once, and the runs ALTERNATE between the sides (graphir, llama.cpp, graphir, ...) so that load
on a shared machine hits both alike; figures are medians over --reps runs. Next to decode
tokens/s it prints the achieved weight-read bandwidth (bytes of the weights one decode step
reads x tokens/s) and its fraction of the machine's read bandwidth measured with the same
thread count (`--bandwidth` measures only that). `--make-08b DIR` writes a Qwen3.5-0.8B-shaped
random GGUF to bench on.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import resource
import statistics
import sys
import time
from pathlib import Path

import numpy as np

from graphir import progress
from graphir.backends.base import default_threads


def add_bench_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", "-m", help="GGUF file (default: the embedded tiny model)")
    p.add_argument("--prompt-tokens", type=int, default=128, help="prefill length (default 128)")
    p.add_argument("--gen-tokens", type=int, default=16, help="single-token decode steps (default 16)")
    p.add_argument("--reps", type=int, default=5, help="repetitions per side, alternating; medians (default 5)")
    p.add_argument("--ubatch", type=int, default=512)
    p.add_argument("--backend", "-b", action="append", help="backend(s) (default cpu)")
    p.add_argument("--threads", "-t", type=int, default=None,
                   help="threads for both sides (default: the CPUs this process may use)")  # fmt: skip
    p.add_argument("--no-llama", action="store_true", help="skip the llama.cpp side")
    p.add_argument("--bandwidth", action="store_true", help="measure the machine's read bandwidth and exit")
    p.add_argument("--make-08b", metavar="DIR", help="write qwen35-0.8b-shaped-{q8_0,f16}.gguf into DIR and exit")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress bars")


# ---- the two sides (each runs in a worker process) ----


class GraphirSide:
    def __init__(self, path: str, n_tokens: int, n_gen: int, n_ubatch: int, backends, threads: int) -> None:
        from graphir.models.context import Context
        from graphir.models.model import Model

        self.model = Model.load(path)
        self.ctx = Context(self.model, n_ctx=n_tokens + n_gen + 8, n_batch=n_tokens,
                           n_ubatch=min(n_ubatch, n_tokens), backends=tuple(backends), n_threads=threads)  # fmt: skip

    def prefill(self, tokens: list[int]) -> None:
        from graphir.models.batch import Batch

        self.ctx.clear()
        self.ctx.decode(Batch.simple(tokens, 0))

    def step(self, token: int, pos: int) -> None:
        from graphir.models.batch import Batch

        self.ctx.decode(Batch.simple([token], pos))

    def info(self) -> dict:
        sizes = self.ctx.memory_sizes()
        return {"kv_bytes": sizes.kv_bytes, "rs_bytes": sizes.rs_bytes, "compute_bytes": self.ctx.compute_buffer_bytes()}


class LlamaSide:
    def __init__(self, path: str, n_tokens: int, n_gen: int, n_ubatch: int, backends, threads: int) -> None:
        from llama_cpp import Llama

        self.llm = Llama(model_path=path, n_ctx=n_tokens + n_gen + 8, n_batch=n_tokens, n_ubatch=n_tokens,
                         n_threads=threads, n_threads_batch=threads, verbose=False)  # fmt: skip

    def prefill(self, tokens: list[int]) -> None:
        self.llm.reset()
        self.llm.eval(tokens)

    def step(self, token: int, pos: int) -> None:
        self.llm.eval([token])

    def info(self) -> dict:
        return {}


def _worker(conn, side_cls, args: tuple, tokens: list[int], n_gen: int) -> None:
    """Load once, then answer 'run' (one prefill + n_gen decode steps) until 'stop'."""
    try:
        side = side_cls(*args)
        conn.send(("ready", None))
        while conn.recv() == "run":
            t0 = time.perf_counter()
            side.prefill(tokens)
            t1 = time.perf_counter()
            for i in range(n_gen):  # fixed tokens, so both sides do the same work
                side.step(tokens[i % len(tokens)], len(tokens) + i)
            conn.send(("times", (t1 - t0, time.perf_counter() - t1)))
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        conn.send(("done", {**side.info(), "peak_rss": peak}))
    except Exception as e:  # noqa: BLE001 - reported by the parent
        conn.send(("error", f"{type(e).__name__}: {e}"))


def _start(side_cls, args: tuple, tokens: list[int], n_gen: int):
    parent, child = mp.Pipe()
    proc = mp.get_context("spawn").Process(target=_worker, args=(child, side_cls, args, tokens, n_gen), daemon=True)
    proc.start()
    kind, payload = parent.recv()
    if kind == "error":
        raise RuntimeError(payload)
    return proc, parent


def weight_bytes_per_token(path: str) -> int:
    """Bytes of weights one decode step reads: every trunk/output matrix once; from the
    token embedding only one row (get_rows); the MTP block's tensors not at all."""
    from graphir.models.gguf import load_gguf

    f = load_gguf(path)
    total = 0
    for name, t in f.tensors.items():
        if name.startswith("token_embd") and "output.weight" in f.tensors:
            continue
        if ".nextn." in name or _is_mtp_block(f, name):
            continue
        total += t.nbytes
    return total


def _is_mtp_block(f, name: str) -> bool:
    if not name.startswith("blk."):
        return False
    arch = f.metadata.get("general.architecture")
    n_block = int(f.metadata.get(f"{arch}.block_count", 0))
    n_mtp = int(f.metadata.get(f"{arch}.nextn_predict_layers", 0))
    return int(name.split(".")[1]) >= n_block - n_mtp


def read_bandwidth(n_threads: int, nbytes: int = 1 << 30, reps: int = 5) -> float:
    """The machine's read bandwidth (GB/s) with n_threads: sum_rows over a large F32 matrix on
    the native cpu backend (one streaming pass per run), median of reps."""
    import graphir as gr
    from graphir.backends import get_backend

    cols = 1 << 16
    x = gr.new_weight(gr.F32, [cols, nbytes // 4 // cols], np.ones((nbytes // 4 // cols, cols), np.float32), "x")
    plan = gr.compile(gr.build_graph(gr.sum_rows(x).set_output()), ["cpu"], cache=False)
    be = get_backend("cpu")
    saved, be.n_threads = getattr(be, "n_threads", 1), n_threads
    try:
        plan.run()
        times = []
        for _ in range(reps):
            t0 = time.perf_counter()
            plan.run()
            times.append(time.perf_counter() - t0)
    finally:
        be.n_threads = saved
    return nbytes / statistics.median(times) / 1e9


def run_bench(args: argparse.Namespace) -> int:
    if args.make_08b:
        from .bench_model import write_08b_models

        for p in write_08b_models(Path(args.make_08b)):
            print(p)
        return 0
    threads = args.threads or default_threads()
    if args.bandwidth:
        print(f"read bandwidth, {threads} threads: {read_bandwidth(threads):.1f} GB/s")
        return 0
    if args.prompt_tokens < 1 or args.gen_tokens < 0 or args.reps < 1 or threads < 1:
        raise ValueError("--prompt-tokens, --reps and --threads must be >= 1, --gen-tokens >= 0")
    if args.model is None:
        from graphir.models.tiny import default_model_path

        args.model = str(default_model_path())
    from graphir.models.gguf import load_gguf

    n_vocab = len(load_gguf(args.model).metadata["tokenizer.ggml.tokens"])
    tokens = np.random.default_rng(0).integers(0, min(n_vocab, 256), args.prompt_tokens).tolist()
    print(f"model: {args.model}")
    print(f"prompt {args.prompt_tokens} tokens, {args.gen_tokens} decode steps, {threads} threads, "
          f"medians of {args.reps} alternating runs")  # fmt: skip
    sides = {"graphir": GraphirSide}
    if not args.no_llama:
        try:
            import llama_cpp  # noqa: F401

            sides[f"llama.cpp ({threads} thr)"] = LlamaSide
        except ImportError:
            print("llama.cpp: not installed (CMAKE_ARGS=-DGGML_NATIVE=ON pip install llama-cpp-python==0.3.36)",
                  file=sys.stderr)  # fmt: skip
    results = _run_sides(sides, args, tokens, threads)
    _report(results, args, threads)
    return 0


def _run_sides(sides: dict, args, tokens: list[int], threads: int) -> dict[str, dict]:
    spec = (args.model, len(tokens), args.gen_tokens, args.ubatch, args.backend or ["cpu"], threads)
    workers = {name: _start(cls, spec, tokens, args.gen_tokens) for name, cls in sides.items()}
    times: dict[str, list[tuple[float, float]]] = {name: [] for name in sides}
    with progress.bar(total=(args.reps + 1) * len(workers), desc="bench", unit="run") as bar:
        for rep in range(args.reps + 1):  # the first round warms up (plans, caches, page faults)
            for name, (_, conn) in workers.items():
                bar.set_postfix_str(f"{name} {'warm-up' if rep == 0 else f'run {rep}/{args.reps}'}")
                conn.send("run")
                kind, payload = conn.recv()
                if kind == "error":
                    raise RuntimeError(f"{name}: {payload}")
                if rep:
                    times[name].append(payload)
                bar.update(1)
    results = {}
    for name, (proc, conn) in workers.items():
        conn.send("stop")
        kind, info = conn.recv()
        proc.join(timeout=30)
        pre = statistics.median(t[0] for t in times[name])
        dec = statistics.median(t[1] for t in times[name])
        results[name] = {"prefill_tps": len(tokens) / pre,
                         "decode_tps": args.gen_tokens / dec if args.gen_tokens else float("nan"), **info}  # fmt: skip
    return results


def _report(results: dict[str, dict], args, threads: int) -> None:
    wbytes = weight_bytes_per_token(args.model)
    bw = read_bandwidth(threads, nbytes=min(1 << 30, max(wbytes * 2, 1 << 28)))
    print(f"weights read per decode step {wbytes / 1e6:.1f} MB; machine read bandwidth {bw:.1f} GB/s "
          f"({threads} threads) -> decode limit {bw * 1e9 / wbytes:.1f} tok/s")  # fmt: skip
    print(f"{'':22} {'prefill tok/s':>14} {'decode tok/s':>13} {'weights GB/s':>13} {'of limit':>9} {'peak RSS':>10}")
    for name, r in results.items():
        gbs = wbytes * r["decode_tps"] / 1e9
        print(f"{name:22} {r['prefill_tps']:14.2f} {r['decode_tps']:13.2f} {gbs:13.1f} {gbs / bw:9.2f} "
              f"{r['peak_rss'] / 2**20:8.0f} MiB")  # fmt: skip
    names = list(results)
    if len(names) == 2:
        a, b = results[names[0]], results[names[1]]
        print(f"{'graphir / llama.cpp':22} {a['prefill_tps'] / b['prefill_tps']:14.3f} "
              f"{a['decode_tps'] / b['decode_tps']:13.3f}")  # fmt: skip
    ours = results["graphir"]
    mib = 2**20
    print(f"graphir memory: KV {ours['kv_bytes'] / mib:.2f} MiB, recurrent state {ours['rs_bytes'] / mib:.2f} MiB, "
          f"compute buffer {ours['compute_bytes'] / mib:.2f} MiB")  # fmt: skip
