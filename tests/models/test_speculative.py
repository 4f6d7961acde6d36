"""Self-speculative decoding with the MTP head (models/speculative.py) on the tiny random models.

LOSSLESS: greedy output with MTP equals an independent plain greedy loop (single-token decodes
on a Context) token for token. Kernels need not be batch-invariant (a verify batch of k+1 rows
vs one row): a divergence is accepted only where the plain run's top-2 logits are within 1e-4,
and the comparison stops there. Random-weight heads almost never agree with the target, so the
full/partial acceptance paths are forced by patching the draft choice with the target's tokens.
"""

from __future__ import annotations

import dataclasses
import re

import numpy as np
import pytest

from graphir.models import tiny
from graphir.models.batch import Batch
from graphir.models.context import Context
from graphir.models.gguf_write import random_qwen35, write_qwen35
from graphir.models.model import Model
from graphir.models.mtp import MtpContext, NoMtpHeadError
from graphir.models.sampling import Sampler, SamplerConfig
from graphir.models.speculative import Generator, SpecPolicy

TIE = 1e-4
# longer than the n_ubatch=8 used below: the prompt runs in several ubatches
PROMPT = [5, 17, 230, 42, 99, 7, 281, 3, 64, 150, 11, 400, 12, 300, 8, 77, 190, 3, 9, 501]


@pytest.fixture(scope="module", params=["qwen35", "qwen35moe"])
def model(request) -> Model:
    return Model.load(tiny.cached_tiny_path(request.param))


_PLAIN: dict = {}


def plain_greedy(model: Model, n: int) -> tuple[list[int], list[float]]:
    """Greedy tokens of PROMPT by single-token decodes, and the top-2 logit gap at each step."""
    key = (model.path, n)
    if key not in _PLAIN:
        _PLAIN[key] = plain_greedy_of(model, PROMPT, n)
    return _PLAIN[key]


def assert_lossless(got: list[int], model: Model, n: int) -> None:
    ref, gaps = plain_greedy(model, n)
    assert len(got) == n
    for i, (a, b) in enumerate(zip(got, ref)):
        if a != b:  # only a near-tie may flip between a batched and a single-row decode
            assert gaps[i] < TIE, f"token {i}: {a} != plain {b} with a top-2 gap of {gaps[i]:.3g}"
            return


def generator(model: Model, **kw) -> Generator:
    """A Generator whose every round speculates (adaptive=False), unless kw says otherwise: these
    tests count drafts and rounds; the adaptive policy has its own tests below."""
    return Generator(model, **{"spec": "mtp", "n_ctx": 320, "n_ubatch": 8, "adaptive": False, **kw})


@pytest.mark.parametrize("draft_max", [1, 2, 3, 4])
def test_greedy_mtp_equals_plain_greedy(model, draft_max) -> None:
    n = 200 if draft_max == 3 else 30  # one long generation per model
    g = generator(model, draft_max=draft_max)
    out = list(g.generate(PROMPT, n))
    assert_lossless(out, model, n)
    st = g.stats
    assert st.n_generated == n and st.rounds >= 1 and st.drafted >= st.accepted >= 0
    assert len(st.acceptance_at) == draft_max and 0.0 <= st.acceptance_rate <= 1.0
    assert g.tokens == PROMPT + out


def test_seeded_sampler_gives_the_same_tokens(model) -> None:
    cfg = SamplerConfig(temperature=1.0, top_k=0, top_p=1.0, seed=11)
    plain = list(Generator(model, spec=None, n_ctx=320, n_ubatch=8, sampler=Sampler(cfg)).generate(PROMPT, 60))
    spec = list(generator(model, draft_max=3, sampler=Sampler(cfg)).generate(PROMPT, 60))
    assert spec == plain
    assert len(set(plain)) > 5  # really sampled


def patch_drafts(monkeypatch, seq: list[int], wrong_every: int = 0) -> None:
    """Drafts = the target's own tokens (seq = prompt + plain greedy output); with wrong_every=m
    the draft for every position divisible by m is wrong (partial acceptance)."""

    def pick(self, s, logits, pos):
        tok = seq[pos + 1]
        if wrong_every and (pos + 1) % wrong_every == 0:
            tok = (tok + 1) % self.model.n_vocab
        return tok, 1.0

    monkeypatch.setattr(Generator, "_pick_draft", pick)


