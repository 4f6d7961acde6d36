"""The cpu reference flash_attn_ext against an independent float64 formula and against the
decomposed graph mul_mat + soft_max_ext + mul_mat (DESIGN §3): GQA, masks with -inf, ALiBi,
softcap, F16 K/V, several sequences, fully masked rows."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis_profiles import examples

import graphir as gr

# ---- the formula (float64) -------------------------------------------------------------


def alibi(n_head: int, max_bias: float) -> np.ndarray:
    if max_bias <= 0:
        return np.ones(n_head)
    n_log2 = 2 ** int(np.floor(np.log2(n_head)))
    m0, m1 = 2.0 ** (-max_bias / n_log2), 2.0 ** (-max_bias / 2 / n_log2)
    return np.array([m0 ** (h + 1) if h < n_log2 else m1 ** (2 * (h - n_log2) + 1) for h in range(n_head)])


def attn_formula(q, k, v, mask, scale, max_bias=0.0, softcap=0.0) -> np.ndarray:
    """q (n_seq, H, n_q, D), k/v (n_seq_kv, H_kv, n_kv, D|Dv), mask (m3, m2, >=n_q, n_kv) or None
    -> (n_seq, n_q, H, Dv). A row whose mask is all -inf gives zeros (ggml's rule)."""
    n_seq, H, n_q, _ = q.shape
    H_kv, Dv = k.shape[1], v.shape[-1]
    slopes = alibi(H, max_bias)
    out = np.zeros((n_seq, n_q, H, Dv))
    for s in range(n_seq):
        skv = s // (n_seq // k.shape[0])
        for h in range(H):
            hk = h // (H // H_kv)  # grouped GQA
            for i in range(n_q):
                x = scale * (k[skv, hk].astype(np.float64) @ q[s, h, i].astype(np.float64))
                if softcap:
                    x = softcap * np.tanh(x / softcap)
                if mask is not None:
                    m = mask[s % mask.shape[0], h % mask.shape[1], i].astype(np.float64)
                    keep = m != -np.inf
                    x = np.where(keep, x + slopes[h] * np.where(keep, m, 0), -np.inf)
                if np.all(x == -np.inf):
                    continue
                w = np.exp(x - x.max())
                out[s, i, h] = (w / w.sum()) @ v[skv, hk].astype(np.float64)
    return out


# ---- graphs ----------------------------------------------------------------------------


def inputs(shapes: dict, kv_type) -> dict:
    """Input tensors named like the dict keys; shapes in ne order."""
    types = {"q": gr.F32, "k": kv_type, "v": kv_type, "mask": gr.F16}
    return {name: gr.new_input(types[name], ne, name) for name, ne in shapes.items()}


def run(out, data: dict) -> np.ndarray:
    plan = gr.compile(gr.build_graph(out), ["ref"], cache=False)
    for name, arr in data.items():
        plan.set_input(name, arr)
    plan.run()
    return plan.get(out).astype(np.float64)


def fused(t: dict, scale, max_bias=0.0, softcap=0.0):
    return gr.flash_attn_ext(t["q"], t["k"], t["v"], t.get("mask"), scale, max_bias, softcap)


def decomposed(t: dict, scale, max_bias=0.0):
    """softmax(scale q k^T + slope mask) v with mul_mat/soft_max_ext/mul_mat, permuted to [Dv, H, n_q, n_seq]."""
    kq = gr.mul_mat(t["k"], t["q"])  # [n_kv, n_q, H, n_seq]
    kq = gr.soft_max_ext(kq, t.get("mask"), scale, max_bias)
    vt = gr.cont(gr.transpose(t["v"]))  # [n_kv, Dv, H_kv, n_seq_kv]
    kqv = gr.mul_mat(vt, kq)  # [Dv, n_q, H, n_seq]
    return gr.cont(gr.permute(kqv, 0, 2, 1, 3))


def make_case(rng, D, Dv, n_q, n_kv, H, H_kv, n_seq, mask_kind, kv_type, pad_q=0):
    np_kv = np.float16 if kv_type == gr.F16 else np.float32
    data = {
        "q": rng.standard_normal((n_seq, H, n_q, D)).astype(np.float32),
        "k": rng.standard_normal((n_seq, H_kv, n_kv, D)).astype(np_kv),
        "v": rng.standard_normal((n_seq, H_kv, n_kv, Dv)).astype(np_kv),
    }
    shapes = {"q": [D, n_q, H, n_seq], "k": [D, n_kv, H_kv, n_seq], "v": [Dv, n_kv, H_kv, n_seq]}
    if mask_kind != "none":
        m = rng.uniform(-2, 0, (1, 1, n_q + pad_q, n_kv))
        if mask_kind == "causal":  # query i sees kv 0..n_kv-n_q+i, as a decode/prefill cache
            for i in range(n_q + pad_q):
                m[..., i, n_kv - n_q + i + 1 :] = -np.inf
        elif mask_kind == "random":
            m[rng.random(m.shape) < 0.4] = -np.inf
            m[..., 0] = 0.0  # every row keeps one key
        data["mask"] = m.astype(np.float16)
        shapes["mask"] = [n_kv, n_q + pad_q, 1, 1]
    return shapes, data


def nmse(a, b) -> float:
    return float(np.sum((a - b) ** 2) / max(np.sum(b**2), 1e-30))


# ---- tests -----------------------------------------------------------------------------


@st.composite
def attn_cases(draw):
    H_kv = draw(st.sampled_from([1, 2]))
    H = H_kv * draw(st.sampled_from([1, 2, 3]))
    n_q = draw(st.integers(1, 4))
    n_kv = n_q + draw(st.integers(0, 5))
    D, Dv = draw(st.sampled_from([(4, 4), (8, 8), (8, 4)]))
    return dict(
        D=D, Dv=Dv, n_q=n_q, n_kv=n_kv, H=H, H_kv=H_kv, n_seq=draw(st.integers(1, 2)),
        mask_kind=draw(st.sampled_from(["none", "causal", "random"])),
        kv_type=draw(st.sampled_from([gr.F32, gr.F16])),
        pad_q=draw(st.sampled_from([0, 3])),
        max_bias=draw(st.sampled_from([0.0, 0.0, 8.0])),
        scale=draw(st.sampled_from([1.0, 0.5, 0.125])),
        seed=draw(st.integers(0, 2**16)),
    )  # fmt: skip


@settings(max_examples=examples(50), deadline=None)
@given(attn_cases())
def test_flash_attn_matches_formula_and_decomposed_graph(c):
    rng = np.random.default_rng(c["seed"])
    if c["mask_kind"] == "none":
        c["max_bias"] = 0.0  # ALiBi acts through the mask
    keys = ("D", "Dv", "n_q", "n_kv", "H", "H_kv", "n_seq", "mask_kind", "kv_type", "pad_q")
    shapes, data = make_case(rng, *(c[k] for k in keys))
    got = run(fused(inputs(shapes, c["kv_type"]), c["scale"], c["max_bias"]), data)
    assert got.shape == (c["n_seq"], c["n_q"], c["H"], c["Dv"])
    ref = attn_formula(data["q"], data["k"], data["v"], data.get("mask"), c["scale"], c["max_bias"])
    np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-5)
    dec = run(decomposed(inputs(shapes, c["kv_type"]), c["scale"], c["max_bias"]), data)
    assert nmse(got, dec) < 5e-4  # DESIGN's attention parity threshold
    np.testing.assert_allclose(got, dec, rtol=1e-4, atol=1e-5)


