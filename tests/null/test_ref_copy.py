"""The cpu reference copies and indexing (cont, dup, cpy, repeat, get_rows, set_rows, concat)
against straightforward numpy, on contiguous, permuted and padded-view inputs of every plain
type; quantized get_rows and cpy to block types checked with gguf's own (de)quantizer."""

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

PLAIN = (gr.F32, gr.F16, gr.BF16, gr.I32)
GGUF_Q = {gr.Q8_0: gguf.GGMLQuantizationType.Q8_0, gr.Q4_0: gguf.GGMLQuantizationType.Q4_0,
          gr.Q4_K: gguf.GGMLQuantizationType.Q4_K, gr.Q5_K: gguf.GGMLQuantizationType.Q5_K,
          gr.Q6_K: gguf.GGMLQuantizationType.Q6_K}  # fmt: skip

# ---- inputs in any layout ---------------------------------------------------------------

ne4 = st.tuples(*(st.integers(1, n) for n in (5, 4, 3, 2)))


def values(type, ne, rng) -> np.ndarray:
    """Host values (numpy order) exactly representable in `type`: I32 ints, else k/16 with
    |k| < 256 (exact in F16 and BF16), given as float32 for BF16 (set_input converts)."""
    shape = tuple(reversed(ne))
    if type == gr.I32:
        return rng.integers(-1000, 1000, size=shape).astype(np.int32)
    v = rng.integers(-255, 256, size=shape) / 16
    return v.astype(np.float16 if type == gr.F16 else np.float32)


def run(outputs: list[gr.Tensor], feeds: dict[gr.Tensor, np.ndarray], extra: list[gr.Tensor] = ()) -> list:
    """Compile and run on cpu; return the outputs then the `extra` tensors (e.g. a set_rows base)."""
    plan = gr.compile(gr.build_graph(*outputs), ["ref"], cache=False)
    for t, v in feeds.items():
        plan.set_input(t, v)
    plan.run()
    return [plan.get(t) for t in (*outputs, *extra)]


def f32_of(arr: np.ndarray, type) -> np.ndarray:
    """Host copy of a tensor as float64 (BF16 comes back as raw uint16)."""
    if type == gr.BF16:
        return (arr.astype(np.uint32) << 16).view(np.float32).astype(np.float64)
    return arr.astype(np.float64)


def bf16_round(x: np.ndarray) -> np.ndarray:
    """Nearest bfloat16 of float32 x (ties to even), as float64: pick the nearer of the two
    neighbours obtained by truncating and by stepping the truncated magnitude up."""
    u = np.ascontiguousarray(x, np.float32).view(np.uint32)
    lo = (u & 0xFFFF0000).astype(np.uint32)
    hi = (lo + 0x10000).astype(np.uint32)
    flo, fhi = lo.view(np.float32).astype(np.float64), hi.view(np.float32).astype(np.float64)
    dlo, dhi = np.abs(x - flo), np.abs(fhi - x)
    even_lo = ((lo >> 16) & 1) == 0
    return np.where((dlo < dhi) | ((dlo == dhi) & even_lo), flo, fhi)


def reshape_ne(draw, ne) -> tuple[int, ...]:
    """Another 4-d ne with the same element count."""
    n, out = int(np.prod(ne)), []
    for _ in range(3):
        d = draw(st.sampled_from([k for k in range(1, n + 1) if n % k == 0]))
        out.append(d)
        n //= d
    return (*out, n)


# ---- cont / dup / cpy ---------------------------------------------------------------------


@settings(max_examples=examples(40))
@given(type=st.sampled_from(PLAIN), ne=ne4, layout=layouts(), data=st.data(), seed=st.integers(0, 2**16))
def test_cont_and_dup(type, ne, layout, data, seed) -> None:
    rng = np.random.default_rng(seed)
    host = values(type, ne, rng)
    base, a, feed = make_input(type, ne, layout, host, rng)
    new_ne = reshape_ne(data.draw, ne) if data.draw(st.booleans()) else None
    c = gr.cont(a, *new_ne) if new_ne else gr.cont(a)
    d = gr.dup(a)
    got_c, got_d = run([c, d], {base: feed})
    assert got_c.dtype == (np.uint16 if type == gr.BF16 else host.dtype)
    np.testing.assert_array_equal(f32_of(got_c, type).ravel(), host.astype(np.float64).ravel())
    assert got_c.shape == tuple(reversed(c.ne))
    np.testing.assert_array_equal(f32_of(got_d, type), host.astype(np.float64))


