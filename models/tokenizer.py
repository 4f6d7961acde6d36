"""Byte-level BPE tokenizer from a GGUF's own vocabulary, run the way llama.cpp runs it.

Scope: `tokenizer.ggml.model = "gpt2"` with the Qwen pre-tokenizers (`tokenizer.ggml.pre` =
"qwen35" for Qwen3.5 GGUFs, "qwen2" for older Qwen files). Facts from llama.cpp
(src/llama-vocab.cpp, src/unicode.cpp), re-implemented here:

- Encode = special-token partition, then per raw fragment: pre-tokenizer regex split, GPT-2
  byte-to-unicode mapping of each piece's UTF-8 bytes, BPE merges by rank (lowest rank first,
  ties to the leftmost pair), then optional BOS/EOS (`add_bos_token`/`add_eos_token`, both off
  for Qwen).
- Partition: tokens typed CONTROL, USER_DEFINED or UNKNOWN are looked for in the text, longest
  text first (UTF-8 byte length), each one splitting every remaining raw fragment at all its
  occurrences. CONTROL/UNKNOWN tokens only when `parse_special`; USER_DEFINED ones always.
- Decode (`token_to_piece`): CONTROL/UNKNOWN pieces are their raw text only when `special`,
  else empty; USER_DEFINED pieces are their raw text; NORMAL pieces are byte-decoded through the
  GPT-2 map; BYTE tokens `<0xXX>` give that byte; UNUSED/UNDEFINED give nothing. No space
  clean-up (llama.cpp turns `clean_spaces` off for both Qwen pre-tokenizers).
- At load, llama.cpp forces the CONTROL attribute onto tokens whose text marks end of generation
  (`<|im_end|>`, `<|endoftext|>`, ...) and onto EOT/EOM/FIM-looking tokens when their id keys are
  absent; this module does the same, so `parse_special=False` treats them identically.

Dependency choice: the BPE and the regex split run in Hugging Face `tokenizers` (Rust, exact
rank-ordered merges with the same leftmost tie-break, Oniguruma regexes with `\\p{L}`/`\\p{M}`/
`\\p{N}` and a `\\s` equal to Unicode White_Space -- the set llama.cpp uses). It is built in memory
from the GGUF's tokens and merges, with no normalizer (llama.cpp applies none, unlike the NFC in
Qwen's tokenizer.json) and no added tokens: the special-token partition stays here in Python
because llama.cpp's longest-first passes differ from `tokenizers`' leftmost-longest matching on
overlapping tokens. The same library trains small vocabularies (`train_byte_bpe`) with the very
same pre-tokenizer, so a trained vocab tokenizes identically here and in llama.cpp. A pure-Python
BPE would need the `regex` package anyway and would be slower on long prompts.

Known limit: Unicode category tables differ by version (llama.cpp's generated table is Unicode
15.x, Oniguruma's 16.0), so the split can differ on the few hundred code points assigned in 16.0.
"""

from __future__ import annotations

import codecs
import enum
import json
import operator
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from functools import cache

import numpy as np
import tokenizers
from tokenizers import models as hf_models
from tokenizers import pre_tokenizers as hf_pre
from tokenizers import trainers as hf_trainers

# llama.cpp LLAMA_VOCAB_PRE_TYPE_QWEN35 / _QWEN2 (the `(?i:...)` contractions spelled out as there).
# Digits split one by one (`\p{N}`); qwen35 keeps combining marks (\p{M}) with their letters.
_CONTRACTIONS = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])"
PRE_PATTERNS: dict[str, str] = {
    "qwen35": _CONTRACTIONS + r"|[^\r\n\p{L}\p{N}]?[\p{L}\p{M}]+|\p{N}| ?[^\s\p{L}\p{M}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+",
    "qwen2": _CONTRACTIONS + r"|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+",
}

_K = "tokenizer.ggml."


class TokenType(enum.IntEnum):
    """`tokenizer.ggml.token_type` values (gguf TokenType / llama_token_type)."""

    UNDEFINED = 0
    NORMAL = 1
    UNKNOWN = 2
    CONTROL = 3
    USER_DEFINED = 4
    UNUSED = 5
    BYTE = 6


