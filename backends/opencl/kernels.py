"""The opencl dispatch table: `KERNELS[op] = lower(backend, node, dst, srcs) -> Call`.

Each lowering picks a program of shaders/opencl/ by its defines, sets every kernel argument
(buffers, byte offsets, ne/nb) once and returns the prepared launch. Ops absent here (or
refused by a lowering's `supports`) run on the cpu through the scheduler.
"""

from __future__ import annotations

import numpy as np

from graphir.builders import ROPE_IMROPE, ROPE_MROPE, SORT_DESC
from graphir.numerics import alibi_slopes, yarn_corr_dims
from graphir.ops import BINARY_OPS, UNARY_OPS, Op
from graphir.tensor import Tensor
from graphir.types import TYPE_INFO, DType

from ..base import Call, Place
from .runtime import cl

WG = 64  # work-group size of the row-reduction kernels (the WG define of common.h)
TYPE = {DType.F32: "F32", DType.F16: "F16", DType.BF16: "BF16"}  # float-convertible types
# block types the kernels dequantize, by their 16-element unit function (common.h)
DEQ = {t: f"deq16_{t.name.lower()}" for t in (DType.Q8_0, DType.Q4_0, DType.Q4_K, DType.Q5_K, DType.Q6_K)}
RAW = {DType.F32: "uint", DType.F16: "ushort", DType.BF16: "ushort", DType.I32: "int"}


def tensor_args(place: Place, t: Tensor) -> list:
    """The four kernel arguments of a tensor (TENSOR(T) in common.h); an SVM buffer (a numpy array,
    backend.py) is passed as its pointer."""
    h = place.buffer.handle
    return [cl.SVM(h) if isinstance(h, np.ndarray) else h, np.uint64(place.offset),
            cl.cltypes.make_int4(*t.ne), cl.cltypes.make_ulong4(*t.nb)]  # fmt: skip


def _set(kernel, *args) -> object:
    for i, a in enumerate(args):
        kernel.set_arg(i, a)
    return kernel


def _noop(be, node: Tensor, dst: Place, srcs: list) -> Call:  # views compute nothing
    return lambda: None


# ---- copies -------------------------------------------------------------------------


QUANTIZE = {DType.Q8_0: 8, DType.Q4_0: 4}  # block types cpy quantizes into (copy.cl's QUANT)


