"""Q8_0 weights repacked for the cpu matrix kernels (backends/cpu/repack.py, the GR_Q8_0_R16
layout of shaders/cpu/matmul.h): the layout byte for byte, which tensors are repacked, and a
memory-mapped weight whose pages are released after the copy and still read right."""

from __future__ import annotations

import re

import numpy as np
import pytest

import graphir as gr
from graphir.backends import availability
from graphir.parity.inputs import random_blocks
from graphir.quants import dequantize_rows
from graphir.types import DType

pytestmark = pytest.mark.skipif(not availability("cpu").ok, reason=f"native cpu: {availability('cpu').reason}")

Q8_0 = DType.Q8_0


def layout_model(data: np.ndarray, K: int, M: int, nmat: int) -> np.ndarray:
    """The documented layout, built from the GGUF blocks (nmat x M rows of K//32 blocks of 34 bytes)."""
    nblk, ng = K // 32, -(-M // 16)
    blocks = data.reshape(nmat, M, nblk, 34)
    rows = np.zeros((nmat, ng * 16, nblk, 34), np.uint8)  # padding rows: scale 0, quants 0
    rows[:, :M] = blocks
    out = []
    for i in range(nmat):
        for g in range(ng):
            grp = rows[i, 16 * g : 16 * g + 16]  # (16, nblk, 34)
            for p in range(0, nblk, 2):
                pair = [j for j in (p, p + 1) if j < nblk]
                for j in pair:
                    out.append(grp[:, j, :2].reshape(-1))  # 16 fp16 scales, row order
                for j in pair:
                    q = grp[:, j, 2:] ^ 0x80  # (16 rows, 32 quants) offset by 128
                    out.append(q.reshape(16, 8, 4).transpose(1, 0, 2).reshape(-1))  # chunk c: row r's 4 at 4r
    return np.concatenate(out)