def test_cont_moves_quantized_blocks_exactly() -> None:
    """cont of a strided view of quantized rows, and cont to a new shape, copy the blocks bit for bit."""
    raw = np.random.default_rng(9).integers(0, 256, size=(6, 2 * 34), dtype=np.uint8)
    a = gr.new_weight(gr.Q8_0, [64, 6], raw)
    odd = gr.view_2d(a, 64, 3, 2 * a.nb[1], a.nb[1])  # rows 1, 3, 5
    got_odd, got_re = run([gr.cont(odd), gr.cont(a, 32, 12)], {})
    np.testing.assert_array_equal(got_odd.reshape(3, -1), raw[1::2])
    np.testing.assert_array_equal(got_re.reshape(-1), raw.reshape(-1))


def convert(x: np.ndarray, src, dst) -> np.ndarray:
    """The expected value (float64) of converting host values x of type src to type dst."""
    v = x.astype(np.float64)
    if dst == gr.I32:
        return np.trunc(v)
    if dst == gr.F16:
        return x.astype(np.float32).astype(np.float16).astype(np.float64)
    if dst == gr.BF16:
        return bf16_round(x.astype(np.float32))
    return x.astype(np.float32).astype(np.float64)


@settings(max_examples=examples(50))
@given(ta=st.sampled_from(PLAIN), tb=st.sampled_from(PLAIN), ne=ne4, la=layouts(), lb=layouts(),
       data=st.data(), seed=st.integers(0, 2**16))  # fmt: skip
def test_cpy_converts_in_logical_order(ta, tb, ne, la, lb, data, seed) -> None:
    rng = np.random.default_rng(seed)
    if ta in (gr.F32,):  # general floats: rounding to F16/BF16 and truncation to I32 matter
        host = (rng.standard_normal(tuple(reversed(ne))) * 50).astype(np.float32)
    else:
        host = values(ta, ne, rng)
    a_base, a, a_feed = make_input(ta, ne, la, host, rng)
    ne_b = reshape_ne(data.draw, ne)
    b_host = values(tb, ne_b, rng)
    b_base, b, b_feed = make_input(tb, ne_b, lb, b_host, rng)
    out = gr.cpy(a, b)
    got, got_base = run([out], {a_base: a_feed, b_base: b_feed}, extra=[b_base])
    expect = convert(host, ta, tb).reshape(tuple(reversed(ne_b)))
    np.testing.assert_array_equal(f32_of(got, tb), expect)
    if lb[0] == "view":  # the destination's surroundings are untouched
        expect_base = np.asarray(b_feed).astype(np.float64)
        expect_base[tuple(slice(o, o + k) for o, k in zip(reversed(lb[2]), reversed(ne_b)))] = expect
        np.testing.assert_array_equal(f32_of(got_base, tb), expect_base)


def nmse(got: np.ndarray, want: np.ndarray) -> float:
    return float(np.sum((got - want) ** 2) / max(np.sum(want**2), 1e-30))


@pytest.mark.parametrize(("qtype", "max_nmse"), [(gr.Q8_0, 1e-4), (gr.Q4_0, 1.5e-2), (gr.Q4_K, 1.5e-2),
                                                 (gr.Q5_K, 4e-3), (gr.Q6_K, 1.5e-3)])  # fmt: skip
def test_cpy_quantizes(qtype, max_nmse) -> None:
    rng = np.random.default_rng(1)
    host = rng.standard_normal((2, 3, 256)).astype(np.float32)
    a = gr.new_input(gr.F32, [256, 3, 2])
    b = gr.new_tensor(qtype, [256, 3, 2])
    (got,) = run([gr.cpy(a, b)], {a: host})
    back = dequantize(got.reshape(6, -1), GGUF_Q[qtype]).reshape(host.shape)  # gguf's dequantizer
    assert nmse(back, host) < max_nmse
    if qtype == gr.Q8_0:  # per block: half a step d = amax / 127, plus 127 times d's rounding to F16
        step = np.abs(host.reshape(-1, 32)).max(axis=1, keepdims=True) / 127
        assert np.all(np.abs(back - host).reshape(-1, 32) <= (0.5 + 127 * 2**-11) * step * 1.001)


