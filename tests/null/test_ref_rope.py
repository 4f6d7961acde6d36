"""The cpu reference rope against an independent float64 formula: modes NORMAL, NEOX, MROPE,
IMROPE (interleaved sections), freq_factors, YaRN, n_dims < head_dim and non-contiguous inputs."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis_profiles import examples

import graphir as gr

MODES = (gr.ROPE_NORMAL, gr.ROPE_NEOX, gr.ROPE_MROPE, gr.ROPE_IMROPE)


# ---- the formula ----------------------------------------------------------------------


def component_of_pair(i: int, sections: list[int], mode: int) -> int:
    """Which of the 4 position components pair i reads (ggml_mrope_cache_init's rule)."""
    sector = i % sum(sections)
    if mode == gr.ROPE_IMROPE:
        c = sector % 3  # t, h, w interleaved while that section lasts, then e
        return c if sector < 3 * sections[c] else 3
    bounds = np.cumsum(sections)
    return int(np.searchsorted(bounds, sector, side="right"))


def yarn_range(n_dims: int, n_ctx_orig: int, base: float, beta_fast: float, beta_slow: float) -> tuple[float, float]:
    with np.errstate(divide="ignore"):
        dim = lambda n_rot: n_dims * np.log(n_ctx_orig / (n_rot * 2 * np.pi)) / (2 * np.log(base))
        return max(0.0, np.floor(dim(beta_fast))), min(n_dims - 1.0, np.ceil(dim(beta_slow)))


def rope_formula(x: np.ndarray, pos: np.ndarray, ff: np.ndarray | None, p: dict) -> np.ndarray:
    """x: numpy (1, n_tokens, n_head, head_dim); pos: int [n_tokens] or [4 * n_tokens]."""
    n_dims, mode = p["n_dims"], p["mode"]
    n_tokens = x.shape[1]
    out = x.astype(np.float64).copy()
    multi = mode in (gr.ROPE_MROPE, gr.ROPE_IMROPE)
    low, high = yarn_range(n_dims, p["n_ctx_orig"], p["freq_base"], p["beta_fast"], p["beta_slow"])
    for t in range(n_tokens):
        for i in range(n_dims // 2):
            c = component_of_pair(i, p["sections"], mode) if multi else 0
            theta_extrap = pos[c * n_tokens + t] * p["freq_base"] ** (-2.0 * i / n_dims)
            if ff is not None:
                theta_extrap /= ff[i]
            theta = p["freq_scale"] * theta_extrap
            mscale = p["attn_factor"]
            if p["ext_factor"] != 0:
                ramp = 1 - min(1.0, max(0.0, (i - low) / max(0.001, high - low)))
                mix = ramp * p["ext_factor"]
                theta = theta * (1 - mix) + theta_extrap * mix
                mscale *= 1 + 0.1 * np.log(1 / p["freq_scale"])
            cos, sin = np.cos(theta) * mscale, np.sin(theta) * mscale
            j0, j1 = (2 * i, 2 * i + 1) if mode == gr.ROPE_NORMAL else (i, i + n_dims // 2)
            x0, x1 = x[0, t, :, j0].astype(np.float64), x[0, t, :, j1].astype(np.float64)
            out[0, t, :, j0] = x0 * cos - x1 * sin
            out[0, t, :, j1] = x0 * sin + x1 * cos
    return out


# ---- running the op --------------------------------------------------------------------


def build_rope(a, pos, ff, p):
    kw = {
        k: p[k]
        for k in ("n_ctx_orig", "freq_base", "freq_scale", "ext_factor", "attn_factor", "beta_fast", "beta_slow")
    }
    if p["mode"] in (gr.ROPE_MROPE, gr.ROPE_IMROPE):
        return gr.rope_multi(a, pos, ff, p["n_dims"], p["sections"], p["mode"], **kw)
    return gr.rope_ext(a, pos, ff, p["n_dims"], p["mode"], **kw)


def run_rope(x: np.ndarray, pos: np.ndarray, ff: np.ndarray | None, p: dict, layout: str = "cont") -> np.ndarray:
    """Run rope on x (numpy (1, n_tokens, n_head, head_dim)) given as a plain input, a view of a
    wider tensor, or a permuted tensor."""
    _, n_tokens, n_head, head_dim = x.shape
    if layout == "view":  # each row padded by 3 floats, whole tensor at an offset of one row
        big = gr.new_input(gr.F32, [head_dim + 3, n_head, n_tokens + 1], "big")
        a = gr.view_4d(big, head_dim, n_head, n_tokens, 1, big.nb[1], big.nb[2], big.nb[3], big.nb[2])
        host = np.zeros((n_tokens + 1, n_head, head_dim + 3), np.float32)
        host[1:, :, :head_dim] = x[0]
    elif layout == "permuted":  # stored as [head_dim, n_tokens, n_head]
        big = gr.new_input(gr.F32, [head_dim, n_tokens, n_head], "big")
        a = gr.permute(big, 0, 2, 1, 3)
        host = np.ascontiguousarray(x[0].transpose(1, 0, 2))
    else:
        big = a = gr.new_input(gr.F32, [head_dim, n_head, n_tokens], "big")
        host = x
    pos_t = gr.new_input(gr.I32, [pos.size], "pos")
    ff_t = None if ff is None else gr.from_numpy(ff.astype(np.float32), "ff")
    out = build_rope(a, pos_t, ff_t, p)
    plan = gr.compile(gr.build_graph(out), ["ref"], cache=False)
    plan.set_input(big, host)
    plan.set_input(pos_t, pos.astype(np.int32))
    plan.run()
    return plan.get(out)


def params(n_dims, mode, sections=(0, 0, 0, 0), **kw) -> dict:
    p = dict(n_dims=n_dims, mode=mode, sections=list(sections), n_ctx_orig=0, freq_base=10000.0, freq_scale=1.0,
             ext_factor=0.0, attn_factor=1.0, beta_fast=32.0, beta_slow=1.0)  # fmt: skip
    p.update(kw)
    return p


# ---- tests -----------------------------------------------------------------------------


@st.composite
def rope_cases(draw):
    mode = draw(st.sampled_from(MODES))
    head_dim = draw(st.sampled_from([4, 8, 12, 16, 80]))
    n_dims = draw(st.sampled_from([d for d in (2, 4, 6, 8, 12, 16, 64) if d <= head_dim]))
    n_head, n_tokens = draw(st.integers(1, 3)), draw(st.integers(1, 4))
    sections = (0, 0, 0, 0)
    if mode in (gr.ROPE_MROPE, gr.ROPE_IMROPE):
        sections = draw(st.sampled_from([(11, 11, 10, 0), (3, 3, 2, 0), (1, 1, 1, 1), (2, 1, 0, 1), (0, 2, 1, 0)]))
    yarn = draw(st.sampled_from([
        dict(),
        dict(freq_scale=0.25, ext_factor=1.0, n_ctx_orig=64, attn_factor=1.3),
        dict(freq_scale=0.5, ext_factor=0.5, n_ctx_orig=4096, beta_fast=16.0, beta_slow=2.0),
        dict(freq_scale=0.5, ext_factor=1.0, n_ctx_orig=0),  # ggml's degenerate range [0, -inf]
        dict(freq_base=500.0, freq_scale=2.0, attn_factor=0.7),
    ]))  # fmt: skip
    p = params(n_dims, mode, sections, **yarn)
    seed = draw(st.integers(0, 2**16))
    layout = draw(st.sampled_from(["cont", "view", "permuted"]))
    use_ff = draw(st.booleans())
    return p, head_dim, n_head, n_tokens, seed, layout, use_ff


@settings(max_examples=examples(60), deadline=None)
@given(rope_cases())
def test_rope_matches_formula(case):
    p, head_dim, n_head, n_tokens, seed, layout, use_ff = case
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((1, n_tokens, n_head, head_dim)).astype(np.float32)
    n_pos = n_tokens * (4 if p["mode"] in (gr.ROPE_MROPE, gr.ROPE_IMROPE) else 1)
    pos = rng.integers(0, 40, n_pos).astype(np.int32)  # multi modes: 4 different components
    ff = rng.uniform(0.5, 4.0, p["n_dims"] // 2 + 1) if use_ff else None
    got = run_rope(x, pos, ff, p, layout)
    ref = rope_formula(x, pos, ff, p)
    np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-4)
    # dims past n_dims pass through bit for bit
    np.testing.assert_array_equal(got[..., p["n_dims"] :], x[..., p["n_dims"] :])


def test_rope_normal_and_neox_pair_differently():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((1, 2, 1, 8)).astype(np.float32)
    pos = np.array([3, 7], np.int32)
    normal = run_rope(x, pos, None, params(8, gr.ROPE_NORMAL))
    neox = run_rope(x, pos, None, params(8, gr.ROPE_NEOX))
    assert not np.allclose(normal, neox)
    np.testing.assert_allclose(normal, rope_formula(x, pos, None, params(8, gr.ROPE_NORMAL)), rtol=1e-5, atol=1e-5)


def test_imrope_text_positions_equal_neox():
    """Qwen3.5 text: all 4 components equal the token position, so IMROPE [11, 11, 10, 0]
    over 64 of 256 dims is NEOX rope of those 64 dims."""
    rng = np.random.default_rng(2)
    n_tokens = 5
    x = rng.standard_normal((1, n_tokens, 2, 256)).astype(np.float32)
    tpos = np.array([0, 1, 17, 300, 4095], np.int32)
    multi = run_rope(x, np.tile(tpos, 4), None, params(64, gr.ROPE_IMROPE, (11, 11, 10, 0), freq_base=1e7))
    neox = run_rope(x, tpos, None, params(64, gr.ROPE_NEOX, freq_base=1e7))
    np.testing.assert_array_equal(multi, neox)
    np.testing.assert_array_equal(multi[..., 64:], x[..., 64:])


def test_imrope_components_interleave():
    """With only component h non-zero, exactly the pairs i % 3 == 1 below 3 * sections[1] rotate."""
    sections = [3, 3, 2, 0]
    n_dims, n_tokens = 16, 1  # 8 pairs, sum(sections) = 8
    x = np.ones((1, n_tokens, 1, n_dims), np.float32)
    pos = np.array([0, 5, 0, 0], np.int32)  # components t, h, w, e
    got = run_rope(x, pos, None, params(n_dims, gr.ROPE_IMROPE, sections))
    moved = [i for i in range(n_dims // 2) if not np.allclose(got[0, 0, 0, [i, i + n_dims // 2]], 1.0)]
    assert moved == [1, 4, 7]
    # MROPE puts component h on the contiguous block of pairs 3, 4, 5
    got = run_rope(x, pos, None, params(n_dims, gr.ROPE_MROPE, sections))
    moved = [i for i in range(n_dims // 2) if not np.allclose(got[0, 0, 0, [i, i + n_dims // 2]], 1.0)]
    assert moved == [3, 4, 5]


def test_sections_repeat_when_pairs_exceed_their_sum():
    """Pair i uses sector i % sum(sections): pairs 8..15 repeat the assignment of pairs 0..7."""
    n_dims = 32
    x = np.ones((1, 1, 1, n_dims), np.float32)
    pos = np.array([0, 0, 9, 0], np.int32)  # only component w
    for mode, expect in ((gr.ROPE_IMROPE, [2, 5]), (gr.ROPE_MROPE, [6, 7])):
        got = run_rope(x, pos, None, params(n_dims, mode, [3, 3, 2, 0]))
        moved = [i for i in range(n_dims // 2) if not np.allclose(got[0, 0, 0, [i, i + n_dims // 2]], 1.0)]
        assert moved == expect + [i + 8 for i in expect]


def test_rope_in_place_over_its_parent():
    """rope of a single-consumer node may reuse its memory; the result must not change."""
    rng = np.random.default_rng(3)
    x = rng.standard_normal((1, 3, 2, 8)).astype(np.float32)
    pos = np.array([4, 9, 2], np.int32)
    p = params(8, gr.ROPE_NEOX)
    a = gr.new_input(gr.F32, [8, 2, 3], "a")
    pos_t = gr.new_input(gr.I32, [3], "pos")
    out = build_rope(gr.scale(a, 2.0), pos_t, None, p)
    plan = gr.compile(gr.build_graph(out), ["ref"], cache=False)
    plan.set_input(a, x)
    plan.set_input(pos_t, pos)
    plan.run()
    assert plan.offset_of(out) == plan.offset_of(out.src[0])  # really in place
    np.testing.assert_allclose(plan.get(out), rope_formula(2 * x, pos, None, p), rtol=1e-5, atol=1e-5)
