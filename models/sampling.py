"""Token samplers: greedy, or coupled temperature / top-k / top-p sampling.

Every draw is a deterministic function of the sampler's config, the row of logits and its
coordinates (seed, seq, pos) -- `pos` is the position the drawn token will take in sequence
`seq`. Plain decoding, a verify row of speculative decoding and an MTP draft at the same
(seq, pos) therefore share their randomness (DESIGN section 9, "coupled draws"): the emitted
tokens do not depend on how the work was batched or speculated, and a draft drawn from the
head's own logits equals the target's draw whenever the two distributions agree.

The draw, exactly:
  1. greedy (or temperature <= 0): the argmax of the logits, lowest id first on ties. Done.
  2. candidates C: the ids sorted by logit, descending, lowest id first on ties; keep the first
     top_k (0: all); then keep the smallest prefix whose softmax (of the raw logits of the
     prefix, float64) sums to >= top_p (1.0: all). This is llama.cpp's default order: top-k,
     top-p, then temperature.
  3. noise: for each candidate id v, u_v = uniform(key(seed, seq, pos), v) in (0, 1) and the
     Gumbel variate g_v = -log(-log(u_v)).
  4. token = the candidate maximizing logit_v / temperature + g_v (first in C's order on an exact
     tie). By the Gumbel-max trick this is a draw from softmax(logit_C / temperature).

uniform(key, v) is a counter-based hash (splitmix64, all arithmetic mod 2^64):
    mix(z)  = z ^= z >> 30; z *= 0xBF58476D1CE4E5B9; z ^= z >> 27; z *= 0x94D049BB133111EB; z ^ (z >> 31)
    step(h, x) = mix((h ^ x) + GAMMA),  GAMMA = 0x9E3779B97F4A7C15
    key(seed, seq, pos, stream=0) = step(step(step(step(0, seed), seq), pos), stream)
    uniform(key, v) = ((mix(key + (v + 1) * GAMMA) >> 11) + 0.5) / 2^53
(seed, seq, pos taken mod 2^64; `stream` separates independent uses of one position, e.g. the
acceptance uniforms of textbook speculative sampling in tools/bench_spec.py.)

`Sampler.sample_p` also returns the drawn token's probability under the chain (the softmax over
C at the temperature; for greedy, the softmax of the raw logits): the MTP drafter stops when a
draft's probability falls below p_min.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

_M64 = (1 << 64) - 1
_GAMMA = 0x9E3779B97F4A7C15
_C1, _C2 = np.uint64(0xBF58476D1CE4E5B9), np.uint64(0x94D049BB133111EB)


def _mix_int(z: int) -> int:
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _M64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _M64
    return z ^ (z >> 31)


def _mix(z: np.ndarray) -> np.ndarray:
    z = (z ^ (z >> np.uint64(30))) * _C1
    z = (z ^ (z >> np.uint64(27))) * _C2
    return z ^ (z >> np.uint64(31))


def noise_key(seed: int, seq: int, pos: int, stream: int = 0) -> int:
    """The 64-bit key of the draws at (seed, seq, pos) (module docstring: key)."""
    h = 0
    for x in (seed, seq, pos, stream):
        h = _mix_int(((h ^ (x & _M64)) + _GAMMA) & _M64)
    return h


def uniforms(seed: int, seq: int, pos: int, ids: np.ndarray, stream: int = 0) -> np.ndarray:
    """float64 uniforms in (0, 1), one per token id in `ids`, keyed by (seed, seq, pos, stream)."""
    ids = np.asarray(ids, np.uint64)
    with np.errstate(over="ignore"):
        z = _mix(np.uint64(noise_key(seed, seq, pos, stream)) + (ids + np.uint64(1)) * np.uint64(_GAMMA))
    return ((z >> np.uint64(11)).astype(np.float64) + 0.5) * (1.0 / (1 << 53))


def gumbel(seed: int, seq: int, pos: int, ids: np.ndarray, stream: int = 0) -> np.ndarray:
    """Standard Gumbel variates -log(-log(u)) for the token ids `ids` at (seed, seq, pos, stream)."""
    return -np.log(-np.log(uniforms(seed, seq, pos, ids, stream)))


@dataclass(frozen=True)
class SamplerConfig:
    """Sampling options. temperature <= 0 or greedy=True means argmax."""

    greedy: bool = False
    temperature: float = 0.8
    top_k: int = 40  # 0: no top-k cut
    top_p: float = 0.95  # 1.0: no nucleus cut
    seed: int = 0

    def __post_init__(self) -> None:
        if self.top_k < 0:
            raise ValueError(f"[sampler] top_k must be >= 0, got {self.top_k}")
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"[sampler] top_p must be in (0, 1], got {self.top_p}")
        if not np.isfinite(self.temperature):
            raise ValueError(f"[sampler] temperature must be finite, got {self.temperature}")

    @property
    def is_greedy(self) -> bool:
        return self.greedy or self.temperature <= 0


class Sampler:
    """Draws token ids from rows of logits, each draw a function of (config, logits, seq, pos);
    stateless, so any order or batching of the draws gives the same tokens."""

    def __init__(self, config: SamplerConfig | None = None) -> None:
        self.config = config or SamplerConfig()

    def candidates(self, logits: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Candidate ids (module docstring, step 2) and their logits / temperature (float64)."""
        c = self.config
        x = np.asarray(logits, dtype=np.float64).reshape(-1)
        if c.is_greedy:
            i = int(np.argmax(x))
            return np.array([i]), np.array([0.0])
        order = _top_k(x, c.top_k)
        if c.top_p < 1.0:
            p = _softmax(x[order])
            keep = int(np.searchsorted(np.cumsum(p), c.top_p) + 1)  # smallest prefix reaching top_p
            order = order[: max(1, keep)]
        return order, x[order] / c.temperature

    def probs(self, logits: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Candidate ids and their probabilities after top-k, top-p and temperature."""
        ids, z = self.candidates(logits)
        return ids, _softmax(z)

    def sample_p(self, logits: np.ndarray, pos: int, seq: int = 0) -> tuple[int, float]:
        """The draw at (seq, pos) and its probability under the chain (greedy: under the softmax of
        the raw logits)."""
        ids, z = self.candidates(logits)
        if self.config.is_greedy:
            x = np.asarray(logits, dtype=np.float64).reshape(-1)
            return int(ids[0]), float(1.0 / np.exp(x - x[ids[0]]).sum())
        if len(ids) == 1:
            return int(ids[0]), 1.0
        j = int(np.argmax(z + gumbel(self.config.seed, seq, pos, ids)))
        return int(ids[j]), float(1.0 / np.exp(z - z[j]).sum())

    def sample(self, logits: np.ndarray, pos: int, seq: int = 0) -> int:
        """The token drawn from `logits` for position pos of sequence seq (module docstring)."""
        ids, z = self.candidates(logits)
        if len(ids) == 1:
            return int(ids[0])
        return int(ids[int(np.argmax(z + gumbel(self.config.seed, seq, pos, ids)))])


def _top_k(x: np.ndarray, k: int) -> np.ndarray:
    """The ids of the k largest values of x (0: all), descending, lowest id first on ties; the same
    as np.argsort(-x, kind="stable")[:k] without sorting the whole vocabulary."""
    if not 0 < k < len(x):
        return np.argsort(-x, kind="stable")
    thr = np.partition(x, len(x) - k)[len(x) - k]  # the k-th largest value
    ids = np.flatnonzero(x >= thr)  # ascending ids
    if len(ids) > k:  # ties at thr: keep the lowest ids among them
        above = x[ids] > thr
        ids = ids[above | (np.cumsum(~above) <= k - np.count_nonzero(above))]
    return ids[np.argsort(-x[ids], kind="stable")]


def _softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - np.max(x))
    return e / e.sum()
