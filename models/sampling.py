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
     top_k (0: all); then, with e_i = exp(x_i - x_0) over them in that order (float64), keep the
     smallest prefix whose cumulative sum of e reaches top_p * sum(e), i.e. whose softmax sums
     to >= top_p (1.0: no cut). This is llama.cpp's default order: top-k, top-p, temperature.
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

`Sampler.verify` is the other acceptance rule speculative decoding offers, textbook speculative
sampling (Leviathan et al. 2023, Chen et al. 2023): with p and q the chain distributions of the
target's and the head's logits and d the draft (drawn from q as above), d is accepted iff
u * q(d) < p(d), u = uniform(key(seed, seq, pos, 1), d); otherwise the token is drawn by Gumbel-max
from the residual max(0, p - q) with the noise of stream 2. The tokens follow the target's
distribution, but they are not plain decoding's for the seed.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

_M64 = (1 << 64) - 1
_GAMMA = 0x9E3779B97F4A7C15
_C1, _C2 = np.uint64(0xBF58476D1CE4E5B9), np.uint64(0x94D049BB133111EB)
_S11, _S27, _S30, _S31 = (np.uint64(n) for n in (11, 27, 30, 31))


def _mix_int(z: int) -> int:
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _M64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _M64
    return z ^ (z >> 31)


def _mix(z: np.ndarray) -> np.ndarray:
    """splitmix64's finalizer, in place on a uint64 array (wrapping arithmetic)."""
    z ^= z >> _S30
    z *= _C1
    z ^= z >> _S27
    z *= _C2
    z ^= z >> _S31
    return z


def noise_key(seed: int, seq: int, pos: int, stream: int = 0) -> int:
    """The 64-bit key of the draws at (seed, seq, pos) (module docstring: key)."""
    h = 0
    for x in (seed, seq, pos, stream):
        h = _mix_int(((h ^ (x & _M64)) + _GAMMA) & _M64)
    return h


_WEYL = np.zeros(0, np.uint64)  # (v + 1) * GAMMA mod 2^64 for the ids v seen so far, grown on demand


def _weyl(ids: np.ndarray) -> np.ndarray:
    global _WEYL
    n = int(ids.max()) + 1 if len(ids) else 0
    if n > len(_WEYL):  # NOTE: replaced whole, never written in place: safe to read from other threads
        _WEYL = np.arange(1, max(n, 2 * len(_WEYL)) + 1, dtype=np.uint64) * np.uint64(_GAMMA)
    return _WEYL[ids]


def uniforms(seed: int, seq: int, pos: int, ids: np.ndarray, stream: int = 0) -> np.ndarray:
    """float64 uniforms in (0, 1), one per token id in `ids`, keyed by (seed, seq, pos, stream)."""
    z = _mix(_weyl(np.asarray(ids, np.intp)) + np.uint64(noise_key(seed, seq, pos, stream)))  # wraps mod 2^64
    u = (z >> _S11).astype(np.float64)
    u += 0.5
    u *= 1.0 / (1 << 53)
    return u


def gumbel(seed: int, seq: int, pos: int, ids: np.ndarray, stream: int = 0) -> np.ndarray:
    """Standard Gumbel variates -log(-log(u)) for the token ids `ids` at (seed, seq, pos, stream)."""
    g = np.log(uniforms(seed, seq, pos, ids, stream))
    np.negative(g, out=g)
    np.log(g, out=g)
    return np.negative(g, out=g)


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
        x = np.asarray(logits).reshape(-1)
        if c.is_greedy:
            return np.array([int(np.argmax(x))]), np.zeros(1)
        ids = _top_k(x, c.top_k)
        xs = x[ids].astype(np.float64)
        if c.top_p < 1.0:
            ce = np.cumsum(np.exp(xs - xs[0]))  # xs[0] is the largest
            ids, xs = _prefix(ids, xs, int(np.searchsorted(ce, c.top_p * ce[-1])) + 1)
        return ids, xs / c.temperature

    def probs(self, logits: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Candidate ids and their probabilities after top-k, top-p and temperature."""
        ids, z = self.candidates(logits)
        return ids, _softmax(z)

    def sample_p(self, logits: np.ndarray, pos: int, seq: int = 0) -> tuple[int, float]:
        """The draw at (seq, pos) and its probability under the chain (greedy: under the softmax of
        the raw logits)."""
        if self.config.is_greedy:
            x = np.asarray(logits, dtype=np.float64).reshape(-1)
            i = int(np.argmax(x))
            return i, float(1.0 / np.exp(x - x[i]).sum())
        ids, z = self.candidates(logits)
        if len(ids) == 1:
            return int(ids[0]), 1.0
        j = int(np.argmax(z + gumbel(self.config.seed, seq, pos, ids)))
        return int(ids[j]), float(1.0 / np.exp(z - z[j]).sum())

    def sample(self, logits: np.ndarray, pos: int, seq: int = 0) -> int:
        """The token drawn from `logits` for position pos of sequence seq (module docstring)."""
        if self.config.is_greedy:
            return int(np.argmax(np.asarray(logits).reshape(-1)))
        ids, z = self.candidates(logits)
        if len(ids) == 1:
            return int(ids[0])
        return int(ids[int(np.argmax(z + gumbel(self.config.seed, seq, pos, ids)))])

    def verify(
        self, p_logits: np.ndarray, q_logits: np.ndarray, draft: int, pos: int, seq: int = 0
    ) -> tuple[int, bool]:
        """Textbook speculative sampling of the token at (seq, pos) (module docstring): (token, accepted),
        token == draft when accepted. Greedy: the argmax of p_logits, accepted iff it is the draft."""
        if self.config.is_greedy:
            tok = self.sample(p_logits, pos, seq)
            return tok, tok == draft
        n = len(np.asarray(p_logits).reshape(-1))
        p, q = np.zeros(n), np.zeros(n)  # the chain distributions over the whole vocabulary
        for dist, logits in ((p, p_logits), (q, q_logits)):
            ids, probs = self.probs(logits)
            dist[ids] = probs
        seed = self.config.seed
        if uniforms(seed, seq, pos, np.array([draft]), stream=1)[0] * q[draft] < p[draft]:
            return draft, True
        ids = np.flatnonzero(p > q)  # the residual max(0, p - q), unnormalized
        if not len(ids):  # p == q: a rejection cannot happen (q(d) > 0 is the draft's own probability)
            return self.sample(p_logits, pos, seq), False
        return int(ids[int(np.argmax(np.log(p[ids] - q[ids]) + gumbel(seed, seq, pos, ids, stream=2)))]), False


def _prefix(ids: np.ndarray, xs: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    return (ids[:n], xs[:n]) if n < len(ids) else (ids, xs)


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