def test_softcap():
    rng = np.random.default_rng(3)
    shapes, data = make_case(rng, 8, 8, 3, 6, 4, 2, 1, "causal", gr.F32)
    data["q"] *= 4  # large logits, so the cap matters
    got = run(fused(inputs(shapes, gr.F32), 0.5, softcap=2.0), data)
    ref = attn_formula(data["q"], data["k"], data["v"], data["mask"], 0.5, softcap=2.0)
    plain = attn_formula(data["q"], data["k"], data["v"], data["mask"], 0.5)
    np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-5)
    assert not np.allclose(got, plain, atol=1e-3)


def test_fully_masked_rows_are_zero():
    rng = np.random.default_rng(4)
    shapes, data = make_case(rng, 4, 4, 3, 5, 2, 1, 1, "random", gr.F32)
    data["mask"][0, 0, 1, :] = -np.inf  # query 1 sees nothing
    got = run(fused(inputs(shapes, gr.F32), 1.0), data)
    assert np.all(got[0, 1] == 0.0)
    assert np.all(np.isfinite(got))
    np.testing.assert_allclose(
        got, attn_formula(data["q"], data["k"], data["v"], data["mask"], 1.0), rtol=1e-4, atol=1e-5
    )


def test_masked_cells_are_never_read():
    """As ggml: a NaN in a K/V cell every query masks (e.g. a freed cache cell) does not leak; a NaN
    in a cell some query sees reaches exactly that query."""
    rng = np.random.default_rng(5)
    shapes, data = make_case(rng, 4, 4, 3, 5, 2, 1, 1, "random", gr.F32)
    data["mask"][0, 0, :, 2] = -np.inf  # nobody sees cell 2
    clean = run(fused(inputs(shapes, gr.F32), 1.0), data)
    data["k"][0, 0, 2, 0] = np.nan
    data["v"][0, 0, 2, 1] = np.nan
    np.testing.assert_array_equal(run(fused(inputs(shapes, gr.F32), 1.0), data), clean)
    data["mask"][0, 0, 1, 2] = 0.0  # query 1 sees it now
    got = run(fused(inputs(shapes, gr.F32), 1.0), data)
    assert np.isnan(got[0, 1]).any() and np.isfinite(np.delete(got, 1, axis=1)).all()


