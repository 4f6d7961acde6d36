"""Corrupted GGUF files: every one is refused with a GGUFError naming what is wrong, or loads and
decodes with finite logits (or is stopped by the non-finite guard). Nothing hangs, allocates
much or raises anything else.

The seeded generator is graphir.tools.gguf_mutate (`corrupt(kind, seed)`, the kinds in KINDS: byte
flips, truncations, huge counts, hyperparameters, offsets, alignment, type swaps, dims, counts,
vocabulary damage, key types, tensor names, weight values): one variant per kind in the ci
profile, the thorough profile's count per kind otherwise, each under a per-case time limit. Then
one regression test per defect of issue 18, through both `graphir inspect` and `Model.load`.
"""

from __future__ import annotations

import math
import signal
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis_profiles import examples

from graphir.models.gguf import GGUFError
from graphir.models.model import Model
from graphir.tools import fuzz_gguf as fz
from graphir.tools import gguf_mutate as gm
from graphir.tools.inspect_cmd import run_inspect

CASE_SECONDS = 20.0
CORPUS = Path(__file__).resolve().parents[1] / "data" / "gguf_corpus"


@contextmanager
def time_limit(seconds: float) -> Iterator[None]:
    """TimeoutError in this (the main) thread after `seconds`."""

    def expire(signum: int, frame: object) -> None:
        raise TimeoutError(f"the case ran for more than {seconds} s")

    old = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


@pytest.mark.parametrize("kind", gm.KINDS)
@settings(max_examples=examples(1))
@given(seed=st.integers(0, 2**32 - 1))
def test_a_corrupted_file_is_refused_by_name_or_runs_finite(tmp_path_factory, kind: str, seed: int) -> None:
    v = gm.corrupt(kind, seed)
    path = tmp_path_factory.mktemp("corrupt") / f"{kind}-{seed}.gguf"
    path.write_bytes(v.data)
    with time_limit(CASE_SECONDS):
        r = fz.check_file(path, v.names)
    assert r.outcome not in fz.BAD, f"{kind} seed {seed} ({v.what}): {r.outcome}: {r.message}"


# --------------------------------------------------------------------------------------------
# helpers: one change to the base file, then both entry points
# --------------------------------------------------------------------------------------------


def variant(tmp_path: Path, change: Callable[[gm.RawGGUF], object], base: str = "dense-f32") -> Path:
    raw = gm.RawGGUF.parse(gm.base_file(base))
    change(raw)
    path = tmp_path / "bad.gguf"
    path.write_bytes(raw.to_bytes())
    return path


def refused(path: Path, capsys: pytest.CaptureFixture[str], *fragments: str) -> str:
    """Both `graphir inspect` and Model.load refuse `path`; the message names every fragment."""
    assert run_inspect(str(path)) == 2
    printed = capsys.readouterr().err
    with pytest.raises(GGUFError) as e:
        Model.load(path)
    msg = str(e.value)
    assert f"INVALID: {msg}" in printed, "inspect and load give the same verdict"
    assert str(path) in msg and all(f in msg for f in fragments), msg
    return msg


def accepted(path: Path, capsys: pytest.CaptureFixture[str]) -> Model:
    assert run_inspect(str(path)) == 0, capsys.readouterr().out
    capsys.readouterr()
    return Model.load(path)


def info(raw: gm.RawGGUF, name: str) -> gm.Info:
    return next(i for i in raw.infos if i.name == name)


def set_key(raw: gm.RawGGUF, key: str, value: object, vtype: int = gm.U32, itype: int = 0) -> None:
    kv = raw.key(key)
    if kv is None:
        raw.kvs.append(gm.KV(key, vtype, value, itype))
    else:
        kv.vtype, kv.value, kv.itype = vtype, value, itype


