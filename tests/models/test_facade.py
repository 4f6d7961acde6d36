"""The one-import API (`graphir.load`, models/facade.py) on the shipped model: generate, stream, stop,
chat, tokenize, logits; the same text as the low-level API for a seed; bad arguments are clear errors;
an interrupted generation leaves the LLM (and its context) usable."""

from __future__ import annotations

import _thread
import subprocess
import sys
import threading

import numpy as np
import pytest

import graphir
from graphir.models.batch import Batch
from graphir.models.chat import CHATML, ChatTemplateError, render_chat
from graphir.models.context import Context
from graphir.models.model import Model
from graphir.models.sampling import Sampler, SamplerConfig
from graphir.models.tiny import shipped_model_path

PROMPT = "def main():"


@pytest.fixture(scope="module")
def llm() -> graphir.LLM:
    return graphir.load(n_ctx=256)


def low_level(prompt: str, n: int, seed: int, temperature: float = 0.8) -> str:
    """The README's low-level loop: Model + Context + Sampler, token by token."""
    model = Model.load(shipped_model_path())
    tok = model.tokenizer
    ids = tok.encode(prompt)
    ctx = Context(model, n_ctx=256, n_batch=64, n_ubatch=64)
    sampler = Sampler(SamplerConfig(temperature=temperature, seed=seed))
    logits = ctx.decode(Batch.simple(ids, 0)).logits[-1]
    out, pos = [], len(ids)
    for _ in range(n):
        tid = sampler.sample(logits, pos)
        if tok.is_eog(tid):
            break
        out.append(tid)
        logits = ctx.decode(Batch.simple([tid], pos)).logits[-1]
        pos += 1
    return tok.decode(out)


def test_import_graphir_needs_only_numpy() -> None:
    code = "import sys, graphir; bad = {'graphir.models', 'jinja2', 'tqdm', 'gguf', 'tokenizers'} & set(sys.modules); " \
           "assert not bad, bad; assert callable(graphir.load)"  # fmt: skip
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.parametrize("seed", [0, 3])
def test_generate_is_the_low_level_text(llm: graphir.LLM, seed: int) -> None:
    assert llm.generate(PROMPT, max_tokens=24, seed=seed) == low_level(PROMPT, 24, seed)


def test_greedy_and_mtp_give_the_same_text(llm: graphir.LLM) -> None:
    greedy = llm.generate(PROMPT, max_tokens=20, temperature=0)
    assert greedy == low_level(PROMPT, 20, 0, temperature=0)
    mtp = graphir.load(n_ctx=256, spec="mtp", draft_max=2)
    assert mtp.generate(PROMPT, max_tokens=20, temperature=0) == greedy
    assert mtp.generate(PROMPT, max_tokens=20, seed=5) == llm.generate(PROMPT, max_tokens=20, seed=5)
    assert mtp.last_stats.spec["rounds"] > 0


def test_stream_joins_to_the_text_and_stats(llm: graphir.LLM) -> None:
    text = llm.generate(PROMPT, max_tokens=24, seed=1)
    pieces = list(llm.generate(PROMPT, max_tokens=24, seed=1, stream=True))
    assert len(pieces) > 1 and "".join(pieces) == text
    st = llm.last_stats
    assert st.n_prompt == len(llm.tokenize(PROMPT)) and st.n_generated <= 24 and st.stop_reason in ("length", "eog")


