"""Rotary position embedding (Op.ROPE): modes NORMAL, NEOX, MROPE and IMROPE, with YaRN.

Numerics follow ggml-cpu's rope (ggml_rope_cache_init / ggml_mrope_cache_init / rope_yarn) and
ggml_rope_yarn_corr_dims: everything in float32, and the per-pair angle is built the way ggml
builds it, by repeated float32 multiplication (theta_i = ((p * s) * s) ... * s), not by pow.
"""

from __future__ import annotations

import numpy as np

from graphir.builders import ROPE_IMROPE, ROPE_MROPE, ROPE_NORMAL
from graphir.numerics import cmax, yarn_corr_dims
from graphir.tensor import Tensor

F32 = np.float32


def _pair_components(n_pairs: int, sections: tuple[int, ...], mode: int) -> np.ndarray:
    """Which position component (0..3) each rotation pair uses (ggml_mrope_cache_init's sector rule)."""
    s0, s1, s2, s3 = sections
    sect_dims = s0 + s1 + s2 + s3
    if sect_dims == 0 or (s0 == 0 and s1 == 0 and s2 == 0):
        # NOTE: ggml asserts this too; the builder accepts it, so fail here with a clear message
        raise ValueError(f"[rope] multi-section rope needs a non-zero section among the first 3, got {list(sections)}")
    comp = np.empty(n_pairs, dtype=np.intp)
    for i in range(n_pairs):
        sector = i % sect_dims  # sections repeat when n_dims/2 exceeds their sum
        if mode == ROPE_IMROPE:
            if sector % 3 == 1 and sector < 3 * s1:
                comp[i] = 1
            elif sector % 3 == 2 and sector < 3 * s2:
                comp[i] = 2
            elif sector % 3 == 0 and sector < 3 * s0:
                comp[i] = 0
            else:
                comp[i] = 3
        else:
            comp[i] = 0 if sector < s0 else 1 if sector < s0 + s1 else 2 if sector < s0 + s1 + s2 else 3
    return comp


def rope_cos_sin(node: Tensor, pos: np.ndarray, n_tokens: int, ff: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    """cos and sin (times mscale) of every (token, pair): two float32 arrays [n_tokens, n_dims/2]."""
    p = node.params
    n_dims, mode = p["n_dims"], p["mode"]
    n_pairs = n_dims // 2
    multi = mode in (ROPE_MROPE, ROPE_IMROPE)
    n_comp = 4 if multi else 1
    positions = np.asarray(pos).reshape(-1)[: n_comp * n_tokens].astype(F32).reshape(n_comp, n_tokens)

    theta_scale = np.power(F32(p["freq_base"]), F32(-2.0) / F32(n_dims))
    # theta for every (component, token, pair): a sequential float32 product, as ggml's cache loop
    steps = np.empty((n_comp, n_tokens, n_pairs), dtype=F32)
    steps[..., 0] = positions
    steps[..., 1:] = theta_scale
    thetas = np.cumprod(steps, axis=-1, dtype=F32)
    if multi:
        comp = _pair_components(n_pairs, p["sections"], mode)
        theta = thetas[comp, :, np.arange(n_pairs)].T  # [n_tokens, n_pairs]
    else:
        theta = thetas[0]

    theta_extrap = theta / ff[:n_pairs] if ff is not None else theta
    freq_scale, ext_factor = F32(p["freq_scale"]), F32(p["ext_factor"])
    mscale = F32(p["attn_factor"])
    theta = freq_scale * theta_extrap
    if ext_factor != 0:
        low, high = yarn_corr_dims(n_dims, p["n_ctx_orig"], p["freq_base"], p["beta_fast"], p["beta_slow"])
        y = (np.arange(n_pairs, dtype=F32) - low) / cmax(F32(0.001), F32(high - low))
        ramp = F32(1) - np.minimum(F32(1), np.maximum(F32(0), y))
        ramp_mix = ramp * ext_factor
        theta = theta * (F32(1) - ramp_mix) + theta_extrap * ramp_mix
        mscale = mscale * (F32(1) + F32(0.1) * np.log(F32(1) / freq_scale))
    return (np.cos(theta) * mscale).astype(F32), (np.sin(theta) * mscale).astype(F32)


def rope(node: Tensor, dst: np.ndarray, a: np.ndarray, pos: np.ndarray, ff: np.ndarray | None = None) -> None:
    """Rotate the first n_dims dims of every head; the rest pass through unchanged.

    a: (ne3, n_tokens, n_head, head_dim) view; pos: I32 (n_tokens or 4*n_tokens values).
    NORMAL rotates pairs (2i, 2i+1); NEOX, MROPE and IMROPE rotate (i, i + n_dims/2).
    """
    n_dims = node.params["n_dims"]
    n_pairs = n_dims // 2
    n_tokens = a.shape[1]
    cos, sin = rope_cos_sin(node, pos, n_tokens, None if ff is None else np.asarray(ff).reshape(-1))
    cos, sin = cos[None, :, None, :], sin[None, :, None, :]

    x = np.array(a, dtype=F32)  # a copy: dst may alias a
    if node.params["mode"] == ROPE_NORMAL:
        x0, x1 = x[..., 0:n_dims:2], x[..., 1:n_dims:2]
    else:
        x0, x1 = x[..., :n_pairs], x[..., n_pairs:n_dims]
    r0 = x0 * cos - x1 * sin
    r1 = x0 * sin + x1 * cos
    x0[...] = r0
    x1[...] = r1
    dst[...] = x
