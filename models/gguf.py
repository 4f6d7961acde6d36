"""GGUF files: memory-mapped reading (`load_gguf`) and the file-level checks every architecture uses.

`load_gguf` maps the file (np.memmap, so tensor data is never copied) and parses it with
bounds checks: truncation, bad magic/version and corrupt headers come out as a GGUFError naming
the file and the part that is bad, never as a crash or a hang.

The checks an architecture's validation is made of (models/archs/ runs them, before any graph
is built): `get_key` / `read_keys` (presence and GGUF type of keys, as llama.cpp's loader
demands), `check_tokenizer` (the tokenizer keys a BPE vocab needs) and `check_tensors` (every
tensor of an architecture's table of `TensorGroup`s present, with its shape and type). Shapes are
in ne order and compared padded to 4 dims with 1s, as llama.cpp does.
"""

from __future__ import annotations

import math
import os
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from graphir.types import TYPE_INFO, DType, row_size

from .hparams import F32, I32X4, U32, U32_LAYERS, KeySpec

GGUF_MAGIC = b"GGUF"
GGUF_VERSIONS = (2, 3)  # what llama.cpp and gguf-py read (v1 is long gone)


class GGUFError(ValueError):
    """A GGUF file that cannot be used: the message names the file and the key or tensor."""


# --------------------------------------------------------------------------------------------
# Reading
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TensorInfo:
    """One tensor of a GGUF file. `data` is a uint8 memmap slice of exactly `nbytes` bytes."""

    name: str
    type_id: int  # the GGML type id as stored (may be a type graphir does not support)
    type_name: str
    ne: tuple[int, ...]  # as stored (1..4 dims), innermost first
    offset: int  # absolute byte offset of the data in the file
    nbytes: int
    data: np.ndarray

    @property
    def dtype(self) -> DType | None:
        """The graphir DType, or None if graphir does not support this GGML type."""
        try:
            return DType(self.type_id)
        except ValueError:
            return None

    def array(self) -> np.ndarray:
        """A numpy view in graphir's layout: (ne3, ne2, ne1, ne0) of the element type for plain
        types (BF16 as raw uint16), raw rows (ne3, ne2, ne1, row_bytes) uint8 for block types."""
        t = self.dtype
        if t is None:
            raise GGUFError(f"tensor {self.name}: type {self.type_name} is not supported by graphir")
        ne = tuple(self.ne) + (1,) * (4 - len(self.ne))
        info = TYPE_INFO[t]
        if info.np_dtype is None:
            return self.data.reshape(ne[3], ne[2], ne[1], row_size(t, ne[0]))
        return self.data.view(info.np_dtype).reshape(ne[3], ne[2], ne[1], ne[0])


@dataclass
class GGUFModelFile:
    """A loaded (not yet validated) GGUF file."""

    path: str
    size: int
    version: int
    alignment: int
    metadata: dict[str, Any]  # key -> python value (arrays as lists)
    kv_types: dict[str, str]  # key -> "UINT32", "FLOAT32", "STRING", "ARRAY[INT32]", ...
    tensors: dict[str, TensorInfo]  # in file order

    @property
    def arch(self) -> str | None:
        arch = self.metadata.get("general.architecture")
        return arch if isinstance(arch, str) else None


def load_gguf(path: str | os.PathLike[str], *, use_gguf_reader: bool = False) -> GGUFModelFile:
    """Open a GGUF file memory-mapped. Raises GGUFError for anything that is not a readable GGUF.

    The header, keys and tensor infos are parsed by a bounds-checked walk over the memory map
    (values decoded with numpy), because the `gguf` package's GGUFReader parses array items one by
    one: about 18 s for a Qwen3.5 vocab (250k tokens + 250k merges) against a fraction of a second
    here. `use_gguf_reader=True` reads through GGUFReader instead (a cross-check; every exception it
    raises becomes a GGUFError). Tensor data is never copied: each tensor is a slice of the map.
    """
    path = os.fspath(path)
    try:
        size = os.path.getsize(path)
        with open(path, "rb") as fh:
            head = fh.read(8)
    except OSError as e:
        raise GGUFError(f"{path}: cannot open: {e.strerror or e}") from e
    _check_head(path, head, size)
    data = np.memmap(path, dtype=np.uint8, mode="r")
    f = _Parser(path, data).parse()
    if use_gguf_reader:
        f.metadata, f.kv_types, f.tensors = _read_with_gguf_reader(path, size)
    return f


