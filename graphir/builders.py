"""One builder per op. A builder checks its inputs, computes the output ne, records
op/src/params and returns the new tensor; it computes nothing. Shapes are in ne order
(innermost first). Errors name the op and the offending shapes: `[mul_mat] ...`.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from .ops import BINARY_OPS, UNARY_OPS, Op
from .tensor import MAX_DIMS, Flag, Tensor, contiguous_strides, pad_ne
from .types import FLOAT_TYPES, TYPE_INFO, DType, parse_type

__all__ = [
    "ROPE_NORMAL",
    "ROPE_NEOX",
    "ROPE_MROPE",
    "ROPE_IMROPE",
    "SORT_ASC",
    "SORT_DESC",
    "ShapeError",
    "BUILDERS",
    "new_tensor",
    "new_input",
    "new_weight",
    "from_numpy",
    "view_1d",
    "view_2d",
    "view_3d",
    "view_4d",
    "reshape",
    "permute",
    "transpose",
    "cont",
    "cpy",
    "dup",
    "can_repeat",
    "add",
    "sub",
    "mul",
    "div",
    "scale",
    "sqr",
    "sqrt",
    "exp",
    "neg",
    "sigmoid",
    "silu",
    "softplus",
    "gelu",
    "clamp",
    "repeat",
    "sum_rows",
    "mean",
    "rms_norm",
    "l2_norm",
    "soft_max_ext",
    "argmax",
    "argsort",
    "top_k",
    "get_rows",
    "set_rows",
    "concat",
    "mul_mat",
    "mul_mat_id",
    "rope_ext",
    "rope_multi",
    "flash_attn_ext",
    "ssm_conv",
    "gated_delta_net",
]

# rope modes (ggml values)
ROPE_NORMAL = 0
ROPE_NEOX = 2
ROPE_MROPE = 8
ROPE_IMROPE = 40  # interleaved multi-section rope (Qwen3.5); NEOX pairing


class ShapeError(ValueError):
    """A builder was given inputs whose shapes or types do not fit the op."""


def _fail(op: str, msg: str) -> None:
    raise ShapeError(f"[{op}] {msg}")


def _check(cond: bool, op: str, msg: str) -> None:
    if not cond:
        _fail(op, msg)


def _s(t: Tensor) -> str:
    return f"{list(t.ne)} {TYPE_INFO[t.type].name}"


def _tname(t: DType) -> str:
    return TYPE_INFO[t].name


def _require_type(op: str, what: str, t: Tensor, allowed: Sequence[DType]) -> None:
    _check(t.type in allowed, op, f"{what} must be {'/'.join(_tname(a) for a in allowed)}, got {_s(t)}")


# ======================================================================================
# leaves
# ======================================================================================


def new_tensor(type: DType | str, ne: Sequence[int], name: str = "") -> Tensor:
    """A leaf with no data (its value is set before a run, or it is written by cpy/set_rows)."""
    return Tensor(parse_type(type), ne, name=name)


def new_input(type: DType | str, ne: Sequence[int], name: str = "") -> Tensor:
    """A leaf flagged INPUT: allocated in the compute buffer, set by the caller each run."""
    return new_tensor(type, ne, name).set_input()


def new_weight(type: DType | str, ne: Sequence[int], data: np.ndarray, name: str = "") -> Tensor:
    """A weight leaf over host bytes `data` (raw GGUF layout; may be memory-mapped)."""
    t = Tensor(parse_type(type), ne, name=name)
    raw = np.ascontiguousarray(data)
    nbytes = raw.nbytes
    if nbytes != t.nbytes:
        raise ShapeError(f"[weight] {name or '?'}: {_s(t)} needs {t.nbytes} bytes, data has {nbytes}")
    t.data = raw
    t.flags |= Flag.PARAM
    return t


def from_numpy(arr: np.ndarray, name: str = "", type: DType | str | None = None) -> Tensor:
    """A constant/weight leaf from a numpy array; numpy shape (d3, d2, d1, d0) -> ne (d0..d3)."""
    arr = np.asarray(arr)
    if type is None:
        by_dtype = {np.dtype(np.float32): DType.F32, np.dtype(np.float16): DType.F16,
                    np.dtype(np.int32): DType.I32}  # fmt: skip
        if arr.dtype not in by_dtype:
            raise ShapeError(f"[from_numpy] unsupported dtype {arr.dtype}; pass type=")
        type = by_dtype[arr.dtype]
    t = parse_type(type)
    ne = tuple(reversed(arr.shape)) or (1,)
    return new_weight(t, ne, np.ascontiguousarray(arr), name)


# ======================================================================================
# views
# ======================================================================================


def _view(a: Tensor, op: Op, ne: Sequence[int], nb: Sequence[int], offs: int, params=None) -> Tensor:
    _check(offs >= 0, op.value, f"view of {_s(a)} at negative offset {offs}")
    t = Tensor(a.type, ne, op, (a,), params, nb=tuple(nb), view_src=a, view_offs=offs)
    span = t.nbytes + t.view_offs  # relative to the storage owner
    limit = t.view_src.nbytes
    _check(span <= limit, op.value,
           f"view of {_s(a)} with ne={list(t.ne)} nb={list(t.nb)} at offset {offs} "
           f"reaches byte {span} past the {limit}-byte source")  # fmt: skip
    return t


def view_1d(a: Tensor, ne0: int, offset: int = 0) -> Tensor:
    """View of ne0 consecutive elements of a at byte `offset`."""
    info = TYPE_INFO[a.type]
    return _view(a, Op.VIEW, (ne0,), (info.block_bytes, 0, 0, 0), offset, {"offset": offset})


def view_2d(a: Tensor, ne0: int, ne1: int, nb1: int, offset: int = 0) -> Tensor:
    """View [ne0, ne1] with row stride nb1 bytes at byte `offset`."""
    info = TYPE_INFO[a.type]
    return _view(a, Op.VIEW, (ne0, ne1), (info.block_bytes, nb1, nb1 * ne1, nb1 * ne1), offset,
                 {"offset": offset})  # fmt: skip


def view_3d(a: Tensor, ne0: int, ne1: int, ne2: int, nb1: int, nb2: int, offset: int = 0) -> Tensor:
    """View [ne0, ne1, ne2] with strides nb1, nb2 bytes at byte `offset`."""
    info = TYPE_INFO[a.type]
    return _view(a, Op.VIEW, (ne0, ne1, ne2), (info.block_bytes, nb1, nb2, nb2 * ne2), offset,
                 {"offset": offset})  # fmt: skip


def view_4d(a: Tensor, ne0: int, ne1: int, ne2: int, ne3: int, nb1: int, nb2: int, nb3: int,
            offset: int = 0) -> Tensor:  # fmt: skip
    """View [ne0, ne1, ne2, ne3] with strides nb1..nb3 bytes at byte `offset`."""
    info = TYPE_INFO[a.type]
    return _view(a, Op.VIEW, (ne0, ne1, ne2, ne3), (info.block_bytes, nb1, nb2, nb3), offset,
                 {"offset": offset})  # fmt: skip


def reshape(a: Tensor, *ne: int) -> Tensor:
    """Same elements, new shape; a must be contiguous."""
    new_ne = pad_ne(ne)
    _check(a.is_contiguous(), "reshape", f"source must be contiguous, got ne={list(a.ne)} nb={list(a.nb)}")
    n = new_ne[0] * new_ne[1] * new_ne[2] * new_ne[3]
    _check(n == a.nelements, "reshape", f"cannot reshape {_s(a)} ({a.nelements} elements) to {list(new_ne)}")
    return _view(a, Op.RESHAPE, new_ne, contiguous_strides(a.type, new_ne), 0, {"ne": new_ne})


def permute(a: Tensor, ax0: int, ax1: int, ax2: int = 2, ax3: int = 3) -> Tensor:
    """Dimension i of a becomes dimension ax_i of the result (ggml_permute)."""
    return _permute(a, (ax0, ax1, ax2, ax3), Op.PERMUTE)


def transpose(a: Tensor) -> Tensor:
    """Swap dims 0 and 1 (a view)."""
    return _permute(a, (1, 0, 2, 3), Op.TRANSPOSE)


def _permute(a: Tensor, axes: tuple[int, int, int, int], op: Op) -> Tensor:
    _check(sorted(axes) == [0, 1, 2, 3], "permute", f"axes must be a permutation of 0..3, got {list(axes)}")
    ne = [0] * MAX_DIMS
    nb = [0] * MAX_DIMS
    for i, ax in enumerate(axes):
        ne[ax] = a.ne[i]
        nb[ax] = a.nb[i]
    return _view(a, op, ne, nb, 0, {"axes": axes})


# ======================================================================================
# copies
# ======================================================================================


def cont(a: Tensor, *ne: int) -> Tensor:
    """Contiguous copy of a (optionally with a new shape of the same element count)."""
    new_ne = pad_ne(ne) if ne else a.ne
    n = new_ne[0] * new_ne[1] * new_ne[2] * new_ne[3]
    _check(n == a.nelements, "cont", f"cannot make {_s(a)} contiguous as {list(new_ne)}")
    return Tensor(a.type, new_ne, Op.CONT, (a,))


def cpy(a: Tensor, b: Tensor) -> Tensor:
    """Copy a into b, converting to b's type; the result is a view of b (same ne/nb)."""
    _check(a.nelements == b.nelements, "cpy", f"element counts differ: {_s(a)} -> {_s(b)}")
    _check(TYPE_INFO[a.type].block_elems == 1, "cpy", f"source must be a plain type, got {_s(a)}")
    t = Tensor(b.type, b.ne, Op.CPY, (a, b), nb=b.nb, view_src=b, view_offs=0)
    return t