class _Attr:
    """llama_token_attr bits (plain ints: this is on the load path of 250k-token vocabs); llama.cpp
    ORs CONTROL onto some tokens, so a token's type becomes a set of flags."""

    UNKNOWN = 1
    UNUSED = 2
    NORMAL = 4
    CONTROL = 8
    USER_DEFINED = 16
    BYTE = 32


_TYPE_TO_ATTR = {
    TokenType.NORMAL: _Attr.NORMAL,
    TokenType.UNKNOWN: _Attr.UNKNOWN,
    TokenType.CONTROL: _Attr.CONTROL,
    TokenType.USER_DEFINED: _Attr.USER_DEFINED,
    TokenType.UNUSED: _Attr.UNUSED,
    TokenType.BYTE: _Attr.BYTE,
}
_SPECIAL = _Attr.CONTROL | _Attr.UNKNOWN

# Token texts llama.cpp treats as end of generation (and forces to CONTROL) whatever the metadata says.
_EOG_TEXTS = frozenset(
    "<|eot_id|> <|im_end|> <|end|> <|return|> <|call|> <|flush|> <|calls|> <end_of_turn> <|endoftext|> </s> "
    "<|eom_id|> <EOT> _<EOT> [EOT] [EOS] <|end_of_text|> <end_of_utterance> <eos> <turn|> <|tool_response> "
    "<｜end▁of▁sentence｜> [e~[".split()
)
# role -> (id key, texts llama.cpp auto-detects for it when the key is absent; the match becomes CONTROL).
_AUTO_ROLES = {
    "eot": (
        "eot_token_id",
        "<|eot_id|> <|im_end|> <|end|> <end_of_turn> <|endoftext|> <|end_of_text|> <EOT> _<EOT> "
        "[EOT] <｜end▁of▁sentence｜> <end_of_utterance>",
    ),
    "eom": ("eom_token_id", "<|eom_id|>"),
    "fim_pre": (
        "fim_pre_token_id",
        "<|fim_prefix|> <fim-prefix> <fim_prefix> <｜fim▁begin｜> <PRE> ▁<PRE> <|code_prefix|> <|prefix|>",
    ),
    "fim_suf": (
        "fim_suf_token_id",
        "<|fim_suffix|> <fim-suffix> <fim_suffix> <｜fim▁hole｜> <SUF> ▁<SUF> <|code_suffix|> <|suffix|>",
    ),
    "fim_mid": (
        "fim_mid_token_id",
        "<|fim_middle|> <fim-middle> <fim_middle> <｜fim▁end｜> <MID> ▁<MID> <|code_middle|> <|middle|>",
    ),
    "fim_pad": ("fim_pad_token_id", "<|fim_pad|> <fim-pad> <fim_pad> <PAD> [PAD]"),
    "fim_rep": ("fim_rep_token_id", "<|fim_repo|> <|repo_name|> <fim-repo> <REPO> <reponame>"),
    "fim_sep": ("fim_sep_token_id", "<|file_sep|>"),
}
_ID_KEYS = {"bos": "bos_token_id", "eos": "eos_token_id", "unk": "unknown_token_id",
            "sep": "seperator_token_id", "pad": "padding_token_id", "mask": "mask_token_id"}  # fmt: skip


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's byte -> printable character map: printable Latin-1 bytes map to themselves, the
    other 68 bytes (controls, space, 0x7F-0xA0, 0xAD) to U+0100.. in byte order."""
    keep = [*range(0x21, 0x7F), *range(0xA1, 0xAD), *range(0xAE, 0x100)]
    extra = [b for b in range(256) if b not in keep]
    table = {b: chr(b) for b in keep}
    table.update({b: chr(256 + n) for n, b in enumerate(extra)})
    return table


BYTE_TO_UNICODE = _bytes_to_unicode()
UNICODE_TO_BYTE = {c: b for b, c in BYTE_TO_UNICODE.items()}


@cache
def _split_pre_tokenizer(pre: str) -> hf_pre.Split:
    if pre not in PRE_PATTERNS:
        raise ValueError(f"[tokenizer] {_K}pre = {pre!r} is not supported (supported: {sorted(PRE_PATTERNS)})")
    return hf_pre.Split(tokenizers.Regex(PRE_PATTERNS[pre]), behavior="isolated")


def _hf_pre_tokenizer(pre: str) -> hf_pre.PreTokenizer:
    # Split on the regex first, then map each piece's bytes (ByteLevel without its own GPT-2 regex).
    byte_level = hf_pre.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False)
    return hf_pre.Sequence([_split_pre_tokenizer(pre), byte_level])


def pre_tokenize(text: str, pre: str = "qwen35") -> list[str]:
    """Split `text` into the pieces the `pre` pre-tokenizer regex gives (before byte mapping)."""
    return [piece for piece, _ in _split_pre_tokenizer(pre).pre_tokenize_str(text)]


def _decode_normal(text: str) -> bytes:
    """Bytes of a NORMAL token: each character mapped back through GPT-2's table; a character
    outside it becomes llama.cpp's `[UNK_BYTE_0x<utf8 hex><token text>]` marker."""
    out = bytearray()
    for ch in text:
        b = UNICODE_TO_BYTE.get(ch)
        if b is None:
            out += f"[UNK_BYTE_0x{ch.encode().hex()}{text}]".encode()
        else:
            out.append(b)
    return bytes(out)