def mtp_reference_logits(model: Model, seq: list[int]) -> np.ndarray:
    """The MTP head's logits at the last position of seq fed once: x_p = seq[p] with the target's
    h_{p-1} from a fresh one-shot decode of seq[:-1]."""
    n = len(seq)
    tgt = Context(model, n_ctx=320, n_batch=320, n_ubatch=64, embeddings_nextn=True)
    h = tgt.decode(Batch.simple(seq[:-1], all_outputs=True)).h_nextn
    mtp = MtpContext(model, n_ctx=320, n_batch=320, n_ubatch=64)
    return mtp.decode(Batch(seq[1:], embd=h, pos=np.arange(1, n))).logits[-1]


def next_draft_logits(g: Generator) -> np.ndarray:
    """The MTP head's logits for the next first draft step (feeds the pending rows)."""
    n = len(g._pend_tok)
    assert g.mtp.seq_pos_max(0) == g._pend_pos0 - 1  # no draft-time entries left behind
    b = Batch(g._pend_tok, embd=np.stack(g._pend_h), pos=np.arange(g._pend_pos0, g._pend_pos0 + n))
    return g.mtp.decode(b).logits[-1]


def assert_close(got, ref, what=""):
    got, ref = np.asarray(got, np.float64), np.asarray(ref, np.float64)
    err, scale = float(np.abs(got - ref).max()), max(1.0, float(np.abs(ref).max()))
    assert err <= 1e-3 * scale, f"{what}: max abs diff {err:.3g} (scale {scale:.3g})"


