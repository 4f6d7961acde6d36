"""The graph the inspection tools (`graphir compare`, `profile`, `view`) look at: a model's ubatch
graph run through its own Context, or the example graph (tools/example.py), compiled for one
setup (backends, threads, KV type, weights file).

    subject = Subject.build(Spec(tokens=1), Setup(backends=("cpu",)))
    subject.graph, subject.plan           # the compiled graph (node ids as in `graphir dump`)
    subject.run(callback=fn)              # one run from the same starting state, fn(node, value) per node

A model subject decodes its ubatch once when built (building and compiling the plan, as the
context caches it); every `run` clears the memory and decodes the same ubatch again, so each
run starts from empty memory and reads the same inputs.
"""

from __future__ import annotations

import argparse
import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

import graphir as gr
from graphir.backends import Backend
from graphir.compile import Plan
from graphir.graph import Graph

EvalCallback = Callable[[gr.Tensor, np.ndarray], object]


@dataclass(frozen=True)
class Spec:
    """Which graph: a GGUF model (None: the shipped model) or the example graph, and its ubatch."""

    model: str | None = None
    example: bool = False
    layers: int = 2  # the example graph's
    tokens: int = 1
    prompt: str | None = None
    verify: int = 0  # > 0: after the ubatch, a speculative verify batch of this many drafts is the graph

    def describe(self) -> str:
        what = f"example graph ({self.layers} layers)" if self.example else (self.model or "the shipped model")
        batch = f"prompt {self.prompt!r}" if self.prompt else ("1-token decode" if self.tokens == 1 else
                                                              f"{self.tokens}-token ubatch")  # fmt: skip
        if self.verify:
            batch = f"verify of {self.verify} drafts ({self.verify + 1} rows, all outputs, {self.verify} snapshots) after a {batch}"
        return f"{what}, {batch}"


@dataclass(frozen=True)
class Setup:
    """Where and how the graph runs: backends in priority order (names or instances), the cpu
    backend's threads, the KV cache type and, for weight-type comparisons, another GGUF file."""

    backends: tuple[str | Backend, ...] = ("cpu",)
    threads: int | None = None
    kv_type: str = "f16"
    model: str | None = None

    def describe(self) -> str:
        names = ",".join(b if isinstance(b, str) else b.name for b in self.backends)
        more = [f"{self.threads} threads"] if self.threads else []
        more += [f"kv {self.kv_type}"] if self.kv_type != "f16" else []
        more += [f"weights {self.model}"] if self.model else []
        return names + (f" ({', '.join(more)})" if more else "")


@dataclass(eq=False)
class Subject:
    """A compiled graph ready to run again and again; `run` starts from the same state each time."""

    spec: Spec
    setup: Setup
    graph: Graph
    plan: Plan
    _run: Callable[[EvalCallback | None], None] = field(repr=False)
    notes: list[str] = field(default_factory=list)  # what its runs reported (non-finite logits)

    def run(self, callback: EvalCallback | None = None) -> None:
        self._run(callback)

    @property
    def label(self) -> str:
        return self.setup.describe()

    @classmethod
    def build(cls, spec: Spec, setup: Setup) -> Subject:
        return (_example if spec.example else _model)(spec, setup)


def _example(spec: Spec, setup: Setup) -> Subject:
    from .example import ExampleConfig, ExampleWeights, build_example, example_inputs

    if setup.kv_type != "f16" or setup.model:
        raise ValueError("[subject] the example graph has no KV cache and no weights file: --kv/--model do not apply")
    cfg = ExampleConfig(n_layer=spec.layers, n_tokens=spec.tokens)
    graph = build_example(ExampleWeights(cfg))
    plan = gr.compile(graph, list(setup.backends), cache=False)
    inputs = example_inputs(cfg)

    def run(callback: EvalCallback | None) -> None:
        if setup.threads:
            for be in plan.schedule.backends:
                if hasattr(be, "n_threads"):
                    be.n_threads = setup.threads
        for name, value in inputs.items():
            plan.set_input(name, value)
        plan.run(callback)

    run(None)  # first run: lazy kernel builds, first touch of the buffers
    return Subject(spec, setup, graph, plan, run)


@functools.cache
def load_model(path: str | None):
    """A loaded model, shared by the subjects of one process (None: the shipped model)."""
    from graphir.models.model import Model
    from graphir.models.tiny import shipped_model_path

    return Model.load(path or shipped_model_path())


def ubatch_tokens(model, spec: Spec) -> list[int]:
    """The prompt's tokens, or `spec.tokens` fixed pseudo-random ones."""
    if spec.prompt:
        ids = model.tokenizer.encode(spec.prompt)
        if not ids:
            raise ValueError(f"[subject] the prompt {spec.prompt!r} has no tokens")
        return list(ids)
    if spec.tokens < 1:
        raise ValueError(f"[subject] --tokens must be >= 1, got {spec.tokens}")
    return np.random.default_rng(0).integers(0, model.n_vocab, spec.tokens).tolist()


