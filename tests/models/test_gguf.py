"""GGUF reading, validation and writing for Qwen3.5 (dense and MoE).

A tiny random model is written with our writer, read back and validated; then a table of
mutations (missing keys, wrong key types, renamed / misshaped / mistyped tensors, truncated
files, bad magic/version, unknown architectures, bad rope sections, ...) each has to produce
its own GGUFError naming what is wrong. The tokenizer fields are a synthetic byte-level vocab.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import numpy as np
import pytest

from graphir.models.archs import tensor_groups, validate
from graphir.models.gguf import GGUFError, load_gguf
from graphir.models.gguf_write import GGUFContents, qwen35_contents, random_qwen35, write_gguf, write_qwen35
from graphir.models.hparams import HParamsError, Qwen35HParams, required_keys
from graphir.tools.inspect_cmd import run_inspect
from graphir.types import DType, row_size

# --------------------------------------------------------------------------------------------
# fixtures: a synthetic byte-level vocab and tiny hparams
# --------------------------------------------------------------------------------------------


def gpt2_byte_chars() -> list[str]:
    """GPT-2's printable stand-ins for the 256 bytes (bytes_to_unicode), in byte order."""
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    chars, extra = {}, 0
    for b in range(256):
        if b in keep:
            chars[b] = chr(b)
        else:
            chars[b] = chr(256 + extra)
            extra += 1
    return [chars[b] for b in range(256)]


MERGES = ["Ġ t", "h e", "Ġt he"]
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]


def tiny_tokenizer() -> dict:
    tokens = gpt2_byte_chars() + ["Ġt", "he", "Ġthe"] + SPECIALS
    types = [1] * (len(tokens) - len(SPECIALS)) + [3] * len(SPECIALS)  # NORMAL, CONTROL
    eot = tokens.index("<|endoftext|>")
    return {
        "tokens": tokens,
        "token_type": types,
        "merges": MERGES,
        "bos_token_id": eot,
        "eos_token_id": tokens.index("<|im_end|>"),
        "padding_token_id": eot,
        "add_bos_token": False,
    }


N_VOCAB = len(tiny_tokenizer()["tokens"])

DENSE = Qwen35HParams(
    arch="qwen35", n_vocab=N_VOCAB, n_ctx_train=256, n_embd=64, block_count=5, n_ff=96,
    n_head=4, n_head_kv=2, head_dim_k=16, head_dim_v=16, rms_eps=1e-6, n_rot=8, rope_sections=(2, 1, 1, 0),
    rope_freq_base=10_000_000.0, ssm_d_conv=4, ssm_d_inner=64, ssm_d_state=16, ssm_dt_rank=4, ssm_n_group=2,
    full_attention_interval=2, nextn_predict_layers=1,
)  # fmt: skip
MOE = dataclasses.replace(DENSE, arch="qwen35moe", n_expert=4, n_expert_used=2, n_ff_exp=32, n_ff_shexp=48)


def write_model(path: Path, hp: Qwen35HParams = DENSE, seed: int = 0, **kw) -> dict:
    tensors = random_qwen35(hp, seed, **kw)
    write_qwen35(path, hp, tensors, tiny_tokenizer(), name="tiny")
    return tensors


def contents(hp: Qwen35HParams = DENSE) -> GGUFContents:
    return qwen35_contents(hp, random_qwen35(hp, 0), tiny_tokenizer())


def expect_error(tmp_path: Path, c: GGUFContents, *fragments: str) -> str:
    path = tmp_path / "bad.gguf"
    write_gguf(path, c)
    with pytest.raises(GGUFError) as e:
        validate(load_gguf(path))
    msg = str(e.value)
    assert str(path) in msg
    for frag in fragments:
        assert frag in msg, f"{frag!r} not in {msg!r}"
    return msg


# --------------------------------------------------------------------------------------------
# hparams
# --------------------------------------------------------------------------------------------