def test_stop_strings_cut_before_the_first_match(llm: graphir.LLM) -> None:
    full = llm.generate(PROMPT, max_tokens=48, seed=1)
    stop = full[len(full) // 2 : len(full) // 2 + 3]
    cut = full[: full.find(stop)]
    assert llm.generate(PROMPT, max_tokens=48, seed=1, stop=[stop, "\x00never"]) == cut
    assert llm.last_stats.stop_reason == "stop"
    assert "".join(llm.generate(PROMPT, max_tokens=48, seed=1, stop=stop, stream=True)) == cut


def test_tokenize_detokenize_logits(llm: graphir.LLM) -> None:
    ids = llm.tokenize("x = 1\n<|im_end|>")
    assert llm.detokenize(ids) == "x = 1\n<|im_end|>" and ids[-1] == 2
    lg = llm.logits(ids)
    assert lg.shape == (len(ids), llm.model.n_vocab) and np.isfinite(lg).all()
    np.testing.assert_array_equal(llm.logits(ids), lg)  # a fresh sequence every call


def test_chat_uses_the_files_template(llm: graphir.LLM) -> None:
    assert llm.chat_template == CHATML  # the shipped file carries one (metadata rewritten, same weights)
    msgs = [{"role": "system", "content": "You write Python."}, {"role": "user", "content": "A loop"}]
    text = llm.apply_chat_template(msgs)
    assert text == "<|im_start|>system\nYou write Python.<|im_end|>\n<|im_start|>user\nA loop<|im_end|>\n" \
                   "<|im_start|>assistant\n"  # fmt: skip
    reply = llm.chat(msgs, max_tokens=24, seed=2)
    assert reply == llm.generate(llm.tokenize(text), max_tokens=24, seed=2)
    assert "".join(llm.chat(msgs, max_tokens=24, seed=2, stream=True)) == reply


def test_render_chat_as_llama_cpp_jinja() -> None:
    tmpl = ("{{ bos_token }}{% for m in messages %}{% if m['role'] == 'system' %}{{ raise_exception('no system') }}"
            "{% endif %}[{{ m['role'] }}]{{ m['content'] | tojson }}{% endfor %}{% if add_generation_prompt %}>"
            "{% endif %}")  # fmt: skip
    assert render_chat(tmpl, [{"role": "user", "content": "é"}], bos_token="<s>") == '<s>[user]"é">'
    with pytest.raises(ChatTemplateError, match="no system"):
        render_chat(tmpl, [{"role": "system", "content": "x"}])
    with pytest.raises(ChatTemplateError, match="does not parse"):
        render_chat("{% for %}", [{"role": "user", "content": "x"}])
    with pytest.raises(ChatTemplateError):  # the sandbox: no Python internals from a file's template
        render_chat("{{ messages.__class__.__mro__ }}", [{"role": "user", "content": "x"}])


@pytest.mark.parametrize("call, err, msg", [
    (lambda m: m.generate(PROMPT, max_tokens=-1), ValueError, "max_tokens must be an integer >= 0"),
    (lambda m: m.generate(PROMPT, top_p=0), ValueError, "top_p"),
    (lambda m: m.generate(PROMPT, top_k="40"), TypeError, "top_k must be a number"),
    (lambda m: m.generate(PROMPT, stop=[""]), ValueError, "stop must be a non-empty string"),
    (lambda m: m.generate("", max_tokens=4), ValueError, "the prompt is empty"),
    (lambda m: m.generate([5000]), ValueError, "token id 5000 is out of range"),
    (lambda m: m.generate(b"bytes"), TypeError, "expected a str or a sequence of token ids"),
    (lambda m: m.generate([5, 7.9]), ValueError, r"token ids must be integers, got ids\[1\] = 7\.9"),  # not truncated to 7
    (lambda m: m.generate([True, 5]), ValueError, "token ids must be integers"),
    (lambda m: m.generate("x" * 2000), ValueError, "does not fit n_ctx=256"),
    (lambda m: m.chat("hello"), ValueError, "messages must be a list"),
    (lambda m: m.chat([{"role": "user"}]), ValueError, r"messages\[0\]\['content'\] must be a string"),
])  # fmt: skip
def test_bad_arguments_are_clear_errors(llm: graphir.LLM, call, err, msg) -> None:
    with pytest.raises(err, match=msg):
        call(llm)
    assert llm.generate(PROMPT, max_tokens=4, seed=1) == low_level(PROMPT, 4, 1)  # still usable


@pytest.mark.parametrize("kwargs, msg", [
    ({"spec": "eagle"}, "spec must be None or 'mtp'"),
    ({"n_ctx": 0}, "n_ctx must be an integer >= 1"),
    ({"path": "/nonexistent.gguf"}, "nonexistent.gguf"),
    ({"backend": "nope"}, "unknown backend 'nope'"),
])  # fmt: skip
def test_bad_load_arguments(kwargs, msg) -> None:
    with pytest.raises((ValueError, KeyError, graphir.backends.BackendUnavailable), match=msg):
        graphir.load(**kwargs)


def test_n_ctx_past_the_trained_length_warns() -> None:
    with pytest.warns(UserWarning, match="exceeds the model's trained context length"):
        graphir.load(n_ctx=8192, n_ubatch=16)


def test_one_generation_at_a_time(llm: graphir.LLM) -> None:
    it = llm.generate(PROMPT, max_tokens=8, stream=True)
    next(it)
    with pytest.raises(RuntimeError, match="still running"):
        llm.generate(PROMPT, max_tokens=8)
    it.close()
    assert llm.generate(PROMPT, max_tokens=8, seed=1) == low_level(PROMPT, 8, 1)


@pytest.mark.parametrize("spec", [None, "mtp"])
def test_interrupted_generation_leaves_it_usable(llm: graphir.LLM, spec: str | None) -> None:
    """Ctrl-C (KeyboardInterrupt) wherever it lands -- inside a graph run, between tokens, while
    drafting -- and a consumer that stops early: the next call gives the full, same text; the context
    decodes."""
    llm = graphir.load(n_ctx=256, spec=spec) if spec else llm
    want = llm.generate(PROMPT, max_tokens=64, seed=4)
    for delay in (0.0, 0.002, 0.01, 0.03):
        timer = threading.Timer(delay, _thread.interrupt_main)
        try:
            timer.start()
            llm.generate(PROMPT, max_tokens=64, seed=4)
            timer.join()  # it finished first; the interrupt may still come: swallow it below
            threading.Event().wait(0.05)
        except KeyboardInterrupt:
            assert llm.last_stats.stop_reason in ("interrupted", "length", "eog")
        assert llm.generate(PROMPT, max_tokens=64, seed=4) == want
    for i, _ in enumerate(llm.generate(PROMPT, max_tokens=64, seed=4, stream=True)):
        if i == 3:
            break
    assert llm.generate(PROMPT, max_tokens=64, seed=4) == want
    ctx = llm.context
    ctx.clear()
    assert np.isfinite(ctx.decode(Batch.simple(llm.tokenize(PROMPT), 0)).logits).all()


def test_a_large_file_loads_under_a_bar_and_a_long_prompt_prefills_under_one(monkeypatch, capsys) -> None:
    from graphir import progress
    from graphir.models import facade

    prompt = "import os\n" * 20  # 60 tokens > 2 ubatches of 16
    want = graphir.load(n_ctx=256, n_ubatch=16).generate(prompt, max_tokens=8, seed=1)  # one decode call
    assert "prefill" not in capsys.readouterr().err
    monkeypatch.setattr(progress, "enabled", lambda: True)  # as on a terminal
    monkeypatch.setattr(facade, "_BIG_FILE", 0)  # the shipped file counts as large
    llm = graphir.load(n_ctx=256, n_ubatch=16)
    assert "compile context" in capsys.readouterr().err
    assert llm.generate(prompt, max_tokens=8, seed=1) == want  # the prefill in pieces: the same ubatches
    assert "prefill" in capsys.readouterr().err