def _as_str(v: str | bytes) -> str:
    return v.decode("utf-8") if isinstance(v, bytes | bytearray) else str(v)


def _as_strs(key: str, values: Iterable[str | bytes]) -> list[str]:
    values = list(values)
    if all(type(v) is str for v in values):
        return values
    bad = next((i for i, v in enumerate(values) if not isinstance(v, str | bytes | bytearray)), None)
    if bad is not None:
        raise ValueError(f"[tokenizer] {_K}{key}[{bad}] must be a string, got {type(values[bad]).__name__}")
    try:
        return [_as_str(v) for v in values]
    except UnicodeDecodeError as e:
        raise ValueError(f"[tokenizer] {_K}{key} holds a string that is not UTF-8") from e


def _is_int(v: object) -> bool:
    return isinstance(v, int | np.integer) and not isinstance(v, bool)


def _is_byte_token(text: str) -> bool:
    """`<0xNN>`: the text a BYTE token must have."""
    return len(text) == 6 and text.startswith("<0x") and text[5] == ">" and all(c in _HEX for c in text[3:5])


_HEX = frozenset("0123456789abcdefABCDEF")


@dataclass(frozen=True, eq=False)
class Vocab:
    """A checked `tokenizer.ggml.*` vocabulary, what a `Tokenizer` is built from (`read_vocab`)."""

    tokens: list[str]  # empty tokens renamed `[EMPTY_<id>]`, as llama.cpp does
    token_types: list[int]
    merges: list[tuple[str, str]]  # (left, right) in rank order, repeats dropped
    pre: str
    ids: dict[str, int | None]  # role ("bos", "eos", "eot", "fim_pad", ...) -> token id
    add_bos: bool
    add_eos: bool

    @property
    def n_vocab(self) -> int:
        return len(self.tokens)


