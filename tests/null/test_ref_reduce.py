"""The cpu reference reductions and norms (sum_rows, mean, rms_norm, l2_norm, soft_max_ext,
argmax, argsort, top_k) against straightforward float64 numpy, on contiguous, permuted and
padded-view inputs; tie rules, ALiBi slopes, mask broadcast and -inf masks included."""

from __future__ import annotations

import math

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis_profiles import examples
from ref_inputs import layouts, make_input

import graphir as gr

# ---- inputs in any layout ---------------------------------------------------------------

ne4 = st.tuples(*(st.integers(1, n) for n in (9, 4, 3, 2)))


def run(outputs: list[gr.Tensor], feeds: dict[gr.Tensor, np.ndarray]) -> list[np.ndarray]:
    plan = gr.compile(gr.build_graph(*outputs), ["ref"], cache=False)
    for t, v in feeds.items():
        plan.set_input(t, v)
    plan.run()
    return [plan.get(t) for t in outputs]


def run1(op, ne, layout, host: np.ndarray) -> np.ndarray:
    """op(x) for x an F32 input of logical value `host` laid out as `layout`."""
    base, a, feed = make_input(gr.F32, ne, layout, host)
    return run([op(a)], {base: feed})[0]


def floats(ne, seed: int, scale: float = 1.0) -> np.ndarray:
    return (np.random.default_rng(seed).standard_normal(tuple(reversed(ne))) * scale).astype(np.float32)


def ties(ne, seed: int) -> np.ndarray:
    """Values from a small set, so rows are full of equal values."""
    return np.random.default_rng(seed).integers(-2, 3, size=tuple(reversed(ne))).astype(np.float32)


# ---- sums and norms -----------------------------------------------------------------------


@settings(max_examples=examples(30))
@given(ne=ne4, layout=layouts(), seed=st.integers(0, 2**16))
def test_sum_rows_and_mean(ne, layout, seed) -> None:
    host = floats(ne, seed, 10.0)
    base, a, feed = make_input(gr.F32, ne, layout, host)
    s, m = gr.sum_rows(a), gr.mean(a)
    got_s, got_m = run([s, m], {base: feed})
    assert s.ne == (1, *ne[1:]) and got_s.shape == (ne[3], ne[2], ne[1], 1)
    want = np.zeros((ne[3], ne[2], ne[1], 1))
    for i in np.ndindex(*want.shape[:3]):
        want[i] = sum(float(v) for v in host[i])
    tol = 1e-6 * np.abs(host).astype(np.float64).sum(axis=-1, keepdims=True) + 1e-30
    assert np.all(np.abs(got_s - want) <= tol)
    assert np.all(np.abs(got_m - want / ne[0]) <= tol / ne[0] * 1.01)


@settings(max_examples=examples(30))
@given(ne=ne4, layout=layouts(), eps=st.sampled_from([0.0, 1e-6, 1e-2, 1.0]), scale=st.sampled_from([1e-3, 1.0, 30.0]),
       seed=st.integers(0, 2**16))  # fmt: skip
def test_rms_norm(ne, layout, eps, scale, seed) -> None:
    host = floats(ne, seed, scale)
    got = run1(lambda a: gr.rms_norm(a, eps), ne, layout, host)
    x = host.astype(np.float64)
    want = x / np.sqrt((x * x).mean(axis=-1, keepdims=True) + eps)
    np.testing.assert_allclose(got, want, rtol=2e-6, atol=1e-30)


@settings(max_examples=examples(30))
@given(ne=ne4, layout=layouts(), eps=st.sampled_from([0.0, 1e-6, 1e-2, 1.0]), scale=st.sampled_from([1e-3, 1.0, 30.0]),
       zero_row=st.booleans(), seed=st.integers(0, 2**16))  # fmt: skip
def test_l2_norm(ne, layout, eps, scale, zero_row, seed) -> None:
    host = floats(ne, seed, scale)
    if zero_row and eps > 0:
        host[0, 0, 0, :] = 0.0  # 0 / max(0, eps) = 0
    got = run1(lambda a: gr.l2_norm(a, eps), ne, layout, host)
    x = host.astype(np.float64)
    want = x / np.maximum(np.sqrt((x * x).sum(axis=-1, keepdims=True)), eps)
    np.testing.assert_allclose(got, want, rtol=2e-6, atol=1e-30)