def dup(a: Tensor) -> Tensor:
    """Contiguous copy of a, same type and shape."""
    return Tensor(a.type, a.ne, Op.DUP, (a,))


# ======================================================================================
# elementwise
# ======================================================================================


def can_repeat(b: Tensor, a: Tensor) -> bool:
    """True when b tiles a whole number of times into a in every dimension."""
    return all(b.ne[i] > 0 and a.ne[i] % b.ne[i] == 0 for i in range(MAX_DIMS)) or (a.nelements == 0)


def _binary(op: Op, a: Tensor, b: Tensor) -> Tensor:
    assert op in BINARY_OPS
    _require_type(op.value, "a", a, FLOAT_TYPES[:2])
    _require_type(op.value, "b", b, FLOAT_TYPES[:2])
    _check(can_repeat(b, a), op.value, f"b {_s(b)} does not broadcast to a {_s(a)}")
    return Tensor(a.type, a.ne, op, (a, b))


def add(a: Tensor, b: Tensor) -> Tensor:
    """a + b, b broadcast (tiled) over a. Result: a's shape and type."""
    return _binary(Op.ADD, a, b)


def sub(a: Tensor, b: Tensor) -> Tensor:
    """a - b, b broadcast over a."""
    return _binary(Op.SUB, a, b)


