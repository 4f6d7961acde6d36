"""The cuda dispatch table: `KERNELS[op] = lower(backend, node, dst, srcs) -> list[Launch]`.

Each lowering picks a kernel of shaders/cuda/ by name, packs its parameters once (Tensor
records of every operand, scalars) and sets its grid; the backend turns a split's launches into
one CUDA graph. Type variants live inside the kernels (a switch on the uniform type code), so
each source is one module. Ops absent here (or refused by a lowering's `supports`) run on the
cpu through the scheduler.
"""

from __future__ import annotations

import numpy as np

from graphir.builders import ROPE_IMROPE, ROPE_MROPE, SORT_DESC
from graphir.numerics import alibi_slopes, yarn_corr_dims
from graphir.ops import BINARY_OPS, UNARY_OPS, Op
from graphir.tensor import Tensor
from graphir.types import DType

from ..base import Place
from .runtime import Launch, pack

FLOAT = frozenset({DType.F32, DType.F16, DType.BF16})  # float-convertible types (common.cuh ld/st)
RAW = FLOAT | {DType.I32}  # types copied as raw elements
QUANTS = frozenset({DType.Q8_0, DType.Q4_0, DType.Q4_K, DType.Q5_K, DType.Q6_K})  # dequantized in kernels
QUANTIZE = frozenset({DType.Q8_0, DType.Q4_0})  # block types cpy quantizes into
THREADS = 256  # block size of the one-thread-per-element kernels and the row reductions
MV_WARPS = 4  # mul_mat.cu: rows per mat-vec block
MM_TILE, MM_KC = (64, 64), 32  # mul_mat.cu: d tile of mul_mat_tiled, K step
# up to this many tokens mul_mat stays on the mat-vec kernel: a verify batch of MTP drafts sums each
# row in the same order as a single-token decode, and M / 4 blocks per token keep the GPU busy where
# 64-row tiles would give only M / 64 blocks
MV_MAX_N = 8
FA_WARPS, FA_MAX_D = 4, 256  # attn.cu: warps per query row, largest head size
GDN_MAX_S = 256  # ssm.cu: largest state size (8 rows per lane)
GRID_YZ = 65535  # the largest grid y / z extent
BINARY = {Op.ADD: 0, Op.SUB: 1, Op.MUL: 2, Op.DIV: 3}  # elementwise.cu op codes
UNARY = {op: i for i, op in enumerate((Op.SQR, Op.SQRT, Op.EXP, Op.NEG, Op.SIGMOID, Op.SILU, Op.SOFTPLUS,
                                       Op.GELU, Op.SCALE, Op.CLAMP))}  # fmt: skip
ROWS = {Op.SUM_ROWS: 0, Op.MEAN: 1, Op.ARGMAX: 2}  # reduce.cu rows op codes
NO_TENSOR = (0, (0, 0, 0, 0), (1, 1, 1, 1), 0)  # an absent optional operand (data == 0)


def rec(be, place: Place, t: Tensor) -> tuple:
    """The Tensor record (common.cuh) of t at place: device address of its origin, nb, ne, type."""
    return (be.address(place), tuple(t.nb), tuple(t.ne), int(t.type))


def launch(kernel: str, layout: str, args: list, grid, block: int, shared: int = 0, keep: tuple = ()) -> list[Launch]:
    g = (grid, 1, 1) if isinstance(grid, int) else tuple(grid)
    if 0 in g:
        return []
    return [Launch(kernel, layout, pack(layout, args), g, (block, 1, 1), shared, keep)]


