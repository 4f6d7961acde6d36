"""Samplers: greedy ties, top-k / top-p cuts, temperature, seeding, and the drawn distribution."""

from __future__ import annotations

import math

import numpy as np
import pytest

from graphir.models.sampling import Sampler, SamplerConfig, gumbel, noise_key, uniforms


def test_greedy_takes_the_lowest_id_on_ties():
    logits = np.array([0.0, 3.0, 1.0, 3.0])
    assert Sampler(SamplerConfig(greedy=True)).sample(logits, 0) == 1
    assert Sampler(SamplerConfig(temperature=0.0)).sample(logits, 0) == 1


def test_top_k_one_and_tiny_top_p_are_greedy():
    logits = np.array([0.5, 0.1, 2.0, 1.9])
    for pos in range(20):
        assert Sampler(SamplerConfig(top_k=1, temperature=5.0, seed=pos)).sample(logits, pos) == 2
        assert Sampler(SamplerConfig(top_k=0, top_p=1e-6, temperature=5.0, seed=pos)).sample(logits, pos) == 2


def test_top_k_keeps_the_lowest_ids_on_ties():
    logits = np.array([1.0, 3.0, 2.0, 3.0, 2.0, 2.0, 0.0])
    ids, _ = Sampler(SamplerConfig(top_k=4, top_p=1.0)).probs(logits)
    assert ids.tolist() == [1, 3, 2, 4]


def test_top_p_keeps_the_smallest_prefix_reaching_p():
    logits = np.log(np.array([0.5, 0.3, 0.15, 0.05]))
    ids, p = Sampler(SamplerConfig(top_k=0, top_p=0.75, temperature=1.0)).probs(logits)
    assert ids.tolist() == [0, 1]
    np.testing.assert_allclose(p, [0.5 / 0.8, 0.3 / 0.8], rtol=1e-6)
    ids, _ = Sampler(SamplerConfig(top_k=0, top_p=0.85, temperature=1.0)).probs(logits)
    assert ids.tolist() == [0, 1, 2]


def test_temperature_flattens_and_sharpens():
    logits = np.array([2.0, 1.0, 0.0])
    hot = Sampler(SamplerConfig(top_k=0, top_p=1.0, temperature=4.0)).probs(logits)[1]
    cold = Sampler(SamplerConfig(top_k=0, top_p=1.0, temperature=0.25)).probs(logits)[1]
    assert hot.max() < 0.5 < cold.max()


def test_a_draw_is_a_function_of_seed_seq_pos_and_the_logits():
    logits = np.zeros(50)
    cfg = SamplerConfig(top_k=0, top_p=1.0, temperature=1.0, seed=7)
    a = [Sampler(cfg).sample(logits, pos) for pos in range(30)]
    s = Sampler(cfg)
    assert [s.sample(logits, pos) for pos in reversed(range(30))] == a[::-1]  # any order, any sampler object
    assert len(set(a)) > 10  # positions differ
    assert a != [Sampler(cfg).sample(logits, pos, seq=1) for pos in range(30)]  # sequences differ
    assert a != [Sampler(SamplerConfig(top_k=0, top_p=1.0, seed=8)).sample(logits, pos) for pos in range(30)]


def test_sample_p_is_the_draw_and_its_chain_probability():
    logits = np.log(np.array([0.5, 0.3, 0.15, 0.05]))
    s = Sampler(SamplerConfig(top_k=3, top_p=1.0, temperature=1.0, seed=2))
    for pos in range(20):
        tok, p = s.sample_p(logits, pos)
        assert tok == s.sample(logits, pos)
        assert p == pytest.approx([0.5, 0.3, 0.15][tok] / 0.95)
    tok, p = Sampler(SamplerConfig(greedy=True)).sample_p(logits, 0)
    assert tok == 0 and p == pytest.approx(0.5)  # greedy: the softmax of the raw logits


def test_uniforms_are_splitmix64():
    """The documented hash: uniform(key, v) is splitmix64's output v+1 from state key."""
    m64 = (1 << 64) - 1
    key, out = noise_key(1, 2, 3), []
    state = key
    for _ in range(4):
        state = (state + 0x9E3779B97F4A7C15) & m64
        z = ((state ^ (state >> 30)) * 0xBF58476D1CE4E5B9) & m64
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & m64
        out.append(((z ^ (z >> 31)) >> 11) + 0.5)
    np.testing.assert_array_equal(uniforms(1, 2, 3, np.arange(4)) * 2.0**53, out)
    assert uniforms(1, 2, 3, np.arange(4), stream=1).tolist() != uniforms(1, 2, 3, np.arange(4)).tolist()


