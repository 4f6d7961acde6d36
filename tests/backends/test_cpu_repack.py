"""Q8_0 and Q4_0 weights repacked for the cpu matrix kernels (backends/cpu/repack.py, the
GR_Q8_0_R16 and GR_Q4_0_R16 layouts of shaders/cpu/matmul.h): the layout byte for byte, which
tensors are repacked, the canonical order of the dot products bit for bit, and a memory-mapped
weight whose pages are released after the copy and still read right."""

from __future__ import annotations

import ctypes
import ctypes.util
import re

import numpy as np
import pytest
from cpu_support import set_isa
from gguf.constants import GGMLQuantizationType
from gguf.quants import dequantize as gguf_dequantize

import graphir as gr
from graphir.backends import availability
from graphir.parity.inputs import random_blocks
from graphir.quants import dequantize_rows
from graphir.types import DType

pytestmark = pytest.mark.skipif(not availability("cpu").ok, reason=f"native cpu: {availability('cpu').reason}")

Q8_0, Q4_0 = DType.Q8_0, DType.Q4_0
TYPES = [Q8_0, Q4_0]
# per type: (GGUF block bytes, XOR of each stored quant byte, the repack function, the repacked type)
LAYOUT = {Q8_0: (34, 0x80, "gr_repack_q8_0_r16", "GR_Q8_0_R16"), Q4_0: (18, 0, "gr_repack_q4_0_r16", "GR_Q4_0_R16")}
ids = pytest.mark.parametrize("type", TYPES, ids=lambda t: t.name)


