"""Architectures: the registry from a GGUF file's `general.architecture` to the module that knows it.

One module per architecture family (llama.cpp keeps per architecture the hparams loading, the
tensor list and the graph builder); it exports:
    ARCHS                                   the architecture names it serves
    HParams                                 its hyperparameters class (a frozen dataclass)
    load_hparams(f, arch, n_vocab)          -> HParams of a GGUF file; GGUFError names a bad key
    tensor_groups(hp)                       -> list[TensorGroup]: every tensor a file has
    check_tensors(hp, found, where)         a file's `{name: (type id, ne)}` against that table
    Weights                                 Weights(file, hp): the weight leafs
    build_graph(w, shape, state, *, want_h_nextn) -> GraphResult: the trunk graph of one ubatch

Adding an architecture is a module here plus its line in `_MODULES`; nothing outside archs/
names an architecture (model.py, the GGUF reader and writer ask this registry).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from types import ModuleType
from typing import Any

from ..gguf import GGUFError, GGUFModelFile, TensorGroup, check_tokenizer, get_key, load_gguf
from ..tokenizer import Vocab, read_vocab
from . import qwen35

_MODULES: dict[str, ModuleType] = {arch: qwen35 for arch in qwen35.ARCHS}


def names() -> tuple[str, ...]:
    """The supported architectures, in registration order."""
    return tuple(_MODULES)


def get(arch: str) -> ModuleType:
    """The module of architecture `arch`; ValueError names the supported ones."""
    mod = _MODULES.get(arch)
    if mod is None:
        raise ValueError(f"[archs] unknown architecture {arch!r}; supported: {', '.join(names())}")
    return mod


def validate(f: GGUFModelFile) -> Any:
    """Check everything a graph of `f`'s architecture needs (the architecture, the tokenizer keys and
    vocabulary, every hyperparameter key and every tensor); return its hyperparameters or raise
    GGUFError. `graphir inspect` and `Model.load` run exactly these checks."""
    return check_file(f)[0]


def check_file(f: GGUFModelFile) -> tuple[Any, Vocab]:
    """`validate`, also returning the checked vocabulary (what `Model.load` builds its tokenizer from)."""
    arch = get_key(f, "general.architecture", "STRING")
    if arch not in _MODULES:
        raise GGUFError(f"{f.path}: unknown architecture {arch!r}; supported: {', '.join(names())}")
    mod = _MODULES[arch]
    n_vocab = check_tokenizer(f)
    try:
        vocab = read_vocab(f.metadata)
    except ValueError as e:
        raise GGUFError(f"{f.path}: {e}") from e
    hp = mod.load_hparams(f, arch, n_vocab)
    mod.check_tensors(hp, {n: (t.type_id, t.ne) for n, t in f.tensors.items()}, f.path)
    return hp, vocab


def load(path: str | os.PathLike[str]) -> Any:
    """Map and validate a GGUF file; its architecture's weights (leafs created on first use)."""
    f = load_gguf(path)
    hp = validate(f)
    return get(hp.arch).Weights(f, hp)


def tensor_groups(hp: Any) -> list[TensorGroup]:
    """Every tensor a file of `hp` has, in writing order."""
    return get(hp.arch).tensor_groups(hp)


def check_tensors(hp: Any, found: Mapping[str, tuple[int, tuple[int, ...]]], where: str) -> None:
    """Check `{name: (type id, ne)}` against the table of `hp` (GGUFError names the first bad tensor)."""
    get(hp.arch).check_tensors(hp, found, where)
