"""Samplers: greedy ties, top-k / top-p cuts, temperature, seeding, and the drawn distribution."""

from __future__ import annotations

import numpy as np
import pytest

from graphir.models.sampling import Sampler, SamplerConfig, noise_key, uniforms


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
