"""GGUF block formats (graphir.quants): dequantization bit-exact with gguf's own dequantizer on
random valid blocks (also through strided row views), Q8_0/Q4_0 quantization bit-exact with
gguf's quantizer, round-trip error bounds for every type, bad input, and quantized weights
through the cpu reference's get_rows and mul_mat."""

from __future__ import annotations

import gguf
import numpy as np
import pytest
from gguf.quants import dequantize, quantize
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis_profiles import examples

import graphir as gr
from graphir.quants import dequantize_rows, quantize_rows
from graphir.types import TYPE_INFO

GGUF_Q = {gr.Q8_0: gguf.GGMLQuantizationType.Q8_0, gr.Q4_0: gguf.GGMLQuantizationType.Q4_0,
          gr.Q4_K: gguf.GGMLQuantizationType.Q4_K, gr.Q5_K: gguf.GGMLQuantizationType.Q5_K,
          gr.Q6_K: gguf.GGMLQuantizationType.Q6_K}  # fmt: skip
QTYPES = tuple(GGUF_Q)
# byte offsets of the f16 fields in each block (everything else is arbitrary bits)
F16_FIELDS = {gr.Q8_0: (0,), gr.Q4_0: (0,), gr.Q4_K: (0, 2), gr.Q5_K: (0, 2), gr.Q6_K: (208,)}


def random_blocks(qtype, shape: tuple[int, ...], rng) -> np.ndarray:
    """uint8 (*shape, block_bytes): random bits, with finite random f16 scales (subnormals included)."""
    nbytes = TYPE_INFO[qtype].block_bytes
    raw = rng.integers(0, 256, size=(*shape, nbytes), dtype=np.uint8)
    for off in F16_FIELDS[qtype]:
        bits = rng.integers(0, 1 << 16, size=shape, dtype=np.uint16)
        bits = np.where((bits & 0x7C00) == 0x7C00, bits & 0x83FF, bits)  # inf/nan exponent -> 0
        raw[..., off : off + 2] = bits.astype("<u2")[..., None].view(np.uint8)
    return raw


def rel_rms(got: np.ndarray, want: np.ndarray) -> float:
    return float(np.sqrt(np.mean((got.astype(np.float64) - want) ** 2) / np.mean(want.astype(np.float64) ** 2)))


# ---- dequantize -----------------------------------------------------------------------


@settings(max_examples=examples(15))
@given(qtype=st.sampled_from(QTYPES), rows=st.integers(1, 5), nblk=st.integers(1, 3), seed=st.integers(0, 2**16))
def test_dequantize_matches_gguf(qtype, rows, nblk, seed) -> None:
    rng = np.random.default_rng(seed)
    raw = random_blocks(qtype, (rows, nblk), rng).reshape(rows, -1)
    got = dequantize_rows(raw, qtype)
    assert got.dtype == np.float32
    assert got.shape == (rows, nblk * TYPE_INFO[qtype].block_elems)
    np.testing.assert_array_equal(got, dequantize(raw, GGUF_Q[qtype]))


@pytest.mark.parametrize("qtype", QTYPES)
def test_dequantize_strided_rows(qtype) -> None:
    """Rows of a padded, offset and permuted buffer (numpy view (ne3, ne2, ne1, row_bytes))."""
    rng = np.random.default_rng(1)
    row_bytes = 2 * TYPE_INFO[qtype].block_bytes
    rows = random_blocks(qtype, (2, 3, 4, 2), rng).reshape(2, 3, 4, row_bytes)
    buf = np.zeros((3, 2, 9, row_bytes + 7), np.uint8)  # dims 2/3 swapped, every other row, 5 B offset
    buf[:, :, 1::2, 5 : 5 + row_bytes] = rows.transpose(1, 0, 2, 3)
    view = buf[:, :, 1::2, 5 : 5 + row_bytes].transpose(1, 0, 2, 3)
    assert not view.flags.c_contiguous and np.shares_memory(view, buf)
    want = dequantize(rows.reshape(-1, row_bytes), GGUF_Q[qtype]).reshape(2, 3, 4, -1)
    np.testing.assert_array_equal(dequantize_rows(view, qtype), want)


