"""The `graphir` console entry point: one subcommand per tool."""

from __future__ import annotations

import argparse
import os
import re
import sys

import numpy as np

from graphir import backends
from graphir.ops import Op


def cmd_ops(args: argparse.Namespace) -> int:
    """Print the op x backend support matrix, read from each backend's KERNELS table."""
    names = backends.names()
    tables: dict[str, dict | None] = {}
    notes = []
    marks: dict[str, str] = {}  # a short state after the count, e.g. cuda's "compiled, not run here"
    for name in names:
        try:
            cls = backends.backend_class(name)
        except ImportError as e:
            cls = None
            notes.append(f"{name}: import failed: {e}")
        tables[name] = None if cls is None else cls.KERNELS
        av = backends.availability(name)
        if not av.ok:
            notes.append(f"{name}: unavailable here ({av.reason})")
            note = getattr(cls, "support_note", None)
            if note is not None:
                marks[name] = f" ({note().removeprefix('kernels ')})"
    width = max(len(op.value) for op in Op)
    print(f"{'op':<{width}}  " + "  ".join(f"{n:^7}" for n in names))
    for op in Op:
        if op is Op.NONE:
            continue
        cells = []
        for name in names:
            table = tables[name]
            cells.append("   -   " if table is None else ("  yes  " if op in table else "  no   "))
        print(f"{op.value:<{width}}  " + "  ".join(cells))
    counts = {n: (sum(op in t for op in Op if op is not Op.NONE) if t else 0) for n, t in tables.items()}
    total = len(Op) - 1
    print("\n" + ", ".join(f"{n}: {c}/{total}{marks.get(n, '')}" for n, c in counts.items()))
    for note in notes:
        print(note)
    return 0


def cmd_dump(args: argparse.Namespace) -> int:
    """Build the example graph (or a model's decode graph, once models exist), compile it and dump it."""
    import graphir as gr
    from graphir.dump import Filter, dump

    from .example import ExampleConfig, ExampleWeights, build_example, example_inputs

    if args.model:
        graph, plan = _model_decode_graph(args.model, args.tokens, args.backend)
    else:
        cfg = ExampleConfig(n_layer=args.layers, n_tokens=args.tokens)
        graph = build_example(ExampleWeights(cfg))
        plan = gr.compile(graph, args.backend)
    if args.run and not args.model:
        for name, value in example_inputs(cfg).items():
            plan.set_input(name, value)
        plan.run()
        logits = plan.get("logits")
        print(f"# ran: logits {list(reversed(logits.shape))}, argmax per token {np.argmax(logits[0, 0], axis=-1).tolist()}",
              file=sys.stderr)  # fmt: skip
    keep = Filter(args.name, args.layer) if args.name or args.layer is not None else None
    text = dump(graph, args.format, plan, keep)
    if args.output:
        with open(args.output, "w") as f:
            f.write(text)
        print(f"wrote {args.format} dump of {len(graph.nodes)} nodes to {args.output}", file=sys.stderr)
    else:
        sys.stdout.write(text)
    return 0


def cmd_generate(args: argparse.Namespace) -> int:
    """Stream a continuation of a prompt from a GGUF model (default: the embedded tiny model)."""
    from .generate import run_generate

    return run_generate(args)


def cmd_make_tiny(args: argparse.Namespace) -> int:
    """Write a small deterministic random-weight Qwen3.5 GGUF (test models)."""
    from .make_tiny import make_tiny_main

    return make_tiny_main(args)


def _fixed_threads():
    """The measurement commands time the thread count asked for (no per-program thread choice)."""
    from graphir.backends.cpu.backend import fixed_threads

    return fixed_threads()


def cmd_bench(args: argparse.Namespace) -> int:
    """Prefill/decode tokens per second and memory, with llama.cpp side by side when installed."""
    from .bench import run_bench

    with _fixed_threads():
        return run_bench(args)


def cmd_train_tiny(args: argparse.Namespace) -> int:
    """Train the tiny qwen35 + MTP model with PyTorch (the optional [train] extra) and export it."""
    from .train_tiny import main as train_main

    return train_main(args)


def cmd_inspect(args: argparse.Namespace) -> int:
    """GGUF metadata, tensors and the validation verdict."""
    from .inspect_cmd import run_inspect

    return run_inspect(args.file, args)


def cmd_bench_ops(args: argparse.Namespace) -> int:
    """Time every op's perf shapes on the chosen backends, side by side (us, GB/s, GFLOP/s)."""
    from .bench_ops import run

    with _fixed_threads():
        return run(args)


