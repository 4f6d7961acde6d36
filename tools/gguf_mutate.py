"""GGUF files as parts, and seeded corruptions of them (the generator of `graphir fuzz-gguf` and of
tests/models/test_gguf_corrupt.py).

`RawGGUF.parse(data)` splits a file into its header counts, keys (`KV`), tensor infos (`Info`) and the
data section; `to_bytes()` writes it back byte for byte, so one change makes a file that differs in
exactly that: a key's value or type, an array item, a lying length or count, a tensor's type, ne or
offset, the alignment. `corrupt(kind, seed)` draws variant `seed` of a corruption kind (`KINDS`) of
one of the small valid base files (`base_file`, a few KB each: one delta-net layer, one attention
layer, one MTP block, a 16-token vocab); `mutate_structure` is one such change of any parseable
file, the custom mutation of the atheris driver.
"""

from __future__ import annotations

import math
import random
import struct
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

# --------------------------------------------------------------------------------------------
# The codec
# --------------------------------------------------------------------------------------------

STRING, ARRAY = 8, 9
_SCALAR = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<B", 10: "<Q", 11: "<q", 12: "<d"}
U8, I8, U16, I16, U32, I32, F32, BOOL, U64, I64, F64 = 0, 1, 2, 3, 4, 5, 6, 7, 10, 11, 12


def _pack(vtype: int, v: Any) -> bytes:
    """One scalar; integers wrap to the type's width, floats round to it (NaN, inf kept)."""
    fmt = _SCALAR[vtype]
    if fmt in ("<f", "<d"):
        v = float(v)
        if fmt == "<f" and math.isfinite(v) and abs(v) > 3.4028234663852886e38:
            v = math.copysign(math.inf, v)
        return struct.pack(fmt, v)
    bits = 8 * struct.calcsize(fmt)
    v = int(v) % (1 << bits)
    if fmt[1].islower() and v >= 1 << (bits - 1):
        v -= 1 << bits
    return struct.pack(fmt, v)


def _str_bytes(s: str | bytes) -> bytes:
    return s if isinstance(s, bytes) else s.encode("utf-8", "surrogatepass")


@dataclass
class KV:
    """One key: its GGUF value type and value (ARRAY: a list of items of type `itype`).
    `n_override` writes a lying length (the string's bytes or the array's items)."""

    key: str | bytes
    vtype: int
    value: Any
    itype: int = 0
    n_override: int | None = None
    key_n_override: int | None = None  # a lying length of the key string

    def to_bytes(self) -> bytes:
        key = _str_bytes(self.key)
        n_key = len(key) if self.key_n_override is None else self.key_n_override
        out = struct.pack("<Q", n_key) + key + struct.pack("<I", self.vtype % (1 << 32))
        if self.vtype not in _SCALAR and self.vtype not in (STRING, ARRAY):
            return out  # an unknown type: no value
        if self.vtype == STRING:
            raw = _str_bytes(self.value)
            return out + struct.pack("<Q", len(raw) if self.n_override is None else self.n_override) + raw
        if self.vtype == ARRAY:
            n = len(self.value) if self.n_override is None else self.n_override
            out += struct.pack("<IQ", self.itype, n)
            if self.itype == STRING:
                return out + b"".join(_string(x) for x in self.value)
            return out + b"".join(_pack(self.itype, x) for x in self.value)
        return out + _pack(self.vtype, self.value)


def _string(s: str | bytes) -> bytes:
    raw = _str_bytes(s)
    return struct.pack("<Q", len(raw)) + raw


@dataclass
class Info:
    """One tensor info; `n_dims_override` writes a lying dimension count."""

    name: str | bytes
    ne: list[int]
    type_id: int
    offset: int
    n_dims_override: int | None = None

    def to_bytes(self) -> bytes:
        n_dims = len(self.ne) if self.n_dims_override is None else self.n_dims_override
        ne = b"".join(struct.pack("<Q", n % (1 << 64)) for n in self.ne)
        return _string(self.name) + struct.pack("<I", n_dims) + ne + struct.pack("<IQ", self.type_id % (1 << 32),
                                                                                  self.offset % (1 << 64))  # fmt: skip


