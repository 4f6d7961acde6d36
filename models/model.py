"""A loaded model: validated hyperparameters, memory-mapped weights, tokenizer, graph builder.

`Model.load(path)` maps and validates a GGUF once (its architecture's module, found through the
registry in models/archs/, says what to check and builds the graph); any number of `Context`s
(models/context.py) can then run it: they share the weight leafs (so a backend uploads each
weight once) and each owns its own memory.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from . import archs
from .gguf import GGUFError, load_gguf
from .graph_context import GraphResult
from .tokenizer import Tokenizer
from .weights import ModelWeights

if TYPE_CHECKING:
    from .hparams import Qwen35HParams


@dataclass(frozen=True, eq=False)
class Model:
    """One GGUF model, ready to run.

    Attributes:
        path: the GGUF file.
        weights: the weight leafs over the file's memory map (created on first use, shared).
        tokenizer: the byte-level BPE tokenizer of the file's `tokenizer.ggml.*` keys.
        build_graph: the architecture's trunk graph function,
            `build_graph(weights, shape, state, *, want_h_nextn) -> GraphResult`.
    """

    path: str
    weights: ModelWeights
    tokenizer: Tokenizer
    build_graph: Callable[..., GraphResult]

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Model:
        """Map and validate `path` (`archs.validate`'s checks, the ones `graphir inspect` runs).
        Raises GGUFError naming the file and what is wrong with it (unreadable, bad header or data
        layout, missing/mistyped key or tensor, a hyperparameter out of range, unknown
        architecture, a vocabulary this code cannot run)."""
        f = load_gguf(path)
        hp, vocab = archs.check_file(f)
        weights = archs.get(hp.arch).Weights(f, hp)
        try:
            tokenizer = Tokenizer(vocab)
        except ValueError as e:
            raise GGUFError(f"{f.path}: {e}") from e
        return cls(f.path, weights, tokenizer, archs.get(hp.arch).build_graph)

    @property
    def hp(self) -> Qwen35HParams:
        return self.weights.hp

    @property
    def arch(self) -> str:
        return self.hp.arch

    @property
    def n_vocab(self) -> int:
        return self.hp.n_vocab

    @property
    def n_embd(self) -> int:
        return self.hp.n_embd

    @property
    def trunk_layers(self) -> range:
        """The layers the main context runs (the nextn/MTP blocks come after them)."""
        return range(self.hp.n_layer_trunk)

    def __repr__(self) -> str:
        hp = self.hp
        return (f"Model({self.path!r}, arch={hp.arch}, n_embd={hp.n_embd}, n_layer_trunk={hp.n_layer_trunk}, "
                f"n_vocab={hp.n_vocab})")  # fmt: skip