def test_norms_run_in_place_after_an_elementwise_op() -> None:
    """The kernels are correct when the allocator reuses their source's memory."""
    host = floats((16, 5, 3, 1), 3)
    x = gr.new_input(gr.F32, [16, 5, 3])
    ys = [gr.rms_norm(gr.scale(x, 2.0), 1e-6), gr.l2_norm(gr.scale(x, 2.0), 1e-6),
          gr.soft_max_ext(gr.scale(x, 2.0), None, 0.5)]  # fmt: skip
    got = run(ys, {x: host})
    v = 2.0 * host.astype(np.float64)
    np.testing.assert_allclose(got[0], v / np.sqrt((v * v).mean(-1, keepdims=True) + 1e-6), rtol=2e-6)
    np.testing.assert_allclose(got[1], v / np.sqrt((v * v).sum(-1, keepdims=True)), rtol=2e-6)
    e = np.exp(0.5 * v - (0.5 * v).max(-1, keepdims=True))
    np.testing.assert_allclose(got[2], e / e.sum(-1, keepdims=True), rtol=2e-6)


# ---- soft_max -----------------------------------------------------------------------------


def alibi_slope(h: int, n_head: int, max_bias: float) -> float:
    """ALiBi slope of head h (ggml's rule: heads past the largest power of two below n_head
    take the odd powers of the second base)."""
    if max_bias == 0.0:
        return 1.0
    n2 = 2 ** math.floor(math.log2(n_head))
    if h < n2:
        return (2.0 ** (-max_bias / n2)) ** (h + 1)
    return (2.0 ** (-max_bias / 2.0 / n2)) ** (2 * (h - n2) + 1)


def soft_max_formula(x: np.ndarray, mask: np.ndarray | None, scale: float, max_bias: float) -> np.ndarray:
    """x numpy (n_seq, H, n_q, n_kv); mask numpy (m3, m2, >= n_q, n_kv)."""
    out = np.zeros(x.shape)
    for i3, h, q in np.ndindex(*x.shape[:3]):
        w = scale * x[i3, h, q].astype(np.float64)
        if mask is not None:
            w = w + alibi_slope(h, x.shape[1], max_bias) * mask[i3 % mask.shape[0], h % mask.shape[1], q]
        e = np.exp(w - w.max())
        out[i3, h, q] = e / e.sum()
    return out


@st.composite
def soft_max_cases(draw) -> dict:
    n_kv, n_q = draw(st.integers(1, 9)), draw(st.integers(1, 4))
    H, n_seq = draw(st.sampled_from([1, 2, 3, 4, 6])), draw(st.sampled_from([1, 2, 4]))
    case = dict(ne=(n_kv, n_q, H, n_seq), scale=draw(st.sampled_from([1.0, 0.125, 3.0])), mask=None,
                max_bias=0.0, layout=draw(layouts()), seed=draw(st.integers(0, 2**16)))  # fmt: skip
    if draw(st.booleans()):
        m2 = draw(st.sampled_from([d for d in range(1, H + 1) if H % d == 0]))
        m3 = draw(st.sampled_from([d for d in range(1, n_seq + 1) if n_seq % d == 0]))
        case["mask"] = (n_kv, n_q + draw(st.integers(0, 2)), m2, m3)
        case["mask_type"] = draw(st.sampled_from([gr.F32, gr.F16]))
        case["max_bias"] = draw(st.sampled_from([0.0, 0.0, 8.0, 3.5]))
    return case