def test_mask_broadcast_over_heads_and_sequences():
    """A mask [n_kv, n_q, H, n_seq] gives each head its own mask; kv heads are grouped (h // 2)."""
    rng = np.random.default_rng(5)
    shapes, data = make_case(rng, 4, 4, 2, 4, 4, 2, 2, "none", gr.F32)
    m = rng.uniform(-3, 0, (2, 4, 2, 4))
    m[rng.random(m.shape) < 0.3] = -np.inf
    m[..., 0] = 0.0
    data["mask"] = m.astype(np.float16)
    shapes["mask"] = [4, 2, 4, 2]
    got = run(fused(inputs(shapes, gr.F32), 0.7, max_bias=4.0), data)
    np.testing.assert_allclose(
        got, attn_formula(data["q"], data["k"], data["v"], data["mask"], 0.7, 4.0), rtol=1e-4, atol=1e-5
    )


def test_non_contiguous_kv_view_of_a_cache():
    """K/V read as views of a larger cache (n_kv of 8 cells, heads strided), F16; Q permuted
    from [D, H, n_q] as a model's rope output is."""
    rng = np.random.default_rng(6)
    D, n_q, n_kv, H, H_kv, cells = 8, 2, 5, 2, 2, 8
    kc = gr.new_input(gr.F16, [D, cells, H_kv], "kc")
    vc = gr.new_input(gr.F16, [D, cells, H_kv], "vc")
    k = gr.view_3d(kc, D, n_kv, H_kv, kc.nb[1], kc.nb[2], kc.nb[1])  # cells 1..5
    v = gr.view_3d(vc, D, n_kv, H_kv, vc.nb[1], vc.nb[2], vc.nb[1])
    qin = gr.new_input(gr.F32, [D, H, n_q], "q")
    q = gr.permute(qin, 0, 2, 1, 3)  # [D, n_q, H]
    kd = rng.standard_normal((H_kv, cells, D)).astype(np.float16)
    vd = rng.standard_normal((H_kv, cells, D)).astype(np.float16)
    qd = rng.standard_normal((1, H, n_q, D)).astype(np.float32)
    got = run(gr.flash_attn_ext(q, k, v, None, 0.3), {"kc": kd, "vc": vd, "q": qd.transpose(0, 2, 1, 3)})
    ref = attn_formula(qd, kd[None, :, 1 : 1 + n_kv], vd[None, :, 1 : 1 + n_kv], None, 0.3)
    np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-5)
