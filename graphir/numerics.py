"""Numerics every backend shares: small per-op constants computed on the host at lower time
(ALiBi slopes, YaRN ramp range), in float32 exactly as ggml computes them. Backends import
them from here, never from another backend's kernel files."""

from __future__ import annotations

import numpy as np

F32 = np.float32


def cmax(a, b):
    return a if a > b else b  # C's MAX macro (NaN handling included)


def cmin(a, b):
    return a if a < b else b


def alibi_slopes(n_head: int, max_bias: float) -> np.ndarray:
    """Per-head ALiBi slopes as ggml computes them (all 1 when max_bias <= 0), float32 [n_head].

    The first n_head_log2 heads get powers m0^(h+1), the rest odd powers of m1.
    """
    if max_bias <= 0:
        return np.ones(n_head, dtype=F32)
    n_head_log2 = 1 << int(np.floor(np.log2(n_head)))
    m0 = np.power(F32(2), F32(-max_bias) / F32(n_head_log2))
    m1 = np.power(F32(2), F32(-max_bias / 2.0) / F32(n_head_log2))
    h = np.arange(n_head)
    low = m0 ** (h + 1).astype(F32)
    high = m1 ** (2 * (h - n_head_log2) + 1).astype(F32)
    return np.where(h < n_head_log2, low, high).astype(F32)


def yarn_corr_dims(n_dims: int, n_ctx_orig: int, freq_base: float, beta_fast: float,
                   beta_slow: float) -> tuple[np.float32, np.float32]:  # fmt: skip
    """ggml_rope_yarn_corr_dims: the [low, high] pair range over which YaRN ramps (float32)."""

    def corr_dim(n_rot: float) -> F32:
        return (
            F32(n_dims)
            * np.log(F32(n_ctx_orig) / (F32(n_rot) * F32(2) * F32(np.pi)))
            / (F32(2) * np.log(F32(freq_base)))
        )

    with np.errstate(divide="ignore", invalid="ignore"):
        start = np.floor(corr_dim(beta_fast))
        end = np.ceil(corr_dim(beta_slow))
    return F32(cmax(F32(0), start)), F32(cmin(F32(n_dims - 1), end))
