"""The vulkan dispatch table: `KERNELS[op] = lower(backend, node, dst, srcs) -> [Dispatch]`.

Each lowering picks a variant of a shader of shaders/vulkan/ by its defines and lists the
tensors it binds, its push-constant values, extra meta floats and its number of work-groups;
the backend turns the dispatches of a whole split into one recorded command buffer. `SHADERS`
is the Python mirror of every shader's interface (tensor bindings in order, the push-constant
block, the work-group size through the WG define): tests/backends/test_vulkan.py checks it
against the compiled SPIR-V of every variant that lowering produces.

Ops absent here, or refused by a lowering's `supports`, run on the cpu through the scheduler.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from graphir.builders import ROPE_IMROPE, ROPE_MROPE, SORT_DESC
from graphir.numerics import alibi_slopes, yarn_corr_dims
from graphir.ops import BINARY_OPS, UNARY_OPS, Op
from graphir.tensor import Tensor
from graphir.types import TYPE_INFO, DType

from ..base import Place

TYPE = {DType.F32: "F32", DType.F16: "F16", DType.BF16: "BF16"}  # float-convertible element types
CONV = {**TYPE, DType.I32: "I32"}  # what copy.comp converts between
DEQ = {t: int(t) for t in (DType.Q8_0, DType.Q4_0, DType.Q4_K, DType.Q5_K, DType.Q6_K)}  # by GGUF type id
RAW = {DType.F32: "RAW32", DType.I32: "RAW32", DType.F16: "RAW16", DType.BF16: "RAW16"}
QUANTIZE = {DType.Q8_0: 8, DType.Q4_0: 4}  # block types cpy quantizes into (copy.comp's QUANT)
WG = 64  # work-group size of most shaders (the WG define of common.glsl)
# mul_mat.comp (invocations per work-group, rows of d per work-group) by device type: on a CPU
# device (lavapipe) one SIMD fiber per group, where a barrier costs no fiber switch
MAT_VEC = {"cpu": (8, 8), "gpu": (32, 4)}
# elements per invocation of the elementwise shaders (common.glsl FOR_ELEMENTS) by device type: an
# llvmpipe work-group costs microseconds, so it gets WG * 16 elements
EPT = {"cpu": 16, "gpu": 4}
# invocations per work-group of the row reductions (norm, soft_max, rows, flash_attn_ext) by device
# type: on lavapipe one SIMD fiber, so the reduction's barriers switch no fibers
REDUCE_WG = {"cpu": 8, "gpu": 64}
# mul_mat_tiled.comp: invocations along rows x tokens, rows x tokens per invocation, units of K staged
MM_TILE_WG, MM_TILE, MM_TILE_KC = (8, 8), (4, 2), 4
# tokens from which mul_mat takes the tiled kernel, by device type: on lavapipe never (its barriers
# across fibers and per-lane shared-memory reads cost more than re-reading the weights: 128 tokens of
# a 4096x4096 Q8_0 matrix 14 s tiled, 8 s as mat-vecs)
MM_TILED_MIN_N = {"cpu": 1 << 30, "gpu": 4}
# tokens per work-group of the mat-vec mul_mat: a's units read once for the block (a verify batch costs
# about one decode, each token summed as a single-token decode sums it: bit-identical)
MM_VEC_NT = 4


@dataclass(frozen=True)
class Shader:
    """A shader's interface: tensor bindings 1.. in order (the last is written), push-constant
    fields (name, GLSL type) in order, base defines; `windowed`: binding 1 may be bound as
    windows over a tensor larger than one descriptor's range (weights.glsl)."""

    file: str
    tensors: tuple[str, ...]
    push: tuple[tuple[str, str], ...] = ()
    base: tuple[tuple[str, object], ...] = ()
    windowed: bool = False


