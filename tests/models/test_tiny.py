"""The embedded tiny model: deterministic bytes, a valid Qwen3.5 file (dense and MoE), a trained
vocabulary that round-trips text, the cached random model (created once, reused, regenerated
when stale, safe against concurrent creators) and `graphir make-tiny`."""

from __future__ import annotations

import argparse
import hashlib
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from graphir.models import tiny
from graphir.models.archs import validate
from graphir.models.gguf import load_gguf
from graphir.models.tokenizer import Tokenizer, TokenType
from graphir.tools.make_tiny import make_tiny_main
from graphir.types import DType


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def dense(tmp_path_factory) -> Path:
    return tiny.make_tiny(tmp_path_factory.mktemp("tiny") / "dense.gguf")


@pytest.fixture(scope="module")
def tokenizer(dense) -> Tokenizer:
    return Tokenizer.from_gguf_fields(load_gguf(dense).metadata)


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    """A fresh, empty model cache, and no memory of files verified by earlier tests."""
    monkeypatch.setenv("GRAPHIR_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(tiny, "_verified", {})
    return tmp_path / "cache"


# --------------------------------------------------------------------------------------------
# hparams, vocabulary, file contents
# --------------------------------------------------------------------------------------------


def test_corpus_is_package_data() -> None:
    text = tiny.corpus_text()
    assert 20_000 <= len(text.encode()) <= 40_000
    assert "def " in text and "tensor" in text
    assert not any(s in text for s in tiny.SPECIAL_TOKENS)  # specials only ever come from the caller


def test_hparams_scale_qwen35_down() -> None:
    hp = tiny.tiny_hparams()
    assert (hp.n_layer_trunk, hp.nextn_predict_layers, hp.full_attention_interval) == (4, 1, 4)
    assert [hp.is_recurrent(il) for il in range(5)] == [True, True, True, False, False]
    assert hp.is_nextn(4) and not hp.is_moe
    assert hp.n_rot == hp.head_dim // 4 and sum(hp.rope_sections) == hp.n_rot // 2
    assert (hp.S_k, hp.H_k, hp.H_v, hp.d_conv) == (32, 2, 4, 4)
    assert 64 <= hp.n_embd <= 128 and hp.n_vocab == 512
    moe = tiny.tiny_hparams("qwen35moe")
    assert moe.is_moe and (moe.n_expert, moe.n_expert_used) == (8, 2) and moe.ff_exp > 0 and moe.ff_shexp > 0
    with pytest.raises(ValueError, match="unknown architecture 'llama'"):
        tiny.tiny_hparams("llama")


def test_vocabulary_is_trained_and_deterministic() -> None:
    f = tiny.tiny_tokenizer_fields()
    tokens = f["tokenizer.ggml.tokens"]
    assert len(tokens) == tiny.VOCAB_SIZE == 512
    assert tokens[:3] == list(tiny.SPECIAL_TOKENS)
    assert f["tokenizer.ggml.token_type"][:4] == [TokenType.CONTROL] * 3 + [TokenType.NORMAL]
    assert f["tokenizer.ggml.bos_token_id"] == 0 and f["tokenizer.ggml.eos_token_id"] == 2
    assert len(f["tokenizer.ggml.merges"]) == 512 - 256 - 3  # every non-byte, non-special token is a merge
    assert "Ġthe" in tokens and "Ġtensor" in tokens and "Ġreturn" in tokens
    tiny._trained_vocab.cache_clear()
    assert tiny.tiny_tokenizer_fields() == f


def test_same_bytes_every_time(tmp_path, dense) -> None:
    again = tiny.make_tiny(tmp_path / "again.gguf")
    assert sha256(again) == sha256(dense)
    other = tiny.make_tiny(tmp_path / "seed1.gguf", seed=1)
    assert sha256(other) != sha256(dense)
    assert load_gguf(other).metadata["general.version"] != load_gguf(dense).metadata["general.version"]


def test_same_version_in_a_fresh_process(dense) -> None:
    """Training (Rust hash maps) and the weights must not depend on the process."""
    code = "from graphir.models import tiny; print(tiny.tiny_contents().kv['general.version'][0])"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == load_gguf(dense).metadata["general.version"]


@pytest.mark.parametrize(("arch", "dtype"), [("qwen35", "f32"), ("qwen35moe", "f32"), ("qwen35", "f16")])
def test_file_is_valid(tmp_path, arch, dtype) -> None:
    path = tiny.make_tiny(tmp_path / "m.gguf", arch, dtype)
    f = load_gguf(path)
    assert validate(f) == tiny.tiny_hparams(arch)
    assert f.metadata["general.name"] == f"graphir-tiny-{arch}"
    assert f.metadata["general.version"].startswith(tiny.TINY_VERSION + "+")
    assert f.metadata["tokenizer.ggml.pre"] == "qwen35"
    want = DType.F32 if dtype == "f32" else DType.F16
    assert f.tensors["blk.0.attn_qkv.weight"].dtype == want and f.tensors["output.weight"].dtype == want
    assert f.tensors["blk.0.ssm_a"].dtype == DType.F32  # 1-D tensors stay F32 (llama.cpp requires it)
    assert "blk.4.nextn.eh_proj.weight" in f.tensors
    if arch == "qwen35moe":
        assert f.tensors["blk.0.ffn_gate_exps.weight"].ne == (128, 64, 8)
        assert "blk.0.ffn_gate_inp_shexp.weight" in f.tensors
    weights = f.tensors["blk.3.attn_q.weight"].array().astype(np.float32)
    assert np.isfinite(weights).all() and 0.05 < weights.std() < 0.2  # N(0, 1/128), not zeros


def test_bad_dtype_is_refused(tmp_path) -> None:
    with pytest.raises(ValueError, match="dtype must be one of f32, f16, q8_0"):
        tiny.make_tiny(tmp_path / "x.gguf", dtype="q4_0")
    with pytest.raises(ValueError, match="dtype must be one of f32, f16, q8_0"):
        tiny.make_tiny(tmp_path / "x.gguf", dtype=DType.Q4_K)
    assert not list(tmp_path.iterdir())


# --------------------------------------------------------------------------------------------
# tokenizer on the file
# --------------------------------------------------------------------------------------------


def test_tokenizer_round_trips_the_corpus(tokenizer) -> None:
    text = tiny.corpus_text()
    paragraphs = [p for p in text.split("\n\n") if p.strip()]
    assert len(paragraphs) > 50
    for p in paragraphs:
        assert tokenizer.decode(tokenizer.encode(p)) == p
    ids = tokenizer.encode(text)
    assert len(ids) < len(text.encode()) / 2  # the merges were learned from this text (about 2.25 bytes a token)
    assert max(ids) < 512 and min(ids) >= 3  # no special token comes out of plain text


def test_tokenizer_specials_and_unseen_text(tokenizer) -> None:
    ids = tokenizer.encode("<|im_start|>user\nhi<|im_end|>")
    assert ids[0] == 1 and ids[-1] == 2 and 0 not in ids
    assert tokenizer.is_eog(2) and tokenizer.is_eog(0)
    for text in ["Grüße, 東京! naïve café ☕ 12345", "\t\tx  =  [1,2]\r\n", "ünïcödé\u0301"]:
        assert tokenizer.decode(tokenizer.encode(text)) == text  # byte fallback covers what the corpus lacks


# --------------------------------------------------------------------------------------------
# the random models in the cache
# --------------------------------------------------------------------------------------------


def test_cached_model_created_once_and_reused(cache, dense, monkeypatch) -> None:
    path = tiny.cached_tiny_path()
    assert path == cache / "tiny-qwen35.gguf" and sha256(path) == sha256(dense)
    st = path.stat()
    monkeypatch.setattr(tiny, "_verified", {})  # as a new process would: check the file's version
    assert tiny.cached_tiny_path() == path
    st2 = path.stat()
    assert (st2.st_ino, st2.st_mtime_ns) == (st.st_ino, st.st_mtime_ns)  # not rewritten
    assert [p.name for p in cache.iterdir()] == ["tiny-qwen35.gguf"]  # no temporary files left behind


def test_cached_model_regenerated_when_stale_or_missing(cache, dense, monkeypatch) -> None:
    path = tiny.cached_tiny_path()
    tiny.make_tiny(path, seed=7)  # another recipe: its recorded version differs
    monkeypatch.setattr(tiny, "_verified", {})
    assert sha256(tiny.cached_tiny_path()) == sha256(dense)
    path.write_bytes(b"GGUF garbage")  # unreadable: regenerated too
    monkeypatch.setattr(tiny, "_verified", {})
    assert sha256(tiny.cached_tiny_path()) == sha256(dense)
    path.unlink()  # deleted behind the memo's back: the stat no longer matches
    assert sha256(tiny.cached_tiny_path()) == sha256(dense)


def test_cached_model_per_arch(cache) -> None:
    moe = tiny.cached_tiny_path("qwen35moe")
    assert moe.name == "tiny-qwen35moe.gguf" and validate(load_gguf(moe)).is_moe
    assert tiny.cached_tiny_path() != moe


def test_concurrent_creators_leave_one_complete_file(cache, dense) -> None:
    code = "from graphir.models.tiny import cached_tiny_path; print(cached_tiny_path())"
    procs = [subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True) for _ in range(3)]
    outs = [p.communicate(timeout=120)[0].strip() for p in procs]
    assert all(p.returncode == 0 for p in procs)
    assert set(outs) == {str(cache / "tiny-qwen35.gguf")}
    assert sha256(cache / "tiny-qwen35.gguf") == sha256(dense)
    assert [p.name for p in cache.iterdir()] == ["tiny-qwen35.gguf"]