def _check_head(path: str, head: bytes, size: int) -> None:
    """Magic and version, so that those errors read plainly."""
    if len(head) < 4 or head[:4] != GGUF_MAGIC:
        raise GGUFError(f"{path}: not a GGUF file: magic must be {GGUF_MAGIC!r}, found {head[:4]!r} ({size} bytes)")
    if len(head) < 8:
        raise GGUFError(f"{path}: truncated GGUF file ({size} bytes): the version runs past the end")
    version = int.from_bytes(head[4:8], "little")
    if version not in GGUF_VERSIONS:
        swapped = int.from_bytes(head[4:8], "big")
        hint = " (a big-endian file; only little-endian is supported)" if swapped in GGUF_VERSIONS else ""
        versions = ", ".join(map(str, GGUF_VERSIONS))
        raise GGUFError(f"{path}: unsupported GGUF version {version}{hint}; supported: {versions}")


# GGUF value types: id -> (name, little-endian numpy dtype of a scalar; None for STRING / ARRAY)
_VALUE_TYPES: dict[int, tuple[str, str | None]] = {
    0: ("UINT8", "<u1"), 1: ("INT8", "<i1"), 2: ("UINT16", "<u2"), 3: ("INT16", "<i2"),
    4: ("UINT32", "<u4"), 5: ("INT32", "<i4"), 6: ("FLOAT32", "<f4"), 7: ("BOOL", "?"),
    8: ("STRING", None), 9: ("ARRAY", None), 10: ("UINT64", "<u8"), 11: ("INT64", "<i8"), 12: ("FLOAT64", "<f8"),
}  # fmt: skip
_STRING, _ARRAY = 8, 9