def test_layer_pattern_and_derived_dims() -> None:
    hp = DENSE
    assert hp.n_layer_trunk == 4
    assert [hp.is_recurrent(il) for il in range(5)] == [True, False, True, False, False]  # block 4 is MTP
    assert [hp.is_nextn(il) for il in range(5)] == [False] * 4 + [True]
    assert (hp.ssm_d_inner, hp.ssm_d_state, hp.S_v, hp.ssm_n_group) == (64, 16, 16, 2)
    assert (hp.H_k, hp.ssm_dt_rank, hp.H_v) == (2, 4, 4)
    assert hp.conv_channels == 64 + 2 * 2 * 16 == hp.key_dim * 2 + hp.value_dim
    assert (hp.n_embd_q, hp.n_embd_k_gqa, hp.n_embd_v_gqa, hp.d_conv) == (64, 32, 32, 4)
    assert (MOE.ff_exp, MOE.ff_shexp) == (32, 48)
    # llama.cpp's fallbacks for the expert widths
    fallback = dataclasses.replace(MOE, n_ff_exp=0, n_ff_shexp=0)
    assert (fallback.ff_exp, fallback.ff_shexp) == (96 // 2, 96)
    with pytest.raises(IndexError):
        hp.is_recurrent(5)


@pytest.mark.parametrize(
    ("change", "fragment"),
    [
        ({"rope_sections": (2, 2, 1, 0)}, "rope.dimension_sections must sum to qwen35.rope.dimension_count / 2 = 4"),
        ({"ssm_d_inner": 48}, "ssm.inner_size must be"),
        ({"ssm_n_group": 3}, "ssm.group_count"),
        ({"n_head_kv": 3}, "head_count_kv"),
        ({"head_dim_v": 8}, "value_length"),
        ({"n_rot": 32, "rope_sections": (8, 4, 4, 0)}, "rope.dimension_count"),
        ({"nextn_predict_layers": 5}, "nextn_predict_layers"),
        ({"rms_eps": 0.0}, "layer_norm_rms_epsilon"),
        ({"n_ff": 0}, "feed_forward_length"),
    ],
)
def test_hparams_consistency_errors(change: dict, fragment: str) -> None:
    with pytest.raises(HParamsError) as e:
        dataclasses.replace(DENSE, **change)
    assert fragment in str(e.value)


def test_moe_needs_expert_counts() -> None:
    with pytest.raises(HParamsError, match="expert_used_count"):
        dataclasses.replace(MOE, n_expert_used=5)
    with pytest.raises(HParamsError, match="expert_feed_forward_length"):
        dataclasses.replace(MOE, n_ff_exp=0, n_ff=0)


# --------------------------------------------------------------------------------------------
# round trip
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("hp", "kw"),
    [
        (DENSE, {}),
        (MOE, {}),
        (DENSE, {"tied_output": True}),
        (dataclasses.replace(DENSE, nextn_predict_layers=0, block_count=4), {}),
        (DENSE, {"dtype": DType.F16}),
        (MOE, {"dtype": DType.BF16}),
    ],
    ids=["dense", "moe", "tied", "no-mtp", "f16", "moe-bf16"],
)
def test_round_trip(tmp_path: Path, hp: Qwen35HParams, kw: dict) -> None:
    path = tmp_path / "m.gguf"
    tensors = write_model(path, hp, **kw)
    f = load_gguf(path)
    assert validate(f) == hp
    assert f.arch == hp.arch and f.version == 3
    assert f.metadata["general.name"] == "tiny"
    tok = tiny_tokenizer()
    assert f.metadata["tokenizer.ggml.tokens"] == tok["tokens"]
    assert f.metadata["tokenizer.ggml.merges"] == MERGES
    assert f.metadata["tokenizer.ggml.model"] == "gpt2" and f.metadata["tokenizer.ggml.pre"] == "qwen35"
    assert f.kv_types[f"{hp.arch}.block_count"] == "UINT32"
    assert f.kv_types[f"{hp.arch}.rope.dimension_sections"] == "ARRAY[INT32]"
    table_order = [s.name for g in tensor_groups(hp) for o in g.options for s in o]
    assert list(f.tensors) == [n for n in table_order if n in tensors]  # written in the table's order
    assert set(f.tensors) == set(tensors)
    assert ("output.weight" in f.tensors) == (not kw.get("tied_output", False))
    for name, (t, data) in tensors.items():
        info = f.tensors[name]
        assert info.dtype == t, name
        np.testing.assert_array_equal(info.data, np.ascontiguousarray(data).view(np.uint8).reshape(-1), err_msg=name)
        assert isinstance(info.data.base, np.memmap) or isinstance(info.data, np.memmap)
    # typed views follow graphir's layout: (ne3, ne2, ne1, ne0)
    emb = f.tensors["token_embd.weight"]
    assert emb.ne == (64, N_VOCAB)
    assert emb.array().shape == (1, 1, N_VOCAB, 64)


