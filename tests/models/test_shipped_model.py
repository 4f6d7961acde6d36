"""The shipped trained tiny model (models/data/tiny-qwen35-py.gguf): a valid qwen35 file with an
MTP head, F16 matrices, a tokenizer that round-trips text and equals the `tokenizers` model it was
trained with, and weights that actually model Python (low cross-entropy on code it never saw)."""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path

import numpy as np
import pytest
import tokenizers

import graphir
from graphir.models import tiny
from graphir.models.archs import validate
from graphir.models.batch import Batch
from graphir.models.context import Context
from graphir.models.gguf import load_gguf
from graphir.models.model import Model
from graphir.tools.inspect_cmd import run_inspect

DATA = Path(str(resources.files("graphir.models") / "data"))
TEXTS = [
    "def main(argv=None):\n    parser = argparse.ArgumentParser()\n    return 0\n",
    "class Foo(Base):\n\t'''Docstring with ünïcödé, 東京 and an emoji ☕.'''\n\n    x: int = 0x1F  # comment\r\n",
    "if __name__ == '__main__':\n    sys.exit(main())\n<|endoftext|>",
    "   \n\n\t  trailing spaces   ",
]


@pytest.fixture(scope="module")
def model() -> Model:
    return Model.load(tiny.shipped_model_path())


def test_default_model_is_the_shipped_file() -> None:
    path = tiny.default_model_path()
    assert path == tiny.shipped_model_path() and path.name == tiny.SHIPPED_MODEL and path.parent == DATA


def test_inspect_says_valid(capsys) -> None:
    assert run_inspect(str(tiny.shipped_model_path())) == 0
    out = capsys.readouterr().out
    assert "VALID qwen35: 4 trunk blocks (3 recurrent) + 1 MTP, n_embd 256, n_vocab 1024" in out


def test_file_layout() -> None:
    f = load_gguf(tiny.shipped_model_path())
    hp = validate(f)
    assert (hp.arch, hp.nextn_predict_layers, hp.n_vocab) == ("qwen35", 1, 1024)
    assert "output.weight" not in f.tensors  # tied embeddings
    for name, t in f.tensors.items():
        want = "F32" if len(t.ne) == 1 or name.endswith("ssm_conv1d.weight") else "F16"
        assert t.type_name == want, name


@pytest.mark.parametrize("text", TEXTS)
def test_tokenizer_round_trips_and_matches_its_training(model: Model, text: str) -> None:
    tok = model.tokenizer
    ids = tok.encode(text, add_special=False)  # special tokens in the text become their ids, as in `tokenizers`
    assert tok.decode(ids) == text
    hf = tokenizers.Tokenizer.from_file(str(DATA / "tiny-qwen35-py.tokenizer.json"))
    assert ids == hf.encode(text, add_special_tokens=False).ids


def test_the_model_knows_python(model: Model) -> None:
    """Mean next-token cross-entropy on graphir's own source (never trained on) is far below the
    uniform log(1024) = 6.93 nats a random model scores, and close to the recorded held-out figure."""
    text = Path(graphir.__file__).with_name("graph.py").read_text()
    ids = model.tokenizer.encode(text, add_special=False)[:200]
    ctx = Context(model, n_ctx=256, n_batch=256, n_ubatch=256)
    logits = ctx.decode(Batch.simple(ids, 0, all_outputs=True)).logits.astype(np.float64)
    logp = logits - logits.max(1, keepdims=True)
    logp -= np.log(np.exp(logp).sum(1, keepdims=True))
    ce = -logp[np.arange(len(ids) - 1), ids[1:]].mean()
    recorded = json.loads((DATA / "tiny-qwen35-py.run.json").read_text())["evals"][-1]["val_ce"]
    assert ce < 3.5 and recorded < 2.5, (ce, recorded)