def read_vocab(fields: Mapping[str, object]) -> Vocab:
    """Check the `tokenizer.ggml.*` fields (full key names; values lists, numpy arrays, str or
    bytes) and return the vocabulary. Raises ValueError naming the key (and the index) for a
    missing or unsupported model/pre, empty, duplicate or non-string tokens, token types of the
    wrong length, merges that are empty or name tokens not in the vocabulary, BYTE tokens whose
    text is not `<0xNN>`, special-token ids that are not integers and add_*_token flags that are
    not booleans. Runs in O(vocabulary) with no tokenizer built: `graphir inspect` runs it too, so
    `inspect` and `Model.load` accept the same files."""

    def get(key: str, default: object = None) -> object:
        return fields.get(_K + key, default)

    model = get("model")
    if not isinstance(model, str | bytes) or _as_str(model) != "gpt2":
        raise ValueError(f"[tokenizer] {_K}model = {model!r} is not supported (only 'gpt2')")
    pre = get("pre")
    if not isinstance(pre, str | bytes) or _as_str(pre) not in PRE_PATTERNS:
        raise ValueError(f"[tokenizer] {_K}pre = {pre!r} is not supported (supported: {sorted(PRE_PATTERNS)})")
    tokens = _as_strs("tokens", _array(get, "tokens"))
    if "" in tokens:  # llama.cpp renames an empty token so it can still be looked up
        tokens = [t or f"[EMPTY_{i}]" for i, t in enumerate(tokens)]
    n = len(tokens)
    token_to_id = dict(zip(tokens, range(n)))
    if len(token_to_id) != n:
        seen: dict[str, int] = {}
        for i, t in enumerate(tokens):
            if t in seen:
                raise ValueError(f"[tokenizer] {_K}tokens: duplicate token {t!r} has ids {seen[t]} and {i}")
            seen[t] = i
    types = _token_types(_array(get, "token_type", required=False), n)
    bad = next((i for i, t in enumerate(types) if t == TokenType.BYTE and not _is_byte_token(tokens[i])), None)
    if bad is not None:
        raise ValueError(f"[tokenizer] {_K}tokens[{bad}] = {tokens[bad]!r} has type BYTE ({_K}token_type), "
                         "whose text must be <0xNN>")  # fmt: skip
    merges = _merge_pairs(_as_strs("merges", _array(get, "merges")), token_to_id)
    ids = _special_ids(get, n)
    add_bos, add_eos = _flag(get, "add_bos_token"), _flag(get, "add_eos_token")
    for flag, role in ((add_bos, "bos"), (add_eos, "eos")):
        if flag and ids.get(role) is None:
            raise ValueError(f"[tokenizer] {_K}add_{role}_token is true, but {_K}{_ID_KEYS[role]} is not set")
    return Vocab(tokens, types, merges, _as_str(pre), ids, add_bos, add_eos)


def _array(get: Callable[[str], object], key: str, required: bool = True) -> list | None:
    """A list-valued field (a list, tuple or 1-D numpy array), non-empty when required."""
    v = get(key)
    if v is None and not required:
        return None
    if isinstance(v, np.ndarray) and v.ndim == 1:
        v = v.tolist()
    if not isinstance(v, list | tuple) or (required and len(v) == 0):
        shown = "missing" if v is None else f"a {type(v).__name__}" if not isinstance(v, list | tuple) else "empty"
        raise ValueError(f"[tokenizer] {_K}{key} must be a non-empty list, got {shown}")
    return list(v)


def _token_types(types: list | None, n: int) -> list[int]:
    if types is None:
        return [int(TokenType.NORMAL)] * n
    if len(types) < n:
        raise ValueError(f"[tokenizer] {_K}token_type has {len(types)} entries for {n} tokens")
    types = types[:n]
    bad = next((i for i, t in enumerate(types) if not _is_int(t)), None)
    if bad is not None:
        raise ValueError(f"[tokenizer] {_K}token_type[{bad}] must be an integer, got {types[bad]!r}")
    return [int(t) for t in types]


def _merge_pairs(merges: list[str], vocab: Mapping[str, int]) -> list[tuple[str, str]]:
    """GGUF merges "a b" -> pairs, split at the first space after position 0 as llama.cpp does.

    A repeated merge keeps its first rank (llama.cpp's map emplace); `tokenizers` would keep the last.
    """
    # a merge without a separating space is filed by llama.cpp under an empty pair that never applies
    pairs = [(m[:p], m[p + 1 :]) for m in merges if (p := m.find(" ", 1)) > 0]
    bad = next((ab for ab in pairs if ab[0] not in vocab or ab[1] not in vocab or ab[0] + ab[1] not in vocab), None)
    if bad is not None:  # checked here: `tokenizers` panics on it
        m = " ".join(bad)
        raise ValueError(f"[tokenizer] {_K}merges[{merges.index(m)}] = {m!r}: a part or the merged token "
                         "is not in the vocabulary")  # fmt: skip
    return list(dict.fromkeys(pairs))  # first occurrence wins, order kept