@pytest.mark.parametrize("hp", [DENSE, MOE], ids=["dense", "moe"])
def test_parser_matches_gguf_reader(tmp_path: Path, hp: Qwen35HParams) -> None:
    """Our bounds-checked parser reads exactly what the gguf package's GGUFReader reads."""
    path = tmp_path / "m.gguf"
    write_model(path, hp, dtype=DType.F16)
    ours, theirs = load_gguf(path), load_gguf(path, use_gguf_reader=True)
    assert ours.metadata == theirs.metadata
    assert ours.kv_types == theirs.kv_types
    assert list(ours.tensors) == list(theirs.tensors)
    for name, a in ours.tensors.items():
        b = theirs.tensors[name]
        assert (a.type_id, a.type_name, a.ne, a.offset, a.nbytes) == (b.type_id, b.type_name, b.ne, b.offset, b.nbytes)
        np.testing.assert_array_equal(a.data, b.data)
    assert validate(theirs) == hp


def test_random_model_is_deterministic_and_scaled() -> None:
    a, b, c = random_qwen35(DENSE, 1), random_qwen35(DENSE, 1), random_qwen35(DENSE, 2)
    assert all(np.array_equal(a[n][1], b[n][1]) for n in a)
    assert not np.array_equal(a["blk.0.ssm_out.weight"][1], c["blk.0.ssm_out.weight"][1])
    ssm_a = np.concatenate([a[f"blk.{il}.ssm_a"][1] for il in (0, 2)])
    assert (ssm_a < 0).all()
    norm = a["blk.1.attn_q_norm.weight"][1]
    assert abs(norm.mean() - 1) < 0.1
    # a matrix-vector product of N(0,1) input stays O(1)
    x = np.random.default_rng(0).normal(size=64).astype(np.float32)
    y = a["blk.0.ffn_up.weight"][1] @ x
    assert 0.3 < y.std() < 3
    # 1-D tensors, ssm_conv1d and the router stay F32 whatever the weight type
    f16 = random_qwen35(MOE, 0, DType.F16)
    assert f16["blk.0.ssm_conv1d.weight"][0] == DType.F32
    assert f16["blk.0.ffn_gate_inp.weight"][0] == DType.F32
    assert f16["blk.0.ffn_up_exps.weight"][0] == DType.F16


def test_quantized_weights_are_accepted(tmp_path: Path) -> None:
    """Q8_0 / Q4_0 rows as raw bytes (validation never decodes them)."""
    c = contents()
    rng = np.random.default_rng(0)
    for name in ("token_embd.weight", "blk.0.attn_qkv.weight", "blk.1.attn_q.weight"):
        _, ne, _ = c.tensors[name]
        t = DType.Q8_0 if name != "blk.1.attn_q.weight" else DType.Q4_0
        c.tensors[name] = (int(t), ne, rng.integers(0, 256, row_size(t, ne[0]) * math.prod(ne[1:]), dtype=np.uint8))
    path = tmp_path / "q.gguf"
    write_gguf(path, c)
    f = load_gguf(path)
    assert validate(f) == DENSE
    assert f.tensors["token_embd.weight"].array().shape == (1, 1, N_VOCAB, row_size(DType.Q8_0, 64))


