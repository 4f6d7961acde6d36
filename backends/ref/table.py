"""The ref dispatch table: the only place an op is wired into the reference backend."""

from __future__ import annotations

from graphir.ops import Op

from . import k_attn, k_copy, k_matrix, k_reduce, k_rope, k_ssm
from . import k_elementwise as ew


def _noop(node, dst, *srcs) -> None:  # views compute nothing
    pass


KERNELS = {
    # views
    Op.VIEW: _noop,
    Op.RESHAPE: _noop,
    Op.PERMUTE: _noop,
    Op.TRANSPOSE: _noop,
    # copies
    Op.CONT: k_copy.cont,
    Op.CPY: k_copy.cpy,
    Op.DUP: k_copy.dup,
    # elementwise
    Op.ADD: ew.add,
    Op.SUB: ew.sub,
    Op.MUL: ew.mul,
    Op.DIV: ew.div,
    Op.SCALE: ew.scale,
    Op.SQR: ew.sqr,
    Op.SQRT: ew.sqrt,
    Op.EXP: ew.exp,
    Op.NEG: ew.neg,
    Op.SIGMOID: ew.sigmoid,
    Op.SILU: ew.silu,
    Op.SOFTPLUS: ew.softplus,
    Op.GELU: ew.gelu,
    Op.CLAMP: ew.clamp,
    Op.REPEAT: k_copy.repeat,
    # reductions / norms
    Op.SUM_ROWS: k_reduce.sum_rows,
    Op.MEAN: k_reduce.mean,
    Op.RMS_NORM: k_reduce.rms_norm,
    Op.L2_NORM: k_reduce.l2_norm,
    Op.SOFT_MAX: k_reduce.soft_max,
    Op.ARGMAX: k_reduce.argmax,
    Op.ARGSORT: k_reduce.argsort,
    Op.TOP_K: k_reduce.top_k,
    # indexing
    Op.GET_ROWS: k_copy.get_rows,
    Op.SET_ROWS: k_copy.set_rows,
    Op.CONCAT: k_copy.concat,
    # matrix
    Op.MUL_MAT: k_matrix.mul_mat,
    Op.MUL_MAT_ID: k_matrix.mul_mat_id,
    # position
    Op.ROPE: k_rope.rope,
    # attention
    Op.FLASH_ATTN_EXT: k_attn.flash_attn_ext,
    # state space
    Op.SSM_CONV: k_ssm.ssm_conv,
    Op.GATED_DELTA_NET: k_ssm.gated_delta_net,
}
