"""`graphir inspect FILE`: a GGUF file's metadata, its tensors and the validation verdict."""

from __future__ import annotations

import argparse
import sys
from collections import Counter
from typing import Any

import numpy as np

from graphir.models.archs import validate
from graphir.models.gguf import GGUFError, GGUFModelFile, load_gguf


def add_inspect_args(p: argparse.ArgumentParser) -> None:
    """Options of `graphir inspect` (the FILE positional is added by the caller)."""
    p.add_argument("--no-tensors", action="store_true", help="leave out the tensor table")
    p.add_argument("--array-items", type=int, default=8, metavar="N", help="array items shown per key (default 8)")


def run_inspect(path: str, args: argparse.Namespace | None = None) -> int:
    """Print metadata (arrays abbreviated), a tensor table and the verdict. Returns 0 if the file
    is a valid model of a supported architecture (the VALID verdict on stdout), 2 otherwise (bad
    input, the CLI's convention: 'INVALID: why' on stderr, never raised; whatever of the file could
    be read is still printed on stdout)."""
    show_tensors = not getattr(args, "no_tensors", False)
    n_items = max(0, getattr(args, "array_items", 8))
    try:
        f = load_gguf(path)
    except GGUFError as e:
        print(f"INVALID: {e}", file=sys.stderr)
        return 2
    print(f"# {f.path}: GGUF v{f.version}, {f.size:,} bytes, alignment {f.alignment}")
    print(f"# {len(f.metadata)} keys, {len(f.tensors)} tensors\n")
    _print_metadata(f, n_items)
    if show_tensors:
        print()
        _print_tensors(f)
    print()
    try:
        hp = validate(f)
    except GGUFError as e:
        print(f"INVALID: {e}", file=sys.stderr)
        return 2
    print(
        f"VALID {hp.arch}: {hp.n_layer_trunk} trunk blocks "
        f"({sum(hp.is_recurrent(il) for il in range(hp.n_layer_trunk))} recurrent) "
        f"+ {hp.nextn_predict_layers} MTP, n_embd {hp.n_embd}, n_vocab {hp.n_vocab}"
        + (f", {hp.n_expert} experts (top {hp.n_expert_used})" if hp.is_moe else "")
    )
    return 0


def _print_metadata(f: GGUFModelFile, n_items: int) -> None:
    width = max((len(k) for k in f.metadata), default=0)
    for key, value in f.metadata.items():
        t = f.kv_types[key]
        if isinstance(value, list):
            shown = ", ".join(_short(v) for v in value[:n_items])
            more = ", ..." if len(value) > n_items else ""
            print(f"{key:<{width}}  {t} x{len(value)}  [{shown}{more}]")
        elif t == "FLOAT32":
            print(f"{key:<{width}}  {t}  {np.float32(value)}")  # shortest repr of the stored float32
        else:
            print(f"{key:<{width}}  {t}  {_short(value, 200)}")


def _short(v: Any, limit: int = 40) -> str:
    s = repr(v)
    return s if len(s) <= limit else s[: limit - 3] + "..."


def _print_tensors(f: GGUFModelFile) -> None:
    width = max((len(n) for n in f.tensors), default=4)
    print(f"{'name':<{width}}  {'type':<7} {'ne':<22} {'bytes':>12}  offset")
    for t in f.tensors.values():
        print(f"{t.name:<{width}}  {t.type_name:<7} {str(list(t.ne)):<22} {t.nbytes:>12,}  {t.offset}")
    by_type = Counter()
    for t in f.tensors.values():
        by_type[t.type_name] += t.nbytes
    total = sum(by_type.values())
    print(f"# {total:,} bytes of tensor data: " + ", ".join(f"{k} {v:,}" for k, v in by_type.most_common()))