def cmd_fuzz_gguf(args: argparse.Namespace) -> int:
    """Corrupted GGUF files (seeded, or coverage-guided with atheris) against load, tokenizer and decode."""
    from .fuzz_gguf import run

    return run(args)


def cmd_parity(args: argparse.Namespace) -> int:
    """Every op case on the chosen backends against the reference (ref)."""
    from graphir.parity.harness import run_all

    table = run_all(args.backend or None, args.profile, args.case or None)
    print(table.format())
    return 0 if table.ok else 1


def cmd_compare(args: argparse.Namespace) -> int:
    """The same graph on two backends or settings, node by node; the first node beyond its bound."""
    from .compare import run

    return run(args)


def cmd_profile(args: argparse.Namespace) -> int:
    """Per-node and per-op time of a plan run, bytes and FLOPs, the time outside kernels."""
    from .profile import run

    with _fixed_threads():
        return run(args)


def cmd_view(args: argparse.Namespace) -> int:
    """A self-contained HTML page of a compiled graph (Graphviz layout, search, node panel)."""
    from .view import run

    return run(args)


def _model_decode_graph(path: str, n_tokens: int, backends: list[str]):
    """The graph and plan a Context runs for a ubatch of n_tokens tokens of a GGUF model."""
    from graphir.models.batch import Batch
    from graphir.models.context import Context
    from graphir.models.model import Model

    model = Model.load(path)
    ctx = Context(model, n_ctx=max(256, n_tokens), n_batch=n_tokens, n_ubatch=n_tokens, backends=tuple(backends))
    ctx.decode(Batch.simple([0] * n_tokens, 0))
    result, plan = ctx.last_graph()
    return result.graph, plan


def _regex(text: str) -> str:
    """An argparse type: a regular expression that compiles (else a usage error naming it)."""
    try:
        re.compile(text)
    except re.error as e:
        raise argparse.ArgumentTypeError(f"invalid regular expression {text!r}: {e}") from e
    return text