def elementwise(kernel: str, layout: str, args: list, n: int) -> list[Launch]:
    """One thread per item, THREADS per block."""
    return launch(kernel, layout, args, -(-n // THREADS), THREADS)


def _noop(be, node: Tensor, dst: Place, srcs: list) -> list[Launch]:  # views compute nothing
    return []


# ---- copies and indexing -------------------------------------------------------------


def _copy(be, node: Tensor, dst: Place, srcs: list) -> list[Launch]:
    """cont / dup / cpy: src[0] in logical order into dst (converted, or quantized)."""
    args = [rec(be, srcs[0], node.src[0]), rec(be, dst, node)]
    if node.type in QUANTIZE:
        return elementwise("quantize", "TT", args, node.nelements // 32)
    return elementwise("copy", "TT", args, node.nelements)


def _copy_supports(node: Tensor) -> bool:
    ts, td = node.src[0].type, node.type
    return (ts == td and ts in RAW) or (ts in FLOAT and (td in FLOAT or td in QUANTIZE))


_copy.supports = _copy_supports


def _concat(be, node: Tensor, dst: Place, srcs: list) -> list[Launch]:
    """concat, and repeat (dim -1: the kernel reads a modulo its shape)."""
    a = rec(be, srcs[0], node.src[0])
    b = a if node.op is Op.REPEAT else rec(be, srcs[1], node.src[1])
    dim = -1 if node.op is Op.REPEAT else node.params["dim"]
    return elementwise("concat", "TTTi", [a, b, rec(be, dst, node), dim], node.nelements)


_concat.supports = lambda node: node.src[0].type in RAW


def _get_rows(be, node: Tensor, dst: Place, srcs: list) -> list[Launch]:
    a, b = node.src
    args = [rec(be, srcs[0], a), rec(be, srcs[1], b), rec(be, dst, node)]
    if a.type in QUANTS:  # one thread per 16 dequantized elements
        return elementwise("get_rows_q", "TTT", args, node.nelements // 16)
    return elementwise("get_rows", "TTT", args, node.nelements)


_get_rows.supports = lambda node: node.src[0].type in RAW or node.src[0].type in QUANTS


def _set_rows(be, node: Tensor, dst: Place, srcs: list) -> list[Launch]:
    _, b, c = node.src
    args = [rec(be, srcs[1], b), rec(be, srcs[2], c), rec(be, dst, node)]
    return elementwise("set_rows", "TTT", args, b.ne[0] * b.ne[2] * b.ne[3])


_set_rows.supports = lambda node: node.type in FLOAT


# ---- elementwise ---------------------------------------------------------------------


def _binary(be, node: Tensor, dst: Place, srcs: list) -> list[Launch]:
    a, b = node.src
    args = [rec(be, srcs[0], a), rec(be, srcs[1], b), rec(be, dst, node), BINARY[node.op]]
    return elementwise("binary", "TTTi", args, node.nelements)


_binary.supports = lambda node: all(t.type in FLOAT for t in (*node.src, node))


def _unary(be, node: Tensor, dst: Place, srcs: list) -> list[Launch]:
    p = node.params or {}
    keys = {Op.SCALE: ("s", "b"), Op.CLAMP: ("min", "max")}.get(node.op)
    p0, p1 = (float(p[keys[0]]), float(p[keys[1]])) if keys else (0.0, 0.0)
    args = [rec(be, srcs[0], node.src[0]), rec(be, dst, node), UNARY[node.op], p0, p1]
    return elementwise("unary", "TTiff", args, node.nelements)


_unary.supports = lambda node: node.type in FLOAT and node.src[0].type in FLOAT


# ---- rows ----------------------------------------------------------------------------


def _norm(be, node: Tensor, dst: Place, srcs: list) -> list[Launch]:
    args = [rec(be, srcs[0], node.src[0]), rec(be, dst, node), float(node.params["eps"]), int(node.op is Op.L2_NORM)]
    return launch("norm_rows", "TTfi", args, node.nrows, THREADS)


_norm.supports = lambda node: node.src[0].type == DType.F32


def _rows(be, node: Tensor, dst: Place, srcs: list) -> list[Launch]:
    """sum_rows / mean / argmax: one block per row."""
    args = [rec(be, srcs[0], node.src[0]), rec(be, dst, node), ROWS[node.op]]
    return launch("rows", "TTi", args, node.src[0].nrows, THREADS)


_rows.supports = lambda node: node.src[0].type == DType.F32


def _soft_max(be, node: Tensor, dst: Place, srcs: list) -> list[Launch]:
    a = node.src[0]
    mask = rec(be, srcs[1], node.src[1]) if len(node.src) > 1 and node.src[1] is not None else NO_TENSOR
    slopes = be.constant(alibi_slopes(a.ne[2], node.params["max_bias"]))
    args = [rec(be, srcs[0], a), mask, be.address(slopes), rec(be, dst, node), float(node.params["scale"])]
    return launch("soft_max", "TTPTf", args, node.nrows, THREADS, keep=(slopes,))


_soft_max.supports = lambda node: node.src[0].type == DType.F32 and (len(node.src) < 2 or node.src[1].type in FLOAT)


def _argsort(be, node: Tensor, dst: Place, srcs: list) -> list[Launch]:
    """argsort and top_k (the first k of the stable descending order)."""
    desc = node.op is Op.TOP_K or node.params["order"] == SORT_DESC
    args = [rec(be, srcs[0], node.src[0]), rec(be, dst, node), int(desc)]
    return elementwise("argsort", "TTi", args, node.src[0].nelements)


_argsort.supports = lambda node: node.src[0].type == DType.F32


# ---- matrix --------------------------------------------------------------------------


def _mul_mat(be, node: Tensor, dst: Place, srcs: list) -> list[Launch]:
    a, b = node.src
    ra, rb, rd = rec(be, srcs[0], a), rec(be, srcs[1], b), rec(be, dst, node)
    M, N, ne2, ne3 = node.ne
    if N > MV_MAX_N and a.ne[0] % MM_KC == 0:  # prefill: tiles of d, a dequantized once per tile
        grid = (-(-M // MM_TILE[0]), -(-N // MM_TILE[1]), ne2 * ne3)
        return launch("mul_mat_tiled", "TTT", [ra, rb, rd], grid, 256)
    grid = (-(-M // MV_WARPS), N, ne2 * ne3)
    return launch("mul_mat_vec", "TTTT", [ra, rb, NO_TENSOR, rd], grid, MV_WARPS * 32)


def _mul_mat_supports(node: Tensor) -> bool:
    a, b = node.src[:2]
    M, N, ne2, ne3 = node.ne
    fits = ne2 * ne3 <= GRID_YZ and (N <= GRID_YZ or a.ne[0] % MM_KC == 0)
    return (a.type in FLOAT or a.type in QUANTS) and b.type in FLOAT and fits


_mul_mat.supports = _mul_mat_supports


def _mul_mat_id(be, node: Tensor, dst: Place, srcs: list) -> list[Launch]:
    a, b, ids = node.src
    args = [rec(be, srcs[0], a), rec(be, srcs[1], b), rec(be, srcs[2], ids), rec(be, dst, node)]
    grid = (-(-node.ne[0] // MV_WARPS), node.ne[1], node.ne[2])  # rows, expert slots, tokens
    return launch("mul_mat_vec", "TTTT", args, grid, MV_WARPS * 32)


def _mul_mat_id_supports(node: Tensor) -> bool:
    a, b = node.src[:2]
    fits = node.ne[1] <= GRID_YZ and node.ne[2] <= GRID_YZ
    return (a.type in FLOAT or a.type in QUANTS) and b.type in FLOAT and fits


_mul_mat_id.supports = _mul_mat_id_supports


def _flash_attn_ext(be, node: Tensor, dst: Place, srcs: list) -> list[Launch]:
    q, k, v = node.src[:3]
    has_mask = len(node.src) > 3 and node.src[3] is not None
    p = node.params
    scale, softcap = np.float32(p["scale"]), np.float32(p["logit_softcap"])
    if softcap != 0:
        scale = scale / softcap  # as ggml: scale first, then softcap * tanh
    slopes = be.constant(alibi_slopes(q.ne[2], p["max_bias"]))
    mask = rec(be, srcs[3], node.src[3]) if has_mask else NO_TENSOR
    args = [rec(be, srcs[0], q), rec(be, srcs[1], k), rec(be, srcs[2], v), mask, be.address(slopes),
            rec(be, dst, node), float(scale), float(softcap)]  # fmt: skip
    return launch("flash_attn_ext", "TTTTPTff", args, q.ne[1] * q.ne[2] * q.ne[3], FA_WARPS * 32, keep=(slopes,))


def _flash_attn_supports(node: Tensor) -> bool:
    q, k, v = node.src[:3]
    mask_ok = len(node.src) < 4 or node.src[3] is None or node.src[3].type in FLOAT
    return (q.type == DType.F32 and k.type in (DType.F32, DType.F16) and v.type in (DType.F32, DType.F16)
            and q.ne[0] <= FA_MAX_D and v.ne[0] <= FA_MAX_D and mask_ok)  # fmt: skip


_flash_attn_ext.supports = _flash_attn_supports


# ---- position / state space ------------------------------------------------------------


def _rope(be, node: Tensor, dst: Place, srcs: list) -> list[Launch]:
    p, a, pos = node.params, node.src[0], node.src[1]
    ff = rec(be, srcs[2], node.src[2]) if len(node.src) > 2 and node.src[2] is not None else NO_TENSOR
    f32 = np.float32
    theta_scale = np.power(f32(p["freq_base"]), f32(-2.0) / f32(p["n_dims"]))  # as the reference, in float32
    low = high = f32(0)
    mscale = f32(p["attn_factor"])
    if p["ext_factor"] != 0:
        low, high = yarn_corr_dims(p["n_dims"], p["n_ctx_orig"], p["freq_base"], p["beta_fast"], p["beta_slow"])
        mscale = mscale * (f32(1) + f32(0.1) * np.log(f32(1) / f32(p["freq_scale"])))
    sections = tuple(p["sections"] or (0, 0, 0, 0))
    args = [rec(be, srcs[0], a), rec(be, srcs[1], pos), ff, rec(be, dst, node), int(p["mode"]), int(p["n_dims"]),
            *map(int, sections), float(theta_scale), float(p["freq_scale"]), float(p["ext_factor"]),
            float(low), float(high), float(mscale)]  # fmt: skip
    return elementwise("rope", "TTTTiiiiiiffffff", args, a.nrows)


def _rope_supports(node: Tensor) -> bool:
    # a multi-section rope with the first three sections zero is invalid (ggml asserts): leave it
    # to the cpu, which raises a clear error
    p = node.params
    multi_ok = p["mode"] not in (ROPE_MROPE, ROPE_IMROPE) or any(p["sections"][:3])
    return node.src[0].type == DType.F32 and multi_ok


_rope.supports = _rope_supports


def _ssm_conv(be, node: Tensor, dst: Place, srcs: list) -> list[Launch]:
    sx, c = node.src
    return elementwise("ssm_conv", "TTT", [rec(be, srcs[0], sx), rec(be, srcs[1], c), rec(be, dst, node)],
                       node.nelements)  # fmt: skip


def _gated_delta_net(be, node: Tensor, dst: Place, srcs: list) -> list[Launch]:
    S_v, H_v, _, n_seqs = node.src[2].ne
    args = [rec(be, pl, t) for pl, t in zip(srcs, node.src)] + [rec(be, dst, node), int(node.params["snapshots"])]
    columns_per_block = 4  # one warp per state column
    return launch("gated_delta_net", "TTTTTTTi", args, -(-S_v * H_v * n_seqs // columns_per_block),
                  columns_per_block * 32)  # fmt: skip


_gated_delta_net.supports = lambda node: node.src[2].ne[0] <= GDN_MAX_S


KERNELS = {
    Op.VIEW: _noop,
    Op.RESHAPE: _noop,
    Op.PERMUTE: _noop,
    Op.TRANSPOSE: _noop,
    Op.CONT: _copy,
    Op.DUP: _copy,
    Op.CPY: _copy,
    **{op: _binary for op in BINARY_OPS},
    **{op: _unary for op in UNARY_OPS},
    Op.SCALE: _unary,
    Op.REPEAT: _concat,
    Op.CONCAT: _concat,
    Op.RMS_NORM: _norm,
    Op.L2_NORM: _norm,
    Op.SUM_ROWS: _rows,
    Op.MEAN: _rows,
    Op.ARGMAX: _rows,
    Op.SOFT_MAX: _soft_max,
    Op.ARGSORT: _argsort,
    Op.TOP_K: _argsort,
    Op.GET_ROWS: _get_rows,
    Op.SET_ROWS: _set_rows,
    Op.MUL_MAT: _mul_mat,
    Op.MUL_MAT_ID: _mul_mat_id,
    Op.FLASH_ATTN_EXT: _flash_attn_ext,
    Op.ROPE: _rope,
    Op.SSM_CONV: _ssm_conv,
    Op.GATED_DELTA_NET: _gated_delta_net,
}
