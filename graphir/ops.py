"""The op set, declared once. Builders live in `graphir.builders`; groups below are the
only place an op's properties (view, in-place, unary, ...) are stated."""

from __future__ import annotations

import enum


class Op(enum.Enum):
    NONE = "none"  # leaf: input, weight or constant

    # ---- views (no compute; alias view_src) ----
    VIEW = "view"
    RESHAPE = "reshape"
    PERMUTE = "permute"
    TRANSPOSE = "transpose"

    # ---- copies ----
    CONT = "cont"
    CPY = "cpy"  # cpy(a, b): write a into b (with type conversion); result is a view of b
    DUP = "dup"

    # ---- elementwise ----
    ADD = "add"
    SUB = "sub"
    MUL = "mul"
    DIV = "div"
    SCALE = "scale"
    SQR = "sqr"
    SQRT = "sqrt"
    EXP = "exp"
    NEG = "neg"
    SIGMOID = "sigmoid"
    SILU = "silu"
    SOFTPLUS = "softplus"
    GELU = "gelu"
    CLAMP = "clamp"
    REPEAT = "repeat"

    # ---- reductions / norms ----
    SUM_ROWS = "sum_rows"
    MEAN = "mean"
    RMS_NORM = "rms_norm"
    L2_NORM = "l2_norm"
    SOFT_MAX = "soft_max"
    ARGMAX = "argmax"
    ARGSORT = "argsort"
    TOP_K = "top_k"

    # ---- indexing ----
    GET_ROWS = "get_rows"
    SET_ROWS = "set_rows"  # set_rows(a, b, idx): rows of b into a; result is a view of a
    CONCAT = "concat"

    # ---- matrix ----
    MUL_MAT = "mul_mat"
    MUL_MAT_ID = "mul_mat_id"

    # ---- position ----
    ROPE = "rope"  # rope_ext and rope_multi (mode and sections in params)

    # ---- attention ----
    FLASH_ATTN_EXT = "flash_attn_ext"

    # ---- state space ----
    SSM_CONV = "ssm_conv"
    GATED_DELTA_NET = "gated_delta_net"


# Ops that compute nothing: the result aliases a source's memory.
VIEW_OPS = frozenset({Op.VIEW, Op.RESHAPE, Op.PERMUTE, Op.TRANSPOSE})

# Ops whose result is written into an existing tensor (src[0] for CPY's destination is src[1]).
WRITE_INTO = {Op.CPY: 1, Op.SET_ROWS: 0}

UNARY_OPS = frozenset({Op.SQR, Op.SQRT, Op.EXP, Op.NEG, Op.SIGMOID, Op.SILU, Op.SOFTPLUS, Op.GELU, Op.CLAMP})
BINARY_OPS = frozenset({Op.ADD, Op.SUB, Op.MUL, Op.DIV})

# Ops that may write their result over src[0] (same shape and layout, elementwise in row order).
INPLACE_OPS = (
    UNARY_OPS | BINARY_OPS | frozenset({Op.SCALE, Op.RMS_NORM, Op.L2_NORM, Op.SOFT_MAX, Op.ROPE, Op.CONT, Op.DUP})
)