@settings(max_examples=examples(50))
@given(case=soft_max_cases())
def test_soft_max(case) -> None:
    ne, rng = case["ne"], np.random.default_rng(case["seed"])
    host = floats(ne, case["seed"], 3.0)
    base, a, feed = make_input(gr.F32, ne, case["layout"], host)
    feeds, mask_host, mask = {base: feed}, None, None
    if case["mask"] is not None:
        mne = case["mask"]
        mask_host = rng.standard_normal(tuple(reversed(mne))).astype(np.float32)
        mask_host[rng.random(mask_host.shape) < 0.3] = -np.inf
        mask_host[..., 0] = 0.0  # keep one finite entry per row
        if case["mask_type"] == gr.F16:
            mask_host = mask_host.astype(np.float16)
        mask = gr.new_input(case["mask_type"], mne)
        feeds[mask] = mask_host
    (got,) = run([gr.soft_max_ext(a, mask, case["scale"], case["max_bias"])], feeds)
    want = soft_max_formula(host, None if mask_host is None else mask_host.astype(np.float64), case["scale"],
                            case["max_bias"])  # fmt: skip
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-7)
    if mask_host is not None:  # masked-out entries are exact zeros
        m = np.tile(mask_host[:, :, : ne[1]], (ne[3] // mne[3], ne[2] // mne[2], 1, 1))
        assert np.all(got[np.isneginf(m)] == 0.0)


def test_soft_max_alibi_slopes_non_power_of_two_heads() -> None:
    """6 heads, max_bias 8: slopes 2^-2, 2^-4, 2^-6, 2^-8, then 2^-1, 2^-3 (ggml's m0/m1 rule)."""
    H = 6
    x = np.zeros((1, H, 1, 2), np.float32)
    mask = np.array([0.0, 16.0], np.float32).reshape(1, 1, 1, 2)  # logit difference = 16 * slope
    a, m = gr.new_input(gr.F32, [2, 1, H]), gr.new_input(gr.F32, [2, 1])
    (got,) = run([gr.soft_max_ext(a, m, 1.0, 8.0)], {a: x, m: mask})
    slopes = np.log(got[0, :, 0, 1].astype(np.float64) / got[0, :, 0, 0]) / 16
    np.testing.assert_allclose(slopes, [2**-2, 2**-4, 2**-6, 2**-8, 2**-1, 2**-3], rtol=1e-5)


def test_soft_max_fully_masked_row_is_nan_like_ggml() -> None:
    """A row masked -inf everywhere has no defined softmax; ggml-cpu yields NaN (0/0) and so
    does the reference. The other rows are unaffected."""
    x = floats((4, 2, 1, 1), 5)
    mask = np.zeros((1, 1, 2, 4), np.float32)
    mask[0, 0, 1, :] = -np.inf
    a, m = gr.new_input(gr.F32, [4, 2]), gr.new_input(gr.F32, [4, 2])
    (got,) = run([gr.soft_max_ext(a, m)], {a: x, m: mask})
    assert np.all(np.isnan(got[0, 0, 1]))
    e = np.exp(x[0, 0, 0].astype(np.float64) - x[0, 0, 0].max())
    np.testing.assert_allclose(got[0, 0, 0], e / e.sum(), rtol=1e-6)


# ---- argmax / argsort / top_k -----------------------------------------------------------


@settings(max_examples=examples(30))
@given(ne=ne4, layout=layouts(), tie=st.booleans(), seed=st.integers(0, 2**16))
def test_argmax_first_index_on_ties(ne, layout, tie, seed) -> None:
    host = ties(ne, seed) if tie else floats(ne, seed)
    out = None

    def op(a):
        nonlocal out
        out = gr.argmax(a)
        return out

    got = run1(op, ne, layout, host)
    assert out.type == gr.I32 and out.ne == (ne[1], ne[2], ne[3], 1)
    want = np.zeros((1, ne[3], ne[2], ne[1]), np.int32)
    for i3, i2, i1 in np.ndindex(ne[3], ne[2], ne[1]):
        row = list(host[i3, i2, i1])
        want[0, i3, i2, i1] = row.index(max(row))
    np.testing.assert_array_equal(got, want)


def sorted_rows(host: np.ndarray, key) -> np.ndarray:
    """Per row, the indices sorted by key(value, index) (Python's sorted)."""
    out = np.zeros(host.shape, np.int64)
    for i in np.ndindex(*host.shape[:3]):
        row = host[i]
        out[i] = sorted(range(len(row)), key=lambda j: key(float(row[j]), j))
    return out


@settings(max_examples=examples(30))
@given(ne=ne4, layout=layouts(), desc=st.booleans(), tie=st.booleans(), seed=st.integers(0, 2**16))
def test_argsort_stable_both_orders(ne, layout, desc, tie, seed) -> None:
    host = ties(ne, seed) if tie else floats(ne, seed)
    order = gr.SORT_DESC if desc else gr.SORT_ASC
    got = run1(lambda a: gr.argsort(a, order), ne, layout, host)
    want = sorted_rows(host, (lambda v, j: (-v, j)) if desc else (lambda v, j: (v, j)))
    assert got.dtype == np.int32
    np.testing.assert_array_equal(got, want)


@settings(max_examples=examples(30))
@given(ne=ne4, layout=layouts(), tie=st.booleans(), data=st.data(), seed=st.integers(0, 2**16))
def test_top_k_largest_first_lower_index_on_ties(ne, layout, tie, data, seed) -> None:
    host = ties(ne, seed) if tie else floats(ne, seed)
    k = data.draw(st.integers(1, ne[0]))
    got = run1(lambda a: gr.top_k(a, k), ne, layout, host)
    want = sorted_rows(host, lambda v, j: (-v, j))[..., :k]
    assert got.shape == (ne[3], ne[2], ne[1], k)
    np.testing.assert_array_equal(got, want)