def _special_ids(get: Callable[[str], object], n: int) -> dict[str, int | None]:
    """Role -> id. llama.cpp's defaults for gpt2 vocabs: BOS = EOS = 11 (if in range); an id out of
    range keeps the default (llama.cpp warns "bad special token"); an id that is not an integer
    (a float, an array) is an error."""
    ids: dict[str, int | None] = {"bos": 11 if n > 11 else None, "eos": 11 if n > 11 else None}
    for role, key in {**_ID_KEYS, **{r: k for r, (k, _) in _AUTO_ROLES.items()}}.items():
        v = get(key)
        if v is None:
            continue
        if not _is_int(v):
            raise ValueError(f"[tokenizer] {_K}{key} must be an integer token id, got {v!r}")
        if 0 <= int(v) < n:
            ids[role] = int(v)
    return ids


def _flag(get: Callable[[str], object], key: str) -> bool:
    v = get(key, False)
    if not isinstance(v, bool | np.bool_):
        raise ValueError(f"[tokenizer] {_K}{key} must be a boolean, got {v!r}")
    return bool(v)


class Tokenizer:
    """llama.cpp-exact byte-level BPE tokenizer over a GGUF vocabulary (see the module docstring).

    Build with `Tokenizer.from_gguf_fields(fields)` (or `Tokenizer(read_vocab(fields))`). Immutable
    once built except for a cache of decoded pieces, so one tokenizer may serve several threads.
    """

    def __init__(self, vocab: Vocab) -> None:
        self.pre = vocab.pre
        self.tokens = list(vocab.tokens)
        n = len(self.tokens)
        self.token_to_id = dict(zip(self.tokens, range(n)))
        ids = vocab.ids
        self._attr = [_TYPE_TO_ATTR.get(t, 0) for t in vocab.token_types]
        self.bos_id, self.eos_id = ids.get("bos"), ids.get("eos")
        self.pad_id, self.unk_id = ids.get("pad"), ids.get("unk")
        self.eot_id, self.eom_id = ids.get("eot"), ids.get("eom")
        self.add_bos, self.add_eos = vocab.add_bos, vocab.add_eos
        self.eog_ids = self._mark_control_and_eog(ids)
        # the special-token cache: longest text first (byte length, as llama.cpp's std::string size)
        self._specials = sorted(
            (i for i in range(n) if self._attr[i] & (_SPECIAL | _Attr.USER_DEFINED)),
            key=lambda i: -len(self.tokens[i].encode()),
        )
        self._pieces: dict[int, bytes] = {}
        self._hf = tokenizers.Tokenizer(hf_models.BPE(vocab=self.token_to_id, merges=vocab.merges, ignore_merges=False))
        self._hf.pre_tokenizer = _hf_pre_tokenizer(vocab.pre)

    # ---- construction -------------------------------------------------------------------------

    @classmethod
    def from_gguf_fields(cls, fields: Mapping[str, object]) -> Tokenizer:
        """Build from a dict of GGUF metadata keyed by full key names (`tokenizer.ggml.tokens`, ...).

        Values may be lists, numpy arrays, str or bytes. Missing/invalid keys raise ValueError naming
        them (the checks of `read_vocab`).
        """
        return cls(read_vocab(fields))

    def _mark_control_and_eog(self, ids: Mapping[str, int | None]) -> frozenset[int]:
        """Mirror llama.cpp's load-time fix-ups: auto-detect EOT/EOM/FIM ids by text (first match in
        id order; llama.cpp takes its hash-map order), force CONTROL on them and on every EOG-looking
        token, and collect the end-of-generation set."""
        found = {role: ids.get(role) for role in _AUTO_ROLES}
        for role, (_, texts) in _AUTO_ROLES.items():
            if found[role] is None:
                hits = [self.token_to_id[t] for t in texts.split() if t in self.token_to_id]
                if hits:
                    found[role] = min(hits)
                    self._attr[found[role]] |= _Attr.CONTROL
        if self.eot_id is None:
            self.eot_id = found["eot"]
        if self.eom_id is None:
            self.eom_id = found["eom"]
        eog = {found[r] for r in ("fim_pad", "fim_rep", "fim_sep") if found[r] is not None}
        for t in _EOG_TEXTS & self.token_to_id.keys():
            eog.add(self.token_to_id[t])
            self._attr[self.token_to_id[t]] |= _Attr.CONTROL
        eog |= {i for i in (self.eos_id, self.eot_id, self.eom_id) if i is not None}
        return frozenset(eog)

    # ---- encode -------------------------------------------------------------------------------

    @property
    def n_vocab(self) -> int:
        return len(self.tokens)

    def token_type(self, tid: int) -> TokenType:
        """Effective type (after llama.cpp's CONTROL fix-ups) of token `tid`."""
        attr = self._attr[self._check(tid)]
        for tt in (TokenType.CONTROL, TokenType.UNKNOWN, TokenType.USER_DEFINED, TokenType.BYTE, TokenType.NORMAL,
                   TokenType.UNUSED):  # fmt: skip
            if attr & _TYPE_TO_ATTR[tt]:
                return tt
        return TokenType.UNDEFINED

    def is_eog(self, tid: int) -> bool:
        return tid in self.eog_ids

    def pre_tokenize(self, text: str) -> list[str]:
        """The pre-tokenizer pieces of `text` (one raw fragment, no special-token partition)."""
        return pre_tokenize(text, self.pre)

    def partition(self, text: str, parse_special: bool = True) -> list[str | int]:
        """llama.cpp's special-token partition: raw text fragments (str) and special token ids (int)."""
        frags: list[str | int] = [text] if text else []
        for tid in self._specials:
            if not parse_special and self._attr[tid] & _SPECIAL:
                continue
            tok = self.tokens[tid]
            if not any(isinstance(f, str) and tok in f for f in frags):
                continue
            out: list[str | int] = []
            for f in frags:
                if isinstance(f, int) or tok not in f:
                    out.append(f)
                    continue
                for k, part in enumerate(f.split(tok)):  # every occurrence, left to right
                    if k:
                        out.append(tid)
                    if part:
                        out.append(part)
            frags = out
        return frags

    def encode(self, text: str, add_special: bool = True, parse_special: bool = True) -> list[int]:
        """Token ids of `text`. `add_special` adds BOS/EOS when the vocab asks for them (`add_bos_token`);
        `parse_special` lets CONTROL tokens written in the text (`<|im_start|>`) become their ids."""
        ids: list[int] = []
        if add_special and self.add_bos:
            ids.append(self.bos_id)
        for frag in self.partition(text, parse_special):
            if isinstance(frag, int):
                ids.append(frag)
            else:
                ids.extend(self._hf.encode(frag, add_special_tokens=False).ids)
        if add_special and self.add_eos:
            ids.append(self.eos_id)
        return ids

    def encode_batch(self, texts: Sequence[str], parse_special: bool = False) -> list[list[int]]:
        """`encode(text, add_special=False, parse_special)` of many texts at once: the raw fragments
        go through the BPE in one multi-threaded call (corpus preparation)."""
        parts = [self.partition(t, parse_special) for t in texts]
        raw = [f for p in parts for f in p if isinstance(f, str)]
        encoded = iter(self._hf.encode_batch(raw, add_special_tokens=False))
        out = []
        for p in parts:
            ids: list[int] = []
            for frag in p:
                ids.extend([frag] if isinstance(frag, int) else next(encoded).ids)
            out.append(ids)
        return out

    # ---- decode -------------------------------------------------------------------------------

    def _check(self, tid: int) -> int:
        i = operator.index(tid)
        if not 0 <= i < len(self.tokens):
            raise ValueError(f"[tokenizer] token id {i} is out of range for a vocabulary of {len(self.tokens)} tokens")
        return i

    def token_to_piece(self, tid: int, special: bool = True) -> bytes:
        """The bytes token `tid` stands for (may be part of a UTF-8 character). CONTROL/UNKNOWN tokens
        give their text only when `special`."""
        i = self._check(tid)
        attr = self._attr[i]
        if attr & _SPECIAL and not special:
            return b""
        piece = self._pieces.get(i)
        if piece is None:
            text = self.tokens[i]
            if attr & (_SPECIAL | _Attr.USER_DEFINED):
                piece = text.encode()
            elif attr & _Attr.NORMAL:
                piece = _decode_normal(text)
            elif attr & _Attr.BYTE:  # "<0xXX>"
                piece = bytes([int(text[3:5], 16)])
            else:
                piece = b""
            self._pieces[i] = piece
        return piece

    def decode(self, ids: Iterable[int], special: bool = True) -> str:
        """Text of `ids`; invalid UTF-8 (e.g. a cut multi-byte character) becomes U+FFFD."""
        return b"".join(self.token_to_piece(t, special) for t in ids).decode("utf-8", errors="replace")

    def stream(self, special: bool = True) -> StreamDecoder:
        return StreamDecoder(self, special)