def test_quantized_random_model_uses_quants(tmp_path: Path) -> None:
    try:
        tensors = random_qwen35(DENSE, 0, DType.Q8_0)
    except NotImplementedError:
        pytest.skip("graphir.quants.quantize_rows has not landed yet")
    from graphir.quants import dequantize_rows

    ref = random_qwen35(DENSE, 0)
    assert tensors["blk.0.ffn_up.weight"][0] == DType.Q8_0
    assert tensors["blk.0.ssm_a"][0] == DType.F32 and tensors["blk.0.ssm_conv1d.weight"][0] == DType.F32
    w = dequantize_rows(tensors["blk.0.ffn_up.weight"][1].reshape(96, -1), DType.Q8_0)
    np.testing.assert_allclose(w, ref["blk.0.ffn_up.weight"][1], atol=0.02)  # same draws, quantized
    write_qwen35(tmp_path / "q8.gguf", DENSE, tensors, tiny_tokenizer())
    assert validate(load_gguf(tmp_path / "q8.gguf")) == DENSE
    # rows of 64 do not fit Q4_K's 256-blocks: fall back to Q8_0, as llama-quantize does
    assert random_qwen35(DENSE, 0, DType.Q4_K)["blk.0.ffn_up.weight"][0] == DType.Q8_0


@pytest.mark.parametrize("kind", ["gate_up_exps", "attn_qkv"])
def test_fused_alternatives_llama_cpp_accepts(tmp_path: Path, kind: str) -> None:
    c = contents(MOE)
    for il in range(MOE.block_count):
        p = f"blk.{il}."
        if kind == "gate_up_exps":
            t, (E, F, X), g = c.tensors.pop(p + "ffn_gate_exps.weight")
            _, _, u = c.tensors.pop(p + "ffn_up_exps.weight")
            both = np.concatenate([g.reshape(X, F * E * 4), u.reshape(X, F * E * 4)], axis=1)
            c.tensors[p + "ffn_gate_up_exps.weight"] = (t, (E, 2 * F, X), both)
        elif not MOE.is_recurrent(il):
            parts = [c.tensors.pop(p + f"attn_{x}.weight") for x in "qkv"]
            ne = (64, sum(q[1][1] for q in parts))
            c.tensors[p + "attn_qkv.weight"] = (parts[0][0], ne, np.concatenate([q[2] for q in parts]))
    path = tmp_path / "fused.gguf"
    write_gguf(path, c)
    assert validate(load_gguf(path)) == MOE


def test_writer_refuses_invalid_models(tmp_path: Path) -> None:
    tensors = random_qwen35(DENSE, 0)
    with pytest.raises(ValueError, match="missing tensor blk.0.ssm_a"):
        write_qwen35(
            tmp_path / "x.gguf", DENSE, {k: v for k, v in tensors.items() if k != "blk.0.ssm_a"}, tiny_tokenizer()
        )
    bad = dict(tensors, **{"blk.0.ssm_a": (DType.F16, tensors["blk.0.ssm_a"][1])})
    with pytest.raises(ValueError, match="blk.0.ssm_a has type F16; expected F32"):
        write_qwen35(tmp_path / "x.gguf", DENSE, bad, tiny_tokenizer())
    with pytest.raises(ValueError, match="merges must be a non-empty list"):
        write_qwen35(tmp_path / "x.gguf", DENSE, tensors, dict(tiny_tokenizer(), merges=[]))
    with pytest.raises(ValueError, match="needs .* bytes"):
        write_qwen35(
            tmp_path / "x.gguf",
            DENSE,
            dict(tensors, **{"output_norm.weight": (DType.F32, b"\0" * 8)}),
            tiny_tokenizer(),
        )


