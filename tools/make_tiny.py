"""`graphir make-tiny`: write a small deterministic random-weight Qwen3.5 GGUF (dense or MoE) and
print its path and a one-line summary. The models themselves are made by `graphir.models.tiny`."""

from __future__ import annotations

import argparse
import math
import os
from collections import Counter
from collections.abc import Sequence

from graphir.models.archs import validate
from graphir.models.gguf import load_gguf
from graphir.models.hparams import ARCHS
from graphir.models.tiny import DTYPES, cached_tiny_path, make_tiny


def summary(path: str | os.PathLike[str]) -> str:
    """One line describing a Qwen3.5 GGUF: layers, widths, vocab, parameters, weight type, size."""
    f = load_gguf(path)
    hp = validate(f)
    n_rec = sum(hp.is_recurrent(il) for il in range(hp.n_layer_trunk))
    n_params = sum(math.prod(t.ne) for t in f.tensors.values())
    types = Counter(t.type_name for t in f.tensors.values() if len(t.ne) >= 2).most_common(1)
    ffn = f"{hp.n_expert} experts top-{hp.n_expert_used} + shared" if hp.is_moe else f"n_ff {hp.n_ff}"
    return (
        f"{hp.arch}: {hp.n_layer_trunk} layers ({n_rec} delta-net + {hp.n_layer_trunk - n_rec} attention) "
        f"+ {hp.nextn_predict_layers} MTP, n_embd {hp.n_embd}, {ffn}, vocab {hp.n_vocab}, "
        f"{n_params / 1e6:.2f}M params, {types[0][0] if types else '-'} weights, {f.size / 1024:.0f} KiB"
    )


def add_make_tiny_args(p: argparse.ArgumentParser) -> None:
    """Options of `graphir make-tiny`."""
    p.add_argument("--output", "-o", help="file to write (default: the model cache, $GRAPHIR_CACHE or ~/.cache/graphir)")  # fmt: skip
    p.add_argument("--arch", choices=ARCHS, default="qwen35", help="architecture (default qwen35)")
    p.add_argument("--dtype", choices=list(DTYPES), default="f32", help="weight matrix type (default f32)")
    p.add_argument("--seed", type=int, default=0, help="weights' random seed (default 0)")


def make_tiny_main(argv: argparse.Namespace | Sequence[str] | None = None) -> int:
    """`graphir make-tiny`: write the tiny model, print its path and a one-line summary; returns 0.

    Takes parsed arguments (from the graphir CLI) or an argv list (None: sys.argv[1:]).
    """
    if isinstance(argv, argparse.Namespace):
        args = argv
    else:
        p = argparse.ArgumentParser(prog="graphir make-tiny", description=__doc__.splitlines()[0])
        add_make_tiny_args(p)
        args = p.parse_args(argv)
    if args.output:
        path = make_tiny(args.output, args.arch, args.dtype, args.seed)
    else:
        path = cached_tiny_path(args.arch, args.dtype, args.seed)
    print(path)
    print(summary(path))
    return 0