# --------------------------------------------------------------------------------------------
# graphir make-tiny
# --------------------------------------------------------------------------------------------


def test_make_tiny_main_writes_and_summarizes(tmp_path, capsys) -> None:
    out = tmp_path / "sub" / "moe16.gguf"
    assert make_tiny_main(["-o", str(out), "--arch", "qwen35moe", "--dtype", "f16", "--seed", "3"]) == 0
    path, line = capsys.readouterr().out.splitlines()
    assert path == str(out)
    assert line.startswith("qwen35moe: 4 layers (3 delta-net + 1 attention) + 1 MTP, n_embd 128, 8 experts top-2")
    assert "vocab 512" in line and "F16 weights" in line
    assert sha256(out) == sha256(tiny.make_tiny(tmp_path / "same.gguf", "qwen35moe", DType.F16, 3))


def test_make_tiny_main_default_is_the_cache(cache, capsys) -> None:
    ns = argparse.Namespace(output=None, arch="qwen35", dtype="f32", seed=0)  # as the graphir CLI passes it
    assert make_tiny_main(ns) == 0
    path, line = capsys.readouterr().out.splitlines()
    assert path == str(tiny.cached_tiny_path()) and "n_ff 256" in line and "F32 weights" in line
    assert make_tiny_main(["--seed", "2"]) == 0
    assert capsys.readouterr().out.splitlines()[0] == str(cache / "tiny-qwen35-f32-seed2.gguf")
    with pytest.raises(SystemExit):
        make_tiny_main(["--dtype", "q4_0"])
