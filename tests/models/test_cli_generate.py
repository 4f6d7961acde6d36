"""`graphir generate` and `graphir bench` as a user runs them (default tiny model, cache in tmp)."""

from __future__ import annotations

import numpy as np
import pytest

from graphir.models.batch import Batch
from graphir.models.context import Context
from graphir.models.model import Model
from graphir.models.tiny import default_model_path
from graphir.tools.cli import main


@pytest.fixture(autouse=True)
def tmp_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("GRAPHIR_CACHE", str(tmp_path / "cache"))


def greedy_reference(prompt: str, n: int) -> str:
    model = Model.load(default_model_path())
    tok = model.tokenizer
    ids = tok.encode(prompt)
    ctx = Context(model, n_ctx=128, n_batch=64, n_ubatch=64)
    logits = ctx.decode(Batch.simple(ids, 0)).logits[-1]
    out = []
    for i in range(n):
        tid = int(np.argmax(logits))
        if tok.is_eog(tid):
            break
        out.append(tid)
        logits = ctx.decode(Batch.simple([tid], len(ids) + i)).logits[-1]
    return prompt + tok.decode(out)


def test_greedy_generate_streams_the_greedy_continuation(capsys):
    assert main(["generate", "-p", "def add(a, b):", "-n", "12", "--greedy"]) == 0
    captured = capsys.readouterr()
    assert captured.out.rstrip("\n") == greedy_reference("def add(a, b):", 12)
    assert "prefill: " in captured.err and "tok/s" in captured.err


def test_seeded_sampling_repeats_and_seeds_differ(capsys):
    outs = []
    for seed in (1, 1, 2):
        assert main(["generate", "-p", "The graph", "-n", "24", "--seed", str(seed), "-q"]) == 0
        outs.append(capsys.readouterr().out)
    assert outs[0] == outs[1] != outs[2]


@pytest.mark.parametrize("argv, msg", [
    (["-n", "-1"], "--n-predict must be >= 0"),
    (["-n", "600", "-c", "64"], "exceed --ctx-size 64"),
    (["--top-p", "0"], "top_p"),
    (["--model", "/nonexistent.gguf"], "nonexistent.gguf"),
    (["--backend", "nope"], "unknown backend 'nope'"),
])  # fmt: skip
def test_bad_arguments_are_clear_errors(argv, msg, capsys):
    assert main(["generate", *argv]) == 2
    assert msg in capsys.readouterr().err


def test_bench_reports_rates_and_memory(capsys):
    assert main(["bench", "--prompt-tokens", "8", "--gen-tokens", "2", "--reps", "1", "--no-llama"]) == 0
    out = capsys.readouterr().out
    row = next(line for line in out.splitlines() if line.startswith("graphir "))
    prefill, decode = (float(x) for x in row.split()[1:3])
    assert prefill > 0 and decode > 0
    assert "recurrent state" in out and "compute buffer" in out


def test_dump_of_a_model_decode_graph(capsys):
    import json

    assert (
        main(["dump", "--model", str(default_model_path()), "--tokens", "1", "--format", "json", "--layer", "3"]) == 0
    )
    doc = json.loads(capsys.readouterr().out)
    names = {t["name"] for t in doc["tensors"]}
    assert {"attn_norm-3", "k_cache_store-3"} <= names  # layer 3 is the full-attention layer of the tiny model
    assert all(n.endswith("-3") for n in names)