# --------------------------------------------------------------------------------------------
# mutations: each gives its own error
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("key", [*required_keys("qwen35"), *(k for k in required_keys("qwen35moe") if "expert" in k)])
def test_each_required_key_missing(tmp_path: Path, key: str) -> None:
    c = contents(MOE if key.startswith("qwen35moe.") else DENSE)
    del c.kv[key]
    expect_error(tmp_path, c, f"missing required key {key}")


@pytest.mark.parametrize("key", ["tokenizer.ggml.model", "tokenizer.ggml.tokens", "tokenizer.ggml.merges"])
def test_required_tokenizer_key_missing(tmp_path: Path, key: str) -> None:
    c = contents()
    del c.kv[key]
    expect_error(tmp_path, c, f"missing required key {key}")


def test_missing_optional_keys_take_llama_cpp_defaults(tmp_path: Path) -> None:
    """Keys llama.cpp reads with a default are optional here, with the same default."""
    hp = dataclasses.replace(DENSE, n_head_kv=4, full_attention_interval=4, rope_freq_base=10000.0, n_rot=16,
                             rope_sections=(4, 2, 2, 0))  # fmt: skip
    c = contents(hp)
    for key in ("attention.head_count_kv", "attention.key_length", "attention.value_length", "rope.freq_base",
                "rope.dimension_count", "full_attention_interval"):  # fmt: skip
        del c.kv[f"qwen35.{key}"]
    path = tmp_path / "defaults.gguf"
    write_gguf(path, c)
    got = validate(load_gguf(path))
    assert got == hp
    assert (got.n_head_kv, got.head_dim_k, got.n_rot, got.full_attention_interval) == (4, 64 // 4, 16, 4)
    assert got.rope_freq_base == 10000.0


def test_missing_nextn_key_makes_the_mtp_block_a_trunk_layer(tmp_path: Path) -> None:
    c = contents()
    del c.kv["qwen35.nextn_predict_layers"]
    # block 4 becomes trunk layer 4, recurrent since (4+1) % 2 != 0
    expect_error(tmp_path, c, "missing tensor blk.4.attn_qkv.weight")


@pytest.mark.parametrize(
    ("key", "value", "vtype", "sub", "fragment"),
    [
        ("qwen35.block_count", 5, "INT32", None, "key qwen35.block_count has type INT32; expected UINT32"),
        ("qwen35.attention.layer_norm_rms_epsilon", 1e-6, "FLOAT64", None, "expected FLOAT32"),
        ("qwen35.rope.dimension_sections", [2, 1, 1], "ARRAY", "INT32", "must have 4 values, found 3"),
        ("qwen35.rope.dimension_sections", [2, 2, 1, 0], "ARRAY", "INT32", "must sum to qwen35.rope.dimension_count / 2 = 4"),
        ("qwen35.rope.dimension_sections", [2.0, 1.0, 1.0, 0.0], "ARRAY", "FLOAT32", "expected ARRAY[INT32] of 4"),
        ("qwen35.feed_forward_length", [96, 96, 64, 96, 96], "ARRAY", "INT32", "per-layer values"),
        ("qwen35.ssm.inner_size", 48, "UINT32", None, "ssm.inner_size must be"),
        ("qwen35.attention.head_count", 0, "UINT32", None, "qwen35.attention.head_count must be a positive integer"),
        ("qwen35.ssm.group_count", 0, "UINT32", None, "qwen35.ssm.group_count must be a positive integer"),
        ("qwen35.full_attention_interval", 0, "UINT32", None, "full_attention_interval must be > 0"),
        ("general.architecture", 7, "UINT32", None, "general.architecture has type UINT32; expected STRING"),
        ("tokenizer.ggml.model", "llama", "STRING", None, "tokenizer.ggml.model must be 'gpt2'"),
        ("tokenizer.ggml.eos_token_id", 9999, "UINT32", None, "eos_token_id=9999 is out of range"),
        ("tokenizer.ggml.token_type", [1, 1], "ARRAY", "INT32", f"token_type has 2 entries; expected {N_VOCAB}"),
    ],
)
def test_bad_key_values(tmp_path: Path, key: str, value: object, vtype: str, sub: str | None, fragment: str) -> None:
    c = contents()
    c.kv[key] = (value, vtype, sub)
    expect_error(tmp_path, c, fragment)


def test_vocab_size_must_match_token_embd(tmp_path: Path) -> None:
    c = contents()
    tok = tiny_tokenizer()
    c.kv["tokenizer.ggml.tokens"] = (tok["tokens"] + ["<|extra|>"], "ARRAY", "STRING")
    c.kv["tokenizer.ggml.token_type"] = (tok["token_type"] + [1], "ARRAY", "INT32")
    expect_error(
        tmp_path, c, f"token_embd.weight has wrong shape: expected ne=[64, {N_VOCAB + 1}], found [64, {N_VOCAB}]"
    )


def test_per_layer_arrays_that_agree_are_accepted(tmp_path: Path) -> None:
    c = contents()
    c.kv["qwen35.attention.head_count"] = ([4] * 5, "ARRAY", "INT32")
    path = tmp_path / "arr.gguf"
    write_gguf(path, c)
    assert validate(load_gguf(path)).n_head == 4


def test_unknown_architecture(tmp_path: Path) -> None:
    c = contents()
    c.arch = "llama"
    expect_error(tmp_path, c, "unknown architecture 'llama'", "qwen35, qwen35moe")


def test_renamed_tensor(tmp_path: Path) -> None:
    c = contents()
    c.tensors["blk.0.ssm_a.weight"] = c.tensors.pop("blk.0.ssm_a")  # the classic mistake: ssm_a has no suffix
    expect_error(tmp_path, c, "missing tensor blk.0.ssm_a")
    c = contents()
    c.tensors["blk.0.ssm_dt.weight"] = c.tensors.pop("blk.0.ssm_dt.bias")
    expect_error(tmp_path, c, "missing tensor blk.0.ssm_dt.bias")


def test_mtp_only_file_is_refused_clearly(tmp_path: Path) -> None:
    c = contents()
    c.tensors = {n: v for n, v in c.tensors.items() if not n.startswith(tuple(f"blk.{il}." for il in range(4)))}
    expect_error(tmp_path, c, "no tensor of the trunk blocks blk.0 .. blk.3", "an MTP-only file is not supported")


def test_unexpected_tensor(tmp_path: Path) -> None:
    c = contents()
    c.tensors["blk.0.ffn_norm.weight"] = (0, (64,), np.zeros(64 * 4, np.uint8))
    expect_error(tmp_path, c, "unexpected tensor(s) for qwen35: blk.0.ffn_norm.weight")


def test_missing_moe_tensor_names_the_alternatives(tmp_path: Path) -> None:
    c = contents(MOE)
    del c.tensors["blk.2.ffn_up_exps.weight"]
    expect_error(tmp_path, c, "missing tensor blk.2.ffn_gate_exps.weight + blk.2.ffn_up_exps.weight",
                 "or blk.2.ffn_gate_up_exps.weight", "found only blk.2.ffn_gate_exps.weight")  # fmt: skip


@pytest.mark.parametrize(
    ("name", "ne", "fragment"),
    [
        (
            "blk.0.ssm_conv1d.weight",
            (3, 128),
            "blk.0.ssm_conv1d.weight has wrong shape: expected ne=[4, 128], found [3, 128]",
        ),
        ("blk.1.attn_q.weight", (64, 64), "blk.1.attn_q.weight has wrong shape: expected ne=[64, 128]"),
        ("token_embd.weight", (64, 100), f"token_embd.weight has wrong shape: expected ne=[64, {N_VOCAB}]"),
        ("blk.4.nextn.eh_proj.weight", (64, 64), "nextn.eh_proj.weight has wrong shape: expected ne=[128, 64]"),
    ],
)
def test_wrong_shape(tmp_path: Path, name: str, ne: tuple[int, ...], fragment: str) -> None:
    c = contents()
    t, _, _ = c.tensors[name]
    c.tensors[name] = (t, ne, np.zeros(4 * math.prod(ne), np.uint8))
    expect_error(tmp_path, c, fragment)


def test_trailing_unit_dims_match_like_llama_cpp(tmp_path: Path) -> None:
    """ffn_gate_inp_shexp arrives from HF as [n_embd, 1] in the conversion's float type."""
    c = contents(MOE)
    _, _, raw = c.tensors["blk.0.ffn_gate_inp_shexp.weight"]
    c.tensors["blk.0.ffn_gate_inp_shexp.weight"] = (int(DType.F16), (64, 1), raw[: 64 * 2])
    path = tmp_path / "shexp.gguf"
    write_gguf(path, c)
    assert validate(load_gguf(path)) == MOE


@pytest.mark.parametrize(
    ("name", "t", "fragment"),
    [
        ("blk.0.ssm_a", DType.F16, "blk.0.ssm_a has type F16; expected F32"),
        ("blk.0.ssm_dt.bias", DType.BF16, "blk.0.ssm_dt.bias has type BF16; expected F32"),
        ("blk.0.ssm_conv1d.weight", DType.F16, "ssm_conv1d.weight has type F16; expected F32"),
        ("output_norm.weight", DType.F16, "output_norm.weight has type F16; expected F32"),
        ("blk.1.attn_k.weight", DType.I32, "attn_k.weight has type I32; expected F32, F16, BF16, Q8_0"),
        ("blk.1.attn_v.weight", 6, "attn_v.weight has type Q5_0"),  # a GGML type graphir does not implement
    ],
)
def test_wrong_type(tmp_path: Path, name: str, t: int, fragment: str) -> None:
    c = contents()
    _, ne, _ = c.tensors[name]
    nbytes = {DType.F16: 2, DType.BF16: 2, DType.I32: 4}.get(t, 0) * math.prod(ne) or (ne[0] // 32 * 22 * ne[1])
    c.tensors[name] = (int(t), ne, np.zeros(nbytes, np.uint8))
    expect_error(tmp_path, c, fragment)


# --------------------------------------------------------------------------------------------
# broken files
# --------------------------------------------------------------------------------------------


def test_truncated_files(tmp_path: Path) -> None:
    """Cut a valid file anywhere: the error names the part that runs past the end."""
    good = tmp_path / "good.gguf"
    write_model(good)
    data = good.read_bytes()
    info = load_gguf(good)
    first = min(info.tensors.values(), key=lambda t: t.offset)
    last = max(info.tensors.values(), key=lambda t: t.offset)
    cuts = {
        0: "magic must be b'GGUF', found b''",
        2: "magic must be b'GGUF', found b'GG'",
        6: "the version runs past the end",
        20: "the key count runs past the end",
        3000: "the value of key tokenizer.ggml.tokens runs past the end",
        first.offset - 40: "tensor",  # a tensor info (name or dims) is cut
        first.offset + 100: f"the data of tensor {first.name} [{first.offset}, {first.offset + first.nbytes})",
        len(data) // 2: "the data of tensor blk.",
        len(data) - 1: f"the data of tensor {last.name}",
    }
    for cut, fragment in cuts.items():
        bad = tmp_path / f"cut{cut}.gguf"
        bad.write_bytes(data[:cut])
        with pytest.raises(GGUFError) as e:
            load_gguf(bad)
        msg = str(e.value)
        assert str(bad) in msg and fragment in msg, msg
        assert cut < 4 or f"truncated GGUF file ({cut} bytes)" in msg, msg


def test_wrong_magic_and_version(tmp_path: Path) -> None:
    good = tmp_path / "good.gguf"
    write_model(good)
    data = bytearray(good.read_bytes())
    bad = tmp_path / "magic.gguf"
    bad.write_bytes(b"GGML" + data[4:])
    with pytest.raises(GGUFError, match=r"magic must be b'GGUF', found b'GGML'"):
        load_gguf(bad)
    for version in (1, 4, 0x01000000):
        data[4:8] = version.to_bytes(4, "little")
        bad = tmp_path / f"v{version}.gguf"
        bad.write_bytes(bytes(data))
        with pytest.raises(GGUFError, match=f"unsupported GGUF version {version}; supported: 2, 3"):
            load_gguf(bad)


def test_missing_file_and_directory(tmp_path: Path) -> None:
    with pytest.raises(GGUFError, match="cannot open"):
        load_gguf(tmp_path / "nope.gguf")
    with pytest.raises(GGUFError, match="cannot open"):
        load_gguf(tmp_path)


def test_corrupt_header_counts(tmp_path: Path) -> None:
    """A tensor count far beyond the file is a clean error, not a crash or a hang."""
    good = tmp_path / "good.gguf"
    write_model(good)
    data = bytearray(good.read_bytes())
    data[8:16] = (10**9).to_bytes(8, "little")
    bad = tmp_path / "counts.gguf"
    bad.write_bytes(bytes(data))
    with pytest.raises(GGUFError, match=r"corrupt GGUF file: claims 1000000000 tensors"):
        load_gguf(bad)


def test_corrupt_array_length(tmp_path: Path) -> None:
    """A corrupt array length is caught before the reader would loop over it."""
    good = tmp_path / "good.gguf"
    write_model(good)
    data = bytearray(good.read_bytes())
    at = data.index(b"tokenizer.ggml.token_type") + len("tokenizer.ggml.token_type") + 8  # after type + item type
    assert int.from_bytes(data[at : at + 8], "little") == N_VOCAB
    data[at : at + 8] = (2**60).to_bytes(8, "little")
    bad = tmp_path / "arr.gguf"
    bad.write_bytes(bytes(data))
    with pytest.raises(GGUFError, match="the value of key tokenizer.ggml.token_type runs past the end"):
        load_gguf(bad)


def test_unknown_tensor_type_id(tmp_path: Path) -> None:
    c = contents()
    c.tensors["output_norm.weight"] = (0, (64,), np.zeros(256, np.uint8))
    path = tmp_path / "t.gguf"
    write_gguf(path, c)
    data = bytearray(path.read_bytes())
    at = data.index(b"output_norm.weight") + len("output_norm.weight") + 4 + 8  # n_dims, ne[0]
    assert int.from_bytes(data[at : at + 4], "little") == 0
    data[at : at + 4] = (77).to_bytes(4, "little")
    path.write_bytes(bytes(data))
    with pytest.raises(GGUFError, match="tensor output_norm.weight has unknown type id 77"):
        load_gguf(path)


# --------------------------------------------------------------------------------------------
# graphir inspect
# --------------------------------------------------------------------------------------------


def test_inspect_valid_and_invalid(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "m.gguf"
    write_model(path, MOE)
    assert run_inspect(str(path)) == 0
    out = capsys.readouterr().out
    assert "qwen35moe.expert_count" in out and "UINT32" in out
    assert "tokenizer.ggml.tokens" in out and f"ARRAY[STRING] x{N_VOCAB}" in out
    assert "blk.0.ssm_a" in out and "blk.4.nextn.eh_proj.weight" in out
    assert "VALID" in out and "INVALID" not in out
    n_tensors = sum(len(o) for g in tensor_groups(MOE) for o in g.options[:1] if g.required) + 2
    assert f"{n_tensors} tensors" in out

    c = contents()
    c.tensors["blk.0.ssm_a"] = (int(DType.F16), (4,), np.zeros(8, np.uint8))
    bad = tmp_path / "bad.gguf"
    write_gguf(bad, c)
    assert run_inspect(str(bad)) == 2
    out, err = capsys.readouterr()
    assert "INVALID" not in out and "blk.0.ssm_a" in out  # the table on stdout, the verdict on stderr
    assert "INVALID" in err and "blk.0.ssm_a has type F16; expected F32" in err

    (tmp_path / "junk.gguf").write_bytes(b"hello world")
    assert run_inspect(str(tmp_path / "junk.gguf")) == 2
    assert "magic" in capsys.readouterr().err