def _copy(be, node: Tensor, dst: Place, srcs: list) -> Call:
    """cont / dup / cpy: src[0] in logical order into dst (converted to node.type)."""
    s, ts, td = node.src[0], node.src[0].type, node.type
    if td in QUANTIZE:
        k = be.programs.kernel("copy.cl", "quantize", {"QUANT": QUANTIZE[td], "TS": TYPE[ts]})
        return be.launch(_set(k, *tensor_args(srcs[0], s), *tensor_args(dst, node)), node.nelements // 32)
    defines = {"RAW": RAW[ts]} if ts == td else {"TS": TYPE[ts], "TD": TYPE[td]}
    k = _set(be.programs.kernel("copy.cl", "copy", defines), *tensor_args(srcs[0], s), *tensor_args(dst, node))
    return be.launch(k, node.nelements)


def _copy_supports(node: Tensor) -> bool:
    ts, td = node.src[0].type, node.type
    return (ts == td and ts in RAW) or (ts in TYPE and (td in TYPE or td in QUANTIZE))


_copy.supports = _copy_supports

# ---- elementwise --------------------------------------------------------------------


def _binary(be, node: Tensor, dst: Place, srcs: list) -> Call:
    a, b = node.src
    defines = {f"OP_{node.op.name}": None, "TA": TYPE[a.type], "TB": TYPE[b.type], "TD": TYPE[node.type]}
    args = tensor_args(srcs[0], a) + tensor_args(srcs[1], b) + tensor_args(dst, node)
    return be.launch(_set(be.programs.kernel("binary.cl", "binary", defines), *args), node.nelements)


def _unary(be, node: Tensor, dst: Place, srcs: list) -> Call:
    p = node.params or {}
    p0, p1 = {Op.SCALE: ("s", "b"), Op.CLAMP: ("min", "max")}.get(node.op, (None, None))
    v0, v1 = (np.float32(p[p0]), np.float32(p[p1])) if p0 else (np.float32(0), np.float32(0))
    k = be.programs.kernel("unary.cl", "unary", {f"OP_{node.op.name}": None, "T": TYPE[node.type]})
    _set(k, *tensor_args(srcs[0], node.src[0]), *tensor_args(dst, node), v0, v1)
    return be.launch(k, node.nelements)


# ---- rows ---------------------------------------------------------------------------


def _norm(be, node: Tensor, dst: Place, srcs: list) -> Call:
    op = "OP_RMS" if node.op is Op.RMS_NORM else "OP_L2"
    k = be.programs.kernel("norm.cl", "norm", {op: None, "WG": WG})
    _set(k, *tensor_args(srcs[0], node.src[0]), *tensor_args(dst, node), np.float32(node.params["eps"]))
    return be.launch(k, node.nrows * WG, WG)


_norm.supports = lambda node: node.src[0].type == DType.F32


def _soft_max(be, node: Tensor, dst: Place, srcs: list) -> Call:
    a = node.src[0]
    mask = node.src[1] if len(node.src) > 1 else None
    defines: dict = {"WG": WG}
    if mask is not None:
        defines.update(HAS_MASK=None, TM=TYPE[mask.type])
    slopes = alibi_slopes(a.ne[2], node.params["max_bias"]).astype(np.float32)
    sbuf = cl.Buffer(be.ctx, cl.mem_flags.READ_ONLY | cl.mem_flags.COPY_HOST_PTR, hostbuf=slopes)
    m_args = tensor_args(srcs[1], mask) if mask is not None else tensor_args(srcs[0], a)  # unused without a mask
    k = be.programs.kernel("soft_max.cl", "soft_max", defines)
    _set(k, *tensor_args(srcs[0], a), *m_args, sbuf, *tensor_args(dst, node), np.float32(node.params["scale"]))
    return be.launch(k, node.nrows * WG, WG, keep=(sbuf,))


_soft_max.supports = lambda node: node.src[0].type == DType.F32


def _rows4(src: Tensor, dst: Tensor) -> bool:
    """Rows of a 4-byte type copied into the same type, both contiguous along dim 0, ne0 % 4 == 0: the
    row kernels' ROW4 variant (one work-item per 4 elements; the recurrent state's row copies)."""
    return (src.type == dst.type and src.type in (DType.F32, DType.I32) and src.nb[0] == 4 and dst.nb[0] == 4
            and src.ne[0] % 4 == 0)  # fmt: skip


def _get_rows(be, node: Tensor, dst: Place, srcs: list) -> Call:
    a, b = node.src
    n_items = node.nelements
    if a.type in DEQ:
        defines, n_items = {"DEQ": DEQ[a.type]}, node.nelements // 16
    elif _rows4(a, node):
        defines, n_items = {"ROW4": None}, node.nelements // 4
    elif a.type == DType.I32:
        defines = {"RAW": "int"}
    else:
        defines = {"TA": TYPE[a.type]}
    args = tensor_args(srcs[0], a) + tensor_args(srcs[1], b) + tensor_args(dst, node)
    return be.launch(_set(be.programs.kernel("get_rows.cl", "get_rows", defines), *args), n_items)


_get_rows.supports = lambda node: node.src[0].type in TYPE or node.src[0].type in DEQ or node.src[0].type == DType.I32


def _rows(be, node: Tensor, dst: Place, srcs: list) -> Call:
    """sum_rows / mean / argmax: one work-group per row."""
    op = {Op.SUM_ROWS: "OP_SUM", Op.MEAN: "OP_MEAN", Op.ARGMAX: "OP_ARGMAX"}[node.op]
    k = _set(be.programs.kernel("rows.cl", "rows", {op: None, "WG": WG}),
             *tensor_args(srcs[0], node.src[0]), *tensor_args(dst, node))  # fmt: skip
    return be.launch(k, node.src[0].nrows * WG, WG)


def _set_rows(be, node: Tensor, dst: Place, srcs: list) -> Call:
    _, b, c = node.src
    args = tensor_args(srcs[1], b) + tensor_args(srcs[2], c) + tensor_args(dst, node)
    defines, n0 = {"TD": TYPE[node.type]}, b.ne[0]
    if _rows4(b, node):
        defines["ROW4"], n0 = None, b.ne[0] // 4
    k = _set(be.programs.kernel("set_rows.cl", "set_rows", defines), *args)
    return be.launch(k, n0 * b.ne[2] * b.ne[3])


_set_rows.supports = lambda node: node.type in TYPE


def _concat(be, node: Tensor, dst: Place, srcs: list) -> Call:
    """concat, and repeat (the same kernel reading a modulo its shape)."""
    a = node.src[0]
    if node.op is Op.REPEAT:
        defines, args = {"REPEAT": None, "RAW": RAW[a.type]}, tensor_args(srcs[0], a) * 2
    else:
        defines, args = {"DIM": node.params["dim"], "RAW": RAW[a.type]}, tensor_args(srcs[0], a)
        args += tensor_args(srcs[1], node.src[1])
    k = _set(be.programs.kernel("concat.cl", "concat", defines), *args, *tensor_args(dst, node))
    return be.launch(k, node.nelements)


_concat.supports = lambda node: node.src[0].type in RAW


def _argsort(be, node: Tensor, dst: Place, srcs: list) -> Call:
    """argsort and top_k (the first k of the stable descending order)."""
    desc = node.op is Op.TOP_K or node.params["order"] == SORT_DESC
    k = be.programs.kernel("argsort.cl", "argsort", {"DESC": None} if desc else {})
    _set(k, *tensor_args(srcs[0], node.src[0]), *tensor_args(dst, node))
    return be.launch(k, node.src[0].nelements)


# ---- matrix -------------------------------------------------------------------------


MM_WG = 16  # mul_mat's work-group: each item takes every 16th unit of 16 elements of the row
# the tiled (several-token) mul_mat: rows of a x tokens of b per work-item, work-items per
# work-group along rows x tokens, 16-element units of K staged per step
MM_TILE, MM_TILE_WG, MM_TILE_KC = (4, 8), (4, 4), 16
# up to this many tokens mul_mat stays on the mat-vec kernel, a's row read once per block of tokens:
# a verify batch then costs about one decode (the tiled kernel took 5x a decode at 2 tokens on PoCL)
# and sums each row as a single-token decode does (bit-identical speculative decoding)
MM_VEC_MAX_N = 8


def _mul_mat_defines(a: Tensor, b: Tensor) -> dict:
    """mul_mat.cl's variant: a dequantized or loaded by type, contiguous rows read as vectors."""
    defines = {"WG": MM_WG, "TB": TYPE[b.type]}
    defines.update({"DEQ": DEQ[a.type], "TA": "F32"} if a.type in DEQ else {"TA": TYPE[a.type]})
    if a.type in (DType.F32, DType.F16) and a.nb[0] == TYPE_INFO[a.type].block_bytes and a.ne[0] % 16 == 0:
        defines["A_CONTIG"] = None
    if b.nb[0] == TYPE_INFO[b.type].block_bytes:
        defines["B_CONTIG"] = None
    return defines


def _mul_mat(be, node: Tensor, dst: Place, srcs: list) -> Call:
    a, b = node.src
    defines = _mul_mat_defines(a, b)
    args = tensor_args(srcs[0], a) + tensor_args(srcs[1], b) + tensor_args(dst, node)
    n_tok = b.ne[1]
    if n_tok > MM_VEC_MAX_N and "B_CONTIG" in defines and ("DEQ" in defines or "A_CONTIG" in defines):
        # several tokens: a block of d per work-group, a's rows staged once per group (mul_mat_tiled.cl)
        (tm, tn), (wm, wn) = MM_TILE, MM_TILE_WG
        defines.update(TILE_M=tm, TILE_N=tn, WG_M=wm, WG_N=wn, KC=MM_TILE_KC)
        del defines["WG"]
        k = _set(be.programs.kernel("mul_mat_tiled.cl", "mul_mat_tiled", defines), *args)
        groups = -(-node.ne[0] // (wm * tm)) * -(-node.ne[1] // (wn * tn)) * node.ne[2] * node.ne[3]
        return be.launch(k, groups * wm * wn, wm * wn)
    nt = min(n_tok, MM_VEC_MAX_N)
    if nt > 1:
        defines["NT"] = nt
    return _mat_vec(be, "mul_mat", defines, args, node.ne[0] * -(-node.ne[1] // nt) * node.ne[2] * node.ne[3])


def _mat_vec(be, name: str, defines: dict, args: list, rows: int) -> Call:
    """mul_mat.cl's kernel over `rows` (row, token block) pairs: one work-item each on a CPU device
    (ITEM_ROWS), else one work-group of MM_WG items each."""
    if be.item_rows:
        defines["ITEM_ROWS"] = None
    k = _set(be.programs.kernel("mul_mat.cl", name, defines), *args)
    return be.launch(k, rows) if be.item_rows else be.launch(k, rows * MM_WG, MM_WG)


def _mul_mat_id(be, node: Tensor, dst: Place, srcs: list) -> Call:
    a, b, ids = node.src
    defines = _mul_mat_defines(a, b)
    args = tensor_args(srcs[0], a) + tensor_args(srcs[1], b) + tensor_args(srcs[2], ids) + tensor_args(dst, node)
    return _mat_vec(be, "mul_mat_id", defines, args, node.nelements)


_mul_mat.supports = lambda node: node.src[0].type in TYPE or node.src[0].type in DEQ
_mul_mat_id.supports = _mul_mat.supports


def _flash_attn_ext(be, node: Tensor, dst: Place, srcs: list) -> Call:
    q, k, v = node.src[:3]
    mask = node.src[3] if len(node.src) > 3 else None
    p = node.params
    scale, softcap = np.float32(p["scale"]), np.float32(p["logit_softcap"])
    if softcap != 0:
        scale = scale / softcap  # as ggml: scale first, then softcap * tanh
    wg = 1 if be.item_rows else WG  # CPU devices: one work-item per query row (ITEM_ROWS)
    defines = {"WG": WG, "TK": TYPE[k.type], "TV": TYPE[v.type], "DV_PER": -(-v.ne[0] // wg)}
    if be.item_rows:
        defines["ITEM_ROWS"] = None
    if mask is not None:
        defines.update(HAS_MASK=None, TM=TYPE[mask.type])
    if softcap != 0:
        defines["SOFTCAP"] = None
    if q.ne[0] % 4 == 0 and q.nb[0] == 4 and k.nb[0] == TYPE_INFO[k.type].block_bytes:
        defines["QK_VEC4"] = None
    slopes = alibi_slopes(q.ne[2], p["max_bias"]).astype(np.float32)
    sbuf = cl.Buffer(be.ctx, cl.mem_flags.READ_ONLY | cl.mem_flags.COPY_HOST_PTR, hostbuf=slopes)
    m_args = tensor_args(srcs[3], mask) if mask is not None else tensor_args(srcs[0], q)  # unused without a mask
    kern = _set(be.programs.kernel("flash_attn_ext.cl", "flash_attn_ext", defines),
                *tensor_args(srcs[0], q), *tensor_args(srcs[1], k), *tensor_args(srcs[2], v), *m_args, sbuf,
                *tensor_args(dst, node), np.float32(scale), softcap)  # fmt: skip
    rows = q.ne[1] * q.ne[2] * q.ne[3]
    if be.item_rows:
        return be.launch(kern, rows, keep=(sbuf,))
    return be.launch(kern, rows * WG, WG, keep=(sbuf,))


# ---- position / state space ------------------------------------------------------


def _rope(be, node: Tensor, dst: Place, srcs: list) -> Call:
    p, a, pos = node.params, node.src[0], node.src[1]
    ff = node.src[2] if len(node.src) > 2 else None
    f32 = np.float32
    theta_scale = np.power(f32(p["freq_base"]), f32(-2.0) / f32(p["n_dims"]))  # as the reference, in float32
    low = high = f32(0)
    mscale = f32(p["attn_factor"])
    if p["ext_factor"] != 0:
        low, high = yarn_corr_dims(p["n_dims"], p["n_ctx_orig"], p["freq_base"], p["beta_fast"], p["beta_slow"])
        mscale = mscale * (f32(1) + f32(0.1) * np.log(f32(1) / f32(p["freq_scale"])))
    defines = {"MODE": p["mode"]} | ({"HAS_FF": None} if ff is not None else {})
    sections = cl.cltypes.make_int4(*(p["sections"] or (0, 0, 0, 0)))
    ff_args = tensor_args(srcs[2], ff) if ff is not None else tensor_args(srcs[1], pos)  # unused without ff
    k = _set(be.programs.kernel("rope.cl", "rope", defines),
             *tensor_args(srcs[0], a), *tensor_args(srcs[1], pos), *ff_args, *tensor_args(dst, node),
             np.int32(p["n_dims"]), sections, f32(theta_scale), f32(p["freq_scale"]), f32(p["ext_factor"]),
             f32(low), f32(high), f32(mscale))  # fmt: skip
    return be.launch(k, a.nrows)


def _rope_supports(node: Tensor) -> bool:
    # a multi-section rope with the first three sections zero is invalid (ggml asserts): leave
    # it to the cpu reference, which raises a clear error
    p = node.params
    return p["mode"] not in (ROPE_MROPE, ROPE_IMROPE) or any(p["sections"][:3])


_rope.supports = _rope_supports


def _ssm_conv(be, node: Tensor, dst: Place, srcs: list) -> Call:
    sx, c = node.src
    args = tensor_args(srcs[0], sx) + tensor_args(srcs[1], c) + tensor_args(dst, node)
    return be.launch(_set(be.programs.kernel("ssm_conv.cl", "ssm_conv"), *args), node.nelements)


def _gated_delta_net(be, node: Tensor, dst: Place, srcs: list) -> Call:
    q, k, v, g = node.src[:4]
    S_v, H_v, _, n_seqs = v.ne
    defines = {"S_V": S_v} | ({"G_PER_CHANNEL": None} if g.ne[0] > 1 else {})
    rows = (q, k, g) if g.ne[0] > 1 else (q, k)
    if S_v % 4 == 0 and all(t.nb[0] == 4 for t in rows):
        defines["VEC4"] = None
    args = [a for pl, t in zip(srcs, node.src) for a in tensor_args(pl, t)] + tensor_args(dst, node)
    kern = _set(be.programs.kernel("gated_delta_net.cl", "gated_delta_net", defines), *args,
                np.int32(node.params["snapshots"]))  # fmt: skip
    return be.launch(kern, S_v * H_v * n_seqs)


# NOTE: the state column lives in private memory; very large states would spill
_gated_delta_net.supports = lambda node: node.src[2].ne[0] <= 256


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
    Op.RMS_NORM: _norm,
    Op.L2_NORM: _norm,
    Op.SOFT_MAX: _soft_max,
    Op.GET_ROWS: _get_rows,
    Op.MUL_MAT: _mul_mat,
    Op.MUL_MAT_ID: _mul_mat_id,
    Op.SUM_ROWS: _rows,
    Op.MEAN: _rows,
    Op.ARGMAX: _rows,
    Op.SET_ROWS: _set_rows,
    Op.CONCAT: _concat,
    Op.REPEAT: _concat,
    Op.ARGSORT: _argsort,
    Op.TOP_K: _argsort,
    Op.FLASH_ATTN_EXT: _flash_attn_ext,
    Op.ROPE: _rope,
    Op.SSM_CONV: _ssm_conv,
    Op.GATED_DELTA_NET: _gated_delta_net,
}
