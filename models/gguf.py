"""GGUF files: memory-mapped reading (`load_gguf`) and the file-level checks every architecture uses.

`load_gguf` maps the file (np.memmap, so tensor data is never copied) and parses it with
bounds checks: truncation, bad magic/version and corrupt headers come out as a GGUFError naming
the file and the part that is bad, never as a crash or a hang. Every count (tensors, keys, array
items, string bytes) is held against the bytes left before anything is built from it, so the cost
is O(file metadata) whatever the header claims; the tensor data must be laid out as llama.cpp
demands (each tensor where the previous one, padded to `general.alignment`, ends; inside the
file; nothing after the last one).

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
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

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

# Ceilings checked before anything is allocated: every count is held against the bytes it needs.
MAX_DIMS = 4  # GGML_MAX_DIMS
MAX_NAME = 63  # GGML_MAX_NAME (64) less the terminating NUL, as llama.cpp checks tensor names
DEFAULT_ALIGNMENT = 32  # GGUF_DEFAULT_ALIGNMENT
_MIN_KV_BYTES = 8 + 4 + 1  # key length, value type, the smallest value
_MIN_INFO_BYTES = 8 + 4 + 8 + 4 + 8  # name length, n_dims, one ne, type, offset
_MIN_ITEM_BYTES = {_STRING: 8}  # an array item of this type takes at least this many bytes


def _pad(n: int, alignment: int) -> int:
    return -(-n // alignment) * alignment


class _Parser:
    """A bounds-checked cursor over the mapped file: every read names what it was reading, so a
    truncated or corrupt file gets an error saying which part runs past the end. Every count is
    checked against the bytes left before anything is built from it, so parsing costs O(file
    metadata) whatever the counts say."""

    def __init__(self, path: str, data: np.ndarray) -> None:
        self.path, self.data, self.size, self.pos = path, data, int(data.size), 0

    def fail(self, what: str, detail: str = "") -> GGUFError:
        return GGUFError(f"{self.path}: truncated GGUF file ({self.size} bytes): {what} runs past the end{detail}")

    def corrupt(self, what: str) -> GGUFError:
        return GGUFError(f"{self.path}: corrupt GGUF file: {what}")

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
            raise self.corrupt(f"{what} is not UTF-8") from e

    def value(self, vtype: int, what: str) -> tuple[Any, str]:
        """Decode one value; returns (python value, type name such as "ARRAY[INT32]")."""
        if vtype not in _VALUE_TYPES:
            raise self.corrupt(f"{what} has unknown value type {vtype}")
        name, dtype = _VALUE_TYPES[vtype]
        if dtype is not None:
            np_dtype = np.dtype(dtype)
            return np.frombuffer(self.data, np_dtype, 1, self.take(np_dtype.itemsize, what)).tolist()[0], name
        if vtype == _STRING:
            return self.string(what), name
        itype, n = self.u32(f"the item type of {what}"), self.u64(f"the length of {what}")
        if itype not in _VALUE_TYPES:
            raise self.corrupt(f"{what} has unknown item type {itype}")
        if itype == _ARRAY:  # llama.cpp's reader has no arrays of arrays either
            raise self.corrupt(f"{what} is an array of arrays (not supported)")
        iname, idtype = _VALUE_TYPES[itype]
        item_bytes = np.dtype(idtype).itemsize if idtype is not None else _MIN_ITEM_BYTES[itype]
        if n * item_bytes > self.size - self.pos:  # O(1): a corrupt length can never make a loop
            raise self.fail(what, f" ({n} {iname} items)")
        if idtype is not None:
            start = self.take(n * item_bytes, what)
            return np.frombuffer(self.data, np.dtype(idtype), n, start).tolist(), f"ARRAY[{iname}]"
        return self.strings(n, what), "ARRAY[STRING]"

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
            raise self.corrupt(f"{what} holds a string that is not UTF-8") from e
        finally:
            mv.release()
        self.pos = pos
        return out

    def parse(self) -> GGUFModelFile:
        self.pos = 4
        version = self.u32("the version")
        n_tensors, n_kv = self.u64("the tensor count"), self.u64("the key count")
        need = self.pos + n_kv * _MIN_KV_BYTES + n_tensors * _MIN_INFO_BYTES
        if need > self.size:
            raise self.corrupt(f"claims {n_tensors} tensors (tensor count) and {n_kv} keys (key count) in "
                               f"{self.size} bytes; they take at least {need} bytes")  # fmt: skip
        metadata: dict[str, Any] = {}
        kv_types: dict[str, str] = {}
        for i in range(n_kv):
            key = self.string(f"key #{i}")
            if key in metadata:
                raise self.corrupt(f"duplicate key {key}")
            metadata[key], kv_types[key] = self.value(self.u32(f"the type of key {key}"), f"the value of key {key}")
        alignment = metadata.get("general.alignment", DEFAULT_ALIGNMENT)
        if kv_types.get("general.alignment", "UINT32") != "UINT32" or alignment <= 0 or alignment & (alignment - 1):
            shown = f"{kv_types['general.alignment']} {alignment!r}"
            raise self.corrupt(f"general.alignment must be a UINT32 non-zero power of two, found {shown}")
        infos = [self.tensor_info(i) for i in range(n_tensors)]
        data_start = _pad(self.pos, alignment) if n_tensors else self.pos
        return GGUFModelFile(self.path, self.size, version, alignment, metadata, kv_types,
                             self.tensors(infos, data_start, alignment))  # fmt: skip

    def tensor_info(self, i: int) -> tuple[str, tuple[int, ...], int, int]:
        name = self.string(f"the name of tensor #{i}")
        if len(name.encode()) > MAX_NAME:
            raise self.corrupt(f"tensor #{i} has a name of {len(name.encode())} bytes (at most {MAX_NAME}): {name[:80]!r}")
        n_dims = self.u32(f"tensor info {name}")
        if not 1 <= n_dims <= MAX_DIMS:
            raise self.corrupt(f"tensor {name} has {n_dims} dims (n_dims must be 1..{MAX_DIMS})")
        ne = tuple(self.u64(f"tensor info {name}") for _ in range(n_dims))
        return name, ne, self.u32(f"tensor info {name}"), self.u64(f"tensor info {name}")

    def tensors(self, infos: list[tuple[str, tuple[int, ...], int, int]], data_start: int,
                alignment: int) -> dict[str, TensorInfo]:  # fmt: skip
        """The tensors' data layout, as llama.cpp's reader demands it: each tensor's data starts where
        the previous one's (padded to the alignment) ends, in file order, inside the file; then the
        file ends (a last padding may be missing). Overlapping, misaligned or shifted offsets, a byte
        size that does not match the type and ne, and a wrong tensor count all fail here."""
        tensors: dict[str, TensorInfo] = {}
        expected = 0
        for name, ne, type_id, offset in infos:
            if name in tensors:
                raise self.corrupt(f"duplicate tensor {name}")
            nbytes = self.nbytes(name, ne, type_id)
            if offset != expected:
                raise self.corrupt(f"tensor {name} has offset {offset}, expected {expected} (tensor data follows "
                                   f"in file order, each padded to general.alignment = {alignment})")  # fmt: skip
            start = data_start + offset
            if start + nbytes > self.size:
                raise self.fail(f"the data of tensor {name} [{start}, {start + nbytes})")
            tensors[name] = TensorInfo(name, type_id, GGMLQuantizationType(type_id).name, ne, start, nbytes,
                                       self.data[start : start + nbytes])  # fmt: skip
            expected += _pad(nbytes, alignment)
        extra = self.size - (data_start + expected)
        if extra > 0:
            what = f"after the data of tensor {infos[-1][0]}" if infos else "after the tensor infos (no tensors)"
            raise self.corrupt(f"{extra:,} bytes {what} belong to no tensor (a wrong tensor count or "
                               f"general.alignment = {alignment}?)")  # fmt: skip
        return tensors

    def nbytes(self, name: str, ne: tuple[int, ...], type_id: int) -> int:
        """The data bytes of a tensor of GGML type `type_id` and `ne` (checked: known type, ne
        within int64 and whole blocks)."""
        try:
            block, type_bytes = GGML_QUANT_SIZES[GGMLQuantizationType(type_id)]
        except (ValueError, KeyError):
            raise self.corrupt(f"tensor {name} has unknown type id {type_id}") from None
        if any(n >= 1 << 63 for n in ne):
            raise self.corrupt(f"tensor {name} has ne {list(ne)}: each must be < 2^63")
        if ne[0] % block:
            raise self.corrupt(f"tensor {name} ne[0]={ne[0]} is not a multiple of {block} (its type's block)")
        return math.prod(ne) // block * type_bytes


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
# the GGUF types llama.cpp's vocab loader reads the tokenizer keys with (`*_token_id` keys: UINT32)
TOKENIZER_KEY_TYPES = {
    "tokenizer.ggml.model": "STRING", "tokenizer.ggml.pre": "STRING", "tokenizer.ggml.tokens": "ARRAY[STRING]",
    "tokenizer.ggml.merges": "ARRAY[STRING]", "tokenizer.ggml.token_type": "ARRAY[INT32]",
    "tokenizer.ggml.scores": "ARRAY[FLOAT32]", "tokenizer.ggml.add_bos_token": "BOOL",
    "tokenizer.ggml.add_eos_token": "BOOL",
}  # fmt: skip


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
                shown = ", ".join(map(str, v[:8])) + (", ..." if len(v) > 8 else "")
                raise GGUFError(f"{f.path}: key {key}: per-layer values [{shown}] are not supported (all layers must "
                                "agree)")  # fmt: skip
            return int(v[0])
    if kind == I32X4:
        if t in ("ARRAY[INT32]", "ARRAY[UINT32]"):
            if len(v) != 4:
                raise GGUFError(f"{f.path}: key {key} must have 4 values, found {len(v)}: {v[:8]}")
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
    """The GGUF side of the tokenizer keys llama.cpp's vocab loader needs for a BPE ("gpt2") vocab:
    presence, GGUF types (every `tokenizer.ggml.*_token_id` a UINT32), lengths and the range of the
    common special ids; returns n_vocab. The vocabulary itself (duplicates, merges, BYTE tokens)
    is checked by models.tokenizer.read_vocab, which validation runs next."""
    model = get_key(f, "tokenizer.ggml.model", "STRING")
    if model != "gpt2":
        raise GGUFError(f"{f.path}: key tokenizer.ggml.model must be 'gpt2' (byte-level BPE), found {model!r}")
    for key, kind in TOKENIZER_KEY_TYPES.items():
        get_key(f, key, kind, required=key in ("tokenizer.ggml.tokens", "tokenizer.ggml.merges"))
    for key in f.metadata:
        if key.startswith("tokenizer.ggml.") and key.endswith("_token_id"):
            get_key(f, key, "UINT32")
    tokens, merges = f.metadata["tokenizer.ggml.tokens"], f.metadata["tokenizer.ggml.merges"]
    n_vocab = len(tokens)
    if n_vocab == 0 or len(merges) == 0:
        raise GGUFError(f"{f.path}: tokenizer.ggml.tokens and tokenizer.ggml.merges must be non-empty")
    for key in ("token_type", "scores"):
        arr = f.metadata.get(f"tokenizer.ggml.{key}")
        if arr is not None and len(arr) != n_vocab:
            raise GGUFError(f"{f.path}: key tokenizer.ggml.{key} has {len(arr)} entries; expected {n_vocab} (tokens)")
    for key in SPECIAL_TOKEN_KEYS:
        tid = f.metadata.get(f"tokenizer.ggml.{key}")
        if tid is not None and not 0 <= tid < n_vocab:
            raise GGUFError(f"{f.path}: key tokenizer.ggml.{key}={tid} is out of range 0..{n_vocab - 1}")
    return n_vocab