S_COPY = Shader("copy.comp", ("s", "d"))
S_BINARY = Shader("binary.comp", ("a", "b", "d"))
S_UNARY = Shader("unary.comp", ("a", "d"), (("p0", "float"), ("p1", "float")))
S_NORM = Shader("norm.comp", ("a", "d"), (("eps", "float"),))
S_SOFT_MAX = Shader("soft_max.comp", ("a", "m", "d"), (("scale", "float"),))
S_ROWS = Shader("rows.comp", ("a", "d"))
S_ARGSORT = Shader("argsort.comp", ("a", "d"))
S_GET_ROWS = Shader("get_rows.comp", ("a", "b", "d"), windowed=True)
S_SET_ROWS = Shader("set_rows.comp", ("b", "c", "d"))
S_CONCAT = Shader("concat.comp", ("a", "b", "d"))
S_MUL_MAT = Shader("mul_mat.comp", ("a", "b", "d"), windowed=True)
S_MUL_MAT_ID = Shader("mul_mat.comp", ("a", "b", "ids", "d"), base=(("ID", None),), windowed=True)
S_MUL_MAT_TILED = Shader("mul_mat_tiled.comp", ("a", "b", "d"), windowed=True)
S_FLASH_ATTN = Shader("flash_attn_ext.comp", ("q", "k", "v", "m", "d"), (("scale", "float"), ("softcap", "float")))
S_ROPE = Shader(
    "rope.comp",
    ("a", "pos", "ff", "d"),
    (
        ("n_dims", "int"),
        ("s0", "int"),
        ("s1", "int"),
        ("s2", "int"),
        ("s3", "int"),
        ("theta_scale", "float"),
        ("freq_scale", "float"),
        ("ext_factor", "float"),
        ("low", "float"),
        ("high", "float"),
        ("mscale", "float"),
    ),
)
S_SSM_CONV = Shader("ssm_conv.comp", ("sx", "c", "d"))
S_GDN = Shader("gated_delta_net.comp", ("q", "k", "v", "g", "beta", "state", "d"), (("n_snap", "uint"),))
SHADERS = [v for k, v in dict(globals()).items() if k.startswith("S_") and isinstance(v, Shader)]


@dataclass
class Dispatch:
    """One dispatch of a shader variant: (place, tensor) per binding, push values in the
    shader's field order, extra meta floats, and the number of work-groups."""

    shader: Shader
    defines: dict[str, object]
    tensors: list[tuple[Place, Tensor]]
    groups: int
    push: tuple = ()
    extra: np.ndarray | None = None
    local: int = WG  # invocations per work-group (the WG define)


def _d(shader: Shader, defines: dict, tensors: list, groups: int, push: tuple = (), extra=None,
       local: int = WG) -> list[Dispatch]:  # fmt: skip
    """A one-dispatch lowering (none when there is no work)."""
    if groups <= 0:
        return []
    return [Dispatch(shader, dict(shader.base) | defines, tensors, groups, push, extra, local)]


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


def _elements(be, ne: tuple[int, ...], defines: dict) -> int:
    """Work-groups of a FOR_ELEMENTS shader (common.glsl) over shape ne: WG * EPT elements of one row
    each, or of the flat order (FLAT) when rows are shorter than a work-group. Sets the defines."""
    n, rows, per = int(np.prod(ne)), int(np.prod(ne[1:])), WG * be.ept
    defines["EPT"] = be.ept
    if n == 0:
        return 0
    if ne[0] < WG:
        defines["FLAT"] = None
        return _cdiv(n, per)
    return _cdiv(ne[0], per) * rows


def _noop(be, node: Tensor, dst: Place, srcs: list) -> list[Dispatch]:  # views compute nothing
    return []


# ---- copies -------------------------------------------------------------------------


