"""The comparison rules of the parity harness: ggml's NMSE, NaN/inf handling, exact
comparison for integers and exact ops, and the mask of defined elements."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from hypothesis_profiles import examples

from graphir.layout import f32_to_bf16
from graphir.ops import Op
from graphir.parity import Status, compare, nmse, threshold_for
from graphir.types import DType

F32 = DType.F32


def test_nmse_is_ggml_definition():
    # ggml: sum((a - b)^2) / sum(a^2), a = the backend under test
    assert nmse(np.array([1.0, 2.0]), np.array([1.0, 3.0])) == pytest.approx(1 / 5)
    assert nmse(np.zeros(3), np.zeros(3)) == 0.0
    assert nmse(np.zeros(3), np.ones(3)) == np.inf


@settings(max_examples=examples(30), deadline=None)
@given(arrays(np.float32, st.integers(1, 20), elements=st.floats(-10, 10, width=32)),
       arrays(np.float32, st.integers(1, 20), elements=st.floats(-10, 10, width=32)))  # fmt: skip
def test_nmse_matches_a_loop(a, b):
    n = min(a.size, b.size)
    a, b = a[:n], b[:n]
    num = sum((float(x) - float(y)) ** 2 for x, y in zip(a, b))
    den = sum(float(x) ** 2 for x in a)
    want = (0.0 if num == 0 else np.inf) if den == 0 else num / den
    assert nmse(a, b) == pytest.approx(want, rel=1e-9)


def test_thresholds():
    assert threshold_for(Op.ADD) == 1e-7 and threshold_for(None) == 1e-7
    assert threshold_for(Op.MUL_MAT) == threshold_for(Op.MUL_MAT_ID) == threshold_for(Op.FLASH_ATTN_EXT) == 5e-4
    assert threshold_for(Op.ARGMAX) == threshold_for(Op.ARGSORT) == threshold_for(Op.TOP_K) == 0.0


def test_nan_where_reference_is_finite_fails():
    ref = np.ones((1, 1, 2, 3), np.float32)
    out = ref.copy()
    out[0, 0, 1, 2] = np.nan
    r = compare(out, ref, F32, 1e-7)
    assert r.status is Status.FAIL and "NaN at [2, 1, 0, 0]" in r.reason


def test_inf_rules():
    ref = np.array([1.0, -np.inf, 2.0], np.float32)
    assert compare(ref.copy(), ref, F32, 1e-7).passed  # matching -inf is fine
    out = ref.copy()
    out[1] = np.inf
    assert "inf" in compare(out, ref, F32, 1e-7).reason  # wrong sign
    out = ref.copy()
    out[0] = np.float32(np.finfo(np.float32).max)  # FLT_MAX counts as inf, as in ggml
    assert compare(out, ref, F32, 1e-7).failed
    out = ref.copy()
    out[1] = -5.0  # the reference's inf must be matched
    assert "reference is -inf" in compare(out, ref, F32, 1e-7).reason


def test_nmse_threshold_and_reason():
    ref = np.linspace(-1, 1, 50, dtype=np.float32)
    out = ref + np.float32(1e-3)
    r = compare(out, ref, F32, 1e-7)
    assert r.failed and "NMSE" in r.reason and r.nmse == pytest.approx(nmse(out, ref))
    assert compare(out, ref, F32, 5e-4).passed


def test_integers_and_exact_ops_compare_exactly():
    ref = np.arange(6, dtype=np.int32).reshape(1, 1, 2, 3)
    out = ref.copy()
    out[0, 0, 0, 1] += 1
    r = compare(out, ref, DType.I32, 1e-7)  # even with a float threshold
    assert r.failed and "1 of 6 elements differ" in r.reason and "[1, 0, 0, 0]" in r.reason
    f = np.ones(4, np.float32)
    assert compare(f + np.float32(1e-7), f, F32, 0.0).failed


def test_defined_mask_ignores_the_rest():
    ref = np.zeros((1, 1, 4, 2), np.float32)
    out = ref.copy()
    out[0, 0, 3] = np.nan  # an undefined row (e.g. an unwritten snapshot slot)
    defined = np.array([True, True, True, False]).reshape(1, 1, 4, 1)
    assert compare(out, ref, F32, 1e-7, defined=defined).passed
    assert compare(out, ref, F32, 1e-7).failed


def test_bf16_compares_values_not_bits():
    ref = f32_to_bf16(np.array([1.0, 2.0], np.float32))
    out = f32_to_bf16(np.array([1.0, 2.5], np.float32))
    r = compare(out, ref, DType.BF16, 1e-7)
    assert r.failed and r.nmse == pytest.approx(0.25 / (1 + 6.25))
