"""Batch invariance on the native cpu backend (DESIGN 5, 13): a row's result does not depend on
the batch it is computed in or on the thread count, so a verify batch's row i equals a
single-token decode at that position bit for bit, and greedy MTP equals plain greedy exactly."""

from __future__ import annotations

import numpy as np
import pytest

from graphir.backends import availability, get_backend
from graphir.models import tiny
from graphir.models.batch import Batch
from graphir.models.context import Context
from graphir.models.model import Model
from graphir.models.speculative import Generator

pytestmark = pytest.mark.skipif(not availability("cpu").ok, reason=f"native cpu: {availability('cpu').reason}")

PROMPT = [5, 17, 99, 3, 250, 8, 41, 77, 12, 400, 23]  # ids < 512: the random tiny vocabulary
TAIL = [9, 301, 44, 7, 311]


@pytest.fixture(scope="module", params=["shipped", "moe-q8_0"])
def model(request, tmp_path_factory) -> Model:
    if request.param == "shipped":  # trained: its MTP head's drafts are accepted often
        return Model.load(tiny.shipped_model_path())
    path = tiny.make_tiny(tmp_path_factory.mktemp("inv") / "moe.gguf", "qwen35moe", "q8_0")
    return Model.load(path)


@pytest.fixture
def threads(monkeypatch):
    """Multi-threaded splits whatever their size (chunking differs from one thread's)."""
    from graphir.backends.cpu import backend as cpu_backend

    monkeypatch.setattr(cpu_backend, "SMALL_OP_BYTES", 0)
    be = get_backend("cpu")
    saved = be.n_threads
    yield
    be.n_threads = saved


def _one_by_one(model: Model, n_threads: int) -> np.ndarray:
    ctx = Context(model, n_ctx=64, n_ubatch=16, n_rs_seq=len(TAIL), n_threads=n_threads)
    ctx.decode(Batch.simple(PROMPT, 0))
    rows = [ctx.decode(Batch.simple([t], len(PROMPT) + i)).logits[-1] for i, t in enumerate(TAIL)]
    return np.array(rows)


def _as_batch(model: Model, n_threads: int) -> np.ndarray:
    ctx = Context(model, n_ctx=64, n_ubatch=16, n_rs_seq=len(TAIL), n_threads=n_threads)
    ctx.decode(Batch.simple(PROMPT, 0))
    out = ctx.decode(Batch.simple(TAIL, len(PROMPT), 0, True))
    return np.asarray(out.logits).reshape(len(TAIL), -1)


@pytest.mark.parametrize(("t_single", "t_batch"), [(1, 1), (1, 2), (2, 3)])
def test_verify_rows_equal_single_decodes_bit_for_bit(model, threads, t_single: int, t_batch: int) -> None:
    single = _one_by_one(model, t_single)
    batch = _as_batch(model, t_batch)
    assert np.isfinite(batch).all()
    np.testing.assert_array_equal(batch, single)


@pytest.mark.parametrize("draft_max", [1, 3])
def test_greedy_mtp_equals_plain_greedy_bit_for_bit(model, draft_max: int) -> None:
    ids = PROMPT[:6]
    plain = list(Generator(model, spec=None).generate(ids, n_predict=24))
    spec = Generator(model, spec="mtp", draft_max=draft_max, adaptive=False)  # every round drafts
    assert list(spec.generate(ids, n_predict=24)) == plain
    assert spec.stats.drafted > 0  # verify batches ran
    if str(model.path) == str(tiny.shipped_model_path()):
        assert spec.stats.accepted > 0  # ... and accepted drafts moved several tokens at once
