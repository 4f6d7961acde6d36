"""Benchmark of the compile layer on a transformer-shaped graph of ~1000 nodes (cpu backend):

  - executor overhead per node: `plan.run()` with every prepared call swapped for a no-op,
    i.e. what the plan itself adds on top of the kernels;
  - full re-run per node with tiny tensors: executor + kernel-call overhead (the numpy work is
    negligible at these sizes), an upper bound on the per-node Python cost;
  - compile per node, cold (schedule + allocate + lower) vs a plan-cache hit on a rebuilt graph;
  - compute-buffer bytes with reuse vs the naive sum.

Run: python -m graphir.tools.bench_plan [--layers 40] [--reps 30]. Timings are medians.
"""

from __future__ import annotations

import argparse
import statistics
import time

import graphir as gr

from .example import ExampleConfig, ExampleWeights, build_example, example_inputs


def _median_time(fn, reps: int) -> float:
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--layers", type=int, default=40, help="example layers (40 -> ~1000 nodes)")
    ap.add_argument("--reps", type=int, default=30)
    ap.add_argument("--tokens", type=int, default=4)
    args = ap.parse_args(argv)

    cfg = ExampleConfig(n_layer=args.layers, n_embd=32, n_head=4, n_head_kv=2, n_ff=64, n_vocab=64,
                        n_tokens=args.tokens)  # fmt: skip
    weights = ExampleWeights(cfg)
    graph = build_example(weights)
    n_nodes = len(graph.nodes)

    gr.plan_cache.clear()
    t_cold = _median_time(lambda: gr.compile(graph, ["cpu"], cache=False), max(3, args.reps // 10))
    plan = gr.compile(graph, ["cpu"])
    for name, value in example_inputs(cfg).items():
        plan.set_input(name, value)
    t_hit = _median_time(lambda: gr.compile(build_example(weights), ["cpu"]), max(3, args.reps // 10))
    t_build = _median_time(lambda: build_example(weights), max(3, args.reps // 10))

    n_calls = plan.stats.n_calls
    plan.run()  # warm up
    t_run = _median_time(plan.run, args.reps)

    noop_plan = gr.compile(graph, ["cpu"], cache=False)
    noop_plan._calls = [(lambda: None) for _ in noop_plan._calls]
    t_noop = _median_time(noop_plan.run, args.reps)

    st = plan.stats
    us = 1e6
    print(f"graph: {n_nodes} nodes ({n_calls} prepared calls; views run nothing), {cfg.n_layer} layers")
    print(f"executor overhead per call (no-op kernels):     {t_noop / n_calls * us:8.3f} us")
    print(f"re-run per call, tiny tensors (incl. kernels):  {t_run / n_calls * us:8.3f} us")
    print(f"compile per node, cold:                         {t_cold / n_nodes * us:8.3f} us")
    print(f"build graph per node:                           {t_build / n_nodes * us:8.3f} us")
    print(f"build + compile per node, plan-cache hit:       {t_hit / n_nodes * us:8.3f} us")
    print(f"cold compile / cached re-run:                   {t_cold / t_run:8.1f} x")
    cb, nv = st.compute_bytes["cpu"], st.naive_bytes["cpu"]
    print(f"compute buffer: {cb} B with reuse vs {nv} B naive -> {nv / cb:.2f}x smaller "
          f"({st.inplace} nodes in place)")  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
