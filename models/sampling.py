"""Token samplers: greedy, or seeded temperature / top-k / top-p sampling.

The chain follows llama.cpp's default order: top-k, then top-p (on the softmax of the
raw logits), then temperature, then a draw from the remaining distribution. `greedy` (or a
temperature <= 0) takes the argmax, lowest id first on ties.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


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
    """Draws one token id from a row of logits; seeded, so a run is reproducible."""

    def __init__(self, config: SamplerConfig | None = None) -> None:
        self.config = config or SamplerConfig()
        self.rng = np.random.default_rng(self.config.seed)

    def probs(self, logits: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Candidate ids and their probabilities after top-k, top-p and temperature."""
        c = self.config
        logits = np.asarray(logits, dtype=np.float64).reshape(-1)
        if c.is_greedy:
            return np.array([int(np.argmax(logits))]), np.array([1.0])
        order = np.argsort(-logits, kind="stable")
        if c.top_k:
            order = order[: c.top_k]
        if c.top_p < 1.0:
            p = _softmax(logits[order])
            keep = int(np.searchsorted(np.cumsum(p), c.top_p) + 1)  # smallest prefix reaching top_p
            order = order[: max(1, keep)]
        return order, _softmax(logits[order] / c.temperature)

    def sample(self, logits: np.ndarray) -> int:
        ids, p = self.probs(logits)
        if len(ids) == 1:
            return int(ids[0])
        return int(ids[self.rng.choice(len(ids), p=p)])


def _softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - np.max(x))
    return e / e.sum()
