"""Writing Qwen3.5 GGUF files, and deterministic random-weight models for tests and `make-tiny`.

`write_qwen35` writes every key llama.cpp's qwen35/qwen35moe loader reads (the table in
`models/hparams.py`), the tokenizer keys its BPE vocab loader needs (`tokenizer.ggml.model`
"gpt2", `pre` "qwen35" by default, tokens, token types, non-empty merges, special ids) and the
tensors in GGUF layout, through `gguf.GGUFWriter`. It refuses to write a file our own
validator would reject. `write_gguf` writes any `GGUFContents` as is (tests use it to build
broken files).
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from graphir import progress
from graphir.layout import f32_to_bf16
from graphir.types import TYPE_INFO, DType, row_size

from . import archs
from .gguf import GGUFError, TensorSpec
from .hparams import F32, I32X4, U32, U32_LAYERS, Qwen35HParams, keys_for

TensorData = tuple[DType, Any]  # (type, numpy array in numpy order (ne reversed) or raw bytes)


@dataclass
class GGUFContents:
    """Everything a GGUF file holds, before writing: KVs with their GGUF value types
    (names of gguf.GGUFValueType members, e.g. "UINT32", "ARRAY" + item type) and raw tensors."""

    arch: str
    kv: dict[str, tuple[Any, str, str | None]] = field(default_factory=dict)  # key -> (value, type, item type)
    tensors: dict[str, tuple[int, tuple[int, ...], np.ndarray]] = field(default_factory=dict)  # (type id, ne, bytes)


def write_gguf(path: str | os.PathLike[str], c: GGUFContents, *, show_progress: bool = False) -> None:
    """Write `c` verbatim (general.architecture first, then the KVs, then the tensors). show_progress:
    a bar over the tensor bytes (gguf's own tqdm bar; where graphir.progress is enabled)."""
    from gguf import GGMLQuantizationType, GGUFValueType, GGUFWriter

    w = GGUFWriter(os.fspath(path), arch=c.arch)
    for key, (value, vtype, sub) in c.kv.items():
        w.add_key_value(key, value, GGUFValueType[vtype], GGUFValueType[sub] if sub else None)
    for name, (type_id, ne, raw) in c.tensors.items():
        raw = np.ascontiguousarray(raw, dtype=np.uint8).reshape(-1)
        # GGUFWriter takes a byte shape for uint8 data, in numpy order: (..., ne1, bytes per row)
        byte_shape = [*reversed(ne[1:]), raw.size // max(1, math.prod(ne[1:]))]
        w.add_tensor(name, raw.reshape(byte_shape), raw_shape=byte_shape, raw_dtype=GGMLQuantizationType(type_id))
    try:
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_tensors_to_file(progress=show_progress and progress.enabled())
    finally:
        w.close()


# --------------------------------------------------------------------------------------------
# Qwen3.5
# --------------------------------------------------------------------------------------------

CHAT_TEMPLATE_KEY = "tokenizer.chat_template"
_KIND_TYPES = {U32: ("UINT32", None), U32_LAYERS: ("UINT32", None), F32: ("FLOAT32", None), I32X4: ("ARRAY", "INT32")}

# tokenizer.ggml.<key> -> (GGUF type, item type); what llama.cpp's vocab loader reads for BPE
TOKENIZER_KEYS: dict[str, tuple[str, str | None]] = {
    "model": ("STRING", None),
    "pre": ("STRING", None),
    "tokens": ("ARRAY", "STRING"),
    "token_type": ("ARRAY", "INT32"),
    "scores": ("ARRAY", "FLOAT32"),
    "merges": ("ARRAY", "STRING"),
    "bos_token_id": ("UINT32", None),
    "eos_token_id": ("UINT32", None),
    "eot_token_id": ("UINT32", None),
    "unknown_token_id": ("UINT32", None),
    "padding_token_id": ("UINT32", None),
    "add_bos_token": ("BOOL", None),
    "add_eos_token": ("BOOL", None),
}


def qwen35_contents(
    hp: Qwen35HParams,
    tensors: Mapping[str, TensorData],
    tokenizer: Mapping[str, Any],
    name: str | None = None,
    chat_template: str | None = None,
) -> GGUFContents:
    """The GGUF contents of a Qwen3.5 model; raises ValueError for anything llama.cpp (or we) would reject."""
    c = GGUFContents(hp.arch)
    if name:
        c.kv["general.name"] = (name, "STRING", None)
    for spec in keys_for(hp.arch):
        value = getattr(hp, spec.field)
        c.kv[f"{hp.arch}.{spec.key}"] = (list(value) if spec.kind == I32X4 else value, *_KIND_TYPES[spec.kind])
    c.kv.update(_tokenizer_kv(hp, tokenizer))
    if chat_template is not None:
        c.kv[CHAT_TEMPLATE_KEY] = (_check_template(chat_template), "STRING", None)
    c.tensors.update(_tensor_bytes(hp, tensors))
    try:
        archs.check_tensors(hp, {n: (t, ne) for n, (t, ne, _) in c.tensors.items()}, "write_qwen35")
    except GGUFError as e:
        raise ValueError(str(e)) from e
    return c


def write_qwen35(
    path: str | os.PathLike[str],
    hp: Qwen35HParams,
    tensors: Mapping[str, TensorData],
    tokenizer: Mapping[str, Any],
    name: str | None = None,
    chat_template: str | None = None,
    *,
    show_progress: bool = False,
) -> None:
    """Write a Qwen3.5 GGUF that loads here and in llama.cpp (show_progress: a bar while writing).

    Args:
        hp: the hyperparameters (arch "qwen35" or "qwen35moe"); `hp.n_vocab` must equal the token count.
        tensors: GGUF tensor name -> (DType, data). Data is a numpy array in numpy order (ne reversed;
            floats are converted to the DType, BF16 may also be given as raw uint16) or, for any type,
            the raw bytes in GGUF layout.
        tokenizer: `tokenizer.ggml.*` fields, keyed with or without the prefix (see TOKENIZER_KEYS);
            "model" defaults to "gpt2" and "pre" to "qwen35" (llama.cpp's pre-tokenizer for Qwen3.5).
        chat_template: the Jinja2 chat template (`tokenizer.chat_template`, what `LLM.chat` and
            llama.cpp's `--jinja` render; models.chat.CHATML for Qwen's format); None: no key.
    """
    write_gguf(path, qwen35_contents(hp, tensors, tokenizer, name, chat_template), show_progress=show_progress)


def _check_template(template: str) -> str:
    """The template, if it parses (a file must not carry a template no one can render)."""
    from .chat import _compile

    if not isinstance(template, str) or not template:
        raise ValueError(f"[write_qwen35] chat_template must be a non-empty string, got {template!r}")
    _compile(template)  # ChatTemplateError (a ValueError) naming the line
    return template


def rewrite_metadata(src: str | os.PathLike[str], dst: str | os.PathLike[str],
                     updates: Mapping[str, tuple[Any, str, str | None] | None]) -> None:  # fmt: skip
    """Copy the GGUF `src` to `dst` with some keys set or removed (value None), the tensors byte for
    byte and every other key with its stored type: metadata changes without retraining or
    re-converting (e.g. adding a chat template). `dst` may be `src` (the data is read first)."""
    from .gguf import load_gguf

    f = load_gguf(src)
    c = GGUFContents(f.arch or "")
    for key, vtype in f.kv_types.items():
        if key == "general.architecture" or key == "general.alignment":  # the writer writes these itself
            continue
        sub = vtype[len("ARRAY[") : -1] if vtype.startswith("ARRAY[") else None  # "ARRAY[INT32]"
        c.kv[key] = (f.metadata[key], "ARRAY" if sub else vtype, sub)
    for key, kv in updates.items():
        if kv is None:
            c.kv.pop(key, None)
        else:
            c.kv[key] = kv
    for name, t in f.tensors.items():
        c.tensors[name] = (t.type_id, tuple(t.ne), np.array(t.data))  # a copy: dst may overwrite src
    tmp = f"{os.fspath(dst)}.tmp"
    try:
        write_gguf(tmp, c)
        os.replace(tmp, dst)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _tokenizer_kv(hp: Qwen35HParams, tokenizer: Mapping[str, Any]) -> dict[str, tuple[Any, str, str | None]]:
    fields = {"model": "gpt2", "pre": "qwen35"}
    for key, value in tokenizer.items():
        short = key.removeprefix("tokenizer.ggml.")
        if short not in TOKENIZER_KEYS:
            raise ValueError(f"[write_qwen35] unknown tokenizer field {key!r}; known: {', '.join(TOKENIZER_KEYS)}")
        fields[short] = value
    for short in ("tokens", "merges"):
        if not fields.get(short):
            raise ValueError(f"[write_qwen35] tokenizer.ggml.{short} must be a non-empty list")
    if len(fields["tokens"]) != hp.n_vocab:
        raise ValueError(f"[write_qwen35] {len(fields['tokens'])} tokens but hparams.n_vocab={hp.n_vocab}")
    out = {}
    for short, value in fields.items():
        vtype, sub = TOKENIZER_KEYS[short]
        out[f"tokenizer.ggml.{short}"] = (list(value) if vtype == "ARRAY" else value, vtype, sub)
    return out


def _tensor_bytes(
    hp: Qwen35HParams, tensors: Mapping[str, TensorData]
) -> dict[str, tuple[int, tuple[int, ...], np.ndarray]]:
    specs = {s.name: s for g in archs.tensor_groups(hp) for o in g.options for s in o}
    unknown = [n for n in tensors if n not in specs]
    if unknown:
        raise ValueError(f"[write_qwen35] unknown tensor(s) for {hp.arch}: {', '.join(unknown[:5])}")
    out = {}
    for n in specs:  # table order, so files read in the conventional order
        if n in tensors:
            t, data = tensors[n]
            out[n] = (int(t), specs[n].ne, _to_raw(n, DType(t), data, specs[n].ne))
    return out


def _to_raw(name: str, t: DType, data: Any, ne: tuple[int, ...]) -> np.ndarray:
    """Tensor data as GGUF bytes, checked against ne."""
    nbytes = row_size(t, ne[0]) * math.prod(ne[1:])
    if isinstance(data, bytes | bytearray | memoryview):
        raw = np.frombuffer(data, np.uint8)
    else:
        arr = np.asarray(data)
        if TYPE_INFO[t].np_dtype is not None and arr.dtype != np.uint8:
            if arr.size != math.prod(ne):
                raise ValueError(
                    f"[write_qwen35] {name}: expected {math.prod(ne)} elements (ne={list(ne)}), got {arr.shape}"
                )
            if t == DType.BF16 and arr.dtype != np.uint16:
                arr = f32_to_bf16(arr)
            arr = arr.astype(TYPE_INFO[t].np_dtype, copy=False)
        raw = np.ascontiguousarray(arr).view(np.uint8).reshape(-1)
    if raw.size != nbytes:
        raise ValueError(f"[write_qwen35] {name}: {t.name} ne={list(ne)} needs {nbytes} bytes, got {raw.size}")
    return raw


# --------------------------------------------------------------------------------------------
# Random weights
# --------------------------------------------------------------------------------------------


def random_qwen35(
    hp: Qwen35HParams, seed: int, dtype: DType = DType.F32, *, tied_output: bool = False, show_progress: bool = False
) -> dict[str, TensorData]:
    """A deterministic random-weight model of `hp`, scaled so activations stay O(1).

    Matrices are N(0, 1/fan_in) (fan_in = ne[0], the dot-product length), embeddings N(0, 1),
    norm weights 1 + N(0, 0.1), ssm_a in [-2, -0.2] (decays), ssm_dt.bias N(0, 0.5). Matrices
    are stored in `dtype`; norms, biases, ssm_a, ssm_conv1d and the router stay F32, as in
    converted files. Where a row does not fit a block type, Q8_0 is used, else F16 (as
    llama-quantize falls back). The MTP blocks get shared_head_norm but no shared_head_head /
    embed_tokens, like converted Qwen3.5 files. `tied_output` leaves out output.weight.
    """
    rng = np.random.default_rng(seed)
    out: dict[str, TensorData] = {}
    groups = archs.tensor_groups(hp)
    desc = f"random weights ({dtype.name})"
    with progress.bar(total=len(groups), desc=desc, unit="group", show=show_progress) as bar:
        for group in groups:
            bar.update(1)
            first = group.options[0][0].name
            wanted = first.endswith("nextn.shared_head_norm.weight") or (first == "output.weight" and not tied_output)
            if not group.required and not wanted:
                continue
            for spec in group.options[0]:
                x = _random_values(rng, spec)
                out[spec.name] = _store(spec, x, dtype)
    return out


def _random_values(rng: np.random.Generator, spec: TensorSpec) -> np.ndarray:
    name, shape = spec.name, tuple(reversed(spec.ne))
    if name.endswith("ssm_a"):
        return -rng.uniform(0.2, 2.0, shape).astype(np.float32)
    if name.endswith("ssm_dt.bias"):
        return rng.normal(0.0, 0.5, shape).astype(np.float32)
    if name.endswith("ffn_gate_inp_shexp.weight"):
        return rng.normal(0.0, spec.ne[0] ** -0.5, shape).astype(np.float32)
    if len(spec.ne) == 1:  # every other 1-D tensor is a norm weight
        return (1.0 + rng.normal(0.0, 0.1, shape)).astype(np.float32)
    if name.endswith(("token_embd.weight", "nextn.embed_tokens.weight")):
        return rng.normal(0.0, 1.0, shape).astype(np.float32)
    return rng.normal(0.0, spec.ne[0] ** -0.5, shape).astype(np.float32)


def _store(spec: TensorSpec, x: np.ndarray, dtype: DType) -> TensorData:
    keep_f32 = len(spec.ne) == 1 or spec.name.endswith(("ssm_conv1d.weight", "ffn_gate_inp.weight"))
    t = DType.F32 if keep_f32 or dtype not in spec.types else dtype
    if TYPE_INFO[t].is_quantized and spec.ne[0] % TYPE_INFO[t].block_elems:
        t = DType.Q8_0 if spec.ne[0] % TYPE_INFO[DType.Q8_0].block_elems == 0 else DType.F16
    if t == DType.F32:
        return t, x
    if t == DType.F16:
        return t, x.astype(np.float16)
    if t == DType.BF16:
        return t, f32_to_bf16(x)
    from graphir.quants import quantize_rows

    try:
        raw = quantize_rows(x.reshape(-1, spec.ne[0]), t)
    except NotImplementedError as e:
        raise NotImplementedError(f"[random_qwen35] {t.name} weights need graphir.quants.quantize_rows") from e
    return t, np.ascontiguousarray(raw).view(np.uint8).reshape(-1)
