"""The cpu dispatch table: the only place an op is wired into the native backend.

`KERNELS[op]` is a `Kernel`: the C op code, a `pack(node, rec, keep)` that writes the op's
parameters into its record (`rec.ip` ints, `rec.fp` floats, `rec.aux` a host constant kept
alive through `keep`) and an optional `supports(node)` for type limits. Only ops whose C
kernel is compiled into the module (gr_op_supported) are in the table.

Record parameter layout per op (read by the C kernel of the same name):
    scale           fp[0] s, fp[1] b
    clamp           fp[0] min, fp[1] max
    rms_norm, l2_norm  fp[0] eps
    soft_max        fp[0] scale, fp[1] max_bias, aux: float32 ALiBi slopes [ne[2]]
    argsort         ip[0] order (0 asc, 1 desc)
    top_k           ip[0] k
    concat          ip[0] dim
    rope            ip[0] n_dims, ip[1] mode, ip[2] n_ctx_orig, ip[3..6] sections;
                    fp[0] freq_base, fp[1] freq_scale, fp[2] ext_factor, fp[3] attn_factor,
                    fp[4] beta_fast, fp[5] beta_slow, fp[6] corr_dims low, fp[7] corr_dims high
    flash_attn_ext  fp[0] scale, fp[1] max_bias, fp[2] logit_softcap, aux: ALiBi slopes [n_head]
    gated_delta_net ip[0] snapshots, ip[1] 1 when aux is a gr_state_io (its state cache fused in: fuse.py)
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from graphir.numerics import alibi_slopes, yarn_corr_dims
from graphir.ops import VIEW_OPS, Op
from graphir.tensor import Tensor
from graphir.types import TYPE_INFO, DType

Pack = Callable[[Tensor, object, list], None]


@dataclass(frozen=True)
class Kernel:
    code: int
    pack: Pack | None = None
    supports: Callable[[Tensor], bool] | None = None


def _fp(*names: str) -> Pack:
    def pack(node: Tensor, rec, keep: list) -> None:
        for i, n in enumerate(names):
            rec.fp[i] = node.params[n]

    return pack


def _ip(*names: str) -> Pack:
    def pack(node: Tensor, rec, keep: list) -> None:
        for i, n in enumerate(names):
            rec.ip[i] = node.params[n]

    return pack


def _aux(rec, keep: list, arr: np.ndarray, ffi) -> None:
    arr = np.ascontiguousarray(arr, dtype=np.float32)
    keep.append(arr)
    rec.aux = ffi.cast("const void *", arr.ctypes.data)


def _pack_soft_max(ffi) -> Pack:
    def pack(node: Tensor, rec, keep: list) -> None:
        rec.fp[0], rec.fp[1] = node.params["scale"], node.params["max_bias"]
        _aux(rec, keep, alibi_slopes(node.src[0].ne[2], node.params["max_bias"]), ffi)

    return pack


def _pack_flash_attn(ffi) -> Pack:
    def pack(node: Tensor, rec, keep: list) -> None:
        p = node.params
        rec.fp[0], rec.fp[1], rec.fp[2] = p["scale"], p["max_bias"], p["logit_softcap"]
        _aux(rec, keep, alibi_slopes(node.src[0].ne[2], p["max_bias"]), ffi)

    return pack


def _pack_rope(node: Tensor, rec, keep: list) -> None:
    p = node.params
    rec.ip[0], rec.ip[1], rec.ip[2] = p["n_dims"], p["mode"], p["n_ctx_orig"]
    for i, s in enumerate(p["sections"] or (0, 0, 0, 0)):
        rec.ip[3 + i] = s
    names = ("freq_base", "freq_scale", "ext_factor", "attn_factor", "beta_fast", "beta_slow")
    for i, n in enumerate(names):
        rec.fp[i] = p[n]
    low, high = yarn_corr_dims(p["n_dims"], p["n_ctx_orig"], p["freq_base"], p["beta_fast"], p["beta_slow"])
    rec.fp[6], rec.fp[7] = float(low), float(high)


def _f32_only(node: Tensor) -> bool:
    return all(s is None or s.type == DType.F32 for s in node.src) and node.type == DType.F32


def _f32_src(node: Tensor) -> bool:  # argmax/argsort/top_k: F32 rows in, I32 out
    return node.src[0].type == DType.F32


def _soft_max_types(node: Tensor) -> bool:
    mask = node.src[1] if len(node.src) > 1 else None
    return _f32_src(node) and node.type == DType.F32 and (mask is None or mask.type in (DType.F32, DType.F16))


def _rope_types(node: Tensor) -> bool:
    ff = node.src[2] if len(node.src) > 2 else None
    return _f32_src(node) and node.src[1].type == DType.I32 and (ff is None or ff.type == DType.F32)


def _cpy_types(node: Tensor) -> bool:
    """cpy quantizes natively into Q8_0/Q4_0 only: the K-quant quantizers are graphir/quants.py's
    own scale search, which stays on the reference."""
    return not TYPE_INFO[node.type].is_quantized or node.type in (DType.Q8_0, DType.Q4_0)


# mul_mat / mul_mat_id weight types (shaders/cpu/vecdot*.c); rows of whole blocks, packed along ne0
_MATMUL_WEIGHTS = (DType.F32, DType.F16, DType.BF16, DType.Q8_0, DType.Q4_0, DType.Q4_K, DType.Q5_K, DType.Q6_K)


def _matmul_types(node: Tensor) -> bool:
    a, b = node.src[0], node.src[1]
    b_types = (DType.F32, DType.F16) if node.op is Op.MUL_MAT else (DType.F32,)
    return (a.type in _MATMUL_WEIGHTS and a.nb[0] == TYPE_INFO[a.type].block_bytes and b.type in b_types
            and node.type == DType.F32 and node.nb[0] == 4)  # fmt: skip


def build_table(lib, ffi) -> dict[Op, Kernel]:
    """KERNELS for the compiled module `lib`: every op whose C kernel is present."""
    packs: dict[Op, Pack | None] = {
        Op.SCALE: _fp("s", "b"),
        Op.CLAMP: _fp("min", "max"),
        Op.RMS_NORM: _fp("eps"),
        Op.L2_NORM: _fp("eps"),
        Op.SOFT_MAX: _pack_soft_max(ffi),
        Op.ARGSORT: _ip("order"),
        Op.TOP_K: _ip("k"),
        Op.CONCAT: _ip("dim"),
        Op.ROPE: _pack_rope,
        Op.FLASH_ATTN_EXT: _pack_flash_attn(ffi),
        Op.GATED_DELTA_NET: _ip("snapshots"),
    }
    supports: dict[Op, Callable[[Tensor], bool]] = {
        Op.SUM_ROWS: _f32_only,
        Op.MEAN: _f32_only,
        Op.RMS_NORM: _f32_only,
        Op.L2_NORM: _f32_only,
        Op.SOFT_MAX: _soft_max_types,
        Op.ARGMAX: _f32_src,
        Op.ARGSORT: _f32_src,
        Op.TOP_K: _f32_src,
        Op.ROPE: _rope_types,
        Op.CPY: _cpy_types,
        Op.MUL_MAT: _matmul_types,
        Op.MUL_MAT_ID: _matmul_types,
    }
    table: dict[Op, Kernel] = {op: Kernel(0) for op in VIEW_OPS}
    for op in Op:
        if op is Op.NONE or op in VIEW_OPS:
            continue
        code = getattr(lib, f"GR_OP_{op.name}")
        if lib.gr_op_supported(code):
            table[op] = Kernel(code, packs.get(op), supports.get(op))
    return table