def test_dequantize_known_q4_0_and_q8_0_blocks() -> None:
    """Hand-built blocks: d = 0.5; Q4_0 low nibbles are elements 0..15, high nibbles 16..31."""
    d = np.array([0.5], "<f2").view(np.uint8)
    q4 = np.concatenate([d, np.arange(16, dtype=np.uint8) | (np.uint8(15) << 4)])
    want4 = 0.5 * (np.concatenate([np.arange(16), np.full(16, 15)]) - 8)
    np.testing.assert_array_equal(dequantize_rows(q4[None], gr.Q4_0)[0], want4)
    q8 = np.concatenate([d, np.arange(-16, 16, dtype=np.int8).view(np.uint8)])
    np.testing.assert_array_equal(dequantize_rows(q8, gr.Q8_0), 0.5 * np.arange(-16, 16))


# ---- quantize -------------------------------------------------------------------------


@settings(max_examples=examples(15))
@given(qtype=st.sampled_from([gr.Q8_0, gr.Q4_0]), rows=st.integers(1, 4), nblk=st.integers(1, 4),
       scale=st.sampled_from([1e-3, 1.0, 300.0]), seed=st.integers(0, 2**16))  # fmt: skip
def test_quantize_bit_exact_with_gguf(qtype, rows, nblk, scale, seed) -> None:
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal((rows, 32 * nblk)) * scale).astype(np.float32)
    x[0, :32] = 0  # an all-zero block (d = 0)
    if nblk > 1:
        x[0, 32:64] = np.float32(2.5) * rng.integers(-8, 8, 32)  # exact halves hit the rounding rule
    got = quantize_rows(x, qtype)
    assert got.dtype == np.uint8 and got.shape == (rows, nblk * TYPE_INFO[qtype].block_bytes)
    np.testing.assert_array_equal(got, quantize(x, GGUF_Q[qtype]))


def test_q8_0_rounds_half_away_from_zero() -> None:
    """d = 127/127 = 1: 0.5 -> 1, -0.5 -> -1, 1.5 -> 2, 2.5 -> 3 (C roundf, not round-half-even)."""
    x = np.zeros(32, np.float32)
    x[:5] = [127, 0.5, -0.5, 1.5, 2.5]
    q = quantize_rows(x, gr.Q8_0)[2:].view(np.int8)
    assert q[:5].tolist() == [127, 1, -1, 2, 3]


# measured relative RMS error on N(0, 1) data (seed 0): Q8_0 0.54%, Q4_0 8.6%, Q4_K 7.2%,
# Q5_K 3.6%, Q6_K 1.8%; bounds leave ~15% headroom
ROUND_TRIP_BOUND = {gr.Q8_0: 0.007, gr.Q4_0: 0.10, gr.Q4_K: 0.083, gr.Q5_K: 0.042, gr.Q6_K: 0.021}


