"""Coupled draws (models/sampling.py, DESIGN section 9): every token is a function of (seed, seq,
pos) and the logits, so plain decoding, MTP decoding (draft_max 1-4, real or forced drafts) and
several sequences decoded together emit the same tokens for the same seed -- greedy and sampled
(temperature, top-k, top-p), dense and MoE, on `ref`, the default backend, and opencl and vulkan
where they are available.

Compared EXACTLY, with no near-tie allowance: a verify batch of k+1 rows must give each row the
logits a single-row decode gives it, up to float noise far below the gaps the draws see (a
Gumbel-max score, a top-k or top-p boundary). A failure here on a new backend means batched
and single-row numerics differ enough to flip a draw: report it, don't loosen this test.
"""

from __future__ import annotations

import pytest

from graphir.backends import availability
from graphir.models import tiny
from graphir.models.batch import Batch
from graphir.models.context import Context
from graphir.models.model import Model
from graphir.models.sampling import Sampler, SamplerConfig
from graphir.models.speculative import Generator, SpecPolicy

BACKENDS = ["ref", "cpu", *(b for b in ("opencl", "vulkan") if availability(b).ok)]
SAMPLERS = {
    "greedy": SamplerConfig(greedy=True),
    "t1": SamplerConfig(temperature=1.0, top_k=0, top_p=1.0, seed=5),
    "default": SamplerConfig(seed=3),  # temperature 0.8, top-k 40, top-p 0.95
    "hot-cut": SamplerConfig(temperature=1.5, top_k=12, top_p=0.8, seed=9),
}
PROMPT = [5, 17, 230, 42, 99, 7, 281, 3, 64, 150, 11, 400, 12, 300, 8, 77, 190, 3, 9, 501]
OTHERS = [[300, 8, 77], [42, 99, 7, 281, 3, 64, 150, 11, 400, 12, 5, 17, 230, 501]]
N = 24
N_CTX, N_UBATCH = 160, 8  # the 20-token prompt runs in several ubatches


@pytest.fixture(scope="module", params=["qwen35", "qwen35moe"])
def model(request) -> Model:
    return Model.load(tiny.cached_tiny_path(request.param))


_PLAIN: dict = {}
_CACHE: dict = {}  # contexts and generators by their sizes: compiled plans are reused across tests


def plain(model: Model, backend: str, cfg: SamplerConfig, prompt: list[int], seq: int = 0) -> list[int]:
    """Plain decoding of sequence `seq`, independent of Generator: single-token decodes on a Context,
    the draw for position pos from the row that precedes it."""
    key = (model.path, backend, cfg, tuple(prompt), seq)
    if key not in _PLAIN:
        ckey = (model.path, backend)
        if ckey not in _CACHE:
            _CACHE[ckey] = Context(model, n_ctx=N_CTX, n_batch=64, n_ubatch=N_UBATCH, backends=(backend,))
        ctx, sampler, out = _CACHE[ckey], Sampler(cfg), []
        ctx.clear()
        logits = ctx.decode(Batch.simple(prompt)).logits[-1]
        for pos in range(len(prompt), len(prompt) + N):
            out.append(sampler.sample(logits, pos, seq))
            if len(out) < N:
                logits = ctx.decode(Batch.simple([out[-1]], pos)).logits[-1]
        _PLAIN[key] = out
    return _PLAIN[key]


def generator(model: Model, backend: str, cfg: SamplerConfig, spec: str | None = "mtp", draft_max: int = 3,
              n_seq: int = 1) -> Generator:  # fmt: skip
    """A Generator of these sizes (cached) with `cfg`'s sampler."""
    key = (model.path, backend, spec, draft_max, n_seq)
    if key not in _CACHE:
        # adaptive=False: every round speculates (these tests count drafts; the policy is tested in test_speculative)
        _CACHE[key] = Generator(model, spec=spec, draft_max=draft_max, n_ctx=N_CTX, n_ubatch=N_UBATCH,
                                backends=(backend,), n_seq=n_seq, adaptive=False)  # fmt: skip
    g = _CACHE[key]
    g.sampler = Sampler(cfg)
    return g


def force_drafts(monkeypatch, seqs: list[list[int]], wrong_every: int = 3) -> None:
    """Drafts = the plain tokens (seqs[s] = prompt + plain output of sequence s), every position
    divisible by wrong_every off by one: full and partial acceptance, rollbacks of 1..k tokens."""

    def pick(self, s, logits, pos):
        tok = seqs[s.seq][pos + 1]
        return ((tok + 1) % self.model.n_vocab if (pos + 1) % wrong_every == 0 else tok), 1.0

    monkeypatch.setattr(Generator, "_pick_draft", pick)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", SAMPLERS)