@dataclass
class RawGGUF:
    """A GGUF file as parts. `to_bytes()` writes the header, keys and tensor infos, pads to
    `pad_to` (the alignment the file was written with, kept when a mutation changes the
    general.alignment key) and appends `data`, the data section as it was."""

    version: int
    kvs: list[KV]
    infos: list[Info]
    data: bytes
    pad_to: int = 32
    n_tensors: int | None = None  # lying header counts
    n_kv: int | None = None
    magic: bytes = b"GGUF"

    @classmethod
    def parse(cls, data: bytes) -> RawGGUF:
        """Parse a well-formed file (ValueError otherwise: the fuzzer then mutates bytes)."""
        r = _Reader(data)
        magic, version, n_tensors, n_kv = data[:4], r.at(4, "<I"), r.at(8, "<Q"), r.at(16, "<Q")
        if magic != b"GGUF" or n_kv > len(data) or n_tensors > len(data):
            raise ValueError("not a parseable GGUF")
        r.pos = 24
        kvs = [r.kv() for _ in range(n_kv)]
        infos = [r.info() for _ in range(n_tensors)]
        align = next((kv.value for kv in kvs if kv.key == "general.alignment" and kv.vtype == U32), 32)
        if align <= 0 or align & (align - 1) or align > 1 << 16:  # NOTE: writing pads to it: keep it small
            raise ValueError("bad alignment")
        start = -(-r.pos // align) * align if infos else r.pos
        return cls(version, kvs, infos, data[start:], align, magic=magic)

    def to_bytes(self) -> bytes:
        head = self.magic + struct.pack("<IQQ", self.version, len(self.infos) if self.n_tensors is None else
                                        self.n_tensors, len(self.kvs) if self.n_kv is None else self.n_kv)  # fmt: skip
        out = bytearray(head + b"".join(kv.to_bytes() for kv in self.kvs) + b"".join(i.to_bytes() for i in self.infos))
        if self.infos:
            out += bytes(-len(out) % self.pad_to)
        return bytes(out + self.data)

    def key(self, key: str) -> KV | None:
        return next((kv for kv in self.kvs if kv.key == key), None)

    def relayout(self, alignment: int) -> None:
        """Lay the tensor data out again, consistently, for another alignment (a valid file)."""
        chunks, data = [], bytearray()
        for a, b in zip(self.infos, [*self.infos[1:], None]):
            end = b.offset if b is not None else len(self.data)
            chunks.append(self.data[a.offset : end])
        for info, chunk in zip(self.infos, chunks):
            info.offset = len(data)
            size = _nbytes(info)
            data += chunk[:size] + bytes(-size % alignment)
        self.data, self.pad_to = bytes(data), alignment
        kv = self.key("general.alignment")
        if kv is None:
            self.kvs.append(KV("general.alignment", U32, alignment))
        else:
            kv.vtype, kv.value = U32, alignment


def _nbytes(info: Info) -> int:
    from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

    block, size = GGML_QUANT_SIZES[GGMLQuantizationType(info.type_id)]
    return math.prod(info.ne) // block * size


class _Reader:
    def __init__(self, data: bytes) -> None:
        self.data, self.pos = data, 0

    def at(self, pos: int, fmt: str) -> Any:
        if pos + struct.calcsize(fmt) > len(self.data):
            raise ValueError("short")
        return struct.unpack_from(fmt, self.data, pos)[0]

    def read(self, fmt: str) -> Any:
        v = self.at(self.pos, fmt)
        self.pos += struct.calcsize(fmt)
        return v

    def string(self) -> str | bytes:
        n = self.read("<Q")
        if self.pos + n > len(self.data):
            raise ValueError("short")
        raw = self.data[self.pos : self.pos + n]
        self.pos += n
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            return raw

    def scalar(self, vtype: int) -> Any:
        if vtype == STRING:
            return self.string()
        if vtype not in _SCALAR:
            raise ValueError("bad type")
        return self.read(_SCALAR[vtype])

    def kv(self) -> KV:
        key, vtype = self.string(), self.read("<I")
        if vtype != ARRAY:
            return KV(key, vtype, self.scalar(vtype))
        itype, n = self.read("<I"), self.read("<Q")
        if itype == ARRAY or n > len(self.data):
            raise ValueError("bad array")
        return KV(key, ARRAY, [self.scalar(itype) for _ in range(n)], itype)

    def info(self) -> Info:
        name, n_dims = self.string(), self.read("<I")
        if n_dims > 4:
            raise ValueError("bad dims")
        ne = [self.read("<Q") for _ in range(n_dims)]
        return Info(name, ne, self.read("<I"), self.read("<Q"))


# --------------------------------------------------------------------------------------------
# The base files
# --------------------------------------------------------------------------------------------

# a 16-token byte-level vocab: letters, a space, two merges, a BYTE token and the chat specials
_TOKENS = ["a", "b", "c", "d", "e", "Ġ", "ab", "abc", "Ġa", "<0x0A>", "x", "y", "z",
           "<|endoftext|>", "<|im_start|>", "<|im_end|>"]  # fmt: skip
_TYPES = [1] * 9 + [6] + [1] * 3 + [3] * 3  # NORMAL, BYTE, CONTROL
_MERGES = ["a b", "ab c", "Ġ a"]


def base_hparams(arch: str = "qwen35") -> Any:
    """The smallest complete Qwen3.5: one delta-net layer, one attention layer, one MTP block."""
    from graphir.models.hparams import Qwen35HParams

    moe = {"n_expert": 4, "n_expert_used": 2, "n_ff_exp": 8, "n_ff_shexp": 8} if arch == "qwen35moe" else {}
    return Qwen35HParams(arch=arch, n_vocab=len(_TOKENS), n_ctx_train=64, n_embd=8, block_count=3, n_ff=8,
                         n_head=2, n_head_kv=1, head_dim_k=4, head_dim_v=4, rms_eps=1e-6, n_rot=4,
                         rope_sections=(1, 1, 0, 0), rope_freq_base=10000.0, ssm_d_conv=4, ssm_d_inner=8,
                         ssm_d_state=4, ssm_dt_rank=2, ssm_n_group=1, full_attention_interval=2,
                         nextn_predict_layers=1, **moe)  # fmt: skip


BASES = {"dense-f32": ("qwen35", "F32"), "dense-f16": ("qwen35", "F16"), "moe-f32": ("qwen35moe", "F32")}


def base_file(name: str = "dense-f32") -> bytes:
    """The bytes of a small valid model (a few KB), deterministic."""
    from graphir.models.gguf_write import random_qwen35, write_qwen35
    from graphir.types import DType

    arch, dtype = BASES[name]
    hp = base_hparams(arch)
    tok = {"tokens": _TOKENS, "token_type": _TYPES, "merges": _MERGES, "bos_token_id": 13, "eos_token_id": 15,
           "eot_token_id": 15, "padding_token_id": 13, "add_bos_token": False}  # fmt: skip
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "base.gguf"
        write_qwen35(path, hp, random_qwen35(hp, 0, DType[dtype]), tok, name=name)
        return path.read_bytes()


# --------------------------------------------------------------------------------------------
# Corruptions
# --------------------------------------------------------------------------------------------


@dataclass
class Variant:
    """A corrupted file: its bytes, what was done and the names an error about it should mention
    (any one of them; empty: any field name will do)."""

    kind: str
    seed: int
    data: bytes
    what: str
    names: tuple[str, ...] = ()


_HUGE = (1 << 32) - 1, 1 << 32, 1 << 40, (1 << 63) - 1, 1 << 63, (1 << 64) - 1
_FLOATS = (math.nan, math.inf, -math.inf, 0.0, -1.0, -0.0, 1e-45, 3e38, 1e-30)


def _hparam(rng: random.Random, raw: RawGGUF) -> tuple[str, tuple[str, ...]]:
    """An architecture key set to an extreme value or given another type."""
    arch = raw.key("general.architecture").value
    kv = rng.choice([kv for kv in raw.kvs if isinstance(kv.key, str) and kv.key.startswith(f"{arch}.")])
    if rng.random() < 0.25:  # another GGUF type, the value kept where it fits
        kv.vtype = rng.choice([U8, I32, F32, U64, STRING, BOOL, F64])
        kv.value = str(kv.value) if kv.vtype == STRING else (kv.value[0] if kv.vtype != ARRAY and
                                                             isinstance(kv.value, list) else kv.value)  # fmt: skip
        if isinstance(kv.value, list):
            kv.vtype, kv.itype = ARRAY, rng.choice([U8, F32, STRING])
            kv.value = [str(x) for x in kv.value] if kv.itype == STRING else kv.value
        return f"{kv.key} type -> {kv.vtype}", (kv.key, "tensor")
    if kv.key == f"{arch}.block_count":
        kv.value = rng.choice([0, 1, 2, 4, 513, 10**6, (1 << 32) - 1])
    elif kv.vtype == F32:
        kv.value = rng.choice(_FLOATS)
    elif kv.vtype == ARRAY:
        i = rng.randrange(len(kv.value))
        kv.value[i] = rng.choice([0, -1, 1 << 31, kv.value[i] + 1])
    else:
        kv.value = rng.choice([0, 1, 2, 3, 7, 513, 1 << 20, 1 << 24, 1 << 31, (1 << 32) - 1, kv.value + 1])
    return f"{kv.key} = {kv.value}", (kv.key, "tensor")


def _offset(rng: random.Random, raw: RawGGUF) -> tuple[str, tuple[str, ...]]:
    i = rng.randrange(len(raw.infos))
    info = raw.infos[i]
    how = rng.choice(["shift", "other", "huge", "misalign"])
    if how == "shift":
        info.offset += rng.choice([-64, -32, -4, -1, 1, 4, 32, 64, 4096])
    elif how == "other":
        info.offset = raw.infos[(i + 1 + rng.randrange(len(raw.infos) - 1)) % len(raw.infos)].offset
    elif how == "huge":
        info.offset = rng.choice(_HUGE)
    else:
        info.offset += rng.randrange(1, raw.pad_to)
    return f"tensor {info.name} offset -> {info.offset % (1 << 64)} ({how})", (str(info.name),)


def _alignment(rng: random.Random, raw: RawGGUF) -> tuple[str, tuple[str, ...]]:
    if rng.random() < 0.3:  # a consistent file with another alignment: must load
        a = rng.choice([1, 8, 16, 64, 256])
        raw.relayout(a)
        return f"relaid out for general.alignment = {a}", ()
    kv = raw.key("general.alignment")
    if kv is None:
        kv = KV("general.alignment", U32, 32)
        raw.kvs.insert(rng.randrange(len(raw.kvs) + 1), kv)
    kv.vtype, kv.value = rng.choice([(U32, 0), (U32, 1), (U32, 3), (U32, 16), (U32, 64), (U32, 1 << 31),
                                     (U32, (1 << 32) - 1), (U64, 32), (I32, 32), (STRING, "32")])  # fmt: skip
    return f"general.alignment = {kv.value!r} (type {kv.vtype})", ("general.alignment", "offset", "belong to no tensor",
                                                                   "runs past the end")  # fmt: skip


def _type_swap(rng: random.Random, raw: RawGGUF) -> tuple[str, tuple[str, ...]]:
    i = rng.randrange(len(raw.infos))
    info = raw.infos[i]
    info.type_id = rng.choice([0, 1, 2, 8, 12, 14, 30, 4, 5, 24, 26, 28, 99, (1 << 32) - 1])
    nxt = raw.infos[i + 1].name if i + 1 < len(raw.infos) else "belong to no tensor"
    return f"tensor {info.name} type -> {info.type_id}", (str(info.name), str(nxt), "runs past the end")


def _dims(rng: random.Random, raw: RawGGUF) -> tuple[str, tuple[str, ...]]:
    i = rng.randrange(len(raw.infos))
    info = raw.infos[i]
    how = rng.choice(["ne", "ne", "n_dims", "add_one", "drop"])
    if how == "ne":
        j = rng.randrange(len(info.ne))
        info.ne[j] = rng.choice([0, 1, info.ne[j] + 1, info.ne[j] * 2, max(1, info.ne[j] // 2), *_HUGE])
    elif how == "n_dims":
        info.n_dims_override = rng.choice([0, 5, 1 << 31, len(info.ne) + 1])
    elif how == "add_one" and len(info.ne) < 4:  # a trailing 1: the same tensor, a valid file
        info.ne.append(1)
    elif len(info.ne) > 1:
        info.ne.pop()
    nxt = raw.infos[i + 1].name if i + 1 < len(raw.infos) else "belong to no tensor"
    return f"tensor {info.name} ne -> {info.ne} ({how})", (str(info.name), str(nxt), "runs past the end")


def _count(rng: random.Random, raw: RawGGUF) -> tuple[str, tuple[str, ...]]:
    if rng.random() < 0.5:
        raw.n_tensors = len(raw.infos) + rng.choice([-1, 1, -len(raw.infos), 2, 1000])
        return f"tensor count -> {raw.n_tensors}", ("tensor", "key", "runs past the end")
    raw.n_kv = len(raw.kvs) + rng.choice([-1, 1, 2, -len(raw.kvs)])
    return f"key count -> {raw.n_kv}", ("key", "tensor", "runs past the end", "general.architecture")


def _huge_count(rng: random.Random, raw: RawGGUF) -> tuple[str, tuple[str, ...]]:
    how = rng.choice(["tensors", "kvs", "array", "string", "key_string"])
    if how == "tensors":
        raw.n_tensors = rng.choice(_HUGE)
        return f"tensor count -> {raw.n_tensors}", ("tensor count",)
    if how == "kvs":
        raw.n_kv = rng.choice(_HUGE)
        return f"key count -> {raw.n_kv}", ("key count",)
    kv = rng.choice([kv for kv in raw.kvs if (kv.vtype == ARRAY) == (how == "array") and
                     (kv.vtype == STRING or how != "string")])  # fmt: skip
    n = rng.choice(_HUGE + (len(raw.to_bytes()),))
    if how == "key_string":
        kv.key_n_override = n
        return f"length of key string {kv.key} -> {n}", ()
    kv.n_override = n
    return f"{how} length of {kv.key} -> {n}", (str(kv.key),)


def _vocab(rng: random.Random, raw: RawGGUF) -> tuple[str, tuple[str, ...]]:
    tokens = raw.key("tokenizer.ggml.tokens").value
    types = raw.key("tokenizer.ggml.token_type")
    merges = raw.key("tokenizer.ggml.merges").value
    how = rng.choice(["dup", "empty", "merge", "byte", "id_float", "id_array", "id_range", "types", "pre", "flag",
                      "model", "utf8"])  # fmt: skip
    i = rng.randrange(len(tokens))
    if how == "dup":
        tokens[i] = tokens[(i + 1 + rng.randrange(len(tokens) - 1)) % len(tokens)]
    elif how == "empty":
        tokens[i] = ""
    elif how == "merge":
        merges[rng.randrange(len(merges))] = rng.choice(["q r", "a zz", "abc abc", "Ġ b"])
    elif how == "byte":
        types.value[i] = 6
    elif how in ("id_float", "id_array", "id_range"):
        key = "tokenizer.ggml." + rng.choice(["bos_token_id", "eos_token_id", "fim_pad_token_id", "seperator_token_id",
                                              "mask_token_id", "eom_token_id"])  # fmt: skip
        kv = raw.key(key) or KV(key, U32, 0)
        if kv not in raw.kvs:
            raw.kvs.append(kv)
        if how == "id_float":
            kv.vtype, kv.value = rng.choice([(F32, math.inf), (F32, 1.5), (F64, -math.inf), (F32, math.nan)])
        elif how == "id_array":
            kv.vtype, kv.itype, kv.value = ARRAY, rng.choice([U32, I32, F32]), [1, 2]
        else:
            kv.vtype, kv.value = rng.choice([(U32, len(tokens)), (U32, (1 << 32) - 1), (I32, -1), (U64, 1 << 40)])
        return f"{key} = {kv.value!r} (type {kv.vtype})", (key,)
    elif how == "types":
        types.value = types.value[: rng.randrange(len(types.value))] if rng.random() < 0.5 else types.value + [1]
        return "token_type length", ("tokenizer.ggml.token_type",)
    elif how in ("pre", "model"):
        kv = raw.key(f"tokenizer.ggml.{how}")
        kv.value = rng.choice(["", "llama", "qwen2", "gpt-4o", "x" * 100])
        return f"tokenizer.ggml.{how} = {kv.value!r}", (f"tokenizer.ggml.{how}",)
    elif how == "flag":
        key = "tokenizer.ggml." + rng.choice(["add_bos_token", "add_eos_token"])
        kv = raw.key(key) or KV(key, BOOL, False)
        if kv not in raw.kvs:
            raw.kvs.append(kv)
        kv.vtype, kv.value = rng.choice([(STRING, "false"), (U32, 2), (BOOL, 1)])
        return f"{key} = {kv.value!r}", (key,)
    else:
        tokens[i] = b"\xff\xfe" + _str_bytes(tokens[i])
    return f"vocab {how} at token {i}", ("tokenizer.ggml.",)


def _key_type(rng: random.Random, raw: RawGGUF) -> tuple[str, tuple[str, ...]]:
    i = rng.randrange(len(raw.kvs))
    kv = raw.kvs[i]
    how = rng.choice(["type", "drop", "dup", "rename"])
    if how == "type":
        kv.vtype = rng.choice([U8, I32, F32, U64, BOOL, STRING, 13, 1 << 31])
        if kv.vtype == STRING:
            kv.value = str(kv.value)[:50]
        elif kv.vtype in _SCALAR and isinstance(kv.value, list | str | bytes):
            kv.value = len(kv.value)
    elif how == "drop":
        del raw.kvs[i]
    elif how == "dup":
        raw.kvs.insert(rng.randrange(len(raw.kvs) + 1), replace(kv))
    else:
        kv.key = rng.choice(["", str(kv.key) + "x", "general.architecture", b"\xff" + _str_bytes(kv.key)])
    return f"key {kv.key!r}: {how}", (str(kv.key), "key", "tokenizer.ggml.", "general.")


def _tensor_name(rng: random.Random, raw: RawGGUF) -> tuple[str, tuple[str, ...]]:
    i = rng.randrange(len(raw.infos))
    info = raw.infos[i]
    old = str(info.name)
    how = rng.choice(["rename", "dup", "long", "drop"])
    if how == "rename":
        info.name = rng.choice(["blk.7.attn_q.weight", old + ".x", "", "token_embd", b"\xc3\x28"])
    elif how == "dup":
        info.name = raw.infos[(i + 1) % len(raw.infos)].name
    elif how == "long":
        info.name = "blk.0." + "x" * 70
    else:  # the info and its data go: the rest of the layout moves up
        del raw.infos[i]
        raw.relayout(raw.pad_to)
    return f"tensor {old}: {how}", (old, str(info.name)[:40], "tensor")


def _weights(rng: random.Random, raw: RawGGUF) -> tuple[str, tuple[str, ...]]:
    """Values no validation of the metadata can see: NaN, inf or huge floats in an F32/F16 tensor
    (must load, then decode finite or be stopped by the non-finite guard)."""
    # NOTE: only tensors whose data lies inside the file (an earlier mutation may have made ne huge)
    floats = [i for i in raw.infos if i.type_id in (0, 1) and i.offset + _nbytes(i) <= len(raw.data)]
    info = rng.choice(floats)
    size = 4 if info.type_id == 0 else 2
    n = _nbytes(info) // size
    value = rng.choice([math.nan, math.inf, -math.inf, 6e4, 3e38, -3e38])
    raw_value = struct.pack("<f", value) if size == 4 else struct.pack("<e", max(-6e4, min(6e4, value))
                                                                        if math.isfinite(value) else value)
    buf = bytearray(raw.data)
    for j in rng.sample(range(n), min(n, rng.choice([1, 3, 4096]))):
        at = info.offset + j * size
        buf[at : at + size] = raw_value
    raw.data = bytes(buf)
    return f"tensor {info.name} data holds {value}", ()


def _byte_flip(rng: random.Random, data: bytes, meta_end: int) -> tuple[bytes, str]:
    buf = bytearray(data)
    where = rng.choice(["meta", "meta", "anywhere"])
    hi = meta_end if where == "meta" else len(buf)
    for _ in range(rng.randint(1, 4)):
        j = rng.randrange(hi)
        buf[j] ^= 1 << rng.randrange(8) if rng.random() < 0.7 else rng.randrange(1, 256)
    return bytes(buf), f"{where} byte flips"


def _truncate(rng: random.Random, data: bytes) -> tuple[bytes, str]:
    cut = rng.choice([rng.randrange(len(data)), rng.randrange(64), len(data) - rng.randrange(1, 64)])
    return data[:cut], f"cut at {cut} of {len(data)}"


_STRUCTURED: dict[str, Callable[[random.Random, RawGGUF], tuple[str, tuple[str, ...]]]] = {
    "huge_count": _huge_count, "hparam": _hparam, "offset": _offset, "alignment": _alignment,
    "type_swap": _type_swap, "dims": _dims, "count": _count, "vocab": _vocab, "key_type": _key_type,
    "tensor_name": _tensor_name, "weights": _weights,
}  # fmt: skip
KINDS = ("byte_flip", "truncate", *_STRUCTURED)

def corrupt(kind: str, seed: int, base: bytes | None = None) -> Variant:
    """Variant `seed` of corruption `kind` (one of KINDS) of `base` (default: base_file() of a
    base picked by the seed)."""
    rng = random.Random(f"{kind}:{seed}")
    if base is None:
        base = _base_bytes(rng.choice(list(BASES)))
    if kind == "byte_flip":
        raw = RawGGUF.parse(base)
        data, what = _byte_flip(rng, base, len(base) - len(raw.data))
        return Variant(kind, seed, data, what)
    if kind == "truncate":
        data, what = _truncate(rng, base)
        return Variant(kind, seed, data, what)
    raw = RawGGUF.parse(base)
    what, names = _STRUCTURED[kind](rng, raw)
    return Variant(kind, seed, raw.to_bytes(), what, names)


_BASE_CACHE: dict[str, bytes] = {}


def _base_bytes(name: str) -> bytes:
    if name not in _BASE_CACHE:
        _BASE_CACHE[name] = base_file(name)
    return _BASE_CACHE[name]


def mutate_structure(data: bytes, seed: int) -> bytes | None:
    """One structure-aware mutation of a GGUF file (a key, a type, an array item, a tensor info,
    a count), or None when `data` does not parse or the drawn mutation does not apply to it."""
    rng = random.Random(seed)
    try:
        raw = RawGGUF.parse(data)
        _STRUCTURED[rng.choice(list(_STRUCTURED))](rng, raw)
        return raw.to_bytes()
    except Exception:  # noqa: BLE001 - not a parseable file, or a mutation that does not apply to it
        return None