@pytest.mark.parametrize("qtype", QTYPES)
def test_round_trip_error(qtype) -> None:
    rng = np.random.default_rng(0)
    x = rng.standard_normal((3, 4, 512)).astype(np.float32)
    raw = quantize_rows(x, qtype)
    assert raw.shape == (3, 4, 512 // TYPE_INFO[qtype].block_elems * TYPE_INFO[qtype].block_bytes)
    back = dequantize_rows(raw, qtype)
    assert back.shape == x.shape
    np.testing.assert_array_equal(back, dequantize(raw, GGUF_Q[qtype]))  # the bytes are valid GGUF
    assert rel_rms(back, x) < ROUND_TRIP_BOUND[qtype]


@pytest.mark.parametrize("qtype", [gr.Q4_K, gr.Q5_K, gr.Q6_K])
def test_k_quants_round_trip_hard_blocks(qtype) -> None:
    """Zero blocks stay zero; one-signed, offset, constant and wide-dynamic-range sub-blocks stay
    close (per super-block, relative to that block's magnitude)."""
    rng = np.random.default_rng(4)
    x = np.zeros((6, 256), np.float32)
    x[1] = rng.uniform(3, 4, 256)  # all positive, far from zero
    x[2] = -rng.uniform(0, 1e-3, 256)  # all negative, tiny
    x[3] = 7.0  # constant
    x[4] = rng.standard_normal(256) * np.repeat(10.0 ** rng.integers(-3, 2, 16), 16)  # scales vary per sub-block
    x[5, ::37] = 1e4  # spikes
    back = dequantize_rows(quantize_rows(x, qtype), qtype)
    assert np.all(back[0] == 0)
    for i in range(1, 6):
        assert np.sqrt(np.mean((back[i] - x[i]) ** 2)) <= 0.03 * np.abs(x[i]).max(), i


def test_quantize_accepts_strided_float_input() -> None:
    rng = np.random.default_rng(5)
    x = rng.standard_normal((64, 6)).astype(np.float32).T  # (6, 64), not contiguous
    np.testing.assert_array_equal(quantize_rows(x, gr.Q8_0), quantize(np.ascontiguousarray(x), GGUF_Q[gr.Q8_0]))


# ---- bad input ------------------------------------------------------------------------


@pytest.mark.parametrize("qtype", QTYPES)
def test_bad_row_length(qtype) -> None:
    info = TYPE_INFO[qtype]
    with pytest.raises(ValueError, match=rf"\[quants\] {info.name} row of {info.block_bytes + 1} bytes"):
        dequantize_rows(np.zeros((2, info.block_bytes + 1), np.uint8), qtype)
    with pytest.raises(ValueError, match=rf"\[quants\] {info.name} row of {info.block_elems + 16} elements"):
        quantize_rows(np.zeros((2, info.block_elems + 16), np.float32), qtype)


@pytest.mark.parametrize("type", [gr.F32, gr.F16, gr.BF16, gr.I32])
def test_unsupported_type(type) -> None:
    with pytest.raises(ValueError, match="unsupported type"):
        dequantize_rows(np.zeros((1, 256), np.uint8), type)
    with pytest.raises(ValueError, match="unsupported type"):
        quantize_rows(np.zeros((1, 256), np.float32), type)


def test_dequantize_wants_bytes() -> None:
    with pytest.raises(ValueError, match="uint8"):
        dequantize_rows(np.zeros((1, 17), np.uint16), gr.Q8_0)


# ---- through the cpu reference --------------------------------------------------------


def run(out: gr.Tensor, feeds: dict[gr.Tensor, np.ndarray]) -> np.ndarray:
    plan = gr.compile(gr.build_graph(out), ["ref"], cache=False)
    for t, v in feeds.items():
        plan.set_input(t, v)
    plan.run()
    return plan.get(out)


@pytest.mark.parametrize("qtype", QTYPES)
def test_get_rows_of_quantized_weight(qtype) -> None:
    rng = np.random.default_rng(6)
    raw = quantize_rows(rng.standard_normal((2, 5, 256)).astype(np.float32), qtype)  # [256, 5, 2]
    table = dequantize(raw, GGUF_Q[qtype])
    a = gr.new_weight(qtype, [256, 5, 2], raw)
    idx = np.array([[[4, 0, 4]], [[2, 3, 1]]], np.int32).reshape(1, 2, 3)  # numpy (1, ne2, n)
    b = gr.new_input(gr.I32, [3, 2])
    got = run(gr.get_rows(a, b), {b: idx})
    want = np.stack([table[j, idx[0, j]] for j in range(2)])[None]
    np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("qtype", QTYPES)
def test_mul_mat_quantized_weight_strided_rows(qtype) -> None:
    """a = every other row of a quantized weight (a strided view), b F32."""
    rng = np.random.default_rng(7)
    raw = quantize_rows(rng.standard_normal((6, 512)).astype(np.float32), qtype)  # [512, 6]
    w = gr.new_weight(qtype, [512, 6], raw)
    a = gr.view_2d(w, 512, 3, 2 * w.nb[1], w.nb[1])  # rows 1, 3, 5
    hb = rng.standard_normal((4, 512)).astype(np.float32)
    b = gr.new_input(gr.F32, [512, 4])
    got = run(gr.mul_mat(a, b), {b: hb})
    wa = dequantize(raw, GGUF_Q[qtype])[1::2].astype(np.float64)
    want = np.einsum("mk,nk->nm", wa, hb.astype(np.float64))
    np.testing.assert_allclose(got.reshape(4, 3), want, rtol=1e-4, atol=1e-3)
