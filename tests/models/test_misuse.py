"""Misuse of the public entries (Batch, Context, Generator, the memory's seq_* calls) gets a clear
error naming the parameter, with the value as given; nothing is half-done. Two iterators or two
threads on one Context / Generator: the second use raises; one Context per thread works."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest

from graphir.models.batch import Batch, BatchError
from graphir.models.context import Context
from graphir.models.model import Model
from graphir.models.speculative import Generator
from graphir.tools import gguf_mutate as gm


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Model:
    path = tmp_path_factory.mktemp("misuse") / "small.gguf"
    path.write_bytes(gm.base_file("dense-f32"))
    return Model.load(path)


def ctx_of(model: Model, **kw) -> Context:
    return Context(model, **{"n_ctx": 32, "n_batch": 16, "n_ubatch": 8, **kw})


# --------------------------------------------------------------------------------------------
# Batch
# --------------------------------------------------------------------------------------------

BATCH_CASES = [
    (dict(tokens=[9], pos=[8], seq_id=np.float64(0.7)), r"seq_id must be an integer, got np.float64\(0.7\)"),
    (dict(tokens=[9], pos=[8], seq_id=1.9), "seq_id must be an integer, got 1.9"),
    (dict(tokens=[9], pos=[8], seq_id=True), "seq_id must be an integer, got True"),
    (dict(tokens=[9], pos=[8], seq_id="0"), "seq_id must be a 1-D sequence of integers"),
    (dict(tokens=[9, 1], pos=[8, 9], seq_id=[0.0, 0.0]), "seq_id must be integers, got dtype float64"),
    (dict(tokens=np.array([2**64 - 1], np.uint64), pos=[0]), r"tokens\[0\] = 18446744073709551615 is out of range"),
    (dict(tokens=[1.0, 2.0], pos=[0, 1]), "tokens must be integers, got dtype float64"),
    (dict(tokens=[True], pos=[0]), "tokens must be integers, got dtype bool"),
    (dict(tokens="hello", pos=[0]), "tokens must be a 1-D sequence of integers, got 'hello'"),
    (dict(tokens=[1], pos=[2**40]), r"pos\[0\] = 1099511627776 is out of range \(at most 2147483647\)"),
    (dict(tokens=[1], pos=np.array([0.0])), "pos must be integers, got dtype float64"),
    (dict(embd="abc", pos=[0]), "embd must be floating point rows"),
    (dict(embd=[[1.0, np.nan]], pos=[0]), "embd row 0 holds a NaN"),
    (dict(embd=[[1e39, 0.0]], pos=[0]), "embd row 0 holds a NaN or an infinity"),
    (dict(tokens=[1], pos=[0], output=[0.5]), "output must be booleans"),
    (dict(tokens=[1], pos=[0], output=[2]), "output must be booleans"),
]


@pytest.mark.parametrize(("kw", "message"), BATCH_CASES)
def test_batch_arguments_are_strict(kw: dict, message: str) -> None:
    with pytest.raises(BatchError, match=message):
        Batch(kw.pop("tokens", None), kw.pop("embd", None), **kw)


def test_batch_simple_arguments_are_strict() -> None:
    with pytest.raises(BatchError, match="pos0 must be an integer, got 1.5"):
        Batch.simple([1, 2], pos0=1.5)
    with pytest.raises(BatchError, match="all_outputs must be True or False, got 1"):
        Batch.simple([1, 2], all_outputs=1)
    ok = Batch([1, 2], pos=np.array([3, 4], np.uint8), seq_id=np.int16(1), output=np.array([1, 1]))
    assert ok.seq_id.tolist() == [1, 1] and ok.output.tolist() == [True, True] and ok.pos.dtype == np.int64


# --------------------------------------------------------------------------------------------
# Context and its memory
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kw", "message"),
    [
        ({"n_ctx": True}, "n_ctx must be an integer, got True"),
        ({"n_ubatch": np.float64(8)}, r"n_ubatch must be an integer, got np.float64\(8.0\)"),
        ({"n_seq_max": "2"}, "n_seq_max must be an integer, got '2'"),
        ({"n_rs_seq": -1}, "n_rs_seq must be an integer >= 0, got -1"),
        ({"n_threads": 0}, "n_threads must be an integer >= 1"),
        ({"embeddings_nextn": "no"}, "embeddings_nextn must be True or False"),
        ({"type_k": True}, "type_k must be a type name"),
    ],
)
def test_context_arguments_are_strict(model: Model, kw: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        ctx_of(model, **kw)


def test_seq_calls_are_strict_and_change_nothing(model: Model) -> None:
    ctx = ctx_of(model, n_seq_max=2)
    ctx.decode(Batch.simple([1, 2, 3, 4]))
    before = ctx.memory.bookkeeping()
    for call, message in [
        (lambda: ctx.seq_rm(True), "seq_id must be an integer, got True"),
        (lambda: ctx.seq_rm(0, 0.5, -1), "p0 must be an integer, got 0.5"),
        (lambda: ctx.seq_add(0, 0, -1, 1.5), "delta must be an integer, got 1.5"),
        (lambda: ctx.seq_cp(np.float64(1), 0), "src must be an integer"),
        (lambda: ctx.seq_keep(np.uint64(2**63)), "seq_id 9223372036854775808 out of range"),
        (lambda: ctx.seq_cp(1, 0), r"seq 0 is not empty \(positions 0..3\)"),  # issue 18: empty onto populated
        (lambda: ctx.seq_add(0, 2, -1, 3), "covers only part"),
    ]:
        with pytest.raises(ValueError, match=message):
            call()
        assert all(np.array_equal(v, ctx.memory.bookkeeping()[k]) for k, v in before.items())
    out = ctx.decode(Batch.simple([5], 4))  # the sequence continues from its real state
    fresh = ctx_of(model).decode(Batch.simple([1, 2, 3, 4, 5]))
    np.testing.assert_allclose(out.logits, fresh.logits[-1:], rtol=1e-4, atol=1e-5)


# --------------------------------------------------------------------------------------------
# Generator
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kw", "message"),
    [
        ({"draft_max": True}, "draft_max must be an integer, got True"),
        ({"p_min": "0.1"}, "p_min must be a number, got '0.1'"),
        ({"p_min": float("nan")}, r"p_min must be in \[0.0, 1.0\], got nan"),
        ({"n_seq": 1.0}, "n_seq must be an integer, got 1.0"),
        ({"sampler": "greedy"}, "sampler must be a Sampler"),
    ],
)
def test_generator_arguments_are_strict(model: Model, kw: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Generator(model, n_ctx=32, n_ubatch=8, **kw)


@pytest.mark.parametrize(
    ("args", "kw", "message"),
    [
        (([1.7, 2.2], 3), {}, "prompt must be integers, got dtype float64"),
        (([1, 10**9], 3), {}, r"prompt\[1\] = 1000000000 is not a token id in \[0, 16\)"),
        (("abc", 3), {}, "prompt must be a 1-D sequence of integers"),
        (([1, 2], 2.5), {}, "n_predict must be an integer, got 2.5"),
        (([1, 2], True), {}, "n_predict must be an integer, got True"),
        (([1, 2], 3), {"stop_at_eog": "yes"}, "stop_at_eog must be True or False"),
    ],
)
def test_generate_arguments_are_strict(model: Model, args: tuple, kw: dict, message: str) -> None:
    gen = Generator(model, n_ctx=32, n_ubatch=8)
    with pytest.raises(ValueError, match=message):
        next(gen.generate(*args, **kw))
    assert list(gen.generate([1, 2], 3)) == list(Generator(model, n_ctx=32, n_ubatch=8).generate([1, 2], 3))


# --------------------------------------------------------------------------------------------
# concurrency
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("spec", [None, "mtp"])
def test_a_second_generate_on_one_generator_raises_and_the_first_goes_on(model: Model, spec: str | None) -> None:
    """Issue 18: two iterators of one Generator with prompts of the same length corrupted each other."""
    want = list(Generator(model, spec=spec, n_ctx=32, n_ubatch=8).generate([1, 2, 3], 6))
    gen = Generator(model, spec=spec, n_ctx=32, n_ubatch=8)
    first, second = gen.generate([1, 2, 3], 6), gen.generate([4, 5, 6], 6)
    got = [next(first)]
    with pytest.raises(RuntimeError, match="already generating"):
        next(second)
    got += list(first)
    assert got == want
    assert list(gen.generate([1, 2, 3], 6)) == want, "free again once the first iterator is done"
    it = gen.generate([1, 2, 3], 6)
    next(it)
    it.close()  # closing an unfinished iterator frees the Generator too
    assert gen.generate_batch([[1, 2, 3]], 6) == [want]


def test_a_context_used_by_two_threads_at_once_raises(model: Model) -> None:
    ctx = ctx_of(model)
    inside, release = threading.Event(), threading.Event()
    run_ubatch = ctx._run_ubatch

    def slow(*args, **kw):  # hold the first decode inside the context
        inside.set()
        release.wait(10)
        return run_ubatch(*args, **kw)

    ctx._run_ubatch = slow
    errors: list[BaseException] = []
    t = threading.Thread(target=lambda: ctx.decode(Batch.simple([1, 2])))
    t.start()
    assert inside.wait(10)
    for call in (lambda: ctx.decode(Batch.simple([3], seq_id=0, pos0=2)), lambda: ctx.seq_rm(0), ctx.clear):
        try:
            call()
        except RuntimeError as e:
            errors.append(e)
    release.set()
    t.join()
    assert len(errors) == 3 and all("in use by another call" in str(e) for e in errors)
    assert ctx.seq_pos_max(0) == 1, "the first decode completed untouched"


def test_one_context_per_thread_works(model: Model) -> None:
    """Contexts sharing one Model in several threads give each thread's sequential result."""
    prompts = [[1, 2, 3, 4], [5, 6, 7], [8, 9, 10, 11, 12], [13, 14]]
    want = [ctx_of(model).decode(Batch.simple(p, all_outputs=True)).logits for p in prompts]
    got: dict[int, np.ndarray] = {}

    def work(i: int) -> None:
        ctx = ctx_of(model)
        for _ in range(3):
            got[i] = ctx.decode(Batch.simple(prompts[i], all_outputs=True)).logits
            ctx.clear()

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(prompts))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for i in range(len(prompts)):
        np.testing.assert_array_equal(got[i], want[i])


def test_the_readme_states_the_thread_safety_rules() -> None:
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    assert "one Context per thread" in readme and "one Generator per" in readme
