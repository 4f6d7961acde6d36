"""`graphir fuzz-gguf`: corrupted GGUF files against Model.load, the tokenizer and a decode.

Every corrupted file must either be refused with a GGUFError naming what is wrong, or load and
decode with finite logits (or be stopped by the non-finite guard, NonFiniteError). Nothing may
hang, allocate without bound or raise anything else.

The files come from tools/gguf_mutate.py (a structure-aware codec, `RawGGUF`, and a seeded
generator, `corrupt(kind, seed)` over the kinds in `KINDS`); two drivers run them:

    graphir fuzz-gguf --seeded 50           # 50 variants of every kind, each in a worker process
                                            # with a per-case timeout and a memory cap: the table
    graphir fuzz-gguf --atheris 600 DIR...  # coverage-guided (pip install atheris) for 600 s

The tests run the same generator in-process (tests/models/test_gguf_corrupt.py: one variant per
kind in the ci profile, many in the thorough one); the atheris corpus is tests/data/gguf_corpus
(`--write-corpus DIR` writes it again). Under atheris the custom mutator parses the input,
applies one `corrupt`-style mutation to one key, type, array item or tensor info and writes it
back; an input that does not parse gets a byte-level mutation.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import select
import signal
import subprocess
import sys
import tempfile
import time
import tracemalloc
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .gguf_mutate import BASES, KINDS, base_file, corrupt, mutate_structure

# --------------------------------------------------------------------------------------------
# Checking one file
# --------------------------------------------------------------------------------------------

# the words an error about an unstructured corruption may use to name what is wrong
FIELD_RE = re.compile(r"key|tensor|tokenizer\.ggml\.|qwen35|general\.|magic|version|count|runs past the end|"
                      r"UTF-8|value type|item type|alignment")  # fmt: skip


OUTCOMES = ("rejected", "loaded, finite", "non-finite guard", "traceback", "hang", "over memory", "bad message")


@dataclass
class Result:
    """What a file did: `outcome` (one of OUTCOMES), the message, the load's peak traced bytes."""

    outcome: str
    message: str = ""
    peak: int = 0
    extra: dict[str, Any] = field(default_factory=dict)


def check_file(path: str | os.PathLike[str], names: tuple[str, ...] = (), decode: bool = True,
               backends: tuple[str, ...] = ("cpu",)) -> Result:  # fmt: skip
    """Load `path` (memory traced), then tokenize and decode a few tokens. "rejected": a GGUFError
    that names the path and one of `names` (any field word when empty; "bad message" otherwise);
    "loaded, finite" / "non-finite guard"; "traceback" for any other exception."""
    from graphir.models.gguf import GGUFError
    from graphir.models.model import Model

    size = os.path.getsize(path)
    tracemalloc.start()
    try:
        model = Model.load(path)
    except GGUFError as e:
        msg = str(e)
        ok = str(path) in msg and (any(n in msg for n in names) if names else FIELD_RE.search(msg) is not None)
        return Result("rejected" if ok else "bad message", msg, tracemalloc.get_traced_memory()[1])
    except Exception as e:  # noqa: BLE001 - the outcome being measured
        return Result("traceback", f"{type(e).__name__}: {e}", tracemalloc.get_traced_memory()[1])
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    if peak > 2 * size + (1 << 20):
        return Result("over memory", f"validation traced {peak} bytes for a {size}-byte file", peak)
    try:
        return _use(model, decode, backends, peak)
    except Exception as e:  # noqa: BLE001
        return Result("traceback", f"{type(e).__name__}: {e}", peak)


def _use(model: Any, decode: bool, backends: tuple[str, ...], peak: int) -> Result:
    """Tokenize and detokenize, then decode a short prompt and one more token."""
    import numpy as np

    from graphir.models.batch import Batch
    from graphir.models.context import Context, NonFiniteError

    tok = model.tokenizer
    ids = tok.encode("abc a <|im_end|>\nxyz")
    tok.decode(range(tok.n_vocab))
    if not decode:
        return Result("loaded, finite", peak=peak)
    ctx = Context(model, n_ctx=16, n_batch=8, n_ubatch=8, backends=backends)
    prompt = [i % model.n_vocab for i in (ids or [0])][:6]
    try:
        out = ctx.decode(Batch.simple(prompt))
        out = ctx.decode(Batch.simple([int(np.argmax(out.logits[-1]))], len(prompt)))
    except NonFiniteError as e:
        return Result("non-finite guard", str(e), peak)
    if not np.isfinite(out.logits).all():
        return Result("traceback", "non-finite logits passed the guard", peak)
    return Result("loaded, finite", peak=peak)