def mul(a: Tensor, b: Tensor) -> Tensor:
    """a * b, b broadcast over a."""
    return _binary(Op.MUL, a, b)


def div(a: Tensor, b: Tensor) -> Tensor:
    """a / b, b broadcast over a."""
    return _binary(Op.DIV, a, b)


def _unary(op: Op, a: Tensor, params: dict | None = None) -> Tensor:
    assert op in UNARY_OPS or op is Op.SCALE
    _require_type(op.value, "a", a, FLOAT_TYPES[:2])
    return Tensor(a.type, a.ne, op, (a,), params)


def scale(a: Tensor, s: float, b: float = 0.0) -> Tensor:
    """a * s + b."""
    return _unary(Op.SCALE, a, {"s": float(s), "b": float(b)})


def sqr(a: Tensor) -> Tensor:
    return _unary(Op.SQR, a)


def sqrt(a: Tensor) -> Tensor:
    return _unary(Op.SQRT, a)


def exp(a: Tensor) -> Tensor:
    return _unary(Op.EXP, a)


def neg(a: Tensor) -> Tensor:
    return _unary(Op.NEG, a)


def sigmoid(a: Tensor) -> Tensor:
    return _unary(Op.SIGMOID, a)


def silu(a: Tensor) -> Tensor:
    """x * sigmoid(x)."""
    return _unary(Op.SILU, a)


def softplus(a: Tensor) -> Tensor:
    """log(1 + exp(x)); x itself above 20 (ggml's threshold)."""
    return _unary(Op.SOFTPLUS, a)


def gelu(a: Tensor) -> Tensor:
    """GELU, tanh approximation (as ggml)."""
    return _unary(Op.GELU, a)


def clamp(a: Tensor, min: float, max: float) -> Tensor:
    _check(min <= max, "clamp", f"min {min} > max {max}")
    return _unary(Op.CLAMP, a, {"min": float(min), "max": float(max)})


def repeat(a: Tensor, b: Tensor) -> Tensor:
    """Tile a to b's shape (b only gives the shape)."""
    _check(can_repeat(a, b), "repeat", f"a {_s(a)} does not tile into {list(b.ne)}")
    return Tensor(a.type, b.ne, Op.REPEAT, (a,))


# ======================================================================================
# reductions / norms
# ======================================================================================