class StreamDecoder:
    """Detokenizer for streaming output: push ids one at a time, get back only complete UTF-8 text.

    Bytes of a multi-byte character split across tokens are held until the character is complete;
    `flush()` returns whatever is left (an unfinished character as U+FFFD).
    """

    def __init__(self, tokenizer: Tokenizer, special: bool = True) -> None:
        self._tok = tokenizer
        self._special = special
        self._utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def push(self, tid: int) -> str:
        return self._utf8.decode(self._tok.token_to_piece(tid, self._special))

    def flush(self) -> str:
        return self._utf8.decode(b"", final=True)


def train_byte_bpe(
    texts: Iterable[str],
    vocab_size: int,
    special_tokens: Sequence[str] = (),
    *,
    pre: str = "qwen35",
    bos: str | None = None,
    eos: str | None = None,
    pad: str | None = None,
    hf_path: str | os.PathLike[str] | None = None,
) -> dict[str, object]:
    """Train a byte-level BPE vocabulary and return it as `tokenizer.ggml.*` GGUF fields.
    `hf_path`: also save the trained `tokenizers` model there (its own JSON format), the
    reference a GGUF built from these fields is checked against.

    All 256 byte symbols are in the vocabulary, so any text encodes. Special tokens come first
    (ids 0..) typed CONTROL; `bos`/`eos`/`pad` name which of them fill the id keys. Deterministic
    for the same inputs. The result has at most `vocab_size` tokens (fewer when the corpus runs out
    of pairs to merge).
    """
    specials = list(special_tokens)
    for role, t in (("bos", bos), ("eos", eos), ("pad", pad)):
        if t is not None and t not in specials:
            raise ValueError(f"[train_byte_bpe] {role} token {t!r} is not among special_tokens {specials}")
    if vocab_size <= 256 + len(specials):
        raise ValueError(f"[train_byte_bpe] vocab_size {vocab_size} leaves no room for merges "
                         f"(256 byte symbols + {len(specials)} special tokens)")  # fmt: skip
    hf = tokenizers.Tokenizer(hf_models.BPE())
    hf.pre_tokenizer = _hf_pre_tokenizer(pre)
    trainer = hf_trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=specials,
        initial_alphabet=hf_pre.ByteLevel.alphabet(),
        show_progress=False,
    )
    hf.train_from_iterator(list(texts), trainer=trainer)
    if hf_path is not None:
        hf.save(os.fspath(hf_path))
    model = json.loads(hf.to_str())["model"]
    vocab: dict[str, int] = model["vocab"]
    tokens = sorted(vocab, key=vocab.__getitem__)
    assert [vocab[t] for t in tokens] == list(range(len(tokens))), "trainer ids are not contiguous"
    # tokenizers < 0.20 serializes merges as "a b" strings, newer ones as [a, b] pairs
    merges = [m if isinstance(m, str) else f"{m[0]} {m[1]}" for m in model["merges"]]
    if not merges:
        raise ValueError("[train_byte_bpe] the corpus produced no merges (llama.cpp needs a non-empty merge list)")
    fields: dict[str, object] = {
        _K + "model": "gpt2",
        _K + "pre": pre,
        _K + "tokens": tokens,
        _K + "token_type": [int(TokenType.CONTROL if t in specials else TokenType.NORMAL) for t in tokens],
        _K + "merges": merges,
        _K + "add_bos_token": False,
    }
    for key, t in (("bos_token_id", bos), ("eos_token_id", eos), ("padding_token_id", pad)):
        if t is not None:
            fields[_K + key] = vocab[t]
    return fields