def test_the_corpus_and_the_mutator(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The atheris corpus holds valid files; a structure-aware mutation parses and writes back."""
    files = sorted(CORPUS.glob("*.gguf"))
    assert [f.stem for f in files] == sorted(gm.BASES)
    for f in files:
        accepted(f, capsys)
        assert gm.RawGGUF.parse(f.read_bytes()).to_bytes() == f.read_bytes()
    data = files[0].read_bytes()
    outs = {gm.mutate_structure(data, seed) for seed in range(20)}
    assert len(outs - {None, data}) >= 10
    assert gm.mutate_structure(b"not a gguf file", 0) is None


# --------------------------------------------------------------------------------------------
# issue 18, defect 1: a huge block_count (hang + unbounded memory)
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("block_count", [513, 10**6, 2**32 - 1])
@pytest.mark.parametrize("trunk_tensors", [True, False])
def test_a_huge_block_count_is_refused_at_once(tmp_path: Path, capsys: pytest.CaptureFixture[str], block_count: int,
                                               trunk_tensors: bool) -> None:  # fmt: skip
    def change(raw: gm.RawGGUF) -> None:
        set_key(raw, "qwen35.block_count", block_count)
        if not trunk_tensors:  # no numbered blocks at all: the MTP-only check looped 4e9 times
            raw.infos = [i for i in raw.infos if not str(i.name).startswith("blk.")]
            raw.relayout(32)

    path = variant(tmp_path, change)
    t0 = time.perf_counter()
    refused(path, capsys, "qwen35.block_count must be at most 512", str(block_count))
    assert time.perf_counter() - t0 < 5


# --------------------------------------------------------------------------------------------
# defect 2: tensor data layout
# --------------------------------------------------------------------------------------------

SECOND = "output_norm.weight"  # the second tensor of the base file; token_embd.weight is the first


def _shift(name: str, by: int) -> Callable[[gm.RawGGUF], None]:
    return lambda raw: setattr(info(raw, name), "offset", info(raw, name).offset + by)


@pytest.mark.parametrize(
    ("change", "fragments"),
    [
        (lambda raw: setattr(info(raw, SECOND), "offset", 0), (f"tensor {SECOND} has offset 0, expected 512",)),
        (_shift(SECOND, 4), (f"tensor {SECOND} has offset 516, expected 512",)),  # misaligned
        (_shift(SECOND, 32), (f"tensor {SECOND} has offset 544, expected 512",)),  # into the next tensor
        # a type whose bytes do not fit the space before the next tensor: F64 (8 bytes) for F32
        (lambda raw: setattr(info(raw, "token_embd.weight"), "type_id", 28), (f"tensor {SECOND} has offset 512",)),
        (lambda raw: setattr(raw, "n_tensors", len(raw.infos) - 1), ("belong to no tensor", "tensor count")),
        (lambda raw: setattr(raw, "n_tensors", len(raw.infos) + 1), ("tensor",)),
        (lambda raw: set_key(raw, "general.alignment", 1), ("belong to no tensor", "general.alignment = 1")),
        (lambda raw: set_key(raw, "general.alignment", 64), ("general.alignment = 64",)),
        (lambda raw: set_key(raw, "general.alignment", 0), ("general.alignment must be a UINT32 non-zero power of two",)),
        (lambda raw: set_key(raw, "general.alignment", 48), ("general.alignment must be", "48")),
        (lambda raw: set_key(raw, "general.alignment", 32, gm.U64), ("general.alignment must be", "UINT64")),
        (lambda raw: setattr(info(raw, SECOND), "n_dims_override", 5), (f"tensor {SECOND} has 5 dims",)),
        (lambda raw: setattr(info(raw, SECOND), "name", "blk.0." + "x" * 60), ("at most 63",)),
        (lambda raw: setattr(raw.key("tokenizer.ggml.tokens"), "n_override", 2**63), ("runs past the end",)),
        (lambda raw: setattr(raw, "n_kv", 2**40), ("keys (key count)",)),
    ],
    ids=["overlap", "misaligned", "shifted", "type-too-big", "count-1", "count+1", "align-1", "align-64", "align-0",
         "align-48", "align-u64", "n_dims", "long-name", "array-length", "key-count"],
)  # fmt: skip
def test_a_bad_data_layout_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str], change, fragments) -> None:
    msg = refused(variant(tmp_path, change), capsys)
    assert any(f in msg for f in fragments), msg


@pytest.mark.parametrize("alignment", [1, 8, 64, 256])
def test_a_consistent_layout_with_another_alignment_loads(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                          alignment: int) -> None:  # fmt: skip
    path = variant(tmp_path, lambda raw: raw.relayout(alignment))
    assert accepted(path, capsys).weights.file.alignment == alignment
    assert fz.check_file(path).outcome == "loaded, finite"


# --------------------------------------------------------------------------------------------
# defect 3: hyperparameters out of range (every logit NaN before)
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("key", ["rope.freq_base", "attention.layer_norm_rms_epsilon"])
@pytest.mark.parametrize("value", [math.nan, 0.0, -1.0, math.inf, -math.inf])
def test_a_non_finite_or_non_positive_float_key_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                           key: str, value: float) -> None:  # fmt: skip
    path = variant(tmp_path, lambda raw: set_key(raw, f"qwen35.{key}", value, gm.F32))
    refused(path, capsys, f"qwen35.{key} must be a finite number > 0")


@pytest.mark.parametrize(
    ("key", "value", "fragment"),
    [
        ("ssm.state_size", 5, "qwen35.ssm.inner_size must be qwen35.ssm.state_size * qwen35.ssm.time_step_rank"),
        ("attention.head_count_kv", 3, "qwen35.attention.head_count_kv must divide qwen35.attention.head_count=2"),
        ("attention.key_length", 8, "qwen35.attention.key_length (8) must equal"),
        ("embedding_length", 2**24 + 1, "qwen35.embedding_length must be a positive integer (at most 16777216)"),
        ("full_attention_interval", 0, "qwen35.full_attention_interval must be"),
    ],
)
def test_inconsistent_head_and_state_sizes_are_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str], key: str,
                                                       value: int, fragment: str) -> None:  # fmt: skip
    refused(variant(tmp_path, lambda raw: set_key(raw, f"qwen35.{key}", value)), capsys, fragment)


# --------------------------------------------------------------------------------------------
# defects 5 and 8: the vocabulary; inspect and load agree, and only GGUFError comes out
# --------------------------------------------------------------------------------------------


def _tokens(raw: gm.RawGGUF) -> list:
    return raw.key("tokenizer.ggml.tokens").value


VOCAB_CASES: dict[str, tuple[Callable[[gm.RawGGUF], object], str | None]] = {
    "duplicate token": (lambda raw: _tokens(raw).__setitem__(3, "a"), "duplicate token 'a' has ids 0 and 3"),
    "duplicate of an empty token": (lambda raw: _tokens(raw).__setitem__(3, "[EMPTY_4]") or
                                    _tokens(raw).__setitem__(4, ""), "duplicate token '[EMPTY_4]'"),
    "empty token (renamed, as llama.cpp)": (lambda raw: _tokens(raw).__setitem__(3, ""), None),
    "merge of a missing token": (lambda raw: raw.key("tokenizer.ggml.merges").value.__setitem__(0, "q r"),
                                 "merges[0] = 'q r'"),
    "merge making a missing token": (lambda raw: raw.key("tokenizer.ggml.merges").value.__setitem__(1, "a c"),
                                     "merges[1] = 'a c'"),
    "BYTE token not <0xNN>": (lambda raw: raw.key("tokenizer.ggml.token_type").value.__setitem__(2, 6),
                              "tokens[2] = 'c' has type BYTE"),
    "BYTE token <0x0G>": (lambda raw: _tokens(raw).__setitem__(9, "<0x0G>"), "tokens[9] = '<0x0G>'"),
    "fim_pad id inf": (lambda raw: set_key(raw, "tokenizer.ggml.fim_pad_token_id", math.inf, gm.F32),
                       "tokenizer.ggml.fim_pad_token_id has type FLOAT32; expected UINT32"),
    "separator id an array": (lambda raw: set_key(raw, "tokenizer.ggml.seperator_token_id", [1, 2], gm.ARRAY, gm.U32),
                              "tokenizer.ggml.seperator_token_id has type ARRAY[UINT32]"),
    "mask id a float64": (lambda raw: set_key(raw, "tokenizer.ggml.mask_token_id", 1.0, gm.F64),
                          "tokenizer.ggml.mask_token_id has type FLOAT64"),
    "eom id out of range (ignored, as llama.cpp)": (lambda raw: set_key(raw, "tokenizer.ggml.eom_token_id", 99), None),
    "bos id out of range": (lambda raw: set_key(raw, "tokenizer.ggml.bos_token_id", 2**32 - 1),
                            "tokenizer.ggml.bos_token_id=4294967295 is out of range"),
    "add_bos_token a string": (lambda raw: set_key(raw, "tokenizer.ggml.add_bos_token", "false", gm.STRING),
                               "tokenizer.ggml.add_bos_token has type STRING; expected BOOL"),
    "pre missing": (lambda raw: raw.kvs.remove(raw.key("tokenizer.ggml.pre")), "tokenizer.ggml.pre = None"),
    "pre unknown": (lambda raw: set_key(raw, "tokenizer.ggml.pre", "gpt-4o", gm.STRING), "'gpt-4o' is not supported"),
    "token not UTF-8": (lambda raw: _tokens(raw).__setitem__(3, b"\xff"), "not UTF-8"),
    "token_type of floats": (lambda raw: set_key(raw, "tokenizer.ggml.token_type", [1.0] * 16, gm.ARRAY, gm.F32),
                             "tokenizer.ggml.token_type has type ARRAY[FLOAT32]"),
    "token_type too short": (lambda raw: raw.key("tokenizer.ggml.token_type").value.pop(), "has 15 entries"),
    "scores too long": (lambda raw: set_key(raw, "tokenizer.ggml.scores", [0.0] * 17, gm.ARRAY, gm.F32),
                        "tokenizer.ggml.scores has 17 entries"),
}  # fmt: skip


@pytest.mark.parametrize("case", VOCAB_CASES)
def test_inspect_and_load_agree_on_the_vocabulary(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                  case: str) -> None:  # fmt: skip
    change, fragment = VOCAB_CASES[case]
    path = variant(tmp_path, change)
    if fragment is None:
        model = accepted(path, capsys)
        assert model.tokenizer.decode(range(model.n_vocab))
    else:
        refused(path, capsys, fragment)


def test_a_byte_token_decodes_to_its_byte(capsys: pytest.CaptureFixture[str]) -> None:
    model = accepted(CORPUS / "dense-f32.gguf", capsys)
    assert model.tokenizer.token_to_piece(9) == b"\n"  # <0x0A>, typed BYTE