def test_plain_and_mtp_draft_max_1_to_4_give_the_same_tokens(model, backend, name) -> None:
    cfg = SAMPLERS[name]
    ref = plain(model, backend, cfg, PROMPT)
    assert list(generator(model, backend, cfg, spec=None).generate(PROMPT, N)) == ref
    for draft_max in (1, 2, 3, 4):
        g = generator(model, backend, cfg, draft_max=draft_max)
        assert list(g.generate(PROMPT, N)) == ref, f"draft_max {draft_max}"
        assert g.stats.drafted > 0
    if name != "greedy":
        assert len(set(ref)) > 4  # really sampled


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", ["greedy", "default", "hot-cut"])
def test_forced_acceptance_and_rollback_keep_the_tokens(model, backend, name, monkeypatch) -> None:
    cfg = SAMPLERS[name]
    ref = plain(model, backend, cfg, PROMPT)
    force_drafts(monkeypatch, [PROMPT + ref])
    g = generator(model, backend, cfg, draft_max=3)
    assert list(g.generate(PROMPT, N)) == ref
    assert 0 < g.stats.accepted < g.stats.drafted  # accepted drafts and rejected ones (rollbacks)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", ["greedy", "default"])
@pytest.mark.parametrize("spec, draft_max", [(None, 1), ("mtp", 2), ("mtp", 4)])
def test_several_sequences_give_each_sequences_plain_tokens(model, backend, name, spec, draft_max,
                                                           monkeypatch) -> None:  # fmt: skip
    cfg = SAMPLERS[name]
    prompts = [PROMPT, *OTHERS]
    refs = [plain(model, backend, cfg, p, seq=s) for s, p in enumerate(prompts)]
    if draft_max == 4:
        force_drafts(monkeypatch, [p + r for p, r in zip(prompts, refs)])
    g = generator(model, backend, cfg, spec=spec, draft_max=draft_max, n_seq=3)
    assert g.generate_batch(prompts, N, [Sampler(cfg)] * 3) == refs
    if name != "greedy":
        assert refs[0] != plain(model, backend, cfg, PROMPT, seq=1)  # the sequence id is part of the key


@pytest.mark.parametrize("name", ["greedy", "default"])
def test_textbook_acceptance_is_reproducible_and_greedy_lossless(model, name) -> None:
    """accept="textbook" is not seed-identical to plain decoding under sampling (it follows the target's
    distribution, tested in test_sampling), but it is a function of the seed; greedy it is plain decoding."""
    cfg = SAMPLERS[name]
    runs = [list(Generator(model, draft_max=3, n_ctx=N_CTX, n_ubatch=N_UBATCH, backends=("ref",), sampler=Sampler(cfg),
                           accept="textbook").generate(PROMPT, N)) for _ in range(2)]  # fmt: skip
    assert runs[0] == runs[1]
    if name == "greedy":
        assert runs[0] == plain(model, "ref", cfg, PROMPT)
    with pytest.raises(ValueError, match="acceptance rule"):
        Generator(model, accept="typical")


class Script(SpecPolicy):
    """Rounds of the given kinds in order (then spec), each spec round foreseen `ahead` rounds early."""

    def __init__(self, script: str, ahead: int) -> None:
        super().__init__()
        self.script, self.ahead = list(script), ahead

    def speculate(self) -> bool:
        return self.script.pop(0) == "S" if self.script else True

    def spec_within(self, n: int) -> bool:
        return "S" in self.script[: min(n, self.ahead)]


@pytest.mark.parametrize("ahead", [0, 2, 100])
def test_plain_stretches_with_and_without_the_head_rows_keep_every_sequences_tokens(model, ahead,
                                                                                   monkeypatch) -> None:  # fmt: skip
    """Adaptive rounds over several sampled sequences: plain stretches that keep the head's rows
    (ahead=100), that let them go until just before a spec round (2), or that let them go and meet an
    unforeseen spec round (0, which then decodes plainly): each sequence's plain tokens."""
    cfg = SAMPLERS["default"]
    prompts = [PROMPT, *OTHERS]
    refs = [plain(model, "cpu", cfg, p, seq=s) for s, p in enumerate(prompts)]
    force_drafts(monkeypatch, [p + r for p, r in zip(prompts, refs)])
    monkeypatch.setattr(Generator, "HEAD_WINDOW", 2)
    g = Generator(model, draft_max=2, n_ctx=N_CTX, n_ubatch=N_UBATCH, n_seq=3)
    g.policy = Script("S" + "." * 8 + "SS" + "." * 6 + "S" * 40, ahead)
    assert g.generate_batch(prompts, N, [Sampler(cfg)] * 3) == refs
    assert g.stats.plain_rounds == 14 + 2 * (ahead == 0) and 0 < g.stats.accepted < g.stats.drafted