class _Parser:
    """A bounds-checked cursor over the mapped file: every read names what it was reading, so a
    truncated or corrupt file gets an error saying which part runs past the end."""

    def __init__(self, path: str, data: np.ndarray) -> None:
        self.path, self.data, self.size, self.pos = path, data, int(data.size), 0

    def fail(self, what: str) -> GGUFError:
        return GGUFError(f"{self.path}: truncated GGUF file ({self.size} bytes): {what} runs past the end")

    def take(self, n: int, what: str) -> int:
        if n < 0 or self.pos + n > self.size:
            raise self.fail(what)
        start, self.pos = self.pos, self.pos + n
        return start

    def u32(self, what: str) -> int:
        return struct.unpack_from("<I", self.data, self.take(4, what))[0]

    def u64(self, what: str) -> int:
        return struct.unpack_from("<Q", self.data, self.take(8, what))[0]

    def string(self, what: str) -> str:
        n = self.u64(what)
        start = self.take(n, what)
        try:
            return bytes(self.data[start : start + n]).decode("utf-8")
        except UnicodeDecodeError as e:
            raise GGUFError(f"{self.path}: corrupt GGUF file: {what} is not UTF-8") from e

    def value(self, vtype: int, what: str, depth: int = 0) -> tuple[Any, str]:
        """Decode one value; returns (python value, type name such as "ARRAY[INT32]")."""
        if vtype not in _VALUE_TYPES or (vtype == _ARRAY and depth > 1):
            raise GGUFError(f"{self.path}: corrupt GGUF file: {what} has unknown value type {vtype}")
        name, dtype = _VALUE_TYPES[vtype]
        if dtype is not None:
            np_dtype = np.dtype(dtype)
            return np.frombuffer(self.data, np_dtype, 1, self.take(np_dtype.itemsize, what)).tolist()[0], name
        if vtype == _STRING:
            return self.string(what), name
        itype, n = self.u32(what), self.u64(what)
        if itype not in _VALUE_TYPES:
            raise GGUFError(f"{self.path}: corrupt GGUF file: {what} has unknown item type {itype}")
        iname, idtype = _VALUE_TYPES[itype]
        if idtype is not None:  # O(1) bounds check: a corrupt length can never make this loop
            np_dtype = np.dtype(idtype)
            start = self.take(n * np_dtype.itemsize, what)
            return np.frombuffer(self.data, np_dtype, n, start).tolist(), f"ARRAY[{iname}]"
        if n > self.size - self.pos:  # every string or array item takes at least 8 bytes
            raise self.fail(what)
        if itype == _STRING:
            return self.strings(n, what), "ARRAY[STRING]"
        items = [self.value(itype, what, depth + 1)[0] for _ in range(n)]
        return items, f"ARRAY[{iname}]"

    def strings(self, n: int, what: str) -> list[str]:
        """The hot path (vocab and merges, ~250k items each): a tight loop over a memoryview."""
        mv, size, pos, out = memoryview(self.data), self.size, self.pos, []
        try:
            for _ in range(n):
                if pos + 8 > size:
                    raise self.fail(what)
                end = pos + 8 + struct.unpack_from("<Q", mv, pos)[0]
                if end > size:
                    raise self.fail(what)
                out.append(str(mv[pos + 8 : end], "utf-8"))
                pos = end
        except UnicodeDecodeError as e:
            raise GGUFError(f"{self.path}: corrupt GGUF file: {what} holds a string that is not UTF-8") from e
        finally:
            mv.release()
        self.pos = pos
        return out

    def parse(self) -> GGUFModelFile:
        self.pos = 4
        version = self.u32("the version")
        n_tensors, n_kv = self.u64("the tensor count"), self.u64("the key count")
        if n_tensors > self.size or n_kv > self.size:
            raise GGUFError(
                f"{self.path}: corrupt GGUF file: claims {n_tensors} tensors and {n_kv} keys in {self.size} bytes"
            )
        metadata: dict[str, Any] = {}
        kv_types: dict[str, str] = {}
        for i in range(n_kv):
            key = self.string(f"key #{i}")
            if key in metadata:
                raise GGUFError(f"{self.path}: corrupt GGUF file: duplicate key {key}")
            metadata[key], kv_types[key] = self.value(self.u32(f"the type of key {key}"), f"the value of key {key}")
        infos = [self.tensor_info(i) for i in range(n_tensors)]
        alignment = metadata.get("general.alignment", 32)
        if kv_types.get("general.alignment", "UINT32") != "UINT32" or alignment <= 0 or alignment & (alignment - 1):
            raise GGUFError(f"{self.path}: corrupt GGUF file: general.alignment must be a UINT32 power of two")
        data_start = -(-self.pos // alignment) * alignment
        tensors: dict[str, TensorInfo] = {}
        for name, ne, type_id, offset in infos:
            if name in tensors:
                raise GGUFError(f"{self.path}: corrupt GGUF file: duplicate tensor {name}")
            tensors[name] = self.tensor(name, ne, type_id, data_start + offset)
        return GGUFModelFile(self.path, self.size, version, alignment, metadata, kv_types, tensors)

    def tensor_info(self, i: int) -> tuple[str, tuple[int, ...], int, int]:
        name = self.string(f"the name of tensor #{i}")
        n_dims = self.u32(f"tensor info {name}")
        if not 1 <= n_dims <= 4:
            raise GGUFError(f"{self.path}: corrupt GGUF file: tensor {name} has {n_dims} dims (1..4)")
        ne = tuple(self.u64(f"tensor info {name}") for _ in range(n_dims))
        return name, ne, self.u32(f"tensor info {name}"), self.u64(f"tensor info {name}")

    def tensor(self, name: str, ne: tuple[int, ...], type_id: int, start: int) -> TensorInfo:
        from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

        try:
            qtype = GGMLQuantizationType(type_id)
            block, type_bytes = GGML_QUANT_SIZES[qtype]
        except (ValueError, KeyError):
            raise GGUFError(f"{self.path}: corrupt GGUF file: tensor {name} has unknown type id {type_id}") from None
        if ne[0] % block:
            raise GGUFError(f"{self.path}: corrupt GGUF file: tensor {name} ne[0]={ne[0]} is not a multiple of {block}")
        nbytes = math.prod(ne) // block * type_bytes
        if start + nbytes > self.size:
            raise self.fail(f"the data of tensor {name} [{start}, {start + nbytes})")
        return TensorInfo(name, type_id, qtype.name, ne, start, nbytes, self.data[start : start + nbytes])


def _read_with_gguf_reader(path: str, size: int) -> tuple[dict[str, Any], dict[str, str], dict[str, TensorInfo]]:
    """The same contents through gguf.GGUFReader (slow on large vocabs; kept as a cross-check)."""
    try:
        from gguf import GGUFReader, GGUFValueType

        reader = GGUFReader(path, "r")
        metadata: dict[str, Any] = {}
        kv_types: dict[str, str] = {}
        for key, field in reader.fields.items():
            if key.startswith("GGUF."):  # the reader's pseudo-fields for the header
                continue
            t0 = field.types[0]
            sub = field.types[-1].name if len(field.types) > 1 else "?"
            kv_types[key] = f"ARRAY[{sub}]" if t0 == GGUFValueType.ARRAY else t0.name
            metadata[key] = field.contents()
        tensors = {
            t.name: TensorInfo(
                t.name, int(t.tensor_type), t.tensor_type.name, tuple(int(n) for n in t.shape), int(t.data_offset),
                int(t.n_bytes), reader.data[int(t.data_offset) : int(t.data_offset) + int(t.n_bytes)],
            )
            for t in reader.tensors
        }  # fmt: skip
    except Exception as e:  # whatever the reader trips on is a bad file, not a crash
        raise GGUFError(f"{path}: corrupt GGUF file ({size} bytes): {type(e).__name__}: {e}") from e
    return metadata, kv_types, tensors


# --------------------------------------------------------------------------------------------
# Tensor tables
# --------------------------------------------------------------------------------------------

WEIGHT_TYPES = (DType.F32, DType.F16, DType.BF16, DType.Q8_0, DType.Q4_0, DType.Q4_K, DType.Q5_K, DType.Q6_K)
ONLY_F32 = (DType.F32,)
FLOATS = (DType.F32, DType.F16, DType.BF16)


@dataclass(frozen=True)
class TensorSpec:
    """An expected tensor: GGUF name, ne (innermost first) and the types allowed."""

    name: str
    ne: tuple[int, ...]
    types: tuple[DType, ...] = WEIGHT_TYPES


@dataclass(frozen=True)
class TensorGroup:
    """Alternatives for one weight (e.g. separate attn_q/k/v or a fused attn_qkv): the first
    option whose tensors are all present is used. An optional group may be absent entirely."""

    options: tuple[tuple[TensorSpec, ...], ...]
    required: bool = True


def tensor_spec(name: str, *ne: int, types: tuple[DType, ...] | None = None) -> TensorSpec:
    """An expected tensor; by default 1-D tensors (norms, biases) are F32 only, by the converter's
    rule and llama.cpp's kernels, and matrices may have any WEIGHT_TYPES type."""
    return TensorSpec(name, tuple(ne), types if types is not None else (ONLY_F32 if len(ne) == 1 else WEIGHT_TYPES))


def single(spec: TensorSpec, required: bool = True) -> TensorGroup:
    """A group of one tensor without alternatives."""
    return TensorGroup(((spec,),), required)


def check_tensors(groups: Sequence[TensorGroup], found: Mapping[str, tuple[int, tuple[int, ...]]], where: str,
                  arch: str) -> None:  # fmt: skip
    """Check `{name: (type id, ne)}` against an architecture's table: every required tensor present,
    nothing unexpected, shapes and types right. Raises GGUFError naming the first bad tensor."""
    expected: set[str] = set()
    for group in groups:
        option = next((o for o in group.options if all(s.name in found for s in o)), None)
        expected.update(s.name for o in group.options for s in o)
        if option is None:
            present = [s.name for o in group.options for s in o if s.name in found]
            if not group.required and not present:
                continue
            want = " + ".join(s.name for s in group.options[0])
            alts = "".join(f" (or {' + '.join(s.name for s in o)})" for o in group.options[1:])
            have = f"; found only {', '.join(present)}" if present else ""
            raise GGUFError(f"{where}: missing tensor {want}{alts}{have}")
        for spec in option:
            _check_one(spec, *found[spec.name], where)
    extra = [n for n in found if n not in expected]
    if extra:
        more = f" (+{len(extra) - 5} more)" if len(extra) > 5 else ""
        raise GGUFError(f"{where}: unexpected tensor(s) for {arch}: {', '.join(extra[:5])}{more}")


def _check_one(spec: TensorSpec, type_id: int, ne: tuple[int, ...], where: str) -> None:
    if _pad4(ne) != _pad4(spec.ne):
        raise GGUFError(f"{where}: tensor {spec.name} has wrong shape: expected ne={list(spec.ne)}, found {list(ne)}")
    try:
        t = DType(type_id)
    except ValueError:
        t = None
    if t not in spec.types:
        name = t.name if t is not None else _ggml_type_name(type_id)
        allowed = ", ".join(x.name for x in spec.types)
        raise GGUFError(f"{where}: tensor {spec.name} has type {name}; expected {allowed}")
    if ne[0] % TYPE_INFO[t].block_elems:
        raise GGUFError(
            f"{where}: tensor {spec.name}: ne[0]={ne[0]} is not a multiple of the {t.name} block ({TYPE_INFO[t].block_elems})"
        )


def _pad4(ne: tuple[int, ...]) -> tuple[int, ...]:
    return tuple(ne) + (1,) * (4 - len(ne))


def _ggml_type_name(type_id: int) -> str:
    try:
        from gguf import GGMLQuantizationType

        return GGMLQuantizationType(type_id).name
    except (ImportError, ValueError):
        return f"type id {type_id}"


# --------------------------------------------------------------------------------------------
# Keys and tokenizer
# --------------------------------------------------------------------------------------------

SPECIAL_TOKEN_KEYS = ("bos_token_id", "eos_token_id", "eot_token_id", "unknown_token_id", "padding_token_id")


def read_keys(f: GGUFModelFile, arch: str, specs: Sequence[KeySpec]) -> dict[str, Any]:
    """`{full key: value}` of the `{arch}.<key>` keys of `specs` that `f` has, each checked for a
    GGUF type llama.cpp accepts for its kind (missing keys are for the hparams to default or refuse)."""
    values: dict[str, Any] = {}
    for spec in specs:
        key = f"{arch}.{spec.key}"
        if key in f.metadata:
            values[key] = _typed_value(f, key, spec.kind)
    return values


def get_key(f: GGUFModelFile, key: str, kind: str, required: bool = True) -> Any:
    """The value of `key`, which must have GGUF type `kind` ("STRING", "UINT32", "ARRAY[STRING]", ...);
    None when absent and not required. Raises GGUFError naming the file and the key."""
    if key not in f.metadata:
        if required:
            raise GGUFError(f"{f.path}: missing required key {key}")
        return None
    if f.kv_types[key] != kind:
        raise GGUFError(f"{f.path}: key {key} has type {f.kv_types[key]}; expected {kind}")
    return f.metadata[key]


def _typed_value(f: GGUFModelFile, key: str, kind: str) -> Any:
    """A key's value, with the GGUF types llama.cpp's `get_key` / `get_key_or_arr` accept."""
    t, v = f.kv_types[key], f.metadata[key]
    if kind == U32 and t == "UINT32":
        return int(v)
    if kind == F32 and t == "FLOAT32":
        return float(v)
    if kind == U32_LAYERS:
        if t == "UINT32":
            return int(v)
        if t in ("ARRAY[INT32]", "ARRAY[UINT32]") and v:
            if len(set(v)) != 1:
                raise GGUFError(f"{f.path}: key {key}: per-layer values {v} are not supported (all layers must agree)")
            return int(v[0])
    if kind == I32X4:
        if t in ("ARRAY[INT32]", "ARRAY[UINT32]"):
            if len(v) != 4:
                raise GGUFError(f"{f.path}: key {key} must have 4 values, found {len(v)}: {v}")
            return tuple(int(x) for x in v)
        if t == "INT32":
            return (int(v),) * 4
    expected = {
        U32: "UINT32",
        F32: "FLOAT32",
        U32_LAYERS: "UINT32 (or a per-layer INT32/UINT32 array)",
        I32X4: "ARRAY[INT32] of 4",
    }[kind]
    raise GGUFError(f"{f.path}: key {key} has type {t}; expected {expected}")


def check_tokenizer(f: GGUFModelFile) -> int:
    """The tokenizer keys llama.cpp's vocab loader needs for a BPE ("gpt2") vocab; returns n_vocab."""
    model = get_key(f, "tokenizer.ggml.model", "STRING")
    if model != "gpt2":
        raise GGUFError(f"{f.path}: key tokenizer.ggml.model must be 'gpt2' (byte-level BPE), found {model!r}")
    get_key(f, "tokenizer.ggml.pre", "STRING", required=False)
    tokens = get_key(f, "tokenizer.ggml.tokens", "ARRAY[STRING]")
    merges = get_key(f, "tokenizer.ggml.merges", "ARRAY[STRING]")
    n_vocab = len(tokens)
    if n_vocab == 0 or len(merges) == 0:
        raise GGUFError(f"{f.path}: tokenizer.ggml.tokens and tokenizer.ggml.merges must be non-empty")
    for key, kind in (("token_type", "ARRAY[INT32]"), ("scores", "ARRAY[FLOAT32]")):
        arr = get_key(f, f"tokenizer.ggml.{key}", kind, required=False)
        if arr is not None and len(arr) != n_vocab:
            raise GGUFError(f"{f.path}: key tokenizer.ggml.{key} has {len(arr)} entries; expected {n_vocab} (tokens)")
    for key in SPECIAL_TOKEN_KEYS:
        tid = get_key(f, f"tokenizer.ggml.{key}", "UINT32", required=False)
        if tid is not None and not 0 <= tid < n_vocab:
            raise GGUFError(f"{f.path}: key tokenizer.ggml.{key}={tid} is out of range 0..{n_vocab - 1}")
    return n_vocab
