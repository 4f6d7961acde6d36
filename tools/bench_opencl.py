"""Per-op throughput of the opencl backend next to the cpu reference, in one run:

  - mul_mat with one token (mat-vec) by F32, F16, Q8_0 and Q4_K weights: GB/s of weight
    bytes read;
  - mul_mat with several tokens (prefill, `--prefill` tokens, default 128) by the same weight
    types: GFLOP/s (2 K M N flops);
  - gated_delta_net (S_v 128, H_v 16; 1 and 64 tokens): ms;
  - flash_attn_ext (head dim 128, 8 heads, F16 K/V, n_kv 512 and 2048, one query): ms.

Each case is a single-op graph compiled once per backend; a timing is the median of `--reps`
runs of `plan.run()` (which ends with the backend's synchronization point) after one warm-up.
The nmse column compares the two backends' outputs, so a fast wrong kernel shows.
NOTE: the cpu backend's mat-vec goes through numpy's BLAS; on a loaded machine a threaded BLAS
waits on busy cores (ms-sized steps): OPENBLAS_NUM_THREADS=1 gives steadier cpu figures.

Run: python -m graphir.tools.bench_opencl [--reps 20] [--sizes 1024,2048]
"""

from __future__ import annotations

import argparse
import statistics
import time
from dataclasses import dataclass

import numpy as np

import graphir as gr
from graphir.backends import availability, get_backend
from graphir.graph import build_graph
from graphir.quants import quantize_rows
from graphir.tensor import Tensor
from graphir.types import DType

BACKENDS = ("opencl", "cpu")


@dataclass
class Bench:
    """One single-op graph: its output, host data for its inputs, and the bytes a run reads
    (weights only, for GB/s; 0 reports ms only)."""

    name: str
    out: Tensor
    inputs: dict[Tensor, np.ndarray]
    weight_bytes: int = 0
    flops: int = 0


def _weights(rng: np.random.Generator, type: DType, K: int, M: int) -> np.ndarray:
    w = (rng.standard_normal((M, K)) / np.sqrt(K)).astype(np.float32)
    if type == DType.F32:
        return w
    if type == DType.F16:
        return w.astype(np.float16)
    return quantize_rows(w, type)


def mat_vec(rng: np.random.Generator, type: DType, n: int) -> Bench:
    raw = _weights(rng, type, n, n)
    w = gr.new_weight(type, (n, n), raw, "w")
    x = gr.new_input(DType.F32, (n, 1), "x")
    return Bench(f"mul_mat {type.name} {n}x{n} 1 tok", gr.mul_mat(w, x),
                 {x: rng.standard_normal(n).astype(np.float32)}, raw.nbytes)  # fmt: skip


def mat_mat(rng: np.random.Generator, type: DType, n: int, n_tokens: int) -> Bench:
    raw = _weights(rng, type, n, n)
    w = gr.new_weight(type, (n, n), raw, "w")
    x = gr.new_input(DType.F32, (n, n_tokens), "x")
    return Bench(f"mul_mat {type.name} {n}x{n} {n_tokens} tok", gr.mul_mat(w, x),
                 {x: rng.standard_normal((n_tokens, n)).astype(np.float32)}, flops=2 * n * n * n_tokens)  # fmt: skip


def gated_delta_net(rng: np.random.Generator, n_tokens: int, S_v: int = 128, H_v: int = 16) -> Bench:
    def inp(name: str, ne: tuple[int, ...], scale: float = 1.0, shift: float = 0.0) -> Tensor:
        t = gr.new_input(DType.F32, ne, name)
        data[t] = (rng.standard_normal(ne[::-1]) * scale + shift).astype(np.float32)
        return t

    data: dict[Tensor, np.ndarray] = {}
    qk = (S_v, H_v, n_tokens, 1)
    q, k, v = inp("q", qk, S_v**-0.5), inp("k", qk, S_v**-0.5), inp("v", qk)
    g, beta = inp("g", (1, H_v, n_tokens, 1), 0.1, -0.5), inp("beta", (1, H_v, n_tokens, 1), 0.1, 0.5)
    state = inp("state", (S_v, S_v, H_v, 1), 0.1)
    out = gr.gated_delta_net(q, k, v, g, beta, state)
    return Bench(f"gated_delta_net S_v {S_v} H_v {H_v} {n_tokens} tok", out, data)


