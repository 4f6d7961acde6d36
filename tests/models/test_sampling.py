"""Samplers: greedy ties, top-k / top-p cuts, temperature, seeding, and the drawn distribution."""

from __future__ import annotations

import numpy as np
import pytest

from graphir.models.sampling import Sampler, SamplerConfig


def test_greedy_takes_the_lowest_id_on_ties():
    logits = np.array([0.0, 3.0, 1.0, 3.0])
    assert Sampler(SamplerConfig(greedy=True)).sample(logits) == 1
    assert Sampler(SamplerConfig(temperature=0.0)).sample(logits) == 1


def test_top_k_one_and_tiny_top_p_are_greedy():
    logits = np.array([0.5, 0.1, 2.0, 1.9])
    for seed in range(20):
        assert Sampler(SamplerConfig(top_k=1, temperature=5.0, seed=seed)).sample(logits) == 2
        assert Sampler(SamplerConfig(top_k=0, top_p=1e-6, temperature=5.0, seed=seed)).sample(logits) == 2


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


def test_seeded_runs_repeat_and_seeds_differ():
    logits = np.zeros(50)
    draw = lambda seed: [
        Sampler(SamplerConfig(top_k=0, top_p=1.0, temperature=1.0, seed=seed)).sample(logits) for _ in range(1)
    ]
    s1 = Sampler(SamplerConfig(top_k=0, top_p=1.0, seed=7))
    s2 = Sampler(SamplerConfig(top_k=0, top_p=1.0, seed=7))
    a = [s1.sample(logits) for _ in range(30)]
    b = [s2.sample(logits) for _ in range(30)]
    assert a == b
    assert len({tuple(draw(s)) for s in range(20)}) > 1


def test_draws_follow_the_softmax():
    logits = np.log(np.array([0.6, 0.3, 0.1]))
    s = Sampler(SamplerConfig(top_k=0, top_p=1.0, temperature=1.0, seed=3))
    counts = np.bincount([s.sample(logits) for _ in range(6000)], minlength=3) / 6000
    np.testing.assert_allclose(counts, [0.6, 0.3, 0.1], atol=0.03)


@pytest.mark.parametrize("kw, msg", [({"top_k": -1}, "top_k"), ({"top_p": 0.0}, "top_p"), ({"top_p": 1.5}, "top_p"),
                                     ({"temperature": float("nan")}, "temperature")])  # fmt: skip
def test_bad_config_is_a_clear_error(kw, msg):
    with pytest.raises(ValueError, match=rf"\[sampler\] {msg}"):
        SamplerConfig(**kw)