# --------------------------------------------------------------------------------------------
# Drivers
# --------------------------------------------------------------------------------------------


def _worker() -> None:
    """Run cases from stdin ("kind seed" lines) and print one JSON result per line."""
    import resource

    cap = int(os.environ.get("GRAPHIR_FUZZ_MEM_MB", "4096")) << 20
    resource.setrlimit(resource.RLIMIT_AS, (cap, cap))
    with tempfile.TemporaryDirectory() as d:
        for line in sys.stdin:
            kind, seed = line.split()
            try:
                v = corrupt(kind, int(seed))
            except Exception as e:  # noqa: BLE001 - a bug of the generator, reported as such
                print(json.dumps({"kind": kind, "seed": int(seed), "what": "", "outcome": "traceback",
                                  "message": f"generator: {type(e).__name__}: {e}", "peak": 0}), flush=True)
                continue
            path = Path(d) / f"{kind}-{seed}.gguf"
            path.write_bytes(v.data)
            try:
                r = check_file(path, v.names)
            except MemoryError as e:
                r = Result("over memory", f"MemoryError: {e}")
            print(json.dumps({"kind": kind, "seed": int(seed), "what": v.what, "outcome": r.outcome,
                              "message": r.message[:300], "peak": r.peak}), flush=True)  # fmt: skip


def run_seeded(n: int, kinds: tuple[str, ...] = KINDS, timeout: float = 30.0, seed0: int = 0) -> list[dict]:
    """n variants of each kind through worker processes (one case at a time, restarted after a
    hang or a crash of the process); returns one dict per case."""
    cases = [(k, seed0 + s) for k in kinds for s in range(n)]
    results: list[dict] = []
    proc: subprocess.Popen | None = None
    try:
        for kind, seed in cases:
            if proc is None or proc.poll() is not None:
                proc = subprocess.Popen([sys.executable, "-m", "graphir.tools.fuzz_gguf", "--worker"],
                                        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)  # fmt: skip
            proc.stdin.write(f"{kind} {seed}\n")
            proc.stdin.flush()
            ready, _, _ = select.select([proc.stdout], [], [], timeout)
            line = proc.stdout.readline() if ready else ""
            if line:
                results.append(json.loads(line))
                continue
            try:
                proc.wait(timeout=2)  # an exit (a crash) rather than a hang?
            except subprocess.TimeoutExpired:
                pass
            hung = proc.poll() is None
            proc.kill()
            proc.wait()
            proc = None
            outcome = "hang" if hung else "traceback"
            results.append({"kind": kind, "seed": seed, "what": "", "outcome": outcome,
                            "message": f"worker {'timed out' if hung else 'died'}", "peak": 0})  # fmt: skip
    finally:
        if proc is not None:
            proc.stdin.close()
            proc.wait()
    return results


def table(results: list[dict]) -> str:
    """Kinds x outcomes as a markdown table, with the totals."""
    count = Counter((r["kind"], r["outcome"]) for r in results)
    kinds = list(dict.fromkeys(r["kind"] for r in results))
    lines = ["| kind | " + " | ".join(OUTCOMES) + " | total |", "|---" * (len(OUTCOMES) + 2) + "|"]
    for k in [*kinds, "all"]:
        row = [sum(count[(kk, o)] for kk in kinds) if k == "all" else count[(k, o)] for o in OUTCOMES]
        lines.append(f"| {k} | " + " | ".join(map(str, row)) + f" | {sum(row)} |")
    return "\n".join(lines)


BAD = ("traceback", "hang", "over memory", "bad message")




