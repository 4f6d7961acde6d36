"""GGUF block formats: vectorized numpy (de)quantization of rows of Q8_0, Q4_0, Q4_K, Q5_K, Q6_K.

A row of `n` elements is `n // block_elems` blocks, each `block_bytes` bytes, laid out exactly
as ggml's `block_*` structs (ggml-common.h, little-endian):

    Q8_0  (32 elems,  34 B): f16 d | int8 qs[32]                          x = d * q
    Q4_0  (32 elems,  18 B): f16 d | u8 qs[16] (low nibbles = x[0:16],
                             high nibbles = x[16:32])                      x = d * (q - 8)
    Q4_K (256 elems, 144 B): f16 d | f16 dmin | u8 scales[12] | u8 qs[128]
    Q5_K (256 elems, 176 B): f16 d | f16 dmin | u8 scales[12] | u8 qh[32] | u8 qs[128]
    Q6_K (256 elems, 210 B): u8 ql[128] | u8 qh[64] | int8 scales[16] | f16 d

K-quants: Q4_K/Q5_K have 8 sub-blocks of 32 with 6-bit scale sc and min m packed in 12 bytes
(ggml's get_scale_min_k4): x = (d*sc) * q - (dmin*m). Sub-block 2c / 2c+1 take the low / high
nibbles of qs[32c:32c+32]; Q5_K's 5th bit of sub-block s is bit s of qh[l]. Q6_K has 16
sub-blocks of 16 with int8 scales: x = (d*sc) * (q - 32); each 128-element half h uses
ql[64h:64h+64] and qh[32h:32h+32], element 32k+l taking ql nibble (k >= 2) of byte l + 32*(k % 2)
and bits 2k..2k+1 of qh byte l.

Dequantization follows ggml's float32 evaluation order, so it is bit-exact with ggml's
`dequantize_row_*` (and `gguf.quants.dequantize`). Quantization of Q8_0 and Q4_0 is bit-exact
with ggml's `quantize_row_*_ref`. The K-quant quantizers are our own (see `_fit_symmetric`,
`_fit_asymmetric`): a vectorized search over candidate scales with a least-squares refit,
then 6/8-bit quantization of the sub-block scales and a final rounding against the scales
actually stored. They do not match ggml's bytes. Relative RMS error on Gaussian data
(measured on N(0,1), tests bound it): Q8_0 0.5%, Q4_0 8.6%, Q6_K 1.8%, Q5_K 3.6%, Q4_K 7.2%
(ggml's weighted searches do slightly better; the 6-bit super-scale rounding adds ~0.1-0.2%).
"""

from __future__ import annotations

import numpy as np

from graphir.types import QK_K, TYPE_INFO, DType

QUANT_TYPES = (DType.Q8_0, DType.Q4_0, DType.Q4_K, DType.Q5_K, DType.Q6_K)

# NOTE: the K-quant scale searches hold (candidates x elements) floats; rows are processed
# in chunks of this many blocks to bound the temporary memory (~20 MB per chunk).
_CHUNK_BLOCKS = 1024


def _check(type: DType, n: int, what: str) -> tuple[int, int]:
    if type not in QUANT_TYPES:
        raise ValueError(f"[quants] unsupported type {type!r}; block types are {[t.name for t in QUANT_TYPES]}")
    info = TYPE_INFO[type]
    unit = info.block_bytes if what == "bytes" else info.block_elems
    if n % unit:
        raise ValueError(f"[quants] {info.name} row of {n} {what} is not a multiple of the block size {unit}")
    return info.block_elems, info.block_bytes


# ---- bytes <-> fields -----------------------------------------------------------------


def _f16(b: np.ndarray, off: int) -> np.ndarray:
    """Little-endian f16 at byte `off` of each block, as float32 (works on strided views)."""
    u = b[..., off].astype(np.uint16) | (b[..., off + 1].astype(np.uint16) << np.uint16(8))
    return u.view(np.float16).astype(np.float32)