def layout_model(type: DType, data: np.ndarray, K: int, M: int, nmat: int) -> np.ndarray:
    """The documented layout, built from the GGUF blocks (nmat x M rows of K//32 blocks)."""
    bs, flip = LAYOUT[type][:2]
    nblk, ng, qb = K // 32, -(-M // 16), bs - 2
    blocks = data.reshape(nmat, M, nblk, bs)
    rows = np.zeros((nmat, ng * 16, nblk, bs), np.uint8)  # padding rows: scale 0, quants 0
    rows[:, :M] = blocks
    out = []
    for i in range(nmat):
        for g in range(ng):
            grp = rows[i, 16 * g : 16 * g + 16]  # (16, nblk, bs)
            for p in range(0, nblk, 2):
                pair = [j for j in (p, p + 1) if j < nblk]
                for j in pair:
                    out.append(grp[:, j, :2].reshape(-1))  # 16 fp16 scales, row order
                for j in pair:
                    q = grp[:, j, 2:] ^ flip  # (16 rows, qb quant bytes); Q8_0 offset by 128
                    out.append(q.reshape(16, qb // 4, 4).transpose(1, 0, 2).reshape(-1))  # chunk c: row r's 4 at 4r
    return np.concatenate(out)


def repack_native(type: DType, data: np.ndarray, K: int, M: int, nmat: int, size: int) -> np.ndarray:
    """gr_repack_* of nmat x M GGUF rows into a buffer of size + 64 bytes (filled with 0xAB)."""
    from graphir.backends.cpu import native

    row = LAYOUT[type][0] * K // 32
    got = np.full(size + 64, 0xAB, np.uint8)
    getattr(native.lib, LAYOUT[type][2])(native.ffi.cast("const char *", data.ctypes.data), K, M, nmat, row,
                                         row * M, native.ffi.cast("char *", got.ctypes.data))  # fmt: skip
    return got


@ids
@pytest.mark.parametrize("K,M,nmat", [(64, 16, 1), (96, 17, 1), (32, 5, 3), (608, 40, 2)])
def test_layout(type: DType, K: int, M: int, nmat: int) -> None:
    """gr_repack_q8_0_r16 / gr_repack_q4_0_r16 write the layout matmul.h documents (odd block
    counts: a lone last block; row counts not a multiple of 16: a padded last group; several
    matrices)."""
    rng = np.random.default_rng(K + M)
    data = np.ascontiguousarray(random_blocks(type, M * nmat, K, rng)).view(np.uint8)
    want = layout_model(type, data, K, M, nmat)
    assert want.size == -(-M // 16) * 16 * nmat * data.shape[1]  # as many bytes as the padded rows in GGUF
    got = repack_native(type, data, K, M, nmat, want.size)
    np.testing.assert_array_equal(got[: want.size], want)
    assert (got[want.size :] == 0xAB).all(), "wrote past the repacked size"


def bound_types(plan) -> list[int]:
    """The weight type each matrix product of the plan's cpu programs reads (record src[0])."""
    from graphir.backends.cpu import native

    out = []
    for call in plan._calls:
        prog = getattr(call, "program", None)
        for rec in prog.recs[0 : prog.n] if prog is not None else ():
            if rec.op in (native.lib.GR_OP_MUL_MAT, native.lib.GR_OP_MUL_MAT_ID):
                out.append(rec.src[0].type)
    return out


@ids
def test_what_is_repacked(native, type: DType) -> None:
    """A whole Q8_0 / Q4_0 weight read by mul_mat or mul_mat_id is repacked; an input, a view of
    a weight, a leaf that graphs may write (state: not PARAM) and any weight with repacking off
    are not."""
    from graphir.backends.cpu import native as cpu_native

    R16, GGUF = getattr(cpu_native.lib, LAYOUT[type][3]), int(type)
    rng = np.random.default_rng(0)
    K, M = 64, 20
    data = random_blocks(type, M, K, rng)
    weight = gr.new_weight(type, [K, M], data, "w")
    experts = gr.new_weight(type, [K, M, 3], random_blocks(type, 3 * M, K, rng).reshape(3, M, -1), "experts")
    state = gr.new_weight(type, [K, M], data.copy(), "state")
    state.flags &= ~gr.Flag.PARAM
    x = gr.new_input(gr.F32, [K, 2], "x")
    ids_in = gr.new_input(gr.I32, [1, 2], "ids")
    cases = {
        "weight": (gr.mul_mat(weight, x), R16),
        "experts": (gr.mul_mat_id(experts, gr.reshape(x, K, 1, 2), ids_in), R16),
        "input": (gr.mul_mat(gr.new_input(type, [K, M], "q"), x), GGUF),
        "view": (gr.mul_mat(gr.view_2d(weight, K, 16, weight.nb[1], weight.nb[1] * 2), x), GGUF),
        "state": (gr.mul_mat(state, x), GGUF),
    }
    for name, (out, want) in cases.items():
        plan = gr.compile(gr.build_graph(out.set_output()), ["cpu"], cache=False)
        assert bound_types(plan) == [want], name
    native.repack = False
    plan = gr.compile(gr.build_graph(gr.mul_mat(weight, x).set_output()), ["cpu"], cache=False)
    assert bound_types(plan) == [GGUF]


_fmaf = ctypes.CDLL(ctypes.util.find_library("m")).fmaf
_fmaf.restype, _fmaf.argtypes = ctypes.c_float, [ctypes.c_float] * 3
fmaf = np.vectorize(_fmaf, otypes=[np.float32])  # one rounding, as the kernels' fma


def weight_quants(type: DType, data: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The integer weights w (rows, K) and the block scales dw (rows, K // 32, float32) of GGUF
    rows, decoded by gguf's own quant helpers (blocks rescaled to d = 1: w is exact)."""
    bs = LAYOUT[type][0]
    blocks = data.reshape(data.shape[0], -1, bs).copy()
    dw = blocks[..., :2].copy().view(np.float16)[..., 0].astype(np.float32)
    blocks[..., :2] = np.frombuffer(np.float16(1).tobytes(), np.uint8)
    w = gguf_dequantize(blocks.reshape(data.shape[0], -1), GGMLQuantizationType[type.name])
    return w.astype(np.int64), dw


def activation_quants(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The Q8R activations: quants q (N, K) and block scales da (N, K // 32, float32), as
    quantize_act.c rounds them (ggml's block_q8_0: d = fp16(amax / 127), q = rint(x * 127 / amax))."""
    xb = x.reshape(x.shape[0], -1, 32).astype(np.float32)
    amax = np.abs(xb).max(-1, keepdims=True)
    with np.errstate(divide="ignore"):
        iscale = np.where(amax > 0, np.float32(127) / amax, np.float32(0)).astype(np.float32)
    q = np.clip(np.rint(xb * iscale), -127, 127).astype(np.int64)
    da = (amax[..., 0] / np.float32(127)).astype(np.float16).astype(np.float32)
    return q.reshape(x.shape), da


def canonical(type: DType, data: np.ndarray, x: np.ndarray) -> np.ndarray:
    """The canonical order of repacked weights (matmul.h), (N, M) float32: acc = 0; per block j
    ascending acc = fma(dw_j * da_j, (float)I_j, acc), I_j the exact integer dot product."""
    w, dw = weight_quants(type, data)
    q, da = activation_quants(x)
    nblk = w.shape[1] // 32
    integer = (q.reshape(len(q), 1, nblk, 32) * w.reshape(1, len(w), nblk, 32)).sum(-1)  # (N, M, nblk)
    P = dw[None] * da[:, None]  # float32 products, one rounding
    acc = np.zeros(integer.shape[:2], np.float32)
    for j in range(nblk):
        acc = fmaf(P[..., j], integer[..., j].astype(np.float32), acc)
    return acc


@ids
def test_canonical_order(native, type: DType) -> None:
    """Every output of a repacked weight is the canonical order's float bit for bit, from the
    portable kernel (the definition), the AVX2 level's and AVX-512 VNNI's: a lone last block, a
    padded group, 9 tokens (tiles of 8 + 1 tokens; 4 + 4 + 1 in AVX2), extreme quants (Q4_0 nibbles all 0 or all
    15: w = -8 or 7; the Q8R offsets at sum(q) = +-127 * 32)."""
    from graphir.backends.cpu import native as cpu_native

    rng = np.random.default_rng(11)
    K, M, N = 608, 21, 9
    data = np.ascontiguousarray(random_blocks(type, M, K, rng))
    for r, byte in ((3, 0x00), (4, 0xFF), (20, 0x88)):
        data[r].reshape(-1, LAYOUT[type][0])[:, 2:] = byte
    x = rng.uniform(-1, 1, (N, K)).astype(np.float32)
    x[1], x[2], x[5] = 0.5, -0.25, 0.0  # every quant 127, -127; a zero row
    want = canonical(type, data, x)
    a, b = gr.new_weight(type, [K, M], data, "a"), gr.new_input(gr.F32, [K, N], "b")
    out = gr.mul_mat(a, b).set_output()
    native.n_threads = 2
    plan = gr.compile(gr.build_graph(out), ["cpu"], cache=False)
    assert bound_types(plan) == [getattr(cpu_native.lib, LAYOUT[type][3])]
    plan.set_input(b, x)
    for isa in (0, 1, 7):
        set_isa(isa)  # the kernel is chosen when it runs
        plan.run()
        np.testing.assert_array_equal(plan.get(out)[0, 0].view(np.uint32), want.view(np.uint32), err_msg=f"isa {isa}")


def mapping_rss_kb(path: str) -> int:
    """Resident kB of this process's mappings of `path` (/proc/self/smaps)."""
    total, inside = 0, False
    with open("/proc/self/smaps") as f:
        for line in f:
            if re.match(r"^[0-9a-f]+-[0-9a-f]+ ", line):
                inside = line.rstrip().endswith(path)
            elif inside and line.startswith("Rss:"):
                total += int(line.split()[1])
    return total


@ids
def test_mapped_weight_pages_released(native, type: DType, tmp_path) -> None:
    """A weight memory-mapped read-only (as GGUF files are loaded) leaves resident memory once
    its repacked copy is made; get_rows of the same weight (a tied embedding) still reads its
    bytes from the file, and both ops give the reference's values."""
    rng = np.random.default_rng(1)
    K, M = 256, 4096  # 0.6-1.1 MB of blocks: whole pages inside
    data = np.ascontiguousarray(random_blocks(type, M, K, rng)).view(np.uint8)
    path = tmp_path / "w.bin"
    data.tofile(path)
    mapped = np.memmap(path, dtype=np.uint8, mode="r").reshape(M, -1)
    weight = gr.new_weight(type, [K, M], mapped, "w")
    assert int(mapped.astype(np.uint64).sum()) == int(data.astype(np.uint64).sum())  # every page touched
    before = mapping_rss_kb(str(path))
    x, ids = gr.new_input(gr.F32, [K, 3], "x"), gr.new_input(gr.I32, [2], "ids")
    mm, rows = gr.mul_mat(weight, x).set_output(), gr.get_rows(weight, ids).set_output()
    plan = gr.compile(gr.build_graph(mm, rows), ["cpu"], cache=False)
    after = mapping_rss_kb(str(path))
    assert before >= data.nbytes // 1024 - 8 and after < before // 4, (before, after)
    xv = rng.uniform(-1, 1, (3, K)).astype(np.float32)
    plan.set_input(x, xv)
    plan.set_input(ids, np.array([7, 4000], np.int32))
    plan.run()
    w = dequantize_rows(data.reshape(M, -1), type)
    np.testing.assert_array_equal(plan.get(rows)[0, 0], w[[7, 4000]])
    want = xv.astype(np.float64) @ w.astype(np.float64).T
    assert np.abs(plan.get(mm)[0, 0] - want).max() < 0.05 * np.abs(want).max()


@ids
def test_copy_in_chunks(native, type: DType, monkeypatch) -> None:
    """The backend copies a weight a chunk of whole groups at a time (releasing a mapped source
    as it goes): several chunks per matrix and several matrices give the same layout."""
    from graphir.backends.cpu import repack

    monkeypatch.setattr(repack, "CHUNK_BYTES", 1000)  # 16 rows (one group) a chunk
    rng = np.random.default_rng(3)
    K, M, nmat = 96, 40, 3
    data = np.ascontiguousarray(random_blocks(type, M * nmat, K, rng)).view(np.uint8)
    experts = gr.new_weight(type, [K, M, nmat], data.reshape(nmat, M, -1), "experts")
    addr = native.repacked.address(experts)
    buf = native.repacked._copies[id(experts)][1]
    off = addr - buf.ctypes.data
    want = layout_model(type, data, K, M, nmat)
    np.testing.assert_array_equal(buf[off : off + want.size], want)
    assert native.repacked.address(experts) == addr  # made once


@ids
def test_weight_written_after_the_copy(native, type: DType) -> None:
    """Plan.set_input on a repacked weight writes its bytes and copies them again: the next run
    reads the new weights (a stale copy would give the old product)."""
    rng = np.random.default_rng(4)
    K, M = 64, 40
    old, new = (np.ascontiguousarray(random_blocks(type, M, K, rng)).view(np.uint8) for _ in range(2))
    weight = gr.new_weight(type, [K, M], old.copy(), "w")
    x = gr.new_input(gr.F32, [K, 2], "x")
    out = gr.mul_mat(weight, x).set_output()
    plan = gr.compile(gr.build_graph(out), ["cpu"], cache=False)
    xv = rng.uniform(-1, 1, (2, K)).astype(np.float32)
    plan.set_input(x, xv)
    plan.run()
    first = plan.get(out).copy()
    plan.set_input(weight, new)
    plan.run()
    want = xv.astype(np.float64) @ dequantize_rows(new.reshape(M, -1), type).astype(np.float64).T
    got = plan.get(out)[0, 0]
    assert np.abs(got - want).max() < 0.02 * np.abs(want).max()
    assert np.abs(first[0, 0] - want).max() > 0.1 * np.abs(want).max()