def _model(spec: Spec, setup: Setup) -> Subject:
    from graphir.models.batch import Batch
    from graphir.models.context import Context

    model = load_model(setup.model or spec.model)
    ids = ubatch_tokens(model, spec)
    if spec.verify < 0:
        raise ValueError(f"[subject] --verify must be >= 0 drafts, got {spec.verify}")
    # a verify batch: the last token and `verify` drafts after the ubatch, every row an output
    # and rollback-able (n_rs_seq snapshots), as speculative decoding runs it
    prefix, ids = (ids, np.random.default_rng(1).integers(0, model.n_vocab, spec.verify + 1).tolist()) \
        if spec.verify else ([], ids)  # fmt: skip
    n = max(len(ids), len(prefix))
    ctx = Context(model, n_ctx=max(256, n + len(ids)), n_batch=n, n_ubatch=n, n_rs_seq=spec.verify,
                  backends=tuple(setup.backends), type_k=setup.kv_type, type_v=setup.kv_type,
                  n_threads=setup.threads)  # fmt: skip
    batch = Batch.simple(ids, len(prefix), all_outputs=bool(spec.verify))
    notes: list[str] = []

    def decode() -> None:
        try:
            if prefix:
                ctx.decode(Batch.simple(prefix, 0))
            ctx.decode(batch)
        except FloatingPointError as e:  # NaN/inf logits: the run happened; the tools report it per node
            notes.append(str(e))

    decode()  # builds and compiles the ubatch's graph (the context caches it)
    result, plan = ctx.last_graph()

    def run(callback: EvalCallback | None) -> None:
        ctx.clear()

        def run_with(theirs: EvalCallback | None = None) -> None:
            both = callback if theirs is None else (lambda t, v: (theirs(t, v), callback(t, v)))
            Plan.run(plan, both if callback is not None else theirs)

        # NOTE: the context calls plan.run([its callback]); an instance attribute routes it through ours too
        plan.run = run_with
        try:
            decode()
        finally:
            del plan.run

    return Subject(spec, setup, result.graph, plan, run, notes)


# ======================================================================================
# command line: the arguments every inspection tool takes
# ======================================================================================


def add_spec_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", "-m", help="GGUF model (default: the shipped tiny model)")
    p.add_argument("--example", action="store_true", help="the example graph (tools/example.py) instead of a model")
    p.add_argument("--layers", type=int, default=2, help="layers of the example graph (default 2)")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--tokens", type=int, default=1, help="tokens in the ubatch (default 1: a decode step)")
    g.add_argument("--prompt", help="decode this prompt as one ubatch instead")
    p.add_argument("--verify", type=int, default=0, metavar="K",
                   help="the graph of a speculative verify of K drafts (K+1 rows, all outputs, K snapshots) "
                        "after the --tokens/--prompt ubatch")  # fmt: skip
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")


def add_setup_args(p: argparse.ArgumentParser, prefix: str = "", default: Sequence[str] = ("cpu",)) -> None:
    """-b/--threads/--kv; with a prefix (`against`) the second side's: --against, --against-threads..."""
    dest = prefix.replace("-", "_")
    if prefix:
        p.add_argument(f"--{prefix}", dest=f"{dest}_backend", action="append",
                       help=f"backend(s) of the side compared against (default {','.join(default)})")  # fmt: skip
    else:
        p.add_argument("--backend", "-b", dest="backend", action="append",
                       help=f"backend(s) in priority order (default {','.join(default)})")  # fmt: skip
    pre = f"{prefix}-" if prefix else ""
    p.add_argument(f"--{pre}threads", type=int, help="threads of the cpu backend (default: all this process may use)")
    p.add_argument(f"--{pre}kv", choices=["f16", "f32"], default="f16", help="KV cache type (default f16)")
    if prefix:
        p.add_argument(f"--{pre}model", help="another GGUF file for this side (weight-type comparisons)")
    p.set_defaults(**{f"{dest}_default": tuple(default)} if prefix else {"backend_default": tuple(default)})


def spec_from(args: argparse.Namespace) -> Spec:
    if args.example and args.model:
        raise ValueError("--example and --model exclude each other")
    prompt = getattr(args, "prompt", None)
    if args.example and prompt:
        raise ValueError("--prompt needs a model (the example graph has no tokenizer); use --tokens")
    verify = getattr(args, "verify", 0)
    if args.example and verify:
        raise ValueError("--verify needs a model (the example graph has no memory to roll back)")
    return Spec(args.model, args.example, args.layers, args.tokens, prompt, verify)


def setup_from(args: argparse.Namespace, prefix: str = "") -> Setup:
    dest = prefix.replace("-", "_")
    if prefix:
        names = getattr(args, f"{dest}_backend") or getattr(args, f"{dest}_default")
        return Setup(tuple(names), getattr(args, f"{dest}_threads"), getattr(args, f"{dest}_kv"),
                     getattr(args, f"{dest}_model"))  # fmt: skip
    return Setup(tuple(args.backend or args.backend_default), args.threads, args.kv)
