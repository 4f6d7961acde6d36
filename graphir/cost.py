"""The work of one graph node from its shapes and types: FLOPs and bytes moved (`graphir profile`).

The counting rules are those of the op benchmark's perf profiles (graphir/parity/perf.py), so a
node's figures and a bench-ops row of the same shape agree (a test checks it):
- flops: additions and multiplications of the op's arithmetic (an exp, a division, a compare
  counts as one); 0 for pure data movement (copies, row reads and writes, views).
- bytes: every source the node reads, once, in its storage type (quantized weights in their
  block bytes; a view counts the elements it spans, not its storage), plus what it writes.
  Ops that gather or scatter rows count the rows they touch, not the whole tensor.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

from .ops import BINARY_OPS, Op
from .tensor import Tensor, is_empty_op
from .types import DType, row_size


@dataclass(frozen=True)
class Cost:
    flops: int = 0
    bytes: int = 0


def nbytes(t: Tensor | None, ne: tuple[int, ...] | None = None, type: DType | None = None) -> int:
    """Bytes of t's elements (or of shape `ne` in t's type, or in `type`) stored densely."""
    if t is None:
        return 0
    ne = t.ne if ne is None else ne
    return row_size(type or t.type, ne[0]) * math.prod(ne[1:])


def _io(t: Tensor) -> int:
    """Every source once plus the output."""
    return sum(nbytes(s) for s in t.src) + nbytes(t)


# flops per output element of the elementwise ops (x / (1 + exp(-x)) is 4: exp, add, div, mul)
PER_ELEMENT: dict[Op, int] = {
    **{op: 1 for op in BINARY_OPS}, Op.SCALE: 2, Op.SQR: 1, Op.SQRT: 1, Op.EXP: 1, Op.NEG: 1,
    Op.SIGMOID: 3, Op.SILU: 4, Op.SOFTPLUS: 3, Op.GELU: 8, Op.CLAMP: 2,
    Op.RMS_NORM: 3, Op.L2_NORM: 3,  # square and sum, then scale
}  # fmt: skip


def _mul_mat(t: Tensor) -> Cost:
    a, b = t.src[:2]
    M, N, B2, B3 = t.ne
    return Cost(2 * a.ne[0] * M * N * B2 * B3, _io(t))


def _mul_mat_id(t: Tensor) -> Cost:
    a, b, ids = t.src
    K, M, n_expert = a.ne[0], a.ne[1], a.ne[2]
    n_rows = ids.ne[0] * ids.ne[1]
    experts = min(n_expert, n_rows)  # NOTE: exact for one token, an upper bound for more (as perf.py)
    return Cost(2 * K * M * n_rows, experts * nbytes(a, (K, M)) + nbytes(b) + nbytes(ids) + nbytes(t))


def _flash_attn_ext(t: Tensor) -> Cost:
    """The two products, 2 D n_kv + 2 Dv n_kv per query row and head (the softmax is not counted)."""
    q, k, v = t.src[:3]
    mask = t.src[3] if len(t.src) > 3 else None
    D, n_q, H, n_seq = q.ne
    n_kv = k.ne[1]
    read = nbytes(q) + nbytes(k) + nbytes(v)
    if mask is not None:  # the rows it reads (the mask may be padded past n_q)
        read += nbytes(mask, (n_kv, n_q, mask.ne[2], mask.ne[3]))
    return Cost(2 * (D + v.ne[0]) * n_kv * n_q * H * n_seq, read + nbytes(t))


def _soft_max(t: Tensor) -> Cost:
    """Scale, mask add, max, subtract, exp, sum and normalise: 6 or 7 flops per element."""
    a = t.src[0]
    mask = t.src[1] if len(t.src) > 1 else None
    read = 0 if mask is None else nbytes(mask, (a.ne[0], a.ne[1], mask.ne[2], mask.ne[3]))
    return Cost((6 + (mask is not None)) * a.nelements, nbytes(a) + read + nbytes(t))


def _rope(t: Tensor) -> Cost:
    """3 flops per rotated element (4 multiplications and 2 additions per pair)."""
    a, pos = t.src[:2]
    n_dims = t.params["n_dims"]
    ff = nbytes(t.src[2], (n_dims // 2,)) if len(t.src) > 2 else 0
    return Cost(3 * n_dims * a.nrows, nbytes(a) + nbytes(pos) + ff + nbytes(t))


def _ssm_conv(t: Tensor) -> Cost:
    sx, c = t.src
    channels, n_tokens, n_seqs, _ = t.ne
    return Cost(2 * c.ne[0] * channels * n_tokens * n_seqs, _io(t))


def _gated_delta_net(t: Tensor) -> Cost:
    """Per token and v-head (S = S_v): 7 S^2 + 3 S; writes the outputs and the snapshots it fills."""
    q, k, v, g, beta, state = t.src
    S, H_v, n_tokens, n_seqs = v.ne
    written = nbytes(v) + min(t.params["snapshots"], n_tokens) * nbytes(state)
    read = sum(nbytes(s) for s in t.src)
    return Cost((7 * S * S + 3 * S) * H_v * n_tokens * n_seqs, read + written)


def _get_rows(t: Tensor) -> Cost:
    a, idx = t.src
    return Cost(0, nbytes(a, t.ne) + nbytes(idx) + nbytes(t))


def _set_rows(t: Tensor) -> Cost:
    a, b, idx = t.src
    return Cost(0, nbytes(b) + nbytes(idx) + nbytes(a, b.ne))


def _cpy(t: Tensor) -> Cost:
    a = t.src[0]
    return Cost(0, nbytes(a) + nbytes(t, a.ne))


def _reduce(t: Tensor) -> Cost:
    """sum_rows, mean, argmax: one per input element."""
    return Cost(t.src[0].nelements, _io(t))


def _sort(t: Tensor) -> Cost:
    """argsort / top_k: n log2 n compares per row of n."""
    a = t.src[0]
    n = a.ne[0]
    return Cost(a.nrows * n * max(1, math.ceil(math.log2(max(n, 2)))), _io(t))


def _elementwise(t: Tensor) -> Cost:
    return Cost(PER_ELEMENT.get(t.op, 0) * t.nelements, _io(t))


COST: dict[Op, Callable[[Tensor], Cost]] = {
    Op.MUL_MAT: _mul_mat,
    Op.MUL_MAT_ID: _mul_mat_id,
    Op.FLASH_ATTN_EXT: _flash_attn_ext,
    Op.SOFT_MAX: _soft_max,
    Op.ROPE: _rope,
    Op.SSM_CONV: _ssm_conv,
    Op.GATED_DELTA_NET: _gated_delta_net,
    Op.GET_ROWS: _get_rows,
    Op.SET_ROWS: _set_rows,
    Op.CPY: _cpy,
    Op.SUM_ROWS: _reduce,
    Op.MEAN: _reduce,
    Op.ARGMAX: _reduce,
    Op.ARGSORT: _sort,
    Op.TOP_K: _sort,
}


def node_cost(t: Tensor) -> Cost:
    """FLOPs and bytes of one node (zero for leafs and views). Ops without a formula of their
    own (elementwise, copies, concat, repeat) read every source once and write the output."""
    if is_empty_op(t):
        return Cost()
    return COST.get(t.op, _elementwise)(t)
