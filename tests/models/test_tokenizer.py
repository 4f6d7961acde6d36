"""Tokenizer specification: llama.cpp's gpt2 BPE with the Qwen pre-tokenizers.

Hand-built vocabularies put the 256 byte symbols at ids 0..255 (id == byte value), so expected
ids follow by hand; a small trained vocabulary covers round trips and the reference BPE check.
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis_profiles import examples

from graphir.models.tokenizer import (
    BYTE_TO_UNICODE,
    Tokenizer,
    TokenType,
    pre_tokenize,
    train_byte_bpe,
)

K = "tokenizer.ggml."
BYTES = [BYTE_TO_UNICODE[b] for b in range(256)]
CORPUS = [
    "def encode(self, text: str) -> list[int]:\n    return [ord(c) for c in text]  # 12345\n",
    "The quick brown fox jumps over the lazy dog. It's 2024; we'll see, they're sure.\n\n",
    "Unicode: café, naïve, e\u0301, 你好，世界！ 😀👍🏽 Привет мир. ١٢٣ \t tabs\r\n",
    "    indented code {\n        x = y * 2;\n    }\n" * 3,
]
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<think>"]


def byte_vocab(merges: list[str], extra: dict[str, TokenType] | None = None, **kv: object) -> Tokenizer:
    """256 byte symbols (id == byte), then one token per merge result, then `extra` tokens."""
    extra = extra or {}
    tokens = BYTES + [m.replace(" ", "") for m in merges] + list(extra)
    types = [TokenType.NORMAL] * (256 + len(merges)) + list(extra.values())
    fields = {K + "model": "gpt2", K + "pre": "qwen35", K + "tokens": tokens, K + "token_type": types,
              K + "merges": merges, **{K + k: v for k, v in kv.items()}}  # fmt: skip
    return Tokenizer.from_gguf_fields(fields)


@pytest.fixture(scope="module")
def fields() -> dict[str, object]:
    return train_byte_bpe(CORPUS, 400, SPECIALS, bos="<|endoftext|>", eos="<|im_end|>")


@pytest.fixture(scope="module")
def tok(fields: dict[str, object]) -> Tokenizer:
    types = list(fields[K + "token_type"])
    types[fields[K + "tokens"].index("<think>")] = TokenType.USER_DEFINED  # as Qwen's <think> is typed
    return Tokenizer.from_gguf_fields({**fields, K + "token_type": types})


def test_gpt2_byte_table() -> None:
    assert len(set(BYTES)) == 256
    assert all(BYTE_TO_UNICODE[b] == chr(b) for b in range(0x21, 0x7F))
    assert BYTE_TO_UNICODE[ord(" ")] == "\u0120" and BYTE_TO_UNICODE[ord("\n")] == "\u010a"
    assert BYTE_TO_UNICODE[0xAD] == "\u0143"  # last of the 68 remapped bytes


@pytest.mark.parametrize(
    ("text", "pieces"),
    [
        ("Hello world", ["Hello", " world"]),
        ("I'm DON'T they'LL", ["I", "'m", " DON", "'T", " they", "'LL"]),
        ("abc123", ["abc", "1", "2", "3"]),
        ("x = 1;\n", ["x", " =", " ", "1", ";\n"]),
        ("a\n\nb", ["a", "\n\n", "b"]),
        ("  x", [" ", " x"]),
        ("\t\tfoo", ["\t", "\tfoo"]),
        ("hi   ", ["hi", "   "]),
        (" \n  \n y", [" \n  \n", " y"]),
        ("...!?\n\n", ["...!?\n\n"]),
        ("(x)", ["(x", ")"]),
        ("e\u0301te caf\u00e9", ["e\u0301te", " caf\u00e9"]),
        ("\u0301abc", ["\u0301abc"]),
        ("你好，世界！", ["你好", "，世界", "！"]),
        ("😀👍🏽 ok", ["😀👍🏽", " ok"]),
        ("a\u00a0\u00a0b", ["a", "\u00a0", "\u00a0b"]),
        ("", []),
    ],
)
def test_pre_tokenizer_splits(text: str, pieces: list[str]) -> None:
    assert pre_tokenize(text, "qwen35") == pieces


def test_qwen35_keeps_combining_marks_qwen2_does_not() -> None:
    assert pre_tokenize("e\u0301t", "qwen35") == ["e\u0301t"]
    assert pre_tokenize("e\u0301t", "qwen2") == ["e", "\u0301t"]  # the mark is only the optional prefix
    assert pre_tokenize("e\u0301.", "qwen2") == ["e", "\u0301."]


def test_digits_are_split_one_by_one() -> None:
    assert pre_tokenize("2024 x10", "qwen35") == ["2", "0", "2", "4", " x", "1", "0"]
    tk = byte_vocab(["1 2", "a b"])  # a merge across digits must never apply
    assert tk.encode("12") == [ord("1"), ord("2")]
    assert tk.encode("ab") == [257]


def test_merges_apply_in_rank_order() -> None:
    # "abc": rank 0 joins b+c, then "a bc" (rank 2) makes "abc" = id 258
    assert byte_vocab(["b c", "a b", "a bc"]).encode("abc") == [258]
    # swapped ranks: "a b" first leaves [ab, c]; there is no "ab c" merge
    assert byte_vocab(["a b", "b c", "a bc"]).encode("abc") == [256, ord("c")]
    # equal ranks: the leftmost pair wins
    assert byte_vocab(["a a"]).encode("aaa") == [256, ord("a")]
    assert byte_vocab(["a a"]).encode("aaaa") == [256, 256]
    # merges work on GPT-2 symbols: space is "Ġ"
    assert byte_vocab(["\u0120 a"]).encode(" a a") == [256, 256]


def reference_bpe(tk: Tokenizer, merges: list[str], text: str) -> list[int]:
    """Naive BPE: per pre-token, merge the lowest-rank adjacent pair (leftmost on ties) until none is left."""
    ranks = {tuple(m.split(" ", 1)): r for r, m in enumerate(merges)}
    ids: list[int] = []
    for piece in pre_tokenize(text, "qwen35"):
        syms = [BYTE_TO_UNICODE[b] for b in piece.encode()]
        while len(syms) > 1:
            rank, i = min((ranks.get((syms[i], syms[i + 1]), len(ranks)), i) for i in range(len(syms) - 1))
            if rank == len(ranks):
                break
            syms[i : i + 2] = [syms[i] + syms[i + 1]]
        ids += [tk.token_to_id[s] for s in syms]
    return ids


TEXT = st.text(
    st.sampled_from(list("abcdeftsSR '\n\t\r0123.,;!{}()=_") + ["é", "\u0301", "你", "😀", "\u00a0", "\u2003", "\x1c"]),
    max_size=40,
)


@settings(max_examples=examples(60))
@given(TEXT)
def test_bpe_matches_reference(tok: Tokenizer, fields: dict[str, object], text: str) -> None:
    assert tok.encode(text, parse_special=False) == reference_bpe(tok, fields[K + "merges"], text)


@pytest.mark.parametrize(
    "text",
    [
        "Hello, world!",
        "def f(x):\n    return x ** 2  # square\n\n\tpass\r\n",
        "café naïve Привет 你好，世界 ١٢٣",
        "emoji 😀👍🏽👨‍👩‍👧 ✓",
        "combining: e\u0301 a\u0308\u0301 \u0301lone",
        "   leading, trailing   \n\n\n   \t \u00a0\u2003",
        "digits 0123456789 3.14159 1e-10",
        "",
    ],
)
def test_round_trip(tok: Tokenizer, text: str) -> None:
    assert tok.decode(tok.encode(text)) == text
    assert tok.decode(tok.encode(text, parse_special=False)) == text


@settings(max_examples=examples(60))
@given(st.text(max_size=60))
def test_round_trip_any_text(tok: Tokenizer, text: str) -> None:
    assert tok.decode(tok.encode(text)) == text


def test_special_tokens_parsed_when_parse_special(tok: Tokenizer) -> None:
    start, end = tok.token_to_id["<|im_start|>"], tok.token_to_id["<|im_end|>"]
    text = "<|im_start|>user\nhi<|im_end|>"
    ids = tok.encode(text)
    assert ids[0] == start and ids[-1] == end
    assert ids[1:-1] == tok.encode("user\nhi")
    plain = tok.encode(text, parse_special=False)
    assert start not in plain and end not in plain
    assert tok.decode(plain) == text
    # CONTROL pieces show only with special=True
    assert tok.decode(ids) == text
    assert tok.decode(ids, special=False) == "user\nhi"


def test_user_defined_tokens_always_matched(tok: Tokenizer) -> None:
    think = tok.token_to_id["<think>"]
    assert tok.token_type(think) == TokenType.USER_DEFINED
    for parse_special in (True, False):
        assert tok.encode("<think>x</think>", parse_special=parse_special)[0] == think
    assert tok.decode([think], special=False) == "<think>"


def test_longest_special_token_first() -> None:
    # llama.cpp partitions longest-first: "bcd" wins over the leftmost "ab" in "abcd"
    tk = byte_vocab(["x y"], {"ab": TokenType.CONTROL, "bcd": TokenType.CONTROL})
    assert tk.encode("abcd") == [ord("a"), 258]
    assert tk.encode("ab bcd ab") == [257, ord(" "), 258, ord(" "), 257]
    assert tk.encode("abcd", parse_special=False) == [ord(c) for c in "abcd"]


def test_eog_looking_tokens_become_control() -> None:
    extra = {"<|im_end|>": TokenType.NORMAL, "<|fim_pad|>": TokenType.NORMAL, "</s>": TokenType.NORMAL}
    tk = byte_vocab(["a b"], extra)
    im_end, fim_pad, eos = 257, 258, 259
    assert all(tk.token_type(i) == TokenType.CONTROL for i in (im_end, fim_pad, eos))
    assert all(tk.is_eog(i) for i in (im_end, fim_pad, eos)) and not tk.is_eog(256)
    assert tk.eot_id == im_end  # auto-detected by text when the key is absent
    assert tk.encode("<|im_end|></s>") == [im_end, eos]
    assert im_end not in tk.encode("<|im_end|>", parse_special=False)


def test_bos_eos_flags() -> None:
    tk = byte_vocab(["a b"], {"<s>": TokenType.CONTROL}, bos_token_id=257, add_bos_token=True)
    assert tk.encode("ab") == [257, 256]
    assert tk.encode("ab", add_special=False) == [256]
    assert byte_vocab(["a b"]).encode("ab") == [256]  # Qwen: no BOS


def test_stream_decoder_holds_partial_utf8() -> None:
    tk = byte_vocab(["a b"])
    stream = tk.stream()
    assert [stream.push(b) for b in "é".encode()] == ["", "é"]
    assert [stream.push(b) for b in "😀".encode()] == ["", "", "", "😀"]
    assert stream.push(ord("a")) == "a"
    assert stream.push(0xE4) == "" and stream.flush() == "\ufffd"  # an unfinished character at the end


def test_stream_decoder_matches_decode(tok: Tokenizer) -> None:
    text = "<|im_start|>naïve 你好 😀👍🏽 e\u0301<|im_end|>"
    ids = tok.encode(text)
    stream = tok.stream()
    parts = [stream.push(i) for i in ids] + [stream.flush()]
    assert "".join(parts) == text
    assert all("\ufffd" not in p for p in parts)


def test_token_to_piece() -> None:
    tk = byte_vocab(["\u0120 a"], {"<|im_start|>": TokenType.CONTROL, "x\u20ac": TokenType.NORMAL})
    assert tk.token_to_piece(256) == b" a"
    assert tk.token_to_piece(257) == b"<|im_start|>" and tk.token_to_piece(257, special=False) == b""
    # a character outside the GPT-2 table gets llama.cpp's marker with the token's text
    assert tk.token_to_piece(258) == b"x[UNK_BYTE_0xe282acx\xe2\x82\xac]"


def test_bad_ids_raise(tok: Tokenizer) -> None:
    n = tok.n_vocab
    for bad in (n, -1):
        with pytest.raises(ValueError, match=rf"token id {bad} .* {n} tokens"):
            tok.decode([1, bad])
    with pytest.raises(ValueError, match=rf"token id {n}"):
        tok.stream().push(n)


def test_bad_fields_raise(fields: dict[str, object]) -> None:
    for key, value, message in [
        ("model", "llama", "tokenizer.ggml.model"),
        ("pre", "gpt-4o", "tokenizer.ggml.pre"),
        ("merges", [], "tokenizer.ggml.merges"),
        ("merges", ["a zz"], r"merges\[0\]"),
        ("token_type", [1], "token_type"),
        ("tokens", [*BYTES, "a"], "duplicate token"),
    ]:
        with pytest.raises(ValueError, match=message):
            Tokenizer.from_gguf_fields({**fields, K + key: value})


def test_trained_vocab(fields: dict[str, object]) -> None:
    again = train_byte_bpe(CORPUS, 400, SPECIALS, bos="<|endoftext|>", eos="<|im_end|>")
    assert again == fields
    tokens, types = fields[K + "tokens"], fields[K + "token_type"]
    assert len(tokens) == 400 and tokens[: len(SPECIALS)] == SPECIALS
    assert set(BYTES) <= set(tokens)
    assert types[: len(SPECIALS)] == [TokenType.CONTROL] * len(SPECIALS)
    assert set(types[len(SPECIALS) :]) == {TokenType.NORMAL}
    assert len(fields[K + "merges"]) == 400 - 256 - len(SPECIALS)
    assert (fields[K + "model"], fields[K + "pre"]) == ("gpt2", "qwen35")
    assert fields[K + "bos_token_id"] == 0 and fields[K + "eos_token_id"] == 2
    with pytest.raises(ValueError, match="vocab_size"):
        train_byte_bpe(CORPUS, 256, [])