@pytest.mark.parametrize("kw, msg", [({"top_k": -1}, "top_k"), ({"top_p": 0.0}, "top_p"), ({"top_p": 1.5}, "top_p"),
                                     ({"temperature": float("nan")}, "temperature")])  # fmt: skip
def test_bad_config_is_a_clear_error(kw, msg):
    with pytest.raises(ValueError, match=rf"\[sampler\] {msg}"):
        SamplerConfig(**kw)


# ---- the drawn distribution ------------------------------------------------------------------------
# Draws over positions 0..N-1 (one independent noise vector each) must follow the distribution the
# chain claims; the claim itself is checked against a direct transcription of the documented chain.

N_DRAWS = 12000
LOGITS = np.random.default_rng(1).normal(0.0, 2.0, 64)
CONFIGS = [
    SamplerConfig(temperature=1.0, top_k=0, top_p=1.0, seed=1),
    SamplerConfig(temperature=0.7, top_k=10, top_p=1.0, seed=2),
    SamplerConfig(temperature=1.3, top_k=0, top_p=0.8, seed=3),
    SamplerConfig(temperature=0.8, top_k=40, top_p=0.95, seed=4),  # graphir generate's default
]


def chain(logits: np.ndarray, cfg: SamplerConfig) -> np.ndarray:
    """The documented chain, written out: probabilities over the whole vocabulary."""
    order = sorted(range(len(logits)), key=lambda i: (-logits[i], i))[: cfg.top_k or None]
    e = np.exp(logits[order] - logits[order[0]])
    order = order[: int(np.argmax(np.cumsum(e) >= cfg.top_p * e.sum())) + 1] if cfg.top_p < 1.0 else order
    p = np.zeros(len(logits))
    z = logits[order] / cfg.temperature
    p[order] = np.exp(z - z.max()) / np.exp(z - z.max()).sum()
    return p


def chi2_pvalue(counts: np.ndarray, p: np.ndarray) -> float:
    """Pearson's chi-square test of counts against p (bins with expected < 5 pooled; Wilson-Hilferty
    approximation of the chi-square tail). A draw outside p's support gives 0."""
    n = counts.sum()
    if counts[p == 0].any():
        return 0.0
    exp = n * p
    big = exp >= 5
    obs_b, exp_b = list(counts[big]), list(exp[big])
    if (~big & (p > 0)).any():
        obs_b.append(counts[~big].sum())
        exp_b.append(exp[~big].sum())
    obs_b, exp_b = np.array(obs_b, float), np.array(exp_b)
    x2, k = float(((obs_b - exp_b) ** 2 / exp_b).sum()), len(obs_b) - 1
    z = ((x2 / k) ** (1 / 3) - (1 - 2 / (9 * k))) / math.sqrt(2 / (9 * k))
    return 0.5 * math.erfc(z / math.sqrt(2))


def draw_counts(sample, n: int = N_DRAWS) -> np.ndarray:
    return np.bincount([sample(LOGITS, pos) for pos in range(n)], minlength=len(LOGITS))


@pytest.mark.parametrize("cfg", CONFIGS, ids=lambda c: f"T{c.temperature}-k{c.top_k}-p{c.top_p}")
def test_draws_follow_the_claimed_distribution(cfg: SamplerConfig) -> None:
    s = Sampler(cfg)
    ids, p = s.probs(LOGITS)
    np.testing.assert_allclose(np.bincount(ids, p, len(LOGITS)), chain(LOGITS, cfg), atol=1e-12)
    assert chi2_pvalue(draw_counts(s.sample), chain(LOGITS, cfg)) > 1e-3
    assert chi2_pvalue(draw_counts(lambda x, pos: s.sample_p(x, pos)[0], 4000), chain(LOGITS, cfg)) > 1e-3


class NoTemperature(Sampler):
    """Mutant: Gumbel-max on the raw logits (forgets the temperature)."""

    def sample(self, logits, pos, seq=0):
        ids, _ = self.candidates(logits)
        return int(ids[np.argmax(np.asarray(logits)[ids] + gumbel(self.config.seed, seq, pos, ids))])


