"""The cpu reference mul_mat and mul_mat_id against float64 loops: every float type of a,
F32/F16 b, ggml's dims-2/3 broadcast of a, permuted and padded-view operands, and Q8_0/Q4_0
weights made and dequantized by gguf's own quantizer."""

from __future__ import annotations

import gguf
import numpy as np
import pytest
from gguf.quants import dequantize, quantize
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis_profiles import examples
from ref_inputs import layouts, make_input

import graphir as gr

GGUF_Q = {gr.Q8_0: gguf.GGMLQuantizationType.Q8_0, gr.Q4_0: gguf.GGMLQuantizationType.Q4_0}


# ---- inputs in any layout ---------------------------------------------------------------


def run(out: gr.Tensor, feeds: dict[gr.Tensor, np.ndarray]) -> np.ndarray:
    plan = gr.compile(gr.build_graph(out), ["ref"], cache=False)
    for t, v in feeds.items():
        plan.set_input(t, v)
    plan.run()
    return plan.get(out)


def host_values(type, ne, rng) -> np.ndarray:
    """Values exactly representable in `type` (k/64, |k| < 256: exact in F16 and BF16), so
    the expected result needs no rounding model; BF16 is fed as float32."""
    v = rng.integers(-255, 256, size=tuple(reversed(ne))) / 64
    return v.astype(np.float16 if type == gr.F16 else np.float32)