def sum_rows(a: Tensor) -> Tensor:
    """Sum over dim 0: [ne0, ne1, ne2, ne3] -> [1, ne1, ne2, ne3]."""
    _require_type("sum_rows", "a", a, (DType.F32,))
    return Tensor(DType.F32, (1, *a.ne[1:]), Op.SUM_ROWS, (a,))


def mean(a: Tensor) -> Tensor:
    """Mean over dim 0: [ne0, ...] -> [1, ...]."""
    _require_type("mean", "a", a, (DType.F32,))
    return Tensor(DType.F32, (1, *a.ne[1:]), Op.MEAN, (a,))


def rms_norm(a: Tensor, eps: float) -> Tensor:
    """x / sqrt(mean(x^2) + eps) over dim 0."""
    _require_type("rms_norm", "a", a, (DType.F32,))
    _check(eps >= 0, "rms_norm", f"eps must be >= 0, got {eps}")
    return Tensor(DType.F32, a.ne, Op.RMS_NORM, (a,), {"eps": float(eps)})


def l2_norm(a: Tensor, eps: float) -> Tensor:
    """x / max(||x||_2, eps) over dim 0."""
    _require_type("l2_norm", "a", a, (DType.F32,))
    _check(eps >= 0, "l2_norm", f"eps must be >= 0, got {eps}")
    return Tensor(DType.F32, a.ne, Op.L2_NORM, (a,), {"eps": float(eps)})


def soft_max_ext(a: Tensor, mask: Tensor | None = None, scale: float = 1.0, max_bias: float = 0.0) -> Tensor:
    """softmax(a*scale + slope*mask) over dim 0.

    a: [n_kv, n_q, H, n_seq] F32; mask: [n_kv, >=n_q, H or 1, n_seq or 1] F16/F32, broadcast
    over dims 2, 3. With max_bias > 0 the mask is scaled per head by the ALiBi slope.
    """
    _require_type("soft_max", "a", a, (DType.F32,))
    if mask is not None:
        _require_type("soft_max", "mask", mask, (DType.F32, DType.F16))
        ok = (mask.ne[0] == a.ne[0] and mask.ne[1] >= a.ne[1]
              and a.ne[2] % mask.ne[2] == 0 and a.ne[3] % mask.ne[3] == 0)  # fmt: skip
        _check(ok, "soft_max", f"mask {_s(mask)} does not fit a {_s(a)}")
    _check(max_bias >= 0, "soft_max", f"max_bias must be >= 0, got {max_bias}")
    src = (a, mask) if mask is not None else (a,)
    return Tensor(DType.F32, a.ne, Op.SOFT_MAX, src, {"scale": float(scale), "max_bias": float(max_bias)})


def argmax(a: Tensor) -> Tensor:
    """Index of the largest element of each row (first on ties): [ne0, ne1, ne2, ne3] -> I32 [ne1, ne2, ne3]."""
    _require_type("argmax", "a", a, (DType.F32,))
    return Tensor(DType.I32, (a.ne[1], a.ne[2], a.ne[3]), Op.ARGMAX, (a,))


SORT_ASC = 0
SORT_DESC = 1


def argsort(a: Tensor, order: int = SORT_ASC) -> Tensor:
    """Per-row permutation that sorts each row (stable): I32, a's shape."""
    _require_type("argsort", "a", a, (DType.F32,))
    _check(order in (SORT_ASC, SORT_DESC), "argsort", f"order must be 0 (asc) or 1 (desc), got {order}")
    return Tensor(DType.I32, a.ne, Op.ARGSORT, (a,), {"order": order})


def top_k(a: Tensor, k: int) -> Tensor:
    """Indices of the k largest elements of each row, largest first (lower index first on
    ties): [ne0, ...] -> I32 [k, ...]."""
    _require_type("top_k", "a", a, (DType.F32,))
    _check(1 <= k <= a.ne[0], "top_k", f"k must be in 1..{a.ne[0]}, got {k}")
    return Tensor(DType.I32, (k, *a.ne[1:]), Op.TOP_K, (a,), {"k": int(k)})


# ======================================================================================
# indexing
# ======================================================================================


