"""Comparing a backend's output with the reference (`ref`): NMSE, NaN/inf checks, exact
comparison for integer results, and the result type of a parity check.

NMSE follows ggml's test-backend-ops: `sum((a - b)^2) / sum(a^2)` where `a` is the output
of the backend under test and `b` the reference (`ref`) (test-backend-ops calls
`nmse(f1, f2)` with f1 from the tested backend, f2 from the CPU).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

import numpy as np

from graphir.layout import bf16_to_f32
from graphir.ops import Op
from graphir.types import TYPE_INFO, DType

DEFAULT_NMSE = 1e-7
MATMUL_NMSE = 5e-4  # mul_mat, mul_mat_id and attention (fused or decomposed), as ggml
EXACT = 0.0

THRESHOLDS: dict[Op, float] = {
    Op.MUL_MAT: MATMUL_NMSE,
    Op.MUL_MAT_ID: MATMUL_NMSE,
    Op.FLASH_ATTN_EXT: MATMUL_NMSE,
    Op.ARGMAX: EXACT,
    Op.ARGSORT: EXACT,
    Op.TOP_K: EXACT,
}

_FLT_MAX = float(np.finfo(np.float32).max)


def threshold_for(op: Op | None) -> float:
    """The NMSE threshold of `op` (0 means an exact comparison)."""
    return THRESHOLDS.get(op, DEFAULT_NMSE) if op is not None else DEFAULT_NMSE


class Status(enum.Enum):
    PASS = "pass"
    FAIL = "fail"
    NOT_SUPPORTED = "not supported"


@dataclass(frozen=True)
class Result:
    """The outcome of one parity check. `reason` says why it failed or is not supported."""

    status: Status
    reason: str = ""
    nmse: float | None = None  # the largest NMSE over the compared outputs, when computed

    @property
    def passed(self) -> bool:
        return self.status is Status.PASS

    @property
    def failed(self) -> bool:
        return self.status is Status.FAIL

    def __str__(self) -> str:
        return self.status.value + (f": {self.reason}" if self.reason else "")


def passed(nmse: float | None = None) -> Result:
    return Result(Status.PASS, "", nmse)


def failed(reason: str, nmse: float | None = None) -> Result:
    return Result(Status.FAIL, reason, nmse)


def not_supported(reason: str) -> Result:
    return Result(Status.NOT_SUPPORTED, reason)


def nmse(out: np.ndarray, ref: np.ndarray) -> float:
    """ggml's normalized mean squared error, sum((out - ref)^2) / sum(out^2), in float64.

    `out` is the backend under test, `ref` the reference. 0/0 gives 0; x/0 gives inf."""
    a = np.asarray(out, dtype=np.float64)
    b = np.asarray(ref, dtype=np.float64)
    err = float(np.sum((a - b) ** 2))
    energy = float(np.sum(a * a))
    if energy == 0.0:
        return 0.0 if err == 0.0 else float("inf")
    return err / energy


def to_float(arr: np.ndarray, type: DType) -> np.ndarray:
    """float64 values of a host copy of a tensor of `type` (raw rows for quantized types)."""
    if type == DType.BF16:
        return bf16_to_f32(arr).astype(np.float64)
    if TYPE_INFO[type].is_quantized:
        from graphir.quants import dequantize_rows  # only cpy into a quantized tensor needs it

        return np.asarray(dequantize_rows(arr, type), dtype=np.float64)
    return np.asarray(arr, dtype=np.float64)


def _where(idx: tuple[int, ...]) -> str:
    """A numpy index (i3, i2, i1, i0) written in ne order."""
    return "[" + ", ".join(str(int(i)) for i in reversed(idx)) + "]"


def _first(mask: np.ndarray) -> tuple[int, ...]:
    return tuple(int(i) for i in np.argwhere(mask)[0])


def compare(out: np.ndarray, ref: np.ndarray, type: DType, threshold: float, name: str = "output",
            defined: np.ndarray | None = None) -> Result:  # fmt: skip
    """Compare host copies of one output. Integer types and threshold 0 compare exactly;
    floats check NaN/inf (a non-finite value where the reference is finite fails, and
    non-finite reference values must be matched) and then the NMSE of the finite values.

    Args:
        out, ref: host copies (numpy shape (ne3, ne2, ne1, ne0), raw rows when quantized).
        defined: optional boolean mask of the elements the op defines; others are ignored.
    """
    if out.shape != ref.shape:
        return failed(f"{name}: shape {out.shape} differs from the reference's {ref.shape}")
    exact = type == DType.I32 or threshold == EXACT
    a, b = to_float(out, type), to_float(ref, type)
    if defined is not None:
        keep = np.broadcast_to(defined, a.shape)
        a, b = np.where(keep, a, 0.0), np.where(keep, b, 0.0)
    if exact:
        same = (a == b) | (np.isnan(a) & np.isnan(b))
        if same.all():
            return passed(0.0)
        i = _first(~same)
        return failed(f"{name}: {int((~same).sum())} of {same.size} elements differ (exact comparison), "
                      f"first at {_where(i)}: backend {a[i]:g}, reference {b[i]:g}")  # fmt: skip
    # NOTE: like ggml, +-FLT_MAX counts as infinity (some backends clamp)
    a_inf = np.isinf(a) | (np.abs(a) == _FLT_MAX)
    b_inf = np.isinf(b) | (np.abs(b) == _FLT_MAX)
    a_nan, b_nan = np.isnan(a), np.isnan(b)
    bad = a_nan & ~b_nan
    if bad.any():
        i = _first(bad)
        return failed(f"{name}: NaN at {_where(i)} ({int(bad.sum())} in all) where the reference is {b[i]:g}")
    bad = (a_inf & ~b_inf & ~b_nan) | (a_inf & b_inf & (np.signbit(a) != np.signbit(b)))
    if bad.any():
        i = _first(bad)
        return failed(f"{name}: inf at {_where(i)} ({int(bad.sum())} in all): backend {a[i]:g}, reference {b[i]:g}")
    bad = (b_nan & ~a_nan) | (b_inf & ~a_inf)
    if bad.any():
        i = _first(bad)
        return failed(f"{name}: the reference is {b[i]:g} at {_where(i)} but the backend gives {a[i]:g}")
    finite = ~(a_inf | a_nan)
    err = nmse(a[finite], b[finite])
    if err > threshold:
        diff = np.where(finite, np.abs(a - b), 0.0)
        i = tuple(int(j) for j in np.unravel_index(int(np.argmax(diff)), diff.shape))
        return failed(f"{name}: NMSE {err:.3g} > {threshold:g} (max |diff| {diff[i]:.3g} at {_where(i)}: "
                      f"backend {a[i]:g}, reference {b[i]:g})", err)  # fmt: skip
    return passed(err)