def build_parser() -> argparse.ArgumentParser:
    from graphir import __version__

    p = argparse.ArgumentParser(prog="graphir", description="graphir: a compiled tensor graph IR mirroring ggml",
                                epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    p.add_argument("--version", action="version", version=f"graphir {__version__}")
    sub = p.add_subparsers(dest="command", required=True)

    d = sub.add_parser("dump", help="dump a compiled graph (text table, Graphviz DOT or JSON)")
    d.add_argument("--format", "-f", choices=["text", "dot", "json"], default="text")
    d.add_argument("--layer", type=int, help="only tensors of this layer (names ending in -LAYER)")
    d.add_argument("--name", type=_regex, help="only tensors whose name matches this regex")
    d.add_argument("--model", "-m", help="dump the decode graph of this GGUF model (default: the example graph)")
    d.add_argument("--layers", type=int, default=2, help="layers of the example graph (default 2)")
    d.add_argument("--tokens", type=int, default=8, help="tokens in the batch (default 8; 1 = a decode step)")
    d.add_argument("--backend", "-b", action="append", help="backend(s) in priority order (default cpu)")
    d.add_argument("--run", action="store_true", help="also run the plan once on random inputs")
    d.add_argument("--output", "-o", help="write to this file instead of stdout")
    d.set_defaults(func=cmd_dump)

    from .generate import add_generate_args

    g = sub.add_parser("generate", help="generate text from a GGUF model (default: the embedded tiny model)")
    add_generate_args(g)
    g.set_defaults(func=cmd_generate)

    m = sub.add_parser("make-tiny", help="write the tiny deterministic qwen35 / qwen35moe GGUF")
    from .make_tiny import add_make_tiny_args

    add_make_tiny_args(m)
    m.set_defaults(func=cmd_make_tiny)

    t = sub.add_parser("train-tiny", help="train the tiny qwen35 + MTP model on the Python stdlib (needs [train])")
    from .train_tiny import add_args as add_train_args

    add_train_args(t)
    t.set_defaults(func=cmd_train_tiny)

    from .bench import add_bench_args

    b = sub.add_parser("bench", help="prefill/decode tokens per second and memory (llama.cpp side by side)")
    add_bench_args(b)
    b.set_defaults(func=cmd_bench)

    i = sub.add_parser("inspect", help="print a GGUF file's metadata and tensors and validate it")
    i.add_argument("file", help="path to a .gguf file")
    from .inspect_cmd import add_inspect_args

    add_inspect_args(i)
    i.set_defaults(func=cmd_inspect)

    from .fuzz_gguf import add_args as add_fuzz_args

    fz = sub.add_parser("fuzz-gguf", help="corrupted GGUF files against load, tokenizer and decode (seeded or atheris)")
    add_fuzz_args(fz)
    fz.set_defaults(func=cmd_fuzz_gguf)

    q = sub.add_parser("parity", help="check backends against the reference (ref), op by op")
    q.add_argument("--backend", "-b", action="append", help="backend(s) to check (default: all but ref)")
    q.add_argument("--case", "-c", action="append", help="only these op cases (default: all)")
    q.add_argument("--profile", choices=["ci", "thorough"], help="examples per case (default ci, fixed seed)")
    q.add_argument("--quiet", "-q", action="store_true", help="no progress bar")
    q.set_defaults(func=cmd_parity)

    from .bench_ops import add_args as add_bench_ops_args

    bo = sub.add_parser("bench-ops", help="time each op's perf shapes on every chosen backend (us, GB/s, GFLOP/s)")
    add_bench_ops_args(bo)
    bo.set_defaults(func=cmd_bench_ops)

    from .compare import add_args as add_compare_args
    from .profile import add_args as add_profile_args
    from .view import add_args as add_view_args

    c = sub.add_parser("compare", help="the same graph on two backends/settings: per-node error, first divergent node")
    add_compare_args(c)
    c.set_defaults(func=cmd_compare)
    pr = sub.add_parser("profile", help="per-node and per-op time, bytes, FLOPs and overhead of a plan run")
    add_profile_args(pr)
    pr.set_defaults(func=cmd_profile)
    v = sub.add_parser("view", help="a self-contained HTML page of a compiled graph (search, node panel, overlays)")
    add_view_args(v)
    v.set_defaults(func=cmd_view)

    o = sub.add_parser("ops", help="print the op x backend support matrix")
    o.set_defaults(func=cmd_ops)
    return p


# One exit status convention for every subcommand (`graphir --help` prints it).
EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED, EXIT_PIPE = 0, 1, 2, 130, 141
EPILOG = """exit status:
  0    success
  1    the work failed: a check found a failure (parity, compare, a bench --check), an internal error
  2    bad usage or input: arguments, files, an invalid GGUF, a bad environment variable (every error
       message goes to stderr as 'graphir COMMAND: error: ...')
  130  interrupted (Ctrl-C)
  141  the reader of stdout went away (e.g. '| head'), as a process ended by SIGPIPE

environment: GRAPHIR_DEBUG=1|2|3 (debug output), GRAPHIR_CACHE (tiny test models), GRAPHIR_PROGRESS=0 (no
progress bars; they also stay off when stderr is not a terminal or with --quiet)"""


def main(argv: list[str] | None = None) -> int:
    """Run one subcommand; returns the exit status (EPILOG). Errors are one line on stderr, never a
    traceback, except for internal errors (bugs), which keep theirs."""
    from graphir import debug, progress

    args = build_parser().parse_args(argv)
    if debug.ENV_ERROR is not None:
        print(f"graphir {args.command}: error: {debug.ENV_ERROR}", file=sys.stderr)
        return EXIT_USAGE
    was_quiet = progress.is_quiet()
    if getattr(args, "quiet", False):
        progress.set_quiet()
    if args.command == "dump" and args.backend is None:
        args.backend = [backends.FALLBACK]
    try:
        return _run(args)
    finally:
        progress.set_quiet(was_quiet)  # NOTE: main() may run inside a longer-lived process (tests, embedding)


def _run(args: argparse.Namespace) -> int:
    """args.func under the exit status convention (EPILOG)."""
    try:
        status = args.func(args)
        sys.stdout.flush()  # NOTE: here, so a closed pipe is seen below and not at interpreter exit
        return status
    except BrokenPipeError:
        # the reader went away: point stdout at /dev/null so the exit-time flush is silent
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_PIPE
    except KeyboardInterrupt:
        print(f"\ngraphir {args.command}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except MemoryError as e:
        print(f"graphir {args.command}: error: out of memory: {e}", file=sys.stderr)
        return EXIT_FAILED
    # NOTE: FloatingPointError is the model's NonFiniteError (NaN/inf logits), a message, not a traceback
    except (ValueError, KeyError, OSError, FloatingPointError, backends.BackendUnavailable) as e:
        msg = e.args[0] if isinstance(e, KeyError) and e.args else e
        print(f"graphir {args.command}: error: {msg}", file=sys.stderr)
        return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