def _f16_bytes(d: np.ndarray) -> np.ndarray:
    """float32 (...,) -> uint8 (..., 2): little-endian f16, rounded to nearest even like ggml."""
    return np.ascontiguousarray(d.astype("<f2"))[..., None].view(np.uint8)


def _k4_scales(s: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Unpack Q4_K/Q5_K's 12 scale bytes (..., 12) into 6-bit (sc, m), each (..., 8)."""
    s0, s1, s2 = s[..., 0:4], s[..., 4:8], s[..., 8:12]
    sc = np.concatenate([s0 & 63, (s2 & 0xF) | ((s0 >> 6) << 4)], axis=-1)
    m = np.concatenate([s1 & 63, (s2 >> 4) | ((s1 >> 6) << 4)], axis=-1)
    return sc, m


def _pack_k4_scales(sc: np.ndarray, m: np.ndarray) -> np.ndarray:
    """Inverse of `_k4_scales`: 6-bit (sc, m) (..., 8) -> (..., 12) bytes."""
    lo_sc, hi_sc, lo_m, hi_m = sc[..., :4], sc[..., 4:], m[..., :4], m[..., 4:]
    s0 = lo_sc | ((hi_sc >> 4) << 6)
    s1 = lo_m | ((hi_m >> 4) << 6)
    s2 = (hi_sc & 0xF) | ((hi_m & 0xF) << 4)
    return np.concatenate([s0, s1, s2], axis=-1).astype(np.uint8)


def _nibbles(qs: np.ndarray) -> np.ndarray:
    """(..., c, 32) bytes -> (..., 2c, 32) values: low nibbles of chunk c, then its high nibbles."""
    q = np.stack([qs & 0xF, qs >> 4], axis=-2)
    return q.reshape(*qs.shape[:-2], 2 * qs.shape[-2], qs.shape[-1])


def _pack_nibbles(q: np.ndarray) -> np.ndarray:
    """Inverse of `_nibbles`: (..., 2c, 32) values in 0..15 -> (..., c, 32) bytes."""
    q = q.reshape(*q.shape[:-2], q.shape[-2] // 2, 2, q.shape[-1])
    return (q[..., 0, :] | (q[..., 1, :] << 4)).astype(np.uint8)


# ---- dequantize -----------------------------------------------------------------------


def _deq_q8_0(b: np.ndarray) -> np.ndarray:
    return b[..., 2:].view(np.int8).astype(np.float32) * _f16(b, 0)[..., None]


def _deq_q4_0(b: np.ndarray) -> np.ndarray:
    qs = b[..., 2:18]
    q = np.concatenate([qs & 0xF, qs >> 4], axis=-1).astype(np.int8) - np.int8(8)
    return q.astype(np.float32) * _f16(b, 0)[..., None]


def _deq_k4(b: np.ndarray, qs: np.ndarray, qh: np.ndarray | None) -> np.ndarray:
    """Q4_K (qh None) or Q5_K: (..., 256) floats from blocks b (..., block_bytes)."""
    sc, m = _k4_scales(b[..., 4:16])
    d = _f16(b, 0)[..., None] * sc.astype(np.float32)  # (..., 8)
    dm = _f16(b, 2)[..., None] * m.astype(np.float32)
    q = _nibbles(qs.reshape(*qs.shape[:-1], 4, 32))  # (..., 8, 32)
    if qh is not None:
        bits = (qh[..., None, :] >> np.arange(8, dtype=np.uint8)[:, None]) & 1  # bit s -> sub-block s
        q = q | (bits << 4)
    y = d[..., None] * q.astype(np.float32) - dm[..., None]
    return y.reshape(*b.shape[:-1], QK_K)


def _deq_q6_k(b: np.ndarray) -> np.ndarray:
    lead = b.shape[:-1]
    ql = b[..., 0:128].reshape(*lead, 2, 2, 32)  # (half, +32 offset, l)
    qh = b[..., 128:192].reshape(*lead, 2, 1, 32)
    lo = np.stack([ql & 0xF, ql >> 4], axis=-3).reshape(*lead, 2, 4, 32)  # k = 2*nibble + offset
    hi = (qh >> (2 * np.arange(4, dtype=np.uint8))[:, None]) & 3
    q = (lo | (hi << 4)).astype(np.int8) - np.int8(32)
    d = _f16(b, 208)[..., None] * b[..., 192:208].view(np.int8).astype(np.float32)  # (..., 16)
    y = d[..., None] * q.reshape(*lead, 16, 16).astype(np.float32)
    return y.reshape(*lead, QK_K)


def dequantize_rows(raw: np.ndarray, type: DType) -> np.ndarray:
    """Dequantize rows of blocks.

    Args:
        raw: uint8 (..., row_bytes); rows may be strided but each row's bytes are contiguous.
        type: one of Q8_0, Q4_0, Q4_K, Q5_K, Q6_K.

    Returns:
        float32 (..., row_bytes // block_bytes * block_elems).
    """
    raw = np.asarray(raw)
    if raw.dtype != np.uint8:
        raise ValueError(f"[quants] dequantize_rows wants uint8 rows, got {raw.dtype}")
    elems, nbytes = _check(type, raw.shape[-1], "bytes")
    nblk = raw.shape[-1] // nbytes
    b = raw.reshape(*raw.shape[:-1], nblk, nbytes)
    with np.errstate(invalid="ignore", over="ignore"):  # inf/nan scales propagate as in ggml
        if type == DType.Q8_0:
            y = _deq_q8_0(b)
        elif type == DType.Q4_0:
            y = _deq_q4_0(b)
        elif type == DType.Q4_K:
            y = _deq_k4(b, b[..., 16:144], None)
        elif type == DType.Q5_K:
            y = _deq_k4(b, b[..., 48:176], b[..., 16:48])
        else:
            y = _deq_q6_k(b)
    return y.reshape(*raw.shape[:-1], nblk * elems)


# ---- quantize: Q8_0 / Q4_0 (bit-exact with ggml's reference quantizers) ---------------


def _roundf(v: np.ndarray) -> np.ndarray:
    """C roundf: half away from zero (np.rint rounds half to even). Exact in float32."""
    a = np.abs(v)
    f = np.floor(a)
    return np.copysign(f + (a - f >= np.float32(0.5)), v)


def _inv(d: np.ndarray) -> np.ndarray:
    """1/d, with 0 where d == 0 (ggml's `d ? 1.0f/d : 0.0f`)."""
    with np.errstate(divide="ignore"):
        return np.where(d == 0, np.float32(0), np.float32(1) / d).astype(np.float32)


def _q_q8_0(x: np.ndarray) -> np.ndarray:
    d = np.abs(x).max(axis=-1) / np.float32(127)
    q = _roundf(x * _inv(d)[..., None]).astype(np.int8)
    return np.concatenate([_f16_bytes(d), q.view(np.uint8)], axis=-1)


def _q_q4_0(x: np.ndarray) -> np.ndarray:
    # ggml keeps the signed value of largest magnitude (first one on ties) and maps it to -8
    imax = np.abs(x).argmax(axis=-1)[..., None]
    d = np.take_along_axis(x, imax, axis=-1)[..., 0] / np.float32(-8)
    v = x * _inv(d)[..., None] + np.float32(8.5)
    q = np.minimum(np.trunc(v), 15).astype(np.uint8)  # v >= 0 so trunc == C's int cast
    return np.concatenate([_f16_bytes(d), q[..., :16] | (q[..., 16:] << 4)], axis=-1)


# ---- quantize: K-quants (our own scale search) ----------------------------------------


def _best(err: np.ndarray, *vals: np.ndarray) -> list[np.ndarray]:
    """Pick, per sub-block, the candidate (axis 0) with least squared error."""
    i = np.argmin(err, axis=0)[None]
    return [np.take_along_axis(v, i, axis=0)[0] for v in vals]


def _fit_symmetric(x: np.ndarray, nmax: int) -> np.ndarray:
    """Scale s per sub-block (last axis) so x ~ s*q, q integer in [-nmax, nmax-1].

    Candidates map the signed largest-magnitude value to -(nmax + t/10), t in -4..6 (ggml's
    make_qx_quants does a similar sweep); for each the least-squares scale of the rounded q is
    computed and the candidate with least squared error is kept.
    """
    imax = np.abs(x).argmax(axis=-1)[..., None]
    vmax = np.take_along_axis(x, imax, axis=-1)  # (..., 1)
    t = (nmax + np.arange(-4, 7, dtype=np.float32) / 10).reshape(-1, *([1] * x.ndim))
    with np.errstate(divide="ignore", invalid="ignore"):
        iscale = np.where(vmax == 0, 0, -t / vmax)  # (c, ..., 1)
        q = np.clip(np.rint(iscale * x), -nmax, nmax - 1)
        sxq, sqq = (x * q).sum(-1), (q * q).sum(-1)
        s = np.where(sqq > 0, sxq / sqq, 0)
    err = -s * sxq  # sum((x - s q)^2) = sum(x^2) - sxq^2/sqq, the first term is common
    return _best(err, s)[0].astype(np.float32)


def _fit_asymmetric(x: np.ndarray, nmax: int) -> tuple[np.ndarray, np.ndarray]:
    """Scale s >= 0 and offset m >= 0 per sub-block (last axis) so x ~ s*q - m, q in [0, nmax].

    Candidates spread [min(x, 0), max(x)] over nmax + t/10 steps, t in -5..10; each is refit by
    least squares on its rounded q (with m clamped to >= 0, like ggml's make_qkx2_quants,
    which keeps the minimum at or below zero) and the least squared error wins.
    """
    lo = np.minimum(x.min(axis=-1, keepdims=True), 0)
    rng = x.max(axis=-1, keepdims=True) - lo
    t = (nmax + np.arange(-5, 11, dtype=np.float32) / 10).reshape(-1, *([1] * x.ndim))
    n = x.shape[-1]
    with np.errstate(divide="ignore", invalid="ignore"):
        iscale = np.where(rng > 0, t / rng, 0)  # (c, ..., 1)
        q = np.clip(np.rint(iscale * (x - lo)), 0, nmax)
        sx, sq = x.sum(-1), q.sum(-1)
        sxq, sqq = (x * q).sum(-1), (q * q).sum(-1)
        den = n * sqq - sq * sq  # 0 when every q is equal (e.g. a constant sub-block)
        m0 = -lo[..., 0]
        s = np.where(den > 0, (n * sxq - sq * sx) / den, np.where(sqq > 0, (sxq + m0 * sq) / sqq, 0))
        m = np.where(den > 0, (s * sq - sx) / n, m0)
        # NOTE: m < 0 would shift the grid above zero; clamp it and refit the scale alone
        s = np.where(m < 0, np.where(sqq > 0, sxq / sqq, 0), s)
        m = np.maximum(m, 0)
        s = np.maximum(s, 0)
        r = s[..., None] * q - m[..., None] - x
    err = (r * r).sum(-1)
    s, m = _best(err, s, m)
    return s.astype(np.float32), m.astype(np.float32)


def _super_scale(v: np.ndarray, levels: int) -> tuple[np.ndarray, np.ndarray]:
    """Quantize non-negative sub-block scales v (..., k) to integers 0..levels with an f16 scale.

    Returns (stored f16 super-scale as float32 (...,), integer codes (..., k))."""
    d = (v.max(axis=-1) / np.float32(levels)).astype(np.float16).astype(np.float32)
    code = np.clip(np.rint(v * _inv(d)[..., None]), 0, levels)
    return d, code.astype(np.uint8)


def _requant(x: np.ndarray, scale: np.ndarray, offset: np.ndarray, lo: int, hi: int) -> np.ndarray:
    """Round x (..., k, n) against the scales actually stored: q = round((x + offset) / scale)."""
    q = np.rint((x + offset[..., None]) * _inv(scale)[..., None])
    return np.clip(q, lo, hi).astype(np.int16)


def _q_k4(x: np.ndarray, bits: int) -> np.ndarray:
    """Q4_K (bits 4) or Q5_K (bits 5) blocks from x (nblk, 256)."""
    nmax = (1 << bits) - 1
    xs = x.reshape(-1, 8, 32)
    s, m = _fit_asymmetric(xs, nmax)
    d, sc = _super_scale(s, 63)
    dmin, mc = _super_scale(m, 63)
    q = _requant(xs, d[:, None] * sc, dmin[:, None] * mc, 0, nmax).astype(np.uint8)  # (nblk, 8, 32)
    head = [_f16_bytes(d), _f16_bytes(dmin), _pack_k4_scales(sc, mc)]
    qs = _pack_nibbles(q & 0xF).reshape(-1, 128)
    if bits == 4:
        return np.concatenate([*head, qs], axis=-1)
    qh = ((q >> 4) << np.arange(8, dtype=np.uint8)[:, None]).sum(axis=1, dtype=np.uint8)  # bit s <- sub-block s
    return np.concatenate([*head, qh, qs], axis=-1)


def _q_q6_k(x: np.ndarray) -> np.ndarray:
    xs = x.reshape(-1, 16, 16)
    s = _fit_symmetric(xs, 32)
    # int8 scales: the largest-magnitude sub-block scale maps to -128 ... 127 like ggml
    imax = np.abs(s).argmax(axis=-1)[:, None]
    smax = np.take_along_axis(s, imax, axis=-1)[:, 0]
    d = (smax / np.float32(-128)).astype(np.float16).astype(np.float32)
    sc = np.clip(np.rint(s * _inv(d)[:, None]), -128, 127)
    q = (_requant(xs, d[:, None] * sc, np.zeros_like(sc), -32, 31) + 32).astype(np.uint8)
    q = q.reshape(-1, 2, 4, 32)  # (half, k, l): element 32k + l of each half
    lo = q & 0xF
    ql = np.stack([lo[:, :, 0] | (lo[:, :, 2] << 4), lo[:, :, 1] | (lo[:, :, 3] << 4)], axis=2)  # (half, +32, l)
    qh = ((q >> 4) << (2 * np.arange(4, dtype=np.uint8))[:, None]).sum(axis=2, dtype=np.uint8)
    sc8 = sc.astype(np.int8).view(np.uint8)
    return np.concatenate([ql.reshape(-1, 128), qh.reshape(-1, 64), sc8, _f16_bytes(d)], axis=-1)


_QUANTIZERS = {
    DType.Q8_0: _q_q8_0,
    DType.Q4_0: _q_q4_0,
    DType.Q4_K: lambda x: _q_k4(x, 4),
    DType.Q5_K: lambda x: _q_k4(x, 5),
    DType.Q6_K: _q_q6_k,
}


def quantize_rows(x: np.ndarray, type: DType) -> np.ndarray:
    """Quantize rows of floats.

    Args:
        x: float (..., n), n a multiple of the type's block size (converted to float32).
        type: one of Q8_0, Q4_0, Q4_K, Q5_K, Q6_K.

    Returns:
        uint8 (..., n // block_elems * block_bytes), contiguous.
    """
    x = np.asarray(x)
    elems, nbytes = _check(type, x.shape[-1], "elements")
    lead = x.shape[:-1]
    blocks = np.ascontiguousarray(x, dtype=np.float32).reshape(-1, elems)
    fn = _QUANTIZERS[type]
    step = _CHUNK_BLOCKS if elems == QK_K else 64 * _CHUNK_BLOCKS
    out = np.empty((blocks.shape[0], nbytes), np.uint8)
    for i in range(0, blocks.shape[0], step):
        out[i : i + step] = fn(blocks[i : i + step])
    return out.reshape(*lead, x.shape[-1] // elems * nbytes)