def get_rows(a: Tensor, b: Tensor) -> Tensor:
    """Gather rows of a by index: a [ne0, n_rows, ne2, ne3], b I32 [n, ne2, ne3] ->
    [ne0, n, ne2, ne3] (F32, or I32 when a is I32). Quantized a is dequantized."""
    _require_type("get_rows", "b", b, (DType.I32,))
    _check(b.ne[1] == a.ne[2] and b.ne[2] == a.ne[3] and b.ne[3] == 1, "get_rows",
           f"indices {_s(b)} do not fit a {_s(a)} (need [n, {a.ne[2]}, {a.ne[3]}])")  # fmt: skip
    out = DType.I32 if a.type == DType.I32 else DType.F32
    return Tensor(out, (a.ne[0], b.ne[0], b.ne[1], b.ne[2]), Op.GET_ROWS, (a, b))


def set_rows(a: Tensor, b: Tensor, c: Tensor) -> Tensor:
    """Scatter rows of b into a: a[:, c[i, j % c.ne1, k % c.ne2], j, k] = b[:, i, j, k].

    a: [ne0, n_rows, ne2, ne3] (any plain type; converted), b F32 [ne0, n, ne2, ne3],
    c I32 [n, ne2 | 1, ne3 | 1]. Result: a view of a (the write lands in a's memory).
    """
    _require_type("set_rows", "b", b, (DType.F32,))
    _require_type("set_rows", "c", c, (DType.I32,))
    _check(TYPE_INFO[a.type].block_elems == 1, "set_rows", f"destination must be a plain type, got {_s(a)}")
    ok = (a.ne[0] == b.ne[0] and a.ne[2] == b.ne[2] and a.ne[3] == b.ne[3]
          and b.ne[1] == c.ne[0] and b.ne[2] % c.ne[1] == 0 and b.ne[3] % c.ne[2] == 0
          and c.ne[3] == 1)  # fmt: skip
    _check(ok, "set_rows", f"shapes do not fit: a {_s(a)}, b {_s(b)}, c {_s(c)}")
    return Tensor(a.type, a.ne, Op.SET_ROWS, (a, b, c), nb=a.nb, view_src=a, view_offs=0)


def concat(a: Tensor, b: Tensor, dim: int) -> Tensor:
    """Join a and b along `dim`; all other dims must match; same type."""
    _check(0 <= dim < MAX_DIMS, "concat", f"dim must be in 0..3, got {dim}")
    _check(a.type == b.type, "concat", f"types differ: {_s(a)} vs {_s(b)}")
    _check(TYPE_INFO[a.type].block_elems == 1, "concat", f"quantized types not supported: {_s(a)}")
    same = all(a.ne[i] == b.ne[i] for i in range(MAX_DIMS) if i != dim)
    _check(same, "concat", f"a {_s(a)} and b {_s(b)} differ outside dim {dim}")
    ne = list(a.ne)
    ne[dim] += b.ne[dim]
    return Tensor(a.type, ne, Op.CONCAT, (a, b), {"dim": dim})


# ======================================================================================
# matrix
# ======================================================================================


def mul_mat(a: Tensor, b: Tensor) -> Tensor:
    """Row-by-row dot products: a [K, M, ne02, ne03] (any type), b [K, N, ne12, ne13] F32/F16
    -> F32 [M, N, ne12, ne13]; a broadcasts over dims 2, 3 (ne12 % ne02 == ne13 % ne03 == 0)."""
    _require_type("mul_mat", "b", b, (DType.F32, DType.F16))
    ok = a.ne[0] == b.ne[0] and b.ne[2] % a.ne[2] == 0 and b.ne[3] % a.ne[3] == 0
    _check(ok, "mul_mat", f"a {_s(a)} and b {_s(b)} do not fit (need a.ne0 == b.ne0 and b.ne2,3 multiples of a's)")
    return Tensor(DType.F32, (a.ne[1], b.ne[1], b.ne[2], b.ne[3]), Op.MUL_MAT, (a, b))


def mul_mat_id(as_: Tensor, b: Tensor, ids: Tensor) -> Tensor:
    """Per-token expert matmul: as [K, M, n_expert], b F32 [K, 1 | n_used, n_tokens],
    ids I32 [n_used, n_tokens] -> F32 [M, n_used, n_tokens]:
    out[:, e, t] = as[:, :, ids[e, t]] @ b[:, e % b.ne1, t]."""
    _require_type("mul_mat_id", "b", b, (DType.F32,))
    _require_type("mul_mat_id", "ids", ids, (DType.I32,))
    ok = (as_.ne[0] == b.ne[0] and as_.ne[3] == 1 and b.ne[3] == 1 and ids.ne[2] == 1
          and ids.ne[3] == 1 and ids.ne[1] == b.ne[2] and ids.ne[0] % b.ne[1] == 0)  # fmt: skip
    _check(ok, "mul_mat_id", f"as {_s(as_)}, b {_s(b)}, ids {_s(ids)} do not fit")
    return Tensor(DType.F32, (as_.ne[1], ids.ne[0], b.ne[2], 1), Op.MUL_MAT_ID, (as_, b, ids))