# ---- repeat / concat ----------------------------------------------------------------------


@settings(max_examples=examples(30))
@given(type=st.sampled_from(PLAIN), ne=ne4, layout=layouts(), reps=st.tuples(*[st.integers(1, 3)] * 4),
       seed=st.integers(0, 2**16))  # fmt: skip
def test_repeat(type, ne, layout, reps, seed) -> None:
    rng = np.random.default_rng(seed)
    host = values(type, ne, rng)
    base, a, feed = make_input(type, ne, layout, host, rng)
    shape_t = gr.new_tensor(gr.F32, [n * r for n, r in zip(ne, reps)])
    (got,) = run([gr.repeat(a, shape_t)], {base: feed})
    np.testing.assert_array_equal(f32_of(got, type), np.tile(host.astype(np.float64), tuple(reversed(reps))))


@settings(max_examples=examples(30))
@given(type=st.sampled_from(PLAIN), ne=ne4, dim=st.integers(0, 3), extra=st.integers(1, 3), la=layouts(),
       lb=layouts(), seed=st.integers(0, 2**16))  # fmt: skip
def test_concat(type, ne, dim, extra, la, lb, seed) -> None:
    rng = np.random.default_rng(seed)
    ne_b = list(ne)
    ne_b[dim] = extra
    ha, hb = values(type, ne, rng), values(type, ne_b, rng)
    a_base, a, fa = make_input(type, ne, la, ha, rng)
    b_base, b, fb = make_input(type, ne_b, lb, hb, rng)
    out = gr.concat(a, b, dim)
    (got,) = run([out], {a_base: fa, b_base: fb})
    want = np.zeros(tuple(reversed(out.ne)))
    idx = [slice(None)] * 4
    idx[3 - dim] = slice(0, ne[dim])
    want[tuple(idx)] = ha
    idx[3 - dim] = slice(ne[dim], None)
    want[tuple(idx)] = hb
    np.testing.assert_array_equal(f32_of(got, type), want)


# ---- get_rows -----------------------------------------------------------------------------


def gather(table: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """table numpy (ne3, ne2, n_rows, ne0), idx numpy (ne3, ne2, n) -> (ne3, ne2, n, ne0), by loops."""
    out = np.zeros((*idx.shape, table.shape[-1]), dtype=np.float64)
    for i3, i2, i in np.ndindex(*idx.shape):
        out[i3, i2, i] = table[i3, i2, idx[i3, i2, i]]
    return out


@settings(max_examples=examples(40))
@given(type=st.sampled_from(PLAIN), ne=ne4, n=st.integers(1, 6), layout=layouts(), seed=st.integers(0, 2**16))
def test_get_rows(type, ne, n, layout, seed) -> None:
    rng = np.random.default_rng(seed)
    host = values(type, ne, rng)
    base, a, feed = make_input(type, ne, layout, host, rng)
    idx = rng.integers(0, ne[1], size=(ne[3], ne[2], n)).astype(np.int32)
    b = gr.new_input(gr.I32, [n, ne[2], ne[3]])
    out = gr.get_rows(a, b)
    (got,) = run([out], {base: feed, b: idx})
    assert out.type == (gr.I32 if type == gr.I32 else gr.F32)
    assert got.dtype == (np.int32 if type == gr.I32 else np.float32)
    np.testing.assert_array_equal(got.astype(np.float64), gather(host.astype(np.float64), idx))


@pytest.mark.parametrize("qtype", [gr.Q8_0, gr.Q4_0])
def test_get_rows_dequantizes(qtype) -> None:
    rng = np.random.default_rng(2)
    table = rng.standard_normal((2, 7, 64)).astype(np.float32)  # [64, 7, 2]
    raw = quantize(table, GGUF_Q[qtype])
    a = gr.new_weight(qtype, [64, 7, 2], raw)
    idx = np.array([[[6, 0, 3, 3]], [[1, 1, 5, 2]]], dtype=np.int32)[:, 0][None]  # numpy (1, 2, 4)
    b = gr.new_input(gr.I32, [4, 2])
    (got,) = run([gr.get_rows(a, b)], {b: idx})
    want = gather(dequantize(raw, GGUF_Q[qtype])[None].astype(np.float64), idx)
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7)