@pytest.mark.parametrize("wrong_every", [0, 3])
def test_forced_full_and_partial_acceptance(model, monkeypatch, wrong_every) -> None:
    n, k = 30, 3
    ref, _ = plain_greedy(model, n)
    patch_drafts(monkeypatch, PROMPT + ref, wrong_every)
    g = generator(model, draft_max=k)
    out = list(g.generate(PROMPT, n))
    assert_lossless(out, model, n)
    st = g.stats
    if out != ref:
        pytest.fail("forced drafts are the plain tokens: a near-tie divergence would not be forced")
    if wrong_every == 0:  # every draft accepted: k + 1 tokens per round
        assert st.accepted == st.drafted > 0 and st.rounds == -(-(n - 1) // (k + 1))
    else:  # some accepted, some rejected (rollback of 1..k tokens on the target)
        assert 0 < st.accepted < st.drafted and st.accepted_at[0] > 0
    # the MTP cache holds exactly the entries of the accepted sequence fed once
    assert_close(next_draft_logits(g), mtp_reference_logits(model, g.tokens), "next draft logits")


def test_mtp_cache_invariant_with_real_drafts(model) -> None:
    g = generator(model, draft_max=4)
    list(g.generate(PROMPT, 25))
    assert g.stats.drafted > 0 and g.stats.accepted < g.stats.drafted  # rejections happened
    assert_close(next_draft_logits(g), mtp_reference_logits(model, g.tokens), "next draft logits")


def test_p_min_stops_drafting(model) -> None:
    g = generator(model, draft_max=3, p_min=1.0)  # a random head is never certain
    out = list(g.generate(PROMPT, 12))
    assert_lossless(out, model, 12)
    assert g.stats.drafted == 0 and g.stats.rounds == 11


def test_bad_input(tmp_path, model) -> None:
    with pytest.raises(ValueError, match="draft_max .* n_rs_seq"):
        Generator(model, spec="mtp", draft_max=4, n_rs_seq=2)
    with pytest.raises(ValueError, match="unknown speculative"):
        Generator(model, spec="eagle")
    with pytest.raises(ValueError, match="draft_max"):
        Generator(model, draft_max=0)
    with pytest.raises(ValueError, match="exceed n_ctx"):
        list(Generator(model, n_ctx=32).generate(PROMPT, 20))
    hp = tiny.tiny_hparams("qwen35")
    hp = dataclasses.replace(hp, block_count=hp.n_layer_trunk, nextn_predict_layers=0)
    path = tmp_path / "no_mtp.gguf"
    write_qwen35(path, hp, random_qwen35(hp, 0), tiny.tiny_tokenizer_fields())
    with pytest.raises(NoMtpHeadError, match="no MTP head"):
        Generator(Model.load(path), spec="mtp")
    assert list(Generator(Model.load(path), spec=None, n_ctx=64).generate([1, 2, 3], 3))  # plain still works


OTHERS = [[300, 8, 77], [42, 99, 7, 281, 3, 64, 150, 11, 400, 12, 5, 17, 230, 501]]


def plain_greedy_of(model: Model, prompt: list[int], n: int) -> tuple[list[int], list[float]]:
    """plain_greedy for any prompt (single-token decodes, one sequence)."""
    ctx = Context(model, n_ctx=320, n_batch=64, n_ubatch=8)
    logits = ctx.decode(Batch.simple(prompt, all_outputs=True)).logits[-1]
    toks, gaps = [], []
    for i in range(n):
        top2 = np.sort(logits)[-2:]
        toks.append(int(np.argmax(logits)))
        gaps.append(float(top2[1] - top2[0]))
        if i + 1 < n:
            logits = ctx.decode(Batch.simple([toks[-1]], len(prompt) + i)).logits[-1]
    return toks, gaps


@pytest.mark.parametrize("draft_max", [2, 4])
def test_several_sequences_equal_their_plain_greedy(model, draft_max, monkeypatch) -> None:
    prompts, n = [PROMPT, *OTHERS], 24
    refs = [plain_greedy_of(model, p, n) for p in prompts]
    if draft_max == 4:  # force partial acceptance: drafts are the target's tokens, every 3rd wrong
        seqs = [p + r[0] for p, r in zip(prompts, refs)]

        def pick(self, s, logits, pos):
            tok = seqs[s.seq][pos + 1]
            return ((tok + 1) % self.model.n_vocab if (pos + 1) % 3 == 0 else tok), 1.0

        monkeypatch.setattr(Generator, "_pick_draft", pick)
    g = generator(model, draft_max=draft_max, n_seq=3)
    outs = g.generate_batch(prompts, n)
    for s, (got, (ref, gaps)) in enumerate(zip(outs, refs)):
        assert len(got) == n
        for i, (a, b) in enumerate(zip(got, ref)):
            if a != b:
                assert gaps[i] < TIE, f"seq {s} token {i}: {a} != plain {b} (top-2 gap {gaps[i]:.3g})"
                break
    st = g.stats
    assert st.n_generated == 3 * n and st.drafted > 0
    if draft_max == 4:
        assert 0 < st.accepted < st.drafted
    with pytest.raises(ValueError, match="n_seq"):
        g.generate_batch([PROMPT] * 4, 2)


# --------------------------------------------------------------------------------------------
# graphir generate --spec mtp
# --------------------------------------------------------------------------------------------


def test_cli_spec_mtp_prints_the_plain_greedy_text_and_stats(tmp_path, monkeypatch, capsys) -> None:
    from graphir.tools.cli import main

    monkeypatch.setenv("GRAPHIR_CACHE", str(tmp_path / "cache"))
    argv = ["generate", "-p", "def add(a, b):", "-n", "40", "--greedy"]
    assert main(argv) == 0
    plain = capsys.readouterr()
    assert main([*argv, "--spec", "mtp", "--draft-max", "3"]) == 0
    spec = capsys.readouterr()
    assert spec.out == plain.out and len(spec.out) > len("def add(a, b):\n")
    assert "spec mtp: rounds" in spec.err and "accepted" in spec.err and "tok/s" in spec.err
    assert "spec mtp" not in plain.err
    assert "spec policy: spec" in spec.err and "preferred" in spec.err  # the adaptive policy's measurements
    assert main([*argv, "--spec", "mtp", "--draft-max", "3", "--spec-fixed"]) == 0
    fixed = capsys.readouterr()
    assert fixed.out == plain.out and "spec policy" not in fixed.err and " plain)" not in fixed.err
    assert main([*argv, "--spec", "mtp", "--draft-max", "0"]) == 2
    assert re.search("draft.max", capsys.readouterr().err)  # draft_max or --draft-max


def test_cli_sampled_text_is_the_same_with_and_without_spec(tmp_path, monkeypatch, capsys) -> None:
    from graphir.tools.cli import main

    monkeypatch.setenv("GRAPHIR_CACHE", str(tmp_path / "cache"))
    argv = ["generate", "-p", "def add(a, b):", "-n", "40", "--seed", "4", "-q"]
    assert main(argv) == 0
    plain = capsys.readouterr().out
    for k in ("1", "4"):
        assert main([*argv, "--spec", "mtp", "--draft-max", k]) == 0
        assert capsys.readouterr().out == plain
    assert main([*argv[:-3], "--seed", "5", "-q"]) == 0
    assert capsys.readouterr().out != plain


# ---- the adaptive policy (SpecPolicy): speculate only where it measured cheaper ----------------


def run_policy(policy: SpecPolicy, cost: dict[bool, float], n: int, tokens: dict[bool, int] | None = None) -> str:
    """n decisions of `policy` with fixed seconds per round of each kind: 'S' spec, '.' plain."""
    tokens = tokens or {True: 1, False: 1}
    out = []
    for _ in range(n):
        kind = policy.speculate()
        policy.record(kind, cost[kind], tokens[kind])
        out.append("S" if kind else ".")
    return "".join(out)


def test_policy_measures_both_then_runs_the_cheaper_and_probes_ever_less_often() -> None:
    p = SpecPolicy(probe_every=16, probe_len=3)
    got = run_policy(p, {True: 3e-3, False: 1e-3}, 600)
    # plain first; the first probe of spec once first_budget (0.05) of the time run covers 3 rounds at
    # twice a plain round's cost (no setup cost here): after 60 plain rounds
    assert got.startswith("." * 60 + "SSS...") and not p.preferred
    probes = [i for i in range(1, len(got)) if got[i] == "S" and got[i - 1] == "."]
    assert len(probes) >= 3 and all(got[i : i + 3] == "SSS" for i in probes)
    gaps = [b - a for a, b in zip(probes, probes[1:])]
    assert gaps == sorted(gaps) and gaps[-1] > gaps[0], f"probe gaps should grow: {gaps}"
    assert got[6:].count("S") < 0.1 * len(got)


def test_policy_prefers_spec_per_emitted_token_and_follows_a_change() -> None:
    p = SpecPolicy(probe_every=8, probe_len=2)
    # a spec round costs twice a plain one but emits three tokens: cheaper per token
    got = run_policy(p, {True: 2e-3, False: 1e-3}, 100, {True: 3, False: 1})
    first = got.index("S")
    assert p.preferred and got[first:].count(".") <= 0.2 * len(got)
    # the text changes: spec rounds now emit one token each; the probes notice and plain wins
    got = run_policy(p, {True: 2e-3, False: 1e-3}, 200, {True: 1, False: 1})
    assert not p.preferred and got[-50:].count("S") <= 10


def test_one_probe_is_enough_to_notice_a_change() -> None:
    """A probe replaces the probed kind's samples: spec rounds measured expensive long ago do not
    outvote a probe that finds them cheap now (window 9, probes of 3 rounds)."""
    p = SpecPolicy(probe_every=8, probe_len=3, window=9)
    run_policy(p, {True: 3e-3, False: 1e-3}, 300)
    assert not p.preferred
    got = run_policy(p, {True: 0.5e-3, False: 1e-3}, 600)
    first = got.index("SSS")  # the first probe after the change
    assert p.preferred and got[first + 3 :].count(".") <= 0.1 * len(got), got


def test_policy_is_robust_to_a_preempted_round() -> None:
    """Medians: a few rounds slowed 100x by another process do not flip the choice."""
    p = SpecPolicy(probe_every=8, probe_len=3)
    run_policy(p, {True: 1e-3, False: 2e-3}, 80)  # the first probe of spec after 60 plain rounds
    assert p.preferred
    for _ in range(3):
        p.record(True, 0.1, 1)
    assert p.preferred


def test_policy_speculates_only_when_cheaper_by_the_margin() -> None:
    p = SpecPolicy(probe_every=8, probe_len=5, margin=0.05)  # a probe outweighs older samples (window 9)
    got = run_policy(p, {True: 0.97e-3, False: 1.00e-3}, 100)  # spec 3% cheaper: within the margin
    assert not p.preferred and got[4:].count("S") <= 0.2 * len(got)
    got = run_policy(p, {True: 0.80e-3, False: 1.00e-3}, 400)  # 20% cheaper: the next probe notices
    assert p.preferred and got[-50:].count(".") <= 10
    got = run_policy(p, {True: 0.97e-3, False: 1.00e-3}, 200)  # chosen, spec stays while it is cheaper at all
    assert p.preferred and got[-50:].count(".") <= 10
    got = run_policy(p, {True: 1.00e-3, False: 1.00e-3}, 200)  # a tie: plain (no switching cost)
    assert not p.preferred and got[-50:].count("S") <= 10
    got = run_policy(p, {True: 0.97e-3, False: 1.00e-3}, 200)  # ... and back only by the margin
    assert not p.preferred and got[-50:].count("S") <= 10


@pytest.mark.parametrize("budget", [0.05, 0.02])
def test_policy_spends_at_most_its_budget_on_probes(budget: float) -> None:
    """A spec round 10x a plain one: doubling intervals alone would spend ~30% of the first few
    hundred rounds' time in probes; the time budget keeps it near `budget` from the start."""
    cost = {True: 10e-3, False: 1e-3}
    p = SpecPolicy(probe_every=8, probe_len=4, budget=budget)
    got = run_policy(p, cost, 2000)
    got = got[got.index("SSSS") + 4 :]  # after measuring both kinds once
    extra = got.count("S") * (cost[True] - cost[False])
    total = sum(cost[k == "S"] for k in got)
    assert got.count("S") >= 4, "it still probes"
    assert extra <= 1.2 * budget * total, f"probes cost {extra / total:.1%} of the run"


def test_policy_probes_a_confirmed_choice_on_a_shrinking_budget() -> None:
    """Every probe that confirms plain halves the budget (down to budget / 8): far into a long run
    where spec keeps losing, re-checking it costs well under the starting 5%; a probe that changes
    the choice restores the budget (the next probe comes soon)."""
    cost = {True: 10e-3, False: 1e-3}
    p = SpecPolicy(probe_every=8, probe_len=4, budget=0.05)
    got = run_policy(p, cost, 20000)
    late = got[10000:]
    extra = late.count("S") * (cost[True] - cost[False])
    assert late.count("S") >= 4, "it still probes"
    assert extra <= 0.2 * 0.05 * sum(cost[k == "S"] for k in late), f"late probes cost {extra:.3f} s"
    assert p._budget == 0.05 / SpecPolicy.BUDGET_FLOOR
    got = run_policy(p, {True: 0.2e-3, False: 1e-3}, 12000)  # spec became cheap: the next probe switches
    switch = got.index("SSSS")
    assert switch <= 6000 and p.preferred, switch  # within the floor budget's wait (36 ms / 0.625%)
    # the changed choice restored the budget: the probes of plain that follow come soon
    assert got[switch:].count("....") >= 2 and got[switch + 4 :].index(".") < 2000


def test_policy_foresees_its_spec_rounds() -> None:
    """spec_within(n) is True in the n rounds before every spec round (probes included), so the
    generator keeps the head's rows for them; False in a plain stretch far from any."""
    p = SpecPolicy(probe_every=16, probe_len=3)
    kinds, within = [], []
    for _ in range(600):
        kinds.append(p.speculate())
        within.append(p.spec_within(5))
        p.record(kinds[-1], 3e-3 if kinds[-1] else 1e-3, 1)
    spec = [i for i, k in enumerate(kinds) if k]
    assert len(spec) > 6, "it probes"
    assert all(all(within[max(0, i - 5) : i]) for i in spec), "a spec round came unforeseen"
    # and not much earlier (the rows would be read for nothing), even while a due probe waits for its budget
    early = [i for i, w in enumerate(within) if w and not any(kinds[i + 1 : i + 7])]
    assert len(early) <= len(spec) // 3, f"rounds keeping the rows for no spec round: {early}"
    # spec cheaper than plain, though not by the margin: a little noise would flip the choice
    p = SpecPolicy(probe_every=16, probe_len=3)
    run_policy(p, {True: 0.95e-3, False: 1e-3}, 200)
    assert not p.preferred and p.spec_within(1)


def test_the_first_probe_of_spec_waits_for_its_setup_cost() -> None:
    """The first spec rounds compile plans (`expect_setup`): the first probe waits until first_budget
    of the time run covers that plus probe_len rounds at twice a plain round's cost; a generation
    shorter than that never speculates, and spec_within foresees the probe when it comes."""
    p = SpecPolicy(probe_len=3, first_budget=0.1)
    p.expect_setup(0.05)  # 50 plain rounds of 1 ms
    kinds, within = [], []
    for _ in range(700):
        kinds.append(p.speculate())
        within.append(p.spec_within(5))
        p.record(kinds[-1], 0.5e-3 if kinds[-1] else 1e-3, 1)
    first = kinds.index(True)
    assert "not tried yet" not in p.summary()
    # due when 0.1 * (rounds so far) * 1 ms >= 50 ms + 3 * 1 ms: after 530 plain rounds
    assert first == 530 and kinds[first : first + 3] == [True] * 3, first
    assert all(within[first - 5 : first]) and not any(within[: first - 6]), "the rows are kept only just before"
    assert p.preferred and kinds[-50:].count(False) <= 10  # spec measured cheaper: it runs
    # a cheaper setup moves the probe earlier; the kinds stay plain until it is due
    q = SpecPolicy(probe_len=3, first_budget=0.1)
    q.expect_setup(0.01)
    run_policy(q, {True: 0.5e-3, False: 1e-3}, 100)
    assert "drafting not tried yet" in q.summary() and "10 ms of plans" in q.summary() and "after ~0.13 s" in q.summary()
    assert run_policy(q, {True: 0.5e-3, False: 1e-3}, 40).index("S") == 30  # the 131st round


def test_policy_ignores_uncounted_rounds_and_rejects_bad_settings() -> None:
    p = SpecPolicy()
    p.record(True, 10.0, 1, counted=False)
    assert p.cost(True) is None and p.counted[True] == 0
    for bad in ({"probe_every": 0}, {"probe_len": 0}, {"window": 0}, {"probe_every": 8, "probe_max": 4},
                {"margin": -0.1}, {"margin": 1.0}, {"budget": 0.0}, {"budget": 1.5}, {"first_budget": 0.0},
                {"first_budget": 2.0}):  # fmt: skip
        with pytest.raises(ValueError, match="policy"):
            SpecPolicy(**bad)


class Scripted(SpecPolicy):
    """Rounds of the given kinds in order (then spec), recording nothing."""

    def __init__(self, script: str) -> None:
        super().__init__()
        self.script = list(script)

    def speculate(self) -> bool:
        return self.script.pop(0) == "S" if self.script else True

    def spec_within(self, n: int) -> bool:
        return True  # every plain round keeps the head's rows


@pytest.mark.parametrize("script", ["S..S", "....SS.........S.S"])
def test_plain_rounds_between_spec_rounds_are_lossless_and_the_head_catches_up(model, monkeypatch, script) -> None:
    """Plain rounds skip the head; the next spec round feeds it every row it missed, so the MTP cache
    ends as if every row had been fed once, and the tokens are plain greedy decoding's."""
    n, k = 30, 3
    ref, _ = plain_greedy(model, n)
    patch_drafts(monkeypatch, PROMPT + ref, 3)  # real acceptance and rollback in the spec rounds
    g = generator(model, draft_max=k, adaptive=True)
    g.policy = Scripted(script + "S" * 40)
    out = list(g.generate(PROMPT, n))
    assert out == ref
    st = g.stats
    assert st.plain_rounds == script.count(".") and st.drafted > 0 and 0 < st.accepted < st.drafted
    assert_close(next_draft_logits(g), mtp_reference_logits(model, g.tokens), "next draft logits")


@pytest.mark.parametrize("n_plain", [12, 40])
def test_a_long_plain_stretch_refeeds_the_head_only_its_window(model, monkeypatch, n_plain) -> None:
    """After more plain rounds than HEAD_WINDOW the switch to spec rounds drops the head's cache
    of the sequence and feeds only the last HEAD_WINDOW waiting rows: the head then holds exactly
    the positions from there on (its next draft is that of a head fed those rows alone), and the
    tokens are still plain greedy decoding's. 40 plain rounds: the waiting rows were cut meanwhile."""
    n, k, window = 60, 3, 4
    monkeypatch.setattr(Generator, "HEAD_WINDOW", window)
    ref, _ = plain_greedy(model, n)
    patch_drafts(monkeypatch, PROMPT + ref, 3)
    g = generator(model, draft_max=k, adaptive=True)
    g.policy = Scripted("S" + "." * n_plain + "S" * 40)
    waiting, plain_round = [], g._plain_round

    def counted_plain_round(*args):
        emitted = plain_round(*args)
        waiting.append(len(g._pend_tok))
        return emitted

    monkeypatch.setattr(g, "_plain_round", counted_plain_round)
    assert list(g.generate(PROMPT, n)) == ref
    assert len(waiting) == n_plain and max(waiting) < 2 * (window + k + 2), "the waiting rows must stay bounded"
    assert_head_holds_true_rows_from_a_cut(model, g)


class Foreseen(Scripted):
    """A script that foresees its spec rounds `ahead` rounds early (SpecPolicy.spec_within)."""

    def __init__(self, script: str, ahead: int) -> None:
        super().__init__(script)
        self.ahead = ahead

    def spec_within(self, n: int) -> bool:
        return "S" in self.script[: min(n, self.ahead)]


@pytest.mark.parametrize("ahead", [100, 0])
def test_plain_rounds_far_from_spec_skip_the_head_rows_and_stay_lossless(model, monkeypatch, ahead) -> None:
    """Plain rounds the policy says are far from a spec round do not read the target's hidden
    states and let the head's rows (and cache) go; those before a foreseen spec round keep them.
    Unforeseen (ahead=0), the spec round asked for right after such rounds decodes plainly, keeping
    the rows its first draft step needs. Either way: plain greedy tokens, and a head consistent from
    where its rows start again."""
    n, k, window, stretch = 50, 3, 4, 20
    monkeypatch.setattr(Generator, "HEAD_WINDOW", window)
    ref, _ = plain_greedy(model, n)
    patch_drafts(monkeypatch, PROMPT + ref, 3)
    g = generator(model, draft_max=k, adaptive=True)
    g.policy = Foreseen("S" + "." * stretch + "S" * 40, ahead)
    asked, decode = [], g.target.decode

    def noting_decode(batch, **kw):
        asked.append(kw.get("h_nextn", True))
        return decode(batch, **kw)

    monkeypatch.setattr(g.target, "decode", noting_decode)
    assert list(g.generate(PROMPT, n)) == ref
    horizon = window + k + 1  # the rows a switch can feed the head
    skipped = stretch - horizon if ahead else stretch
    assert asked.count(False) == skipped, f"plain rounds without the hidden states: {asked}"
    assert g.stats.plain_rounds == stretch + (ahead == 0) and g.stats.accepted > 0
    assert_head_holds_true_rows_from_a_cut(model, g)


def assert_head_holds_true_rows_from_a_cut(model: Model, g: Generator) -> None:
    """The head's cache of sequence 0 was dropped and starts again at some position `start`: its next
    draft is that of a fresh head fed x_p with the target's h_{p-1} for p = start .. (true rows alone)."""
    start = g.mtp.seq_pos_min(0)
    assert start > len(PROMPT), f"the head still holds position {start}: its cache was not dropped"
    tgt = Context(model, n_ctx=320, n_batch=320, n_ubatch=64, embeddings_nextn=True)
    h = tgt.decode(Batch.simple(g.tokens[:-1], all_outputs=True)).h_nextn
    mtp = MtpContext(model, n_ctx=320, n_batch=320, n_ubatch=64)
    want = mtp.decode(Batch(g.tokens[start:], embd=h[start - 1 :], pos=np.arange(start, len(g.tokens)))).logits[-1]
    assert_close(next_draft_logits(g), want, "next draft logits of the windowed head")


def test_adaptive_generator_is_lossless_and_reports_its_choice(model, monkeypatch) -> None:
    g = generator(model, draft_max=2, adaptive=True)
    assert g.policy is not None
    setups, expected = [], []

    def expect_setup(seconds: float) -> None:  # records the estimate; none set: the first probe comes early
        # ... per graph node of the target's decode plans so far (its worst-case plan, which may also copy
        # weights once, is timed apart), for one verify plan and 3 + draft_max head plans
        st, nodes = g.target.stats, g.target.reserve_stats.n_nodes
        per_plan = st.t_compile / (st.plan_compiles - 1)
        expected.append(per_plan * (1 + 5 * g.mtp.reserve_stats.n_nodes / nodes))
        setups.append(seconds)

    monkeypatch.setattr(g.policy, "expect_setup", expect_setup)
    g.policy.first_budget = 1.0
    out = list(g.generate(PROMPT, 40))
    assert_lossless(out, model, 40)
    p = g.policy
    assert p.counted[True] >= 1 and p.counted[False] >= 1  # both kinds measured
    # the generator estimated the first probe's compile cost from its contexts' measured compiles
    assert len(setups) == 1 and 0 < setups[0] < 10 and setups == pytest.approx(expected)
    assert g.target.stats.t_reserve > 0 and g.target.stats.t_compile > 0
    assert g.stats.plain_rounds >= p.probe_len and "plain" in g.stats.summary()
    assert generator(model, adaptive=False).policy is None
    with pytest.raises(ValueError, match="adaptive"):
        generator(model, adaptive=1)
