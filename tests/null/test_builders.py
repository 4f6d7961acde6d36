"""Builders as a specification: for each op a valid call with its output ne/type, every
invalid input the builder rejects (a ShapeError that starts with "[op]" and names the
shapes), views (bounds, offsets, strides), and the consistency of the op groups."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest

import graphir as gr
from graphir.ops import BINARY_OPS, INPLACE_OPS, UNARY_OPS, VIEW_OPS, WRITE_INTO, Op
from graphir.tensor import storage_of

F32, F16, I32, Q8_0 = gr.F32, gr.F16, gr.I32, gr.Q8_0


def T(*ne: int, type: gr.DType = F32) -> gr.Tensor:
    """A data-less leaf of shape ne."""
    return gr.new_tensor(type, ne)


def ne4(*ne: int) -> tuple[int, int, int, int]:
    return tuple(ne) + (1,) * (4 - len(ne))  # type: ignore[return-value]


def strides(type: gr.DType, *ne: int) -> tuple[int, int, int, int]:
    """Contiguous byte strides, written out independently of graphir."""
    n = ne4(*ne)
    esize = {F32: 4, F16: 2, I32: 4}[type]
    return (esize, esize * n[0], esize * n[0] * n[1], esize * n[0] * n[1] * n[2])


def _gdn(S: int = 8, H_k: int = 2, H_v: int = 4, n_t: int = 3, n_s: int = 2, snapshots: int = 1, **bad):
    """gated_delta_net with consistent shapes; `bad` replaces one input."""
    args = {
        "q": T(S, H_k, n_t, n_s), "k": T(S, H_k, n_t, n_s), "v": T(S, H_v, n_t, n_s),
        "g": T(1, H_v, n_t, n_s), "beta": T(1, H_v, n_t, n_s), "state": T(S, S, H_v, n_s),
    }  # fmt: skip
    args.update(bad)
    return gr.gated_delta_net(**args, snapshots=snapshots)


def _fa(**bad) -> gr.Tensor:
    """flash_attn_ext with q [16, 3, 4], k [16, 10, 2], v [8, 10, 2], no mask; `bad` replaces one."""
    args = {"q": T(16, 3, 4), "k": T(16, 10, 2), "v": T(8, 10, 2), "mask": None}
    args.update(bad)
    return gr.flash_attn_ext(**args, scale=0.25)


# (op, builder call, expected ne, expected type)
VALID: list[tuple[Op, Callable[[], gr.Tensor], tuple[int, ...], gr.DType]] = [
    (Op.NONE, lambda: gr.new_input(F16, [8, 2]), (8, 2), F16),
    (Op.NONE, lambda: gr.from_numpy(np.zeros((2, 3, 4), np.float32)), (4, 3, 2), F32),
    (Op.NONE, lambda: gr.new_weight(Q8_0, [64, 2], np.zeros(4 * 34, np.uint8)), (64, 2), Q8_0),
    (Op.VIEW, lambda: gr.view_1d(T(16), 8, 32), (8,), F32),
    (Op.VIEW, lambda: gr.view_2d(T(8, 4), 4, 4, 32, 16), (4, 4), F32),
    (Op.VIEW, lambda: gr.view_3d(T(8, 4, 3), 8, 2, 3, 32, 128, 64), (8, 2, 3), F32),
    (Op.VIEW, lambda: gr.view_4d(T(8, 4, 3, 2), 4, 4, 3, 2, 32, 128, 384, 16), (4, 4, 3, 2), F32),
    (Op.RESHAPE, lambda: gr.reshape(T(4, 6), 2, 3, 4), (2, 3, 4), F32),
    (Op.PERMUTE, lambda: gr.permute(T(2, 3, 4, 5), 1, 2, 3, 0), (5, 2, 3, 4), F32),
    (Op.TRANSPOSE, lambda: gr.transpose(T(3, 5, 2)), (5, 3, 2), F32),
    (Op.CONT, lambda: gr.cont(gr.transpose(T(3, 5))), (5, 3), F32),
    (Op.CONT, lambda: gr.cont(T(4, 6), 24), (24,), F32),
    (Op.CPY, lambda: gr.cpy(T(4, 6), T(24, type=F16)), (24,), F16),
    (Op.DUP, lambda: gr.dup(T(4, 6, type=F16)), (4, 6), F16),
    (Op.ADD, lambda: gr.add(T(4, 3, 2), T(4, 1, 2)), (4, 3, 2), F32),
    (Op.SUB, lambda: gr.sub(T(4, 3, 2, type=F16), T(2, 3, 1)), (4, 3, 2), F16),
    (Op.MUL, lambda: gr.mul(T(4, 6), T(1, 3)), (4, 6), F32),
    (Op.DIV, lambda: gr.div(T(4, 6), T(4, 6, type=F16)), (4, 6), F32),
    (Op.SCALE, lambda: gr.scale(T(4, 6), 0.5, 1.0), (4, 6), F32),
    (Op.SQR, lambda: gr.sqr(T(4, 6)), (4, 6), F32),
    (Op.SQRT, lambda: gr.sqrt(T(4, 6)), (4, 6), F32),
    (Op.EXP, lambda: gr.exp(T(4, 6)), (4, 6), F32),
    (Op.NEG, lambda: gr.neg(T(4, 6, type=F16)), (4, 6), F16),
    (Op.SIGMOID, lambda: gr.sigmoid(T(4, 6)), (4, 6), F32),
    (Op.SILU, lambda: gr.silu(T(4, 6)), (4, 6), F32),
    (Op.SOFTPLUS, lambda: gr.softplus(T(4, 6)), (4, 6), F32),
    (Op.GELU, lambda: gr.gelu(T(4, 6)), (4, 6), F32),
    (Op.CLAMP, lambda: gr.clamp(T(4, 6), -1.0, 1.0), (4, 6), F32),
    (Op.REPEAT, lambda: gr.repeat(T(4, 1, 2), T(8, 3, 2)), (8, 3, 2), F32),
    (Op.SUM_ROWS, lambda: gr.sum_rows(T(5, 3, 2)), (1, 3, 2), F32),
    (Op.MEAN, lambda: gr.mean(T(5, 3, 2)), (1, 3, 2), F32),
    (Op.RMS_NORM, lambda: gr.rms_norm(T(5, 3), 1e-6), (5, 3), F32),
    (Op.L2_NORM, lambda: gr.l2_norm(T(5, 3), 1e-6), (5, 3), F32),
    (Op.SOFT_MAX, lambda: gr.soft_max_ext(T(8, 4, 2)), (8, 4, 2), F32),
    (Op.SOFT_MAX, lambda: gr.soft_max_ext(T(8, 4, 2), T(8, 6, 1, type=F16), 0.5), (8, 4, 2), F32),
    (Op.ARGMAX, lambda: gr.argmax(T(5, 3, 2)), (3, 2), I32),
    (Op.ARGSORT, lambda: gr.argsort(T(5, 3), gr.SORT_DESC), (5, 3), I32),
    (Op.TOP_K, lambda: gr.top_k(T(5, 3), 2), (2, 3), I32),
    (Op.GET_ROWS, lambda: gr.get_rows(T(8, 10), T(3, type=I32)), (8, 3), F32),
    (Op.GET_ROWS, lambda: gr.get_rows(T(8, 10, 2, type=I32), T(3, 2, type=I32)), (8, 3, 2), I32),
    (Op.GET_ROWS, lambda: gr.get_rows(T(32, 10, type=Q8_0), T(3, type=I32)), (32, 3), F32),
    (Op.SET_ROWS, lambda: gr.set_rows(T(8, 16, type=F16), T(8, 3), T(3, type=I32)), (8, 16), F16),
    (Op.CONCAT, lambda: gr.concat(T(4, 3, 2), T(4, 5, 2), 1), (4, 8, 2), F32),
    (Op.MUL_MAT, lambda: gr.mul_mat(T(8, 5), T(8, 3)), (5, 3), F32),
    (Op.MUL_MAT, lambda: gr.mul_mat(T(8, 5, 2, 1), T(8, 3, 6, 2, type=F16)), (5, 3, 6, 2), F32),
    (Op.MUL_MAT, lambda: gr.mul_mat(T(32, 5, type=Q8_0), T(32, 3)), (5, 3), F32),
    (Op.MUL_MAT_ID, lambda: gr.mul_mat_id(T(8, 5, 4), T(8, 1, 6), T(2, 6, type=I32)), (5, 2, 6), F32),
    (Op.ROPE, lambda: gr.rope_ext(T(16, 4, 5), T(5, type=I32), None, 8, gr.ROPE_NEOX), (16, 4, 5), F32),
    (Op.ROPE, lambda: gr.rope_multi(T(16, 4, 5), T(20, type=I32), T(4), 8, [2, 1, 1, 0]), (16, 4, 5), F32),
    (Op.FLASH_ATTN_EXT, lambda: _fa(k=T(16, 10, 2, type=F16), mask=T(10, 4, type=F16)), (8, 4, 3), F32),
    (Op.SSM_CONV, lambda: gr.ssm_conv(T(8, 6, 2), T(4, 6)), (6, 5, 2), F32),
    (Op.GATED_DELTA_NET, lambda: _gdn(), (32, 3 * 2 + 8 * 2), F32),
]


@pytest.mark.parametrize(("op", "build", "ne", "type"), VALID, ids=[f"{v[0].value}-{i}" for i, v in enumerate(VALID)])
def test_valid_call(op: Op, build: Callable[[], gr.Tensor], ne: tuple[int, ...], type: gr.DType) -> None:
    t = build()
    assert t.op is op
    assert t.ne == ne4(*ne)
    assert t.type == type
    if op is not Op.NONE:
        assert t.data is None  # builders describe, they don't compute
    if op in VIEW_OPS:
        assert t.view_src is storage_of(t.src[0])
    elif op in WRITE_INTO:
        assert t.view_src is storage_of(t.src[WRITE_INTO[op]])
        assert (t.ne, t.nb, t.type) == (t.src[WRITE_INTO[op]].ne, t.src[WRITE_INTO[op]].nb, t.src[WRITE_INTO[op]].type)
    else:
        assert t.view_src is None
        if type in (F32, F16, I32):
            assert t.nb == strides(type, *ne)
    if op in UNARY_OPS | BINARY_OPS | {Op.SCALE}:
        assert t.same_layout(t.src[0])
    if op in INPLACE_OPS and t.ne == t.src[0].ne and t.src[0].is_contiguous():
        assert t.same_layout(t.src[0]), "an in-place op must be able to write over src[0]"


def test_valid_table_covers_every_op() -> None:
    assert {v[0] for v in VALID} == set(Op)


# (op name in the message, builder call, substrings the message must contain)
INVALID: list[tuple[str, Callable[[], object], list[str]]] = [
    ("weight", lambda: gr.new_weight(F32, [4, 2], np.zeros(7, np.float32), "w"), ["[4, 2, 1, 1]", "32", "28"]),
    ("from_numpy", lambda: gr.from_numpy(np.zeros(3, np.float64)), ["float64"]),
    ("view", lambda: gr.view_1d(T(16), 8, 36), ["[16, 1, 1, 1]", "[8, 1, 1, 1]", "36"]),
    ("view", lambda: gr.view_1d(T(16), 4, -8), ["[16, 1, 1, 1]", "-8"]),
    ("view", lambda: gr.view_2d(T(8, 4), 4, 4, 32, 20), ["[8, 4, 1, 1]", "[4, 4, 1, 1]"]),
    ("view", lambda: gr.view_2d(T(8, 4), 8, 5, 32), ["[8, 4, 1, 1]", "[8, 5, 1, 1]"]),
    ("view", lambda: gr.view_3d(T(8, 4, 3), 8, 4, 3, 32, 160), ["[8, 4, 3, 1]"]),
    ("view", lambda: gr.view_4d(T(8, 4, 3, 2), 8, 4, 3, 2, 32, 128, 384, 4), ["[8, 4, 3, 2]"]),
    ("reshape", lambda: gr.reshape(T(4, 6), 5, 5), ["[4, 6, 1, 1]", "[5, 5, 1, 1]"]),
    ("reshape", lambda: gr.reshape(gr.transpose(T(4, 6)), 24), ["[6, 4, 1, 1]", "contiguous"]),
    ("reshape", lambda: gr.reshape(gr.view_2d(T(8, 4), 4, 4, 32), 16), ["[4, 4, 1, 1]", "contiguous"]),
    ("permute", lambda: gr.permute(T(2, 3), 0, 0, 1, 2), ["[0, 0, 1, 2]"]),
    ("permute", lambda: gr.permute(T(2, 3), 0, 1, 2, 4), ["[0, 1, 2, 4]"]),
    ("cont", lambda: gr.cont(T(4, 6), 5), ["[4, 6, 1, 1]", "[5, 1, 1, 1]"]),
    ("cpy", lambda: gr.cpy(T(4, 6), T(25)), ["[4, 6, 1, 1]", "[25, 1, 1, 1]"]),
    ("cpy", lambda: gr.cpy(T(32, 2, type=Q8_0), T(64)), ["q8_0"]),
    ("add", lambda: gr.add(T(4, 3), T(3, 3)), ["[4, 3, 1, 1]", "[3, 3, 1, 1]"]),
    ("sub", lambda: gr.sub(T(4, 3), T(4, 3, 2)), ["[4, 3, 1, 1]", "[4, 3, 2, 1]"]),
    ("mul", lambda: gr.mul(T(4, 3, type=I32), T(4, 3)), ["[4, 3, 1, 1] i32"]),
    ("div", lambda: gr.div(T(4, 3), T(4, 3, type=I32)), ["[4, 3, 1, 1] i32"]),
    ("scale", lambda: gr.scale(T(4, type=I32), 2.0), ["[4, 1, 1, 1] i32"]),
    ("exp", lambda: gr.exp(T(32, type=Q8_0)), ["q8_0"]),
    ("clamp", lambda: gr.clamp(T(4), 1.0, -1.0), ["1.0", "-1.0"]),
    ("repeat", lambda: gr.repeat(T(3), T(8)), ["[3, 1, 1, 1]", "[8, 1, 1, 1]"]),
    ("sum_rows", lambda: gr.sum_rows(T(4, type=F16)), ["[4, 1, 1, 1] f16"]),
    ("mean", lambda: gr.mean(T(4, type=I32)), ["[4, 1, 1, 1] i32"]),
    ("rms_norm", lambda: gr.rms_norm(T(4), -1.0), ["-1.0"]),
    ("rms_norm", lambda: gr.rms_norm(T(4, type=F16), 1e-6), ["[4, 1, 1, 1] f16"]),
    ("l2_norm", lambda: gr.l2_norm(T(4), -1.0), ["-1.0"]),
    ("soft_max", lambda: gr.soft_max_ext(T(8, 4, 2), T(7, 4)), ["[8, 4, 2, 1]", "[7, 4, 1, 1]"]),
    ("soft_max", lambda: gr.soft_max_ext(T(8, 4, 2), T(8, 3)), ["[8, 4, 2, 1]", "[8, 3, 1, 1]"]),
    ("soft_max", lambda: gr.soft_max_ext(T(8, 4, 2), T(8, 4, 3)), ["[8, 4, 2, 1]", "[8, 4, 3, 1]"]),
    ("soft_max", lambda: gr.soft_max_ext(T(8, 4), T(8, 4, type=I32)), ["[8, 4, 1, 1] i32"]),
    ("soft_max", lambda: gr.soft_max_ext(T(8, 4), None, 1.0, -0.5), ["-0.5"]),
    ("argmax", lambda: gr.argmax(T(4, type=I32)), ["[4, 1, 1, 1] i32"]),
    ("argsort", lambda: gr.argsort(T(4), 2), ["2"]),
    ("top_k", lambda: gr.top_k(T(5, 3), 6), ["1..5", "6"]),
    ("top_k", lambda: gr.top_k(T(5, 3), 0), ["1..5", "0"]),
    ("get_rows", lambda: gr.get_rows(T(8, 10), T(3)), ["[3, 1, 1, 1] f32"]),
    ("get_rows", lambda: gr.get_rows(T(8, 10, 2), T(3, 3, type=I32)), ["[3, 3, 1, 1]", "[8, 10, 2, 1]"]),
    ("set_rows", lambda: gr.set_rows(T(8, 16), T(4, 3), T(3, type=I32)), ["[8, 16, 1, 1]", "[4, 3, 1, 1]"]),
    ("set_rows", lambda: gr.set_rows(T(8, 16), T(8, 3), T(2, type=I32)), ["[8, 3, 1, 1]", "[2, 1, 1, 1]"]),
    ("set_rows", lambda: gr.set_rows(T(32, 4, type=Q8_0), T(32, 3), T(3, type=I32)), ["q8_0"]),
    ("set_rows", lambda: gr.set_rows(T(8, 16), T(8, 3, type=F16), T(3, type=I32)), ["[8, 3, 1, 1] f16"]),
    ("concat", lambda: gr.concat(T(4, 3), T(4, 5), 0), ["[4, 3, 1, 1]", "[4, 5, 1, 1]"]),
    ("concat", lambda: gr.concat(T(4, 3), T(4, 3, type=F16), 1), ["[4, 3, 1, 1] f32", "[4, 3, 1, 1] f16"]),
    ("concat", lambda: gr.concat(T(4, 3), T(4, 3), 4), ["4"]),
    ("mul_mat", lambda: gr.mul_mat(T(8, 5), T(7, 3)), ["[8, 5, 1, 1]", "[7, 3, 1, 1]"]),
    ("mul_mat", lambda: gr.mul_mat(T(8, 5, 2), T(8, 3, 3)), ["[8, 5, 2, 1]", "[8, 3, 3, 1]"]),
    ("mul_mat", lambda: gr.mul_mat(T(8, 5), T(8, 3, type=I32)), ["[8, 3, 1, 1] i32"]),
    ("mul_mat_id", lambda: gr.mul_mat_id(T(8, 5, 4), T(8, 2, 6), T(3, 6, type=I32)), ["[8, 2, 6, 1]", "[3, 6, 1, 1]"]),
    ("mul_mat_id", lambda: gr.mul_mat_id(T(8, 5, 4), T(8, 1, 6), T(2, 5, type=I32)), ["[8, 1, 6, 1]", "[2, 5, 1, 1]"]),
    ("rope_ext", lambda: gr.rope_ext(T(16, 4, 5), T(5, type=I32), None, 7, 0), ["7"]),
    ("rope_ext", lambda: gr.rope_ext(T(16, 4, 5), T(5, type=I32), None, 18, 0), ["2..16", "18"]),
    ("rope_ext", lambda: gr.rope_ext(T(16, 4, 5), T(4, type=I32), None, 8, 0), ["[5]", "[4, 1, 1, 1]"]),
    ("rope_ext", lambda: gr.rope_ext(T(16, 4, 5), T(5, type=I32), None, 8, 7), ["7"]),
    ("rope_ext", lambda: gr.rope_ext(T(16, 4, 5), T(5), None, 8, 0), ["[5, 1, 1, 1] f32"]),
    ("rope_ext", lambda: gr.rope_ext(T(16, 4, 5), T(5, type=I32), T(3), 8, 0), ["4"]),
    ("rope_multi", lambda: gr.rope_multi(T(16, 4, 5), T(20, type=I32), None, 8, [2, 2, 0, 0], 2), ["2"]),
    ("rope_multi", lambda: gr.rope_multi(T(16, 4, 5), T(20, type=I32), None, 8, [2, 2, 0]), ["[2, 2, 0]"]),
    ("rope_multi", lambda: gr.rope_multi(T(16, 4, 5), T(20, type=I32), None, 8, [2, -1, 2, 0]), ["[2, -1, 2, 0]"]),
    ("rope_multi", lambda: gr.rope_multi(T(16, 4, 5), T(5, type=I32), None, 8, [2, 2, 0, 0]), ["[20]"]),
    (
        "flash_attn_ext",
        lambda: _fa(k=T(16, 10, 3), v=T(8, 10, 3)),
        ["[16, 3, 4, 1]", "[16, 10, 3, 1]", "[8, 10, 3, 1]"],
    ),
    ("flash_attn_ext", lambda: _fa(k=T(8, 10, 2)), ["[16, 3, 4, 1]", "[8, 10, 2, 1]"]),
    ("flash_attn_ext", lambda: _fa(v=T(8, 9, 2)), ["[16, 10, 2, 1]", "[8, 9, 2, 1]"]),
    ("flash_attn_ext", lambda: _fa(mask=T(9, 3)), ["[9, 3, 1, 1]"]),
    ("flash_attn_ext", lambda: _fa(mask=T(10, 2)), ["[10, 2, 1, 1]"]),
    ("flash_attn_ext", lambda: _fa(q=T(16, 3, 4, type=F16)), ["[16, 3, 4, 1] f16"]),
    ("ssm_conv", lambda: gr.ssm_conv(T(8, 5, 2), T(4, 6)), ["[8, 5, 2, 1]", "[4, 6, 1, 1]"]),
    ("ssm_conv", lambda: gr.ssm_conv(T(3, 6, 2), T(4, 6)), ["[3, 6, 2, 1]", "[4, 6, 1, 1]"]),
    ("gated_delta_net", lambda: _gdn(k=T(8, 3, 3, 2)), ["[8, 2, 3, 2]", "[8, 3, 3, 2]"]),
    ("gated_delta_net", lambda: _gdn(q=T(4, 2, 3, 2), k=T(4, 2, 3, 2)), ["4", "8"]),
    ("gated_delta_net", lambda: _gdn(H_k=3, H_v=4), ["4", "3"]),
    ("gated_delta_net", lambda: _gdn(v=T(8, 4, 2, 2)), ["[8, 2, 3, 2]", "[8, 4, 2, 2]"]),
    ("gated_delta_net", lambda: _gdn(g=T(2, 4, 3, 2)), ["[1 or 8, 4, 3, 2]", "[2, 4, 3, 2]"]),
    ("gated_delta_net", lambda: _gdn(beta=T(8, 4, 3, 2)), ["[1, 4, 3, 2]", "[8, 4, 3, 2]"]),
    ("gated_delta_net", lambda: _gdn(state=T(8, 8, 2, 2)), ["[8, 8, 4, 2]", "[8, 8, 2, 2]"]),
    ("gated_delta_net", lambda: _gdn(q=T(8, 2, 3, 2, type=F16)), ["[8, 2, 3, 2] f16"]),
    ("gated_delta_net", lambda: _gdn(snapshots=0), ["0"]),
    ("gated_delta_net", lambda: _gdn(snapshots=1.5), ["1.5"]),
]


@pytest.mark.parametrize(("opname", "build", "parts"), INVALID, ids=[f"{v[0]}-{i}" for i, v in enumerate(INVALID)])
def test_invalid_call(opname: str, build: Callable[[], object], parts: list[str]) -> None:
    with pytest.raises(gr.ShapeError) as err:
        build()
    msg = str(err.value)
    assert msg.startswith(f"[{opname}] "), msg
    for part in parts:
        assert part in msg, f"{part!r} not in {msg!r}"


def test_bad_dims_are_value_errors() -> None:
    with pytest.raises(ValueError, match="negative"):
        gr.new_tensor(F32, [4, -1])
    with pytest.raises(ValueError, match="1..4 dims"):
        gr.reshape(T(4, 6), 1, 2, 3, 4, 1)


# ---- views ----------------------------------------------------------------------------


def test_view_bounds_are_inclusive_of_the_last_byte() -> None:
    a = T(16)  # 64 bytes
    assert gr.view_1d(a, 8, 32).view_offs == 32
    assert gr.view_1d(a, 16, 0).nbytes == 64
    with pytest.raises(gr.ShapeError):
        gr.view_1d(a, 8, 33)
    # a strided view: its span, not its element count, must fit
    b = T(8, 4)  # 128 bytes, rows of 32
    v = gr.view_2d(b, 2, 4, 32, 24)  # last element at 24 + 3*32 + 4 = 124 + 4
    assert (v.nbytes, v.view_offs) == (104, 24)
    with pytest.raises(gr.ShapeError):
        gr.view_2d(b, 3, 4, 32, 24)


def test_view_strides() -> None:
    a = T(8, 4, 3)
    v = gr.view_3d(a, 4, 2, 3, 32, 128, 16)
    assert v.nb == (4, 32, 128, 384)
    assert v.params["offset"] == 16
    assert gr.view_2d(a, 8, 4, 32, 128).nb[1:3] == (32, 128)


def test_view_1d_is_contiguous_and_reshapes() -> None:
    a = T(16)
    v = gr.view_1d(a, 8, 16)
    assert v.is_contiguous()
    r = gr.reshape(v, 2, 4)
    assert (r.ne, r.view_src, r.view_offs) == (ne4(2, 4), a, 16)


def test_view_of_view_offsets_accumulate() -> None:
    a = T(16, 4)  # rows of 64 bytes
    v1 = gr.view_2d(a, 16, 2, 64, 64)  # rows 1..2
    v2 = gr.view_1d(v1, 4, 8)
    assert v2.view_src is a and v2.view_offs == 72
    assert v2.src[0] is v1  # the graph dependency stays on the view
    v3 = gr.permute(v2, 1, 0, 2, 3)
    assert v3.view_src is a and v3.view_offs == 72
    # bounds are checked against the storage owner, offsets included
    with pytest.raises(gr.ShapeError):
        gr.view_1d(v1, 16, 200)


def test_permute_moves_ne_and_nb() -> None:
    a = T(2, 3, 4, 5)
    p = gr.permute(a, 1, 2, 3, 0)  # dim i of a becomes dim ax_i
    assert p.ne == (5, 2, 3, 4)
    assert p.nb == (a.nb[3], a.nb[0], a.nb[1], a.nb[2])
    assert p.params["axes"] == (1, 2, 3, 0)
    assert not p.is_contiguous()
    # permuting back gives a's layout
    back = gr.permute(p, 3, 0, 1, 2)
    assert back.same_layout(a) and back.view_src is a


def test_transpose_swaps_first_two_dims() -> None:
    a = T(3, 5, 2)
    t = gr.transpose(a)
    assert t.ne == (5, 3, 2, 1)
    assert t.nb == (12, 4, 60, 120)
    assert t.view_src is a and not t.is_contiguous()
    assert gr.transpose(t).same_layout(a)


def test_reshape_of_a_view_keeps_its_offset() -> None:
    a = T(4, 6)
    r = gr.reshape(gr.view_2d(a, 4, 3, 16, 48), 12)
    assert (r.ne, r.nb, r.view_src, r.view_offs) == (ne4(12), (4, 48, 48, 48), a, 48)


def test_reshape_after_permute_of_size_one_dims() -> None:
    # [8, 1, 5] -> [8, 5, 1]: the same bytes in the same order; ggml calls this contiguous
    p = gr.permute(T(8, 1, 5), 0, 2, 1, 3)
    assert p.is_contiguous()
    assert gr.reshape(p, 40).ne == ne4(40)


def test_reshape_rejects_non_contiguous_sources() -> None:
    for src in (gr.transpose(T(4, 6)), gr.permute(T(2, 3, 4), 0, 2, 1), gr.view_2d(T(8, 4), 4, 4, 32)):
        with pytest.raises(gr.ShapeError, match=r"^\[reshape\] source must be contiguous"):
            gr.reshape(src, src.nelements)


# ---- write-into ops -------------------------------------------------------------------


def test_cpy_result_is_a_view_of_the_destination() -> None:
    b = T(8, 4, type=F16)
    dst = gr.view_2d(b, 8, 2, 16, 32)  # rows 2..3
    r = gr.cpy(T(16), dst)
    assert r.view_src is b and r.view_offs == 32
    assert (r.ne, r.nb, r.type) == (dst.ne, dst.nb, F16)
    assert r.src[1] is dst


def test_set_rows_result_is_a_view_of_the_destination() -> None:
    cache = T(8, 16, 2, type=F16)
    r = gr.set_rows(cache, T(8, 3, 2), T(3, 1, type=I32))  # c broadcast over dim 2
    assert r.view_src is cache and r.view_offs == 0
    assert (r.ne, r.nb, r.type) == (cache.ne, cache.nb, F16)
    v = gr.view_3d(cache, 8, 16, 1, 16, 256, 256)  # sequence 1 of the cache
    r2 = gr.set_rows(v, T(8, 3), T(3, type=I32))
    assert r2.view_src is cache and r2.view_offs == 256


# ---- matrix, rope, gated delta net ----------------------------------------------------


@pytest.mark.parametrize(("a_ne", "b_ne"), [((8, 5, 1, 1), (8, 3, 4, 2)), ((8, 5, 2, 1), (8, 3, 4, 3)),
                                            ((8, 5, 2, 3), (8, 1, 2, 3)), ((8, 5, 4, 1), (8, 3, 4, 1))])  # fmt: skip
def test_mul_mat_broadcasts_a_over_dims_2_and_3(a_ne: tuple, b_ne: tuple) -> None:
    out = gr.mul_mat(T(*a_ne), T(*b_ne))
    assert out.ne == (a_ne[1], b_ne[1], b_ne[2], b_ne[3])


def test_mul_mat_does_not_broadcast_b() -> None:
    with pytest.raises(gr.ShapeError, match=r"^\[mul_mat\]"):
        gr.mul_mat(T(8, 5, 4), T(8, 3, 2))


def test_rope_multi_records_sections_and_mode() -> None:
    a = T(16, 4, 5)
    r = gr.rope_multi(a, T(20, type=I32), None, 16, [3, 2, 3, 0], gr.ROPE_MROPE, freq_base=1e6)
    assert r.params["sections"] == (3, 2, 3, 0) and r.params["mode"] == gr.ROPE_MROPE
    assert r.params["n_dims"] == 16 and r.params["freq_base"] == 1e6
    assert r.src[0] is a and len(r.src) == 2
    assert gr.rope_multi(a, T(20, type=I32), None, 8, (2, 2, 0, 0)).params["mode"] == gr.ROPE_IMROPE
    assert gr.rope_ext(a, T(5, type=I32), None, 8, gr.ROPE_NORMAL).params["sections"] == (0, 0, 0, 0)


@pytest.mark.parametrize("snapshots", [1, 2, 3, 5])
@pytest.mark.parametrize(("n_t", "n_s"), [(1, 1), (3, 2), (4, 1)])
def test_gated_delta_net_output_rows(snapshots: int, n_t: int, n_s: int) -> None:
    S, H_v = 8, 4
    out = _gdn(S=S, H_k=2, H_v=H_v, n_t=n_t, n_s=n_s, snapshots=snapshots)
    assert out.ne == (S * H_v, n_t * n_s + snapshots * S * n_s, 1, 1)
    assert out.params["snapshots"] == snapshots and out.type == F32


def test_gated_delta_net_per_channel_gate() -> None:
    assert _gdn(g=T(8, 4, 3, 2)).ne == (32, 3 * 2 + 8 * 2, 1, 1)


# ---- the op table ---------------------------------------------------------------------


def test_every_op_has_a_builder() -> None:
    assert set(gr.BUILDERS) == set(Op)
    for op, fns in gr.BUILDERS.items():
        assert fns, op
        for fn in fns:
            assert callable(fn) and getattr(gr, fn.__name__) is fn, f"{fn.__name__} is not exported"


def test_op_groups_are_consistent() -> None:
    groups = {"VIEW_OPS": VIEW_OPS, "UNARY_OPS": UNARY_OPS, "BINARY_OPS": BINARY_OPS, "INPLACE_OPS": INPLACE_OPS,
              "WRITE_INTO": frozenset(WRITE_INTO)}  # fmt: skip
    for name, ops in groups.items():
        assert ops <= set(Op), name
        assert Op.NONE not in ops, name
    assert not UNARY_OPS & BINARY_OPS
    assert UNARY_OPS | BINARY_OPS <= INPLACE_OPS
    assert not VIEW_OPS & INPLACE_OPS, "a view computes nothing, so it cannot work in place"
    assert not VIEW_OPS & set(WRITE_INTO)
    assert not INPLACE_OPS & set(WRITE_INTO), "a write-into op already aliases its target"
    # a write-into op's target index names a real source of its builder
    for op, idx in WRITE_INTO.items():
        t = next(v[1]() for v in VALID if v[0] is op)
        assert idx < len(t.src) and t.view_src is storage_of(t.src[idx])
    assert {Op.VIEW, Op.RESHAPE, Op.PERMUTE, Op.TRANSPOSE} == VIEW_OPS


def test_leaf_builders() -> None:
    x = gr.new_input(F32, [4, 2], "x")
    assert x.is_input and not x.is_param and x.data is None and x.name == "x"
    arr = np.arange(24, dtype=np.float32).reshape(2, 3, 4)
    w = gr.from_numpy(arr, "w")
    assert w.is_param and w.ne == (4, 3, 2, 1) and w.nbytes == arr.nbytes
    assert np.array_equal(w.data.reshape(2, 3, 4), arr)
    assert gr.from_numpy(np.float32(3.0)).ne == (1, 1, 1, 1)
    assert gr.from_numpy(np.zeros(3, np.uint16), type=gr.BF16).type == gr.BF16  # raw bytes, declared type
    assert gr.new_tensor("q8_0", [64]).nb == (34, 68, 68, 68)


def test_rope_multi_needs_a_t_h_or_w_section():
    a = gr.new_input(gr.F32, [8, 2, 3])
    pos = gr.new_input(gr.I32, [12])
    with pytest.raises(gr.ShapeError, match=r"^\[rope_multi\] sections t, h, w must not all be 0"):
        gr.rope_multi(a, pos, None, 8, [0, 0, 0, 4])