def flash_attn(rng: np.random.Generator, n_kv: int, D: int = 128, H: int = 8) -> Bench:
    q = gr.new_input(DType.F32, (D, 1, H, 1), "q")
    k = gr.new_input(DType.F16, (D, n_kv, H, 1), "k")
    v = gr.new_input(DType.F16, (D, n_kv, H, 1), "v")
    data = {q: rng.standard_normal((1, H, 1, D)).astype(np.float32),
            k: rng.standard_normal((1, H, n_kv, D)).astype(np.float16),
            v: rng.standard_normal((1, H, n_kv, D)).astype(np.float16)}  # fmt: skip
    out = gr.flash_attn_ext(q, k, v, None, D**-0.5)
    return Bench(f"flash_attn_ext hd {D} {H} heads n_kv {n_kv} 1 q", out, data)


def _median_run(plan, reps: int) -> float:
    plan.run()  # warm-up: first-touch of buffers, program builds already done at compile
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        plan.run()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def measure(b: Bench, reps: int) -> tuple[dict[str, float], float]:
    """Median seconds per backend, and the NMSE of opencl's output against the cpu's."""
    graph = build_graph(b.out)
    secs, outs = {}, {}
    for name in BACKENDS:
        plan = gr.compile(graph, [name], cache=False)
        lacking = [n.op.value for n in graph.nodes if plan.schedule.node_backend[n].name != name]
        if lacking:
            raise RuntimeError(f"[bench_opencl] {b.name}: {', '.join(lacking)} not on {name}")
        for t, v in b.inputs.items():
            plan.set_input(t, v)
        secs[name] = _median_run(plan, reps)
        outs[name] = plan.get(b.out).astype(np.float64)
    ref = outs["cpu"]
    nmse = float(np.mean((outs["opencl"] - ref) ** 2) / max(np.mean(ref**2), 1e-30))
    return secs, nmse


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reps", type=int, default=20, help="timed runs per case and backend (median)")
    ap.add_argument("--sizes", default="1024,2048", help="square mat-vec sizes")
    ap.add_argument("--prefill", type=int, default=128, help="tokens of the prefill (mat-mat) cases, by 1024x1024")
    ap.add_argument("--only", default="", help="run only the cases whose name contains this")
    args = ap.parse_args(argv)
    for name in BACKENDS:
        av = availability(name)
        if not av.ok:
            print(f"[bench_opencl] {name} unavailable: {av.reason}")
            return 1

    rng = np.random.default_rng(0)
    sizes = [int(s) for s in args.sizes.split(",")]
    benches = [mat_vec(rng, t, n) for n in sizes for t in (DType.F32, DType.F16, DType.Q8_0, DType.Q4_K)]
    benches += [mat_mat(rng, t, 1024, args.prefill) for t in (DType.F32, DType.F16, DType.Q8_0, DType.Q4_K)]
    benches += [gated_delta_net(rng, n) for n in (1, 64)]
    benches += [flash_attn(rng, n) for n in (512, 2048)]
    benches = [b for b in benches if args.only in b.name]

    print(f"opencl: {get_backend('opencl').describe()}; cpu: numpy reference; median of {args.reps} runs")
    head = (
        f"{'case':<40} {'opencl ms':>10} {'cpu ms':>10} {'cpu/opencl':>10} {'opencl rate':>13} {'cpu':>9} {'nmse':>8}"
    )
    print(head)
    print("-" * len(head))
    for b in benches:
        secs, nmse = measure(b, args.reps)
        ocl, cpu = secs["opencl"], secs["cpu"]
        if b.weight_bytes:
            rate = f"{b.weight_bytes / ocl / 1e9:>8.2f} GB/s {b.weight_bytes / cpu / 1e9:>9.2f}"
        elif b.flops:
            rate = f"{b.flops / ocl / 1e9:>6.2f} GFLOP/s {b.flops / cpu / 1e9:>9.2f}"
        else:
            rate = f"{'':>13} {'':>9}"

        print(f"{b.name:<40} {ocl * 1e3:>10.3f} {cpu * 1e3:>10.3f} {cpu / ocl:>10.2f} {rate} {nmse:>8.1e}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