# ======================================================================================
# position
# ======================================================================================


def rope_ext(a: Tensor, pos: Tensor, freq_factors: Tensor | None, n_dims: int, mode: int,
             n_ctx_orig: int = 0, freq_base: float = 10000.0, freq_scale: float = 1.0,
             ext_factor: float = 0.0, attn_factor: float = 1.0, beta_fast: float = 32.0,
             beta_slow: float = 1.0) -> Tensor:  # fmt: skip
    """Rotary embedding of the first n_dims dims of each head.

    a: [head_dim, n_head, n_tokens, 1] F32; pos: I32 [n_tokens]; freq_factors: F32 [n_dims/2]
    or None. mode ROPE_NORMAL rotates adjacent pairs, ROPE_NEOX pairs (i, i + n_dims/2).
    """
    return _rope("rope_ext", a, pos, freq_factors, n_dims, mode, (0, 0, 0, 0), n_ctx_orig,
                 freq_base, freq_scale, ext_factor, attn_factor, beta_fast, beta_slow)  # fmt: skip


def rope_multi(a: Tensor, pos: Tensor, freq_factors: Tensor | None, n_dims: int,
               sections: Sequence[int], mode: int = ROPE_IMROPE, n_ctx_orig: int = 0,
               freq_base: float = 10000.0, freq_scale: float = 1.0, ext_factor: float = 0.0,
               attn_factor: float = 1.0, beta_fast: float = 32.0, beta_slow: float = 1.0) -> Tensor:  # fmt: skip
    """Multi-section rope: pos is I32 [4 * n_tokens] (component c of token t at c*n_tokens + t).

    Rotation pair i (of n_dims/2) takes its position from one of 4 components, chosen by its
    sector = i % sum(sections) (the sections repeat when n_dims/2 exceeds their sum). MROPE: by
    contiguous sections; IMROPE (Qwen3.5): interleaved, component c = sector % 3 while sector is
    below 3 * sections[c], else component 3. Pairs are NEOX-ordered.
    """
    _check(mode in (ROPE_MROPE, ROPE_IMROPE), "rope_multi", f"mode must be MROPE(8) or IMROPE(40), got {mode}")
    _check(len(sections) == 4 and all(s >= 0 for s in sections), "rope_multi",
           f"sections must be 4 non-negative ints, got {list(sections)}")  # fmt: skip
    _check(sum(sections[:3]) > 0, "rope_multi", f"sections t, h, w must not all be 0 (as ggml), got {list(sections)}")
    return _rope("rope_multi", a, pos, freq_factors, n_dims, mode, tuple(int(s) for s in sections),
                 n_ctx_orig, freq_base, freq_scale, ext_factor, attn_factor, beta_fast, beta_slow)  # fmt: skip