def _atheris_main(seconds: int, corpus: list[str], libfuzzer_args: list[str]) -> int:
    """Coverage-guided fuzzing of Model.load + tokenizer (no decode: throughput) for `seconds`."""
    try:
        import atheris
    except ImportError:
        print("graphir fuzz-gguf: --atheris needs atheris (pip install atheris)", file=sys.stderr)
        return 2
    with atheris.instrument_imports():
        from graphir.models import gguf, model, tokenizer  # noqa: F401
        from graphir.models.archs import qwen35  # noqa: F401
    path = Path(tempfile.mkdtemp()) / "input.gguf"

    def one_input(data: bytes) -> None:
        path.write_bytes(data)
        r = check_file(path, decode=False)
        if r.outcome in BAD:
            raise RuntimeError(f"[fuzz-gguf] {r.outcome}: {r.message}")

    def mutate(data: bytes, max_size: int, seed: int) -> bytes:
        out = mutate_structure(data, seed)
        if out is None or len(out) > max_size:  # NOTE: libFuzzer's buffer holds max_size bytes, no more
            out = atheris.Mutate(data, max_size)
        return out

    # NOTE: libFuzzer writes the inputs it finds into the first corpus directory: a scratch one, so the
    # seed corpus in the tests stays as committed
    scratch = tempfile.mkdtemp(prefix="gguf-corpus-")
    args = [sys.argv[0], f"-max_total_time={seconds}", "-timeout=20", "-rss_limit_mb=4096", "-max_len=262144",
            "-print_final_stats=1",
            *libfuzzer_args, scratch, *corpus]  # fmt: skip
    atheris.Setup(args, one_input, custom_mutator=mutate)
    atheris.Fuzz()
    return 0


def write_corpus(directory: str | os.PathLike[str]) -> list[Path]:
    """The base files, the atheris seed corpus."""
    out = []
    Path(directory).mkdir(parents=True, exist_ok=True)
    for name in BASES:
        p = Path(directory) / f"{name}.gguf"
        p.write_bytes(base_file(name))
        out.append(p)
    return out


def add_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--seeded", type=int, metavar="N", help="N seeded variants of every corruption kind")
    p.add_argument("--kind", action="append", choices=KINDS, help="only these kinds (default: all)")
    p.add_argument("--seed0", type=int, default=0, help="first seed (default 0)")
    p.add_argument("--timeout", type=float, default=30.0, help="seconds per case before it counts as a hang")
    p.add_argument("--json", help="also write every case's result to this file")
    p.add_argument("--atheris", type=int, metavar="SECONDS", help="coverage-guided fuzzing for this long")
    p.add_argument("--write-corpus", metavar="DIR", help="write the base files (the atheris corpus) to DIR")
    p.add_argument("corpus", nargs="*", help="--atheris: corpus directories (default tests/data/gguf_corpus)")


def run(args: argparse.Namespace) -> int:
    """The tool: 0 when every case came out clean, 1 otherwise."""
    if args.write_corpus:
        for p in write_corpus(args.write_corpus):
            print(f"wrote {p} ({p.stat().st_size} bytes)")
        return 0
    if args.atheris:
        corpus = args.corpus or [str(Path(__file__).resolve().parents[1] / "tests" / "data" / "gguf_corpus")]
        return _atheris_main(args.atheris, corpus, [])
    if not args.seeded:
        print("graphir fuzz-gguf: give --seeded N, --atheris SECONDS or --write-corpus DIR", file=sys.stderr)
        return 2
    t0 = time.perf_counter()
    results = run_seeded(args.seeded, tuple(args.kind or KINDS), args.timeout, args.seed0)
    print(table(results))
    bad = [r for r in results if r["outcome"] in BAD]
    for r in bad[:20]:
        print(f"{r['kind']} seed {r['seed']} ({r['what']}): {r['outcome']}: {r['message']}")
    peak = max((r["peak"] for r in results), default=0)
    print(f"\n{len(results)} cases in {time.perf_counter() - t0:.0f} s, {len(bad)} bad; "
          f"largest traced validation peak {peak} bytes")  # fmt: skip
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))
    return 1 if bad else 0


if __name__ == "__main__":
    if sys.argv[1:] == ["--worker"]:
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        _worker()
    else:
        parser = argparse.ArgumentParser(prog="graphir fuzz-gguf", description=__doc__.splitlines()[0])
        add_args(parser)
        sys.exit(run(parser.parse_args()))
