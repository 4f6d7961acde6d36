"""`python -m graphir.tools.cuda_report`: compile every CUDA kernel source (cached) and print ptxas'
figures per kernel and architecture: registers, stack frame, spill stores/loads, static shared memory.

Exit status 1 when nvcc is missing or a source fails to compile; 2 with --no-spills when a hot kernel
(mat-vec, flash attention, gated_delta_net) spills to local memory.
"""

from __future__ import annotations

import argparse
import sys

from graphir.backends.cuda import compiler

HOT = ("mul_mat_vec", "mul_mat_tiled", "flash_attn_ext", "gated_delta_net")


def stats() -> list[compiler.KernelStats]:
    """Every kernel's figures for every cubin arch (compiling what the cache lacks)."""
    built = compiler.compile_all(compiler.ARCHS)
    return [k for b in built for k in compiler.parse_report(b.report)]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m graphir.tools.cuda_report", description=__doc__.split("\n")[0])
    ap.add_argument("--no-spills", action="store_true", help="fail when a hot kernel spills")
    args = ap.parse_args(argv)
    if compiler.nvcc() is None:
        print("nvcc not found: nothing to report", file=sys.stderr)
        return 1
    try:
        rows = stats()
    except RuntimeError as e:
        print(e, file=sys.stderr)
        return 1
    files = compiler.kernel_files()
    print(
        f"{'kernel':<18} {'source':<12} {'arch':<6} {'regs':>5} {'stack':>6} {'spill st':>9} {'spill ld':>9} {'smem':>7}"
    )
    for k in sorted(rows, key=lambda k: (files.get(k.kernel, ""), k.kernel, k.arch)):
        hot = " *" if k.kernel in HOT else ""
        print(f"{k.kernel:<18} {files.get(k.kernel, '?'):<12} {k.arch:<6} {k.registers:>5} {k.stack:>6} "
              f"{k.spill_stores:>9} {k.spill_loads:>9} {k.smem:>7}{hot}")  # fmt: skip
    print(
        f"\n{len({k.kernel for k in rows})} kernels from {len(compiler.sources())} sources, archs "
        f"{', '.join(compiler.ARCHS)} (+ {compiler.PTX_ARCH} PTX at first use); * hot kernels; cache {compiler.cache_dir()}"
    )
    spilling = [k for k in rows if k.kernel in HOT and (k.spill_stores or k.spill_loads)]
    if args.no_spills and spilling:
        print("hot kernels spilling: " + ", ".join(f"{k.kernel} ({k.arch})" for k in spilling), file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