@pytest.mark.parametrize("K,M,nmat", [(64, 16, 1), (96, 17, 1), (32, 5, 3), (608, 40, 2)])
def test_layout(K: int, M: int, nmat: int) -> None:
    """gr_repack_q8_0_r16 writes the layout matmul.h documents (odd block counts: a lone last
    block; row counts not a multiple of 16: a padded last group; several matrices)."""
    from graphir.backends.cpu import native

    rng = np.random.default_rng(K + M)
    data = np.ascontiguousarray(random_blocks(Q8_0, M * nmat, K, rng)).view(np.uint8)
    want = layout_model(data, K, M, nmat)
    got = np.full(want.size + 64, 0xAB, np.uint8)
    native.lib.gr_repack_q8_0_r16(native.ffi.cast("const char *", data.ctypes.data), K, M, nmat, 34 * K // 32,
                                  34 * K // 32 * M, native.ffi.cast("char *", got.ctypes.data))  # fmt: skip
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


def test_what_is_repacked(native) -> None:
    """A whole Q8_0 weight read by mul_mat is repacked; a Q8_0 input, a view of a weight, a
    leaf that graphs may write (state: not PARAM) and any weight with repacking off are not."""
    from graphir.backends.cpu import native as cpu_native

    R16, GGUF = cpu_native.lib.GR_Q8_0_R16, int(Q8_0)
    rng = np.random.default_rng(0)
    K, M = 64, 20
    data = random_blocks(Q8_0, M, K, rng)
    weight = gr.new_weight(Q8_0, [K, M], data, "w")
    state = gr.new_weight(Q8_0, [K, M], data.copy(), "state")
    state.flags &= ~gr.Flag.PARAM
    x = gr.new_input(gr.F32, [K, 2], "x")
    cases = {
        "weight": (gr.mul_mat(weight, x), R16),
        "input": (gr.mul_mat(gr.new_input(Q8_0, [K, M], "q"), x), GGUF),
        "view": (gr.mul_mat(gr.view_2d(weight, K, 16, weight.nb[1], weight.nb[1] * 2), x), GGUF),
        "state": (gr.mul_mat(state, x), GGUF),
    }
    for name, (out, want) in cases.items():
        plan = gr.compile(gr.build_graph(out.set_output()), ["cpu"], cache=False)
        assert bound_types(plan) == [want], name
    native.repack = False
    plan = gr.compile(gr.build_graph(gr.mul_mat(weight, x).set_output()), ["cpu"], cache=False)
    assert bound_types(plan) == [GGUF]


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


def test_mapped_weight_pages_released(native, tmp_path) -> None:
    """A weight memory-mapped read-only (as GGUF files are loaded) leaves resident memory once
    its repacked copy is made; get_rows of the same weight (a tied embedding) still reads its
    bytes from the file, and both ops give the reference's values."""
    rng = np.random.default_rng(1)
    K, M = 256, 4096  # 1.1 MB of blocks: whole pages inside
    data = np.ascontiguousarray(random_blocks(Q8_0, M, K, rng)).view(np.uint8)
    path = tmp_path / "w.bin"
    data.tofile(path)
    mapped = np.memmap(path, dtype=np.uint8, mode="r").reshape(M, -1)
    weight = gr.new_weight(Q8_0, [K, M], mapped, "w")
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
    w = dequantize_rows(data.reshape(M, -1), Q8_0)
    np.testing.assert_array_equal(plan.get(rows)[0, 0], w[[7, 4000]])
    want = xv.astype(np.float64) @ w.astype(np.float64).T
    assert np.abs(plan.get(mm)[0, 0] - want).max() < 0.05 * np.abs(want).max()


def test_copy_in_chunks(native, monkeypatch) -> None:
    """The backend copies a weight a chunk of whole groups at a time (releasing a mapped source
    as it goes): several chunks per matrix and several matrices give the same layout."""
    from graphir.backends.cpu import repack

    monkeypatch.setattr(repack, "CHUNK_BYTES", 1000)  # 16 rows (one group) a chunk
    rng = np.random.default_rng(3)
    K, M, nmat = 96, 40, 3
    data = np.ascontiguousarray(random_blocks(Q8_0, M * nmat, K, rng)).view(np.uint8)
    experts = gr.new_weight(Q8_0, [K, M, nmat], data.reshape(nmat, M, -1), "experts")
    addr = native.repacked.address(experts)
    buf = native.repacked._copies[id(experts)][1]
    off = addr - buf.ctypes.data
    want = layout_model(data, K, M, nmat)
    np.testing.assert_array_equal(buf[off : off + want.size], want)
    assert native.repacked.address(experts) == addr  # made once


def test_weight_written_after_the_copy(native) -> None:
    """Plan.set_input on a repacked weight writes its bytes and copies them again: the next run
    reads the new weights (a stale copy would give the old product)."""
    rng = np.random.default_rng(4)
    K, M = 64, 40
    old, new = (np.ascontiguousarray(random_blocks(Q8_0, M, K, rng)).view(np.uint8) for _ in range(2))
    weight = gr.new_weight(Q8_0, [K, M], old.copy(), "w")
    x = gr.new_input(gr.F32, [K, 2], "x")
    out = gr.mul_mat(weight, x).set_output()
    plan = gr.compile(gr.build_graph(out), ["cpu"], cache=False)
    xv = rng.uniform(-1, 1, (2, K)).astype(np.float32)
    plan.set_input(x, xv)
    plan.run()
    first = plan.get(out).copy()
    plan.set_input(weight, new)
    plan.run()
    want = xv.astype(np.float64) @ dequantize_rows(new.reshape(M, -1), Q8_0).astype(np.float64).T
    got = plan.get(out)[0, 0]
    assert np.abs(got - want).max() < 0.02 * np.abs(want).max()
    assert np.abs(first[0, 0] - want).max() > 0.1 * np.abs(want).max()