def test_get_rows_index_out_of_range() -> None:
    a = gr.new_input(gr.F32, [4, 3])
    b = gr.new_input(gr.I32, [2])
    plan = gr.compile(gr.build_graph(gr.get_rows(a, b)), ["ref"], cache=False)
    plan.set_input(a, np.zeros((3, 4), np.float32))
    plan.set_input(b, np.array([0, 3], np.int32))
    with pytest.raises(IndexError, match=r"\[get_rows\] row index 3"):
        plan.run()


# ---- set_rows -----------------------------------------------------------------------------


def scatter(dst: np.ndarray, rows: np.ndarray, idx: np.ndarray, conv) -> np.ndarray:
    """dst numpy (ne3, ne2, n_rows, ne0) with rows (ne3, ne2, n, ne0) written at
    idx (c2, c1, n) tiled over (ne3, ne2); sequential, so the last write wins."""
    out = dst.astype(np.float64).copy()
    ne3, ne2, n = rows.shape[:3]
    for i3, i2, i in np.ndindex(ne3, ne2, n):
        out[i3, i2, idx[i3 % idx.shape[0], i2 % idx.shape[1], i]] = conv(rows[i3, i2, i])
    return out


@settings(max_examples=examples(40))
@given(type=st.sampled_from(PLAIN), ne=ne4, layout=layouts(), dup_ok=st.booleans(), data=st.data(),
       seed=st.integers(0, 2**16))  # fmt: skip
def test_set_rows_writes_only_indexed_rows(type, ne, layout, dup_ok, data, seed) -> None:
    rng = np.random.default_rng(seed)
    n_rows = ne[1]
    n = data.draw(st.integers(1, 2 * n_rows if dup_ok else n_rows))
    c1 = data.draw(st.sampled_from([d for d in (1, ne[2]) if ne[2] % d == 0]))
    c2 = data.draw(st.sampled_from([d for d in (1, ne[3]) if ne[3] % d == 0]))
    if dup_ok:
        idx = rng.integers(0, n_rows, size=(c2, c1, n))
    else:
        idx = np.stack([rng.permutation(n_rows)[:n] for _ in range(c2 * c1)]).reshape(c2, c1, n)
    idx = idx.astype(np.int32)
    host = values(type, ne, rng)
    base, a, feed = make_input(type, ne, layout, host, rng)
    rows = (rng.standard_normal((ne[3], ne[2], n, ne[0])) * 40).astype(np.float32)
    b = gr.new_input(gr.F32, [ne[0], n, ne[2], ne[3]])
    c = gr.new_input(gr.I32, [n, c1, c2])
    out = gr.set_rows(a, b, c)
    got, got_base = run([out], {base: feed, b: rows, c: idx}, extra=[base])
    want = scatter(host, rows, idx, lambda r: convert(r, gr.F32, type))
    np.testing.assert_array_equal(f32_of(got, type), want)
    # everything of the base outside the view is untouched too (sentinels of the padded view)
    if layout[0] == "view":
        expect_base = np.asarray(feed).astype(np.float64)
        sl = tuple(slice(o, o + k) for o, k in zip(reversed(layout[2]), reversed(ne)))
        expect_base[sl] = want
        np.testing.assert_array_equal(f32_of(got_base, type), expect_base)


def test_set_rows_index_out_of_range() -> None:
    a = gr.new_input(gr.F32, [4, 3])
    b = gr.new_input(gr.F32, [4, 1])
    c = gr.new_input(gr.I32, [1])
    plan = gr.compile(gr.build_graph(gr.set_rows(a, b, c)), ["ref"], cache=False)
    plan.set_input(a, np.zeros((3, 4), np.float32))
    plan.set_input(b, np.ones((1, 4), np.float32))
    plan.set_input(c, np.array([-1], np.int32))
    with pytest.raises(IndexError, match=r"\[set_rows\] row index -1"):
        plan.run()