class ExponentialNoise(Sampler):
    """Mutant: -log(u) noise instead of Gumbel's -log(-log(u))."""

    def sample(self, logits, pos, seq=0):
        ids, z = self.candidates(logits)
        return int(ids[np.argmax(z - np.log(uniforms(self.config.seed, seq, pos, ids)))])


class TopKOffByOne(Sampler):
    """Mutant: keeps one candidate too many."""

    def candidates(self, logits):
        c = self.config
        ids = np.argsort(-np.asarray(logits), kind="stable")[: c.top_k + 1]
        return ids, np.asarray(logits, np.float64)[ids] / c.temperature


@pytest.mark.parametrize("mutant", [NoTemperature, ExponentialNoise, TopKOffByOne], ids=lambda m: m.__name__)
def test_the_test_rejects_a_mutated_sampler(mutant) -> None:
    cfg = CONFIGS[1]  # temperature 0.7, top-k 10
    assert chi2_pvalue(draw_counts(mutant(cfg).sample), chain(LOGITS, cfg)) < 1e-6


# ---- coupling ------------------------------------------------------------------------------------


def gumbel_coupling(p: np.ndarray, q: np.ndarray) -> float:
    """P(argmax(log p + g) == argmax(log q + g)) for one shared Gumbel vector g, exactly: v wins both
    races iff E_w > E_v max(p_w/p_v, q_w/q_v) for all w (E = -log u, exponential), so
    P = sum_v 1 / sum_w max(p_w/p_v, q_w/q_v) over the common support."""
    both = np.flatnonzero((p > 0) & (q > 0))
    return float(sum(1.0 / np.maximum(p / p[v], q / q[v]).sum() for v in both))


PAIRS = [  # (target logits, head logits, sampler): close, far, and with different candidate sets
    (LOGITS, LOGITS + np.random.default_rng(2).normal(0.0, 0.3, 64), CONFIGS[0]),
    (LOGITS, LOGITS + np.random.default_rng(3).normal(0.0, 1.5, 64), CONFIGS[0]),
    (LOGITS, LOGITS + np.random.default_rng(4).normal(0.0, 0.8, 64), CONFIGS[3]),
    (LOGITS, np.random.default_rng(5).normal(0.0, 2.0, 64), CONFIGS[2]),
]


@pytest.mark.parametrize("pair", range(len(PAIRS)))
def test_coupled_acceptance_matches_the_gumbel_coupling(pair: int) -> None:
    xp, xq, cfg = PAIRS[pair]
    s = Sampler(cfg)
    p, q = chain(xp, cfg), chain(xq, cfg)
    same = np.array([s.sample(xp, pos) == s.sample(xq, pos) for pos in range(N_DRAWS)])
    want = gumbel_coupling(p, q)
    assert abs(same.mean() - want) <= 4 * math.sqrt(want * (1 - want) / N_DRAWS) + 1e-9
    assert want <= np.minimum(p, q).sum() + 1e-12  # no coupling beats 1 - TV


@pytest.mark.parametrize("pair", range(len(PAIRS)))
def test_textbook_verify_accepts_1_minus_tv_and_emits_the_target_distribution(pair: int) -> None:
    xp, xq, cfg = PAIRS[pair]
    s = Sampler(cfg)
    p, q = chain(xp, cfg), chain(xq, cfg)
    res = [s.verify(xp, xq, s.sample(xq, pos), pos) for pos in range(N_DRAWS)]
    acc = np.mean([ok for _, ok in res])
    want = np.minimum(p, q).sum()
    assert abs(acc - want) <= 4 * math.sqrt(want * (1 - want) / N_DRAWS) + 1e-9
    assert chi2_pvalue(np.bincount([t for t, _ in res], minlength=len(p)), p) > 1e-3
    assert all(t == s.sample(xq, pos) for pos, (t, ok) in enumerate(res[:200]) if ok)


def test_textbook_verify_is_greedy_argmax_matching() -> None:
    g = Sampler(SamplerConfig(greedy=True))
    assert g.verify(LOGITS, LOGITS, int(np.argmax(LOGITS)), 3) == (int(np.argmax(LOGITS)), True)
    assert g.verify(LOGITS, LOGITS, 0, 3) == (int(np.argmax(LOGITS)), int(np.argmax(LOGITS)) == 0)