def mul_mat_formula(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """a numpy (ne03, ne02, M, K), b (ne13, ne12, N, K) -> (ne13, ne12, N, M), by loops over
    the batch: b matrix (i3, i2) uses a matrix (i3 // r3, i2 // r2)."""
    r3, r2 = b.shape[0] // a.shape[0], b.shape[1] // a.shape[1]
    out = np.zeros((b.shape[0], b.shape[1], b.shape[2], a.shape[2]))
    for i3, i2 in np.ndindex(b.shape[0], b.shape[1]):
        out[i3, i2] = b[i3, i2].astype(np.float64) @ a[i3 // r3, i2 // r2].astype(np.float64).T
    return out


# ---- mul_mat ------------------------------------------------------------------------------


@st.composite
def mul_mat_cases(draw) -> dict:
    K, M, N = draw(st.integers(1, 12)), draw(st.integers(1, 5)), draw(st.integers(1, 5))
    ne02, ne03 = draw(st.integers(1, 3)), draw(st.integers(1, 2))
    r2, r3 = draw(st.integers(1, 3)), draw(st.integers(1, 2))
    return dict(
        a_ne=(K, M, ne02, ne03), b_ne=(K, N, ne02 * r2, ne03 * r3),
        ta=draw(st.sampled_from([gr.F32, gr.F16, gr.BF16])), tb=draw(st.sampled_from([gr.F32, gr.F16])),
        la=draw(layouts()), lb=draw(layouts()), seed=draw(st.integers(0, 2**16)),
    )  # fmt: skip


@settings(max_examples=examples(60))
@given(case=mul_mat_cases())
def test_mul_mat_broadcast_and_layouts(case) -> None:
    rng = np.random.default_rng(case["seed"])
    ha, hb = host_values(case["ta"], case["a_ne"], rng), host_values(case["tb"], case["b_ne"], rng)
    a_base, a, fa = make_input(case["ta"], case["a_ne"], case["la"], ha)
    b_base, b, fb = make_input(case["tb"], case["b_ne"], case["lb"], hb)
    out = gr.mul_mat(a, b)
    got = run(out, {a_base: fa, b_base: fb})
    assert got.dtype == np.float32 and got.shape == tuple(reversed(out.ne))
    # products of k/64 values summed over K <= 12 terms are exact in float32
    np.testing.assert_array_equal(got, mul_mat_formula(ha, hb))


def test_mul_mat_general_values_f32() -> None:
    """Random float32 operands (not exactly representable sums): float32-accurate."""
    rng = np.random.default_rng(7)
    ha = rng.standard_normal((2, 2, 9, 200)).astype(np.float32)
    hb = rng.standard_normal((2, 6, 4, 200)).astype(np.float32)
    a, b = gr.new_input(gr.F32, [200, 9, 2, 2]), gr.new_input(gr.F32, [200, 4, 6, 2])
    got = run(gr.mul_mat(a, b), {a: ha, b: hb})
    np.testing.assert_allclose(got, mul_mat_formula(ha, hb), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("qtype", [gr.Q8_0, gr.Q4_0])
def test_mul_mat_quantized_weight(qtype) -> None:
    rng = np.random.default_rng(3)
    wa = rng.standard_normal((1, 2, 5, 64)).astype(np.float32)  # [64, 5, 2, 1]
    raw = quantize(wa, GGUF_Q[qtype])
    a = gr.new_weight(qtype, [64, 5, 2, 1], raw)
    hb = rng.standard_normal((1, 4, 3, 64)).astype(np.float32)  # ne12 = 4: r2 = 2
    b = gr.new_input(gr.F32, [64, 3, 4, 1])
    got = run(gr.mul_mat(a, b), {b: hb})
    want = mul_mat_formula(dequantize(raw, GGUF_Q[qtype]), hb)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


# ---- mul_mat_id ---------------------------------------------------------------------------


def mul_mat_id_formula(w: np.ndarray, x: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """w numpy (n_expert, M, K); x (n_tokens, b_ne1, K); ids (n_tokens, n_used) -> (n_tokens, n_used, M)."""
    out = np.zeros((ids.shape[0], ids.shape[1], w.shape[1]))
    for t, e in np.ndindex(*ids.shape):
        out[t, e] = w[ids[t, e]].astype(np.float64) @ x[t, e % x.shape[1]].astype(np.float64)
    return out


@settings(max_examples=examples(40))
@given(K=st.integers(1, 10), M=st.integers(1, 5), n_expert=st.integers(1, 5), n_used=st.integers(1, 3),
       n_tokens=st.integers(1, 4), shared_b=st.booleans(), ta=st.sampled_from([gr.F32, gr.F16, gr.BF16]),
       la=st.sampled_from([("cont",), ("view", (1, 1, 1, 0), (1, 0, 1, 0))]), seed=st.integers(0, 2**16))  # fmt: skip
def test_mul_mat_id(K, M, n_expert, n_used, n_tokens, shared_b, ta, la, seed) -> None:
    rng = np.random.default_rng(seed)
    hw = host_values(ta, (K, M, n_expert, 1), rng)
    w_base, w, fw = make_input(ta, (K, M, n_expert, 1), la, hw)
    b_ne1 = 1 if shared_b else n_used
    hx = rng.standard_normal((1, n_tokens, b_ne1, K)).astype(np.float32)
    ids = rng.integers(0, n_expert, size=(1, 1, n_tokens, n_used)).astype(np.int32)
    b = gr.new_input(gr.F32, [K, b_ne1, n_tokens])
    i = gr.new_input(gr.I32, [n_used, n_tokens])
    out = gr.mul_mat_id(w, b, i)
    got = run(out, {w_base: fw, b: hx, i: ids})
    assert got.shape == (1, n_tokens, n_used, M)
    want = mul_mat_id_formula(hw[0], hx[0], ids[0, 0])
    np.testing.assert_allclose(got[0], want, rtol=1e-5, atol=1e-5)


def test_mul_mat_id_quantized_experts() -> None:
    rng = np.random.default_rng(4)
    hw = rng.standard_normal((1, 4, 3, 32)).astype(np.float32)  # 4 experts [32, 3]
    raw = quantize(hw, GGUF_Q[gr.Q8_0])
    w = gr.new_weight(gr.Q8_0, [32, 3, 4], raw)
    hx = rng.standard_normal((1, 5, 2, 32)).astype(np.float32)
    ids = np.array([[3, 0], [1, 1], [2, 3], [0, 2], [3, 3]], np.int32).reshape(1, 1, 5, 2)
    b, i = gr.new_input(gr.F32, [32, 2, 5]), gr.new_input(gr.I32, [2, 5])
    got = run(gr.mul_mat_id(w, b, i), {b: hx, i: ids})
    want = mul_mat_id_formula(dequantize(raw, GGUF_Q[gr.Q8_0])[0], hx[0], ids[0, 0])
    np.testing.assert_allclose(got[0], want, rtol=1e-4, atol=1e-4)


def test_mul_mat_id_expert_out_of_range() -> None:
    w = gr.new_input(gr.F32, [4, 2, 3])
    b, i = gr.new_input(gr.F32, [4, 1, 1]), gr.new_input(gr.I32, [1, 1])
    plan = gr.compile(gr.build_graph(gr.mul_mat_id(w, b, i)), ["ref"], cache=False)
    plan.set_input(w, np.zeros((3, 2, 4), np.float32))
    plan.set_input(b, np.zeros((1, 1, 4), np.float32))
    plan.set_input(i, np.array([[3]], np.int32))
    with pytest.raises(IndexError, match=r"\[mul_mat_id\] expert id 3"):
        plan.run()