def _rope(opname, a, pos, freq_factors, n_dims, mode, sections, n_ctx_orig, freq_base, freq_scale,
          ext_factor, attn_factor, beta_fast, beta_slow) -> Tensor:  # fmt: skip
    _require_type(opname, "a", a, (DType.F32,))
    _require_type(opname, "pos", pos, (DType.I32,))
    _check(mode in (ROPE_NORMAL, ROPE_NEOX, ROPE_MROPE, ROPE_IMROPE), opname, f"unknown mode {mode}")
    _check(0 < n_dims <= a.ne[0] and n_dims % 2 == 0, opname,
           f"n_dims must be even and in 2..{a.ne[0]}, got {n_dims}")  # fmt: skip
    n_pos = a.ne[2] * (4 if mode in (ROPE_MROPE, ROPE_IMROPE) else 1)
    _check(pos.ndim == 1 and pos.ne[0] == n_pos, opname, f"pos must be I32 [{n_pos}] for a {_s(a)}, got {_s(pos)}")
    if freq_factors is not None:
        _require_type(opname, "freq_factors", freq_factors, (DType.F32,))
        _check(freq_factors.ne[0] >= n_dims // 2, opname, f"freq_factors must have >= {n_dims // 2} entries")
    params = {"n_dims": int(n_dims), "mode": int(mode), "sections": sections, "n_ctx_orig": int(n_ctx_orig),
              "freq_base": float(freq_base), "freq_scale": float(freq_scale),
              "ext_factor": float(ext_factor), "attn_factor": float(attn_factor),
              "beta_fast": float(beta_fast), "beta_slow": float(beta_slow)}  # fmt: skip
    src = (a, pos) if freq_factors is None else (a, pos, freq_factors)
    return Tensor(DType.F32, a.ne, Op.ROPE, src, params)


# ======================================================================================
# attention
# ======================================================================================


def flash_attn_ext(q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None, scale: float,
                   max_bias: float = 0.0, logit_softcap: float = 0.0) -> Tensor:  # fmt: skip
    """Fused attention softmax(scale * q k^T + mask) v.

    q: F32 [D, n_q, H, n_seq]; k: [D, n_kv, H_kv, n_seq]; v: [Dv, n_kv, H_kv, n_seq]
    (F32/F16); H % H_kv == 0, q head h uses kv head h // (H / H_kv). mask: [n_kv, >=n_q, 1, 1|n_seq].
    Result: F32 [Dv, H, n_q, n_seq] (heads before tokens, as ggml).
    """
    op = "flash_attn_ext"
    _require_type(op, "q", q, (DType.F32,))
    _require_type(op, "k", k, (DType.F32, DType.F16))
    _require_type(op, "v", v, (DType.F32, DType.F16))
    ok = (q.ne[0] == k.ne[0] and k.ne[1] == v.ne[1] and k.ne[2] == v.ne[2] and k.ne[2] > 0
          and q.ne[2] % k.ne[2] == 0 and q.ne[3] % k.ne[3] == 0 and k.ne[3] == v.ne[3])  # fmt: skip
    _check(ok, op, f"q {_s(q)}, k {_s(k)}, v {_s(v)} do not fit")
    if mask is not None:
        _require_type(op, "mask", mask, (DType.F32, DType.F16))
        ok = mask.ne[0] == k.ne[1] and mask.ne[1] >= q.ne[1] and q.ne[2] % mask.ne[2] == 0 and q.ne[3] % mask.ne[3] == 0
        _check(ok, op, f"mask {_s(mask)} does not fit q {_s(q)} / k {_s(k)}")
    src = (q, k, v, mask) if mask is not None else (q, k, v)
    params = {"scale": float(scale), "max_bias": float(max_bias), "logit_softcap": float(logit_softcap)}
    return Tensor(DType.F32, (v.ne[0], q.ne[2], q.ne[1], q.ne[3]), Op.FLASH_ATTN_EXT, src, params)


# ======================================================================================
# state space
# ======================================================================================


def ssm_conv(sx: Tensor, c: Tensor) -> Tensor:
    """Causal depthwise conv: sx F32 [d_conv-1+n_tokens, channels, n_seqs], c F32 [d_conv, channels]
    -> F32 [channels, n_tokens, n_seqs]; out[ch, t, s] = sum_k sx[t+k, ch, s] * c[k, ch]."""
    _require_type("ssm_conv", "sx", sx, (DType.F32,))
    _require_type("ssm_conv", "c", c, (DType.F32,))
    d_conv, channels = c.ne[0], c.ne[1]
    ok = sx.ne[1] == channels and sx.ne[0] >= d_conv and c.ne[2] == 1 and c.ne[3] == 1 and sx.ne[3] == 1
    _check(ok, "ssm_conv", f"sx {_s(sx)} does not fit kernel c {_s(c)} (need sx [>= {d_conv}, {channels}, n_seqs])")
    n_tokens = sx.ne[0] - d_conv + 1
    return Tensor(DType.F32, (channels, n_tokens, sx.ne[2]), Op.SSM_CONV, (sx, c))


def gated_delta_net(q: Tensor, k: Tensor, v: Tensor, g: Tensor, beta: Tensor, state: Tensor,
                    snapshots: int = 1) -> Tensor:  # fmt: skip
    """The gated delta rule over a batch of tokens, with state snapshots for rollback.

    q, k: F32 [S_k, H_k, n_tokens, n_seqs]; v: F32 [S_v, H_v, n_tokens, n_seqs], S_k == S_v,
    H_v % H_k == 0, v head j uses q/k head j % H_k (tiled). g: F32 [1 | S_v, H_v, n_tokens, n_seqs]
    (log-decay, per head or per channel); beta: F32 [1, H_v, n_tokens, n_seqs];
    state: F32 [S_v, S_v, H_v, n_seqs], element (i, j) = S[i][j] (i the k index).
    Per token: S <- exp(g) S; delta = beta (v - S^T k); S <- S + k delta^T; o = S^T q / sqrt(S_v).

    Result: F32 [S_v * H_v, n_tokens * n_seqs + snapshots * S_v * n_seqs]: the outputs o, then
    `snapshots` states, most recent first (slot s = the state s tokens before the end; slots
    beyond n_tokens - 1 are not written).
    """
    op = "gated_delta_net"
    for name, t in (("q", q), ("k", k), ("v", v), ("g", g), ("beta", beta), ("state", state)):
        _require_type(op, name, t, (DType.F32,))
    S_v, H_v, n_tokens, n_seqs = v.ne
    S_k, H_k = k.ne[0], k.ne[1]
    _check(q.ne == k.ne, op, f"q {_s(q)} and k {_s(k)} must have the same shape")
    _check(S_k == S_v, op, f"S_k ({S_k}) must equal S_v ({S_v}): k {_s(k)}, v {_s(v)}")
    _check(H_k > 0 and H_v % H_k == 0, op, f"H_v ({H_v}) must be a multiple of H_k ({H_k})")
    _check(k.ne[2] == n_tokens and k.ne[3] == n_seqs, op, f"k {_s(k)} and v {_s(v)} differ in tokens/seqs")
    _check(g.ne[0] in (1, S_v) and g.ne[1:] == (H_v, n_tokens, n_seqs), op,
           f"g must be [1 or {S_v}, {H_v}, {n_tokens}, {n_seqs}], got {_s(g)}")  # fmt: skip
    _check(beta.ne == (1, H_v, n_tokens, n_seqs), op, f"beta must be [1, {H_v}, {n_tokens}, {n_seqs}], got {_s(beta)}")
    _check(state.ne == (S_v, S_v, H_v, n_seqs), op, f"state must be [{S_v}, {S_v}, {H_v}, {n_seqs}], got {_s(state)}")
    _check(isinstance(snapshots, int) and 1 <= snapshots, op, f"snapshots must be an int >= 1, got {snapshots!r}")
    ne1 = n_tokens * n_seqs + snapshots * S_v * n_seqs
    return Tensor(DType.F32, (S_v * H_v, ne1), Op.GATED_DELTA_NET, (q, k, v, g, beta, state), {"snapshots": snapshots})


# ======================================================================================
# the import-time check: every op has a builder (ggml's static assert on GGML_OP_COUNT)
# ======================================================================================

BUILDERS: dict[Op, tuple] = {
    Op.NONE: (new_tensor, new_input, new_weight, from_numpy),
    Op.VIEW: (view_1d, view_2d, view_3d, view_4d),
    Op.RESHAPE: (reshape,),
    Op.PERMUTE: (permute,),
    Op.TRANSPOSE: (transpose,),
    Op.CONT: (cont,),
    Op.CPY: (cpy,),
    Op.DUP: (dup,),
    Op.ADD: (add,),
    Op.SUB: (sub,),
    Op.MUL: (mul,),
    Op.DIV: (div,),
    Op.SCALE: (scale,),
    Op.SQR: (sqr,),
    Op.SQRT: (sqrt,),
    Op.EXP: (exp,),
    Op.NEG: (neg,),
    Op.SIGMOID: (sigmoid,),
    Op.SILU: (silu,),
    Op.SOFTPLUS: (softplus,),
    Op.GELU: (gelu,),
    Op.CLAMP: (clamp,),
    Op.REPEAT: (repeat,),
    Op.SUM_ROWS: (sum_rows,),
    Op.MEAN: (mean,),
    Op.RMS_NORM: (rms_norm,),
    Op.L2_NORM: (l2_norm,),
    Op.SOFT_MAX: (soft_max_ext,),
    Op.ARGMAX: (argmax,),
    Op.ARGSORT: (argsort,),
    Op.TOP_K: (top_k,),
    Op.GET_ROWS: (get_rows,),
    Op.SET_ROWS: (set_rows,),
    Op.CONCAT: (concat,),
    Op.MUL_MAT: (mul_mat,),
    Op.MUL_MAT_ID: (mul_mat_id,),
    Op.ROPE: (rope_ext, rope_multi),
    Op.FLASH_ATTN_EXT: (flash_attn_ext,),
    Op.SSM_CONV: (ssm_conv,),
    Op.GATED_DELTA_NET: (gated_delta_net,),
}
# NOTE: completeness is enforced where it is declared (raise, not assert: asserts vanish under -O)
_missing = [op.name for op in Op if op not in BUILDERS]
if _missing:
    raise RuntimeError(f"[builders] ops without a builder: {_missing}")
