"""Strict checks of the arguments of the public entries (Batch, Context, Generator, the memory's
seq_* calls).

An integer argument must be an int or a numpy integer: never a bool (True is not sequence 1),
never a float that happens to hold an integer, never a string. Arrays of ids, positions and
sequence ids must have an integer dtype. Every message names the entry and the parameter and
shows the value as it was given (a uint64 id stays 18446744073709551615, never a wrapped -1).
Positions, token and sequence ids must fit llama.cpp's int32 (`llama_pos`, `llama_token`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

INT32_MAX = 2**31 - 1


def show(v: object) -> str:
    """A value as given, for messages (numpy scalars with their type, long things cut)."""
    s = repr(v)
    return s if len(s) <= 80 else s[:77] + "..."


def is_int(v: object) -> bool:
    """An int or a numpy integer, not a bool."""
    return isinstance(v, int | np.integer) and not isinstance(v, bool)


def int_arg(where: str, name: str, v: object, lo: int | None = None, hi: int | None = None,
            error: type[Exception] = ValueError) -> int:  # fmt: skip
    """`v` as an int; `error` naming `where` and `name` when it is not an integer in [lo, hi]."""
    if not is_int(v):
        raise error(f"[{where}] {name} must be an integer, got {show(v)} ({type(v).__name__})")
    i = int(v)
    if lo is not None and i < lo:
        raise error(f"[{where}] {name} must be an integer >= {lo}, got {i}")
    if hi is not None and i > hi:
        raise error(f"[{where}] {name} must be at most {hi}, got {i}")
    return i


def opt_int_arg(where: str, name: str, v: object, lo: int | None = None, hi: int | None = None) -> int | None:
    """`int_arg`, or None when `v` is None."""
    return None if v is None else int_arg(where, name, v, lo, hi)


def bool_arg(where: str, name: str, v: object, error: type[Exception] = ValueError) -> bool:
    """`v` as a bool: True/False or a numpy bool (1 and 0 are not flags)."""
    if not isinstance(v, bool | np.bool_):
        raise error(f"[{where}] {name} must be True or False, got {show(v)} ({type(v).__name__})")
    return bool(v)


def float_arg(where: str, name: str, v: object, lo: float, hi: float) -> float:
    """`v` as a finite float in [lo, hi] (an int or numpy number is fine, a bool is not)."""
    if isinstance(v, bool | np.bool_) or not isinstance(v, int | float | np.integer | np.floating):
        raise ValueError(f"[{where}] {name} must be a number, got {show(v)} ({type(v).__name__})")
    f = float(v)
    if not (math.isfinite(f) and lo <= f <= hi):
        raise ValueError(f"[{where}] {name} must be in [{lo}, {hi}], got {show(v)}")
    return f


def int_array(where: str, name: str, values: object, error: type[Exception] = ValueError,
              hi: int = INT32_MAX) -> np.ndarray:  # fmt: skip
    """A 1-D integer array as int64; `error` naming the parameter for anything else (floats,
    bools, strings, nested lists) and for a value outside [-2^31, hi] (shown as given)."""
    if type(values) is list and len(values) <= 64 and all(type(v) is int and -(2**31) <= v <= hi for v in values):
        return np.array(values, np.int64)  # NOTE: the common case (a few token ids), without numpy's checks
    if isinstance(values, str | bytes):
        raise error(f"[{where}] {name} must be a 1-D sequence of integers, got {show(values)}")
    try:
        arr = np.asarray(values)
    except (ValueError, TypeError) as e:
        raise error(f"[{where}] {name} must be a 1-D sequence of integers: {e}") from None
    if arr.ndim != 1:
        raise error(f"[{where}] {name} must be 1-D, got shape {arr.shape}")
    if arr.size == 0:
        return np.zeros(0, np.int64)
    if arr.dtype.kind not in "iu":
        bad = next((i for i, v in enumerate(arr.tolist()) if not is_int(v)), 0)
        raise error(f"[{where}] {name} must be integers, got dtype {arr.dtype} ({name}[{bad}] = {show(arr[bad])})")
    # NOTE: checked before the cast to int64, so a uint64 id is reported as given
    if arr.max() <= hi and (arr.dtype.kind == "u" or arr.min() >= -(2**31)):
        return arr.astype(np.int64)
    out = np.flatnonzero((arr > hi) | (arr < -(2**31))) if arr.dtype.kind == "i" else np.flatnonzero(arr > hi)
    if out.size:
        i = int(out[0])
        raise error(f"[{where}] {name}[{i}] = {arr[i]} is out of range (at most {hi})")
    return arr.astype(np.int64)


def names_arg(where: str, name: str, v: object) -> tuple[str, ...]:
    """A non-empty sequence of strings (a lone string is refused: ("cpu",), not "cpu")."""
    if isinstance(v, str) or not isinstance(v, Sequence) or not v or not all(isinstance(x, str) for x in v):
        raise ValueError(f"[{where}] {name} must be a non-empty list of names such as ('cpu',), got {show(v)}")
    return tuple(v)