def _copy(be, node: Tensor, dst: Place, srcs: list) -> list[Dispatch]:
    """cont / dup / cpy: src[0] in logical order into dst (converted to node.type)."""
    s, ts, td = node.src[0], node.src[0].type, node.type
    args = [(srcs[0], s), (dst, node)]
    if td in QUANTIZE:
        return _d(S_COPY, {"QUANT": QUANTIZE[td], "TS": CONV[ts]}, args, _cdiv(node.nelements // 32, WG))
    defines: dict = {RAW[ts]: None} if ts == td else {"TS": CONV[ts], "TD": CONV[td]}
    if s.ne == node.ne:
        defines["SAME_NE"] = None
        return _d(S_COPY, defines, args, _elements(be, node.ne, defines))
    defines["EPT"] = be.ept
    return _d(S_COPY, defines, args, _cdiv(node.nelements, WG * be.ept))


def _copy_supports(node: Tensor) -> bool:
    ts, td = node.src[0].type, node.type
    return (ts == td and ts in RAW) or (ts in CONV and td in CONV) or (ts in TYPE and td in QUANTIZE)


_copy.supports = _copy_supports

# ---- elementwise --------------------------------------------------------------------


def _binary(be, node: Tensor, dst: Place, srcs: list) -> list[Dispatch]:
    a, b = node.src
    defines = {f"OP_{node.op.name}": None, "TA": TYPE[a.type], "TB": TYPE[b.type], "TD": TYPE[node.type]}
    return _d(S_BINARY, defines, [(srcs[0], a), (srcs[1], b), (dst, node)], _elements(be, node.ne, defines))


def _unary(be, node: Tensor, dst: Place, srcs: list) -> list[Dispatch]:
    p = node.params or {}
    names = {Op.SCALE: ("s", "b"), Op.CLAMP: ("min", "max")}.get(node.op)
    push = (p[names[0]], p[names[1]]) if names else (0.0, 0.0)
    defines = {f"OP_{node.op.name}": None, "T": TYPE[node.type]}
    return _d(S_UNARY, defines, [(srcs[0], node.src[0]), (dst, node)], _elements(be, node.ne, defines), push)


_binary.supports = lambda node: all(t.type in TYPE for t in (*node.src, node))
_unary.supports = lambda node: node.type in TYPE and node.src[0].type == node.type

# ---- rows ---------------------------------------------------------------------------


def _norm(be, node: Tensor, dst: Place, srcs: list) -> list[Dispatch]:
    op = "OP_RMS" if node.op is Op.RMS_NORM else "OP_L2"
    args = [(srcs[0], node.src[0]), (dst, node)]
    return _d(S_NORM, {op: None}, args, node.nrows, (node.params["eps"],), local=be.reduce_wg)


def _soft_max(be, node: Tensor, dst: Place, srcs: list) -> list[Dispatch]:
    a = node.src[0]
    mask = node.src[1] if len(node.src) > 1 else None
    defines: dict = {}
    m_arg = (srcs[0], a)  # unused without a mask
    if mask is not None:
        defines.update(HAS_MASK=None, TM=TYPE[mask.type])
        m_arg = (srcs[1], mask)
    slopes = alibi_slopes(a.ne[2], node.params["max_bias"])
    return _d(S_SOFT_MAX, defines, [(srcs[0], a), m_arg, (dst, node)], a.nrows if a.nelements else 0,
              (node.params["scale"],), slopes, be.reduce_wg)  # fmt: skip


_norm.supports = lambda node: node.src[0].type == DType.F32
_soft_max.supports = lambda node: node.src[0].type == DType.F32 and all(t.type in TYPE for t in node.src[1:])


def _rows(be, node: Tensor, dst: Place, srcs: list) -> list[Dispatch]:
    """sum_rows / mean / argmax: one work-group per row."""
    op = {Op.SUM_ROWS: "OP_SUM", Op.MEAN: "OP_MEAN", Op.ARGMAX: "OP_ARGMAX"}[node.op]
    a = node.src[0]
    return _d(S_ROWS, {op: None}, [(srcs[0], a), (dst, node)], a.nrows if a.nelements else 0, local=be.reduce_wg)


def _argsort(be, node: Tensor, dst: Place, srcs: list) -> list[Dispatch]:
    """argsort and top_k (the first k of the stable descending order)."""
    desc = node.op is Op.TOP_K or node.params["order"] == SORT_DESC
    a = node.src[0]
    groups = _cdiv(a.ne[0], WG) * a.nrows if a.nelements else 0
    return _d(S_ARGSORT, {"DESC": None} if desc else {}, [(srcs[0], a), (dst, node)], groups)


_rows.supports = _argsort.supports = lambda node: node.src[0].type == DType.F32


def _get_rows(be, node: Tensor, dst: Place, srcs: list) -> list[Dispatch]:
    a, b = node.src
    if a.type in DEQ:
        defines: dict = {"DEQ": DEQ[a.type]}
    elif a.type == DType.I32:
        defines = {"RAW32": None}
    else:
        defines = {"TA": TYPE[a.type]}
    defines["EPT"] = be.ept
    n = node.ne[0] // 16 if a.type in DEQ else node.ne[0]
    groups = _cdiv(n, WG * be.ept) * node.nrows if node.nelements else 0
    return _d(S_GET_ROWS, defines, [(srcs[0], a), (srcs[1], b), (dst, node)], groups)


_get_rows.supports = lambda node: node.src[0].type in TYPE or node.src[0].type in DEQ or node.src[0].type == DType.I32


def _set_rows(be, node: Tensor, dst: Place, srcs: list) -> list[Dispatch]:
    _, b, c = node.src
    defines = {"TD": TYPE[node.type]}
    groups = _elements(be, (b.ne[0], b.ne[2], b.ne[3], 1), defines) if b.nelements else 0
    return _d(S_SET_ROWS, defines, [(srcs[1], b), (srcs[2], c), (dst, node)], groups)


_set_rows.supports = lambda node: node.type in TYPE and node.src[1].type == DType.F32


def _concat(be, node: Tensor, dst: Place, srcs: list) -> list[Dispatch]:
    """concat, and repeat (the same shader reading a modulo its shape)."""
    a = node.src[0]
    if node.op is Op.REPEAT:
        defines, b_arg = {"REPEAT": None}, (srcs[0], a)
    else:
        defines, b_arg = {"DIM": node.params["dim"]}, (srcs[1], node.src[1])
    defines[RAW[a.type]] = None
    return _d(S_CONCAT, defines, [(srcs[0], a), b_arg, (dst, node)], _elements(be, node.ne, defines))


_concat.supports = lambda node: node.src[0].type in RAW and all(s.type == node.type for s in node.src)

# ---- matrix -------------------------------------------------------------------------


def _a_defines(a: Tensor) -> dict:
    """weights.glsl's variant of a: dequantized, or plain (contiguous rows read by 16-element units)."""
    if a.type in DEQ:
        return {"DEQ": DEQ[a.type]}
    defines: dict = {"TA": TYPE[a.type]}
    if a.nb[0] == TYPE_INFO[a.type].block_bytes and a.ne[0] % 16 == 0:
        defines["A_CONTIG"] = None
    return defines


def _mul_mat(be, node: Tensor, dst: Place, srcs: list) -> list[Dispatch]:
    a, b = node.src
    defines = _a_defines(a) | {"TB": TYPE[b.type]}
    args = [(srcs[0], a), (srcs[1], b), (dst, node)]
    M, N = node.ne[0], node.ne[1]
    if N >= be.tiled_min_n and ("DEQ" in defines or "A_CONTIG" in defines):
        # several tokens: a block of d per work-group, a's rows staged once per group
        (wm, wn), (tm, tn) = MM_TILE_WG, MM_TILE
        defines.update(WG_M=wm, WG_N=wn, TM=tm, TN=tn, KC=MM_TILE_KC)
        groups = _cdiv(M, wm * tm) * _cdiv(N, wn * tn) * node.ne[2] * node.ne[3]
        return _d(S_MUL_MAT_TILED, defines, args, groups if node.nelements else 0, local=wm * wn)
    wg, nr = be.mat_vec
    nt = min(N, MM_VEC_NT)
    defines.update(NR=nr)
    if nr == wg and be.item_rows:
        defines["ITEM_ROWS"] = None
    if nt > 1:
        defines["NT"] = nt
    groups = _cdiv(M, nr) * _cdiv(N, nt) * node.ne[2] * node.ne[3]
    return _d(S_MUL_MAT, defines, args, groups if node.nelements else 0, local=wg)


def _mul_mat_id(be, node: Tensor, dst: Place, srcs: list) -> list[Dispatch]:
    a, b, ids = node.src
    wg, nr = be.mat_vec
    defines = _a_defines(a) | {"TB": TYPE[b.type], "NR": nr}
    args = [(srcs[0], a), (srcs[1], b), (srcs[2], ids), (dst, node)]
    groups = _cdiv(node.ne[0], nr) * node.nrows if node.nelements else 0
    return _d(S_MUL_MAT_ID, defines, args, groups, local=wg)


_mul_mat.supports = lambda node: (node.src[0].type in TYPE or node.src[0].type in DEQ) and node.src[1].type in TYPE
_mul_mat_id.supports = _mul_mat.supports


def _flash_attn_ext(be, node: Tensor, dst: Place, srcs: list) -> list[Dispatch]:
    q, k, v = node.src[:3]
    mask = node.src[3] if len(node.src) > 3 else None
    p = node.params
    scale, softcap = np.float32(p["scale"]), np.float32(p["logit_softcap"])
    wg = be.reduce_wg
    defines: dict = {"TK": TYPE[k.type], "TV": TYPE[v.type], "DV_PER": max(1, _cdiv(v.ne[0], wg))}
    if softcap != 0:
        scale = scale / softcap  # as ggml: scale first, then softcap * tanh
        defines["SOFTCAP"] = None
    m_arg = (srcs[0], q)  # unused without a mask
    if mask is not None:
        defines.update(HAS_MASK=None, TM=TYPE[mask.type])
        m_arg = (srcs[3], mask)
    args = [(srcs[0], q), (srcs[1], k), (srcs[2], v), m_arg, (dst, node)]
    slopes = alibi_slopes(q.ne[2], p["max_bias"])
    groups = q.ne[1] * q.ne[2] * q.ne[3] if node.nelements else 0
    return _d(S_FLASH_ATTN, defines, args, groups, (scale, softcap), slopes, wg)


_flash_attn_ext.supports = lambda node: all(t.type in TYPE for t in node.src[1:])

# ---- position / state space ------------------------------------------------------


def _rope(be, node: Tensor, dst: Place, srcs: list) -> list[Dispatch]:
    p, a, pos = node.params, node.src[0], node.src[1]
    ff = node.src[2] if len(node.src) > 2 else None
    f32 = np.float32
    theta_scale = np.power(f32(p["freq_base"]), f32(-2.0) / f32(p["n_dims"]))  # as the reference, in float32
    low = high = f32(0)
    mscale = f32(p["attn_factor"])
    if p["ext_factor"] != 0:
        low, high = yarn_corr_dims(p["n_dims"], p["n_ctx_orig"], p["freq_base"], p["beta_fast"], p["beta_slow"])
        mscale = mscale * (f32(1) + f32(0.1) * np.log(f32(1) / f32(p["freq_scale"])))
    defines: dict = {"MODE": p["mode"]}
    ff_arg = (srcs[1], pos)  # unused without freq factors
    if ff is not None:
        defines["HAS_FF"] = None
        ff_arg = (srcs[2], ff)
    push = (p["n_dims"], *(p["sections"] or (0, 0, 0, 0)), theta_scale, p["freq_scale"], p["ext_factor"],
            low, high, mscale)  # fmt: skip
    args = [(srcs[0], a), (srcs[1], pos), ff_arg, (dst, node)]
    return _d(S_ROPE, defines, args, _cdiv(a.nrows, WG) if a.nelements else 0, push)


def _rope_supports(node: Tensor) -> bool:
    # a multi-section rope with the first three sections zero is invalid (ggml asserts): leave
    # it to the cpu reference, which raises a clear error
    p = node.params
    ok = p["mode"] not in (ROPE_MROPE, ROPE_IMROPE) or any(p["sections"][:3])
    return ok and node.src[0].type == DType.F32


_rope.supports = _rope_supports


def _ssm_conv(be, node: Tensor, dst: Place, srcs: list) -> list[Dispatch]:
    sx, c = node.src
    return _d(S_SSM_CONV, {}, [(srcs[0], sx), (srcs[1], c), (dst, node)], _cdiv(node.nelements, WG))


def _gated_delta_net(be, node: Tensor, dst: Place, srcs: list) -> list[Dispatch]:
    g, v = node.src[3], node.src[2]
    S_v, H_v, _, n_seqs = v.ne
    defines = {"S_V": S_v} | ({"G_PER_CHANNEL": None} if g.ne[0] > 1 else {})
    args = [(pl, t) for pl, t in zip(srcs, node.src)] + [(dst, node)]
    return _d(S_GDN, defines, args, _cdiv(S_v * H_v * n_seqs, WG), (node.params["snapshots"],))


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
