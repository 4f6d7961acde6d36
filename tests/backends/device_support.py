"""Helpers of the device backend tests (tests/backends/test_opencl.py, test_vulkan.py): the checks
both run the same way on their own backend (copies between buffers, flash_attn_ext's masked cells,
mul_mat_id on Q4_K experts, the tiny model's decode / verify / rollback rows against a reference)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

import graphir as gr
from graphir.backends import get_backend
from graphir.backends.base import Place
from graphir.ops import Op
from graphir.quants import dequantize_rows, quantize_rows
from graphir.types import DType


def nmse(got: np.ndarray, ref: np.ndarray) -> float:
    return float(np.mean((got - ref) ** 2) / max(np.mean(ref**2), 1e-30))


def rollback_rows(model: Any, prompt: list[int], backends: tuple[str, ...], n_ubatch: int) -> tuple[np.ndarray, Any]:
    """The logit rows of a prompt (all rows, in ubatches of n_ubatch), 3 greedy decode steps, a verify
    batch (the greedy token and 2 drafts, all rows) and, the 2 drafts rolled back through the recurrent
    snapshots, another token: (prompt + 7, n_vocab), and the verify batch's plan."""
    from graphir.models.batch import Batch
    from graphir.models.context import Context

    ctx = Context(model, n_ctx=64, n_batch=16, n_ubatch=n_ubatch, n_rs_seq=3, backends=backends)
    rows = [ctx.decode(Batch.simple(prompt, 0, all_outputs=True)).logits]
    tok, n = int(rows[0][-1].argmax()), len(prompt)
    for _ in range(3):  # greedy decode steps
        rows.append(ctx.decode(Batch.simple([tok], n)).logits)
        tok, n = int(rows[-1][0].argmax()), n + 1
    rows.append(ctx.decode(Batch.simple([tok, 4, 6], n, all_outputs=True)).logits)  # a verify batch
    plan = ctx.last_graph()[1]
    assert ctx.seq_rm(0, n + 1, -1)  # keep tok, drop the 2 rejected drafts
    rows.append(ctx.decode(Batch.simple([8], n + 1)).logits)
    return np.concatenate(rows), plan


def check_rollback_rows(model: Any, prompt: list[int], backend: str, ref: str, disabled: tuple[Op, ...],
                        monkeypatch: pytest.MonkeyPatch, n_ubatch: int) -> None:  # fmt: skip
    """`rollback_rows` on `backend` against `ref`: every logit row within NMSE 2e-3. The `disabled` ops
    are taken out of the backend's KERNELS: they must run on the cpu, between its splits, with copies
    across; with none disabled, every op of the verify graph runs on it in one split, nothing copied."""
    want, _ = rollback_rows(model, prompt, (ref,), n_ubatch)
    for op in disabled:
        monkeypatch.delitem(get_backend(backend).KERNELS, op)
    got, plan = rollback_rows(model, prompt, (backend,), n_ubatch)
    assert got.shape == want.shape == (len(prompt) + 3 + 3 + 1, model.hp.n_vocab)
    assert max(nmse(g, r) for g, r in zip(got, want)) <= 2e-3  # row by row: the rollback's row too
    where = {plan.schedule.node_backend[n].name for n in plan.graph.nodes if n.op in disabled}
    if disabled:
        assert where == {"cpu"} and plan.stats.n_splits > 2 and plan.stats.n_copies > 0
    else:
        assert all(plan.schedule.node_backend[n] is get_backend(backend) for n in plan.graph.nodes)
        assert plan.stats.n_splits == 1 and plan.stats.n_copies == 0


def copy_between(dst_be: Any, src_be: Any) -> np.ndarray:
    """Copy a [6, 5] F32 tensor from src_be (byte offset 64) to dst_be (offset 128); the
    destination buffer's bytes as floats (`expect_copied` checks them)."""
    t = gr.new_tensor(DType.F32, (6, 5), "t")
    sbuf, dbuf = src_be.alloc_buffer(256), dst_be.alloc_buffer(256)
    src_be.write_bytes(sbuf, 0, np.arange(64, dtype=np.float32))
    dst_be.write_bytes(dbuf, 0, np.full(64, -1, dtype=np.float32))
    dst_be.copy_from(Place(dbuf, 128), t, src_be, Place(sbuf, 64))()
    dst_be.synchronize()
    return dst_be.read_bytes(dbuf, 0, 256).view(np.float32)


def expect_copied(got: np.ndarray) -> None:
    want = np.full(64, -1, dtype=np.float32)
    want[32:62] = np.arange(16, 46)
    np.testing.assert_array_equal(got, want)


def check_masked_cells_skipped(run: Callable[[Any, dict], np.ndarray]) -> None:
    """flash_attn_ext through `run(out, inputs) -> values` with -inf mask entries: the cell's K and V
    are never read (NaN left in free cells of a padded cache does not leak as 0 * NaN) and the result
    equals attention over the unmasked cells alone."""
    rng = np.random.default_rng(9)
    D, n_kv, keep = 8, 40, [0, 3, 4, 9, 17]
    q = gr.new_input(DType.F32, (D, 2, 4, 1), "q")
    k = gr.new_input(DType.F16, (D, n_kv, 2, 1), "k")
    v = gr.new_input(DType.F16, (D, n_kv, 2, 1), "v")
    m = gr.new_input(DType.F16, (n_kv, 2), "m")
    qv = rng.standard_normal((1, 4, 2, D)).astype(np.float32)
    kv = rng.standard_normal((1, 2, n_kv, D)).astype(np.float16)
    vv = rng.standard_normal((1, 2, n_kv, D)).astype(np.float16)
    mv = np.full((2, n_kv), -np.inf, np.float16)
    mv[:, keep] = 0
    free = np.setdiff1d(np.arange(n_kv), keep)
    kv[:, :, free], vv[:, :, free] = np.nan, np.nan
    got = run(gr.flash_attn_ext(q, k, v, m, D**-0.5), {q: qv, k: kv, v: vv, m: mv})
    q2 = gr.new_input(DType.F32, (D, 2, 4, 1), "q2")
    k2 = gr.new_input(DType.F16, (D, len(keep), 2, 1), "k2")
    v2 = gr.new_input(DType.F16, (D, len(keep), 2, 1), "v2")
    want = run(
        gr.flash_attn_ext(q2, k2, v2, None, D**-0.5),
        {q2: qv, k2: np.ascontiguousarray(kv[:, :, keep]), v2: np.ascontiguousarray(vv[:, :, keep])},
    )
    assert np.isfinite(got).all()
    assert nmse(got, want) < 1e-10


def check_mul_mat_id_q4_k(run: Callable[[Any, dict], np.ndarray]) -> None:
    """mul_mat_id through `run(out, inputs) -> values` on Q4_K experts [256, 5, 4], two tokens with
    two experts each: every slot is its expert's dequantized rows times the token (NMSE < 1e-10)."""
    rng = np.random.default_rng(3)
    K, M, E = 256, 5, 4
    raw = quantize_rows(rng.standard_normal((E * M, K)).astype(np.float32), DType.Q4_K)
    w = gr.new_weight(DType.Q4_K, (K, M, E), raw, "experts")
    x = gr.new_input(DType.F32, (K, 1, 2), "x")
    ids = gr.new_input(DType.I32, (2, 2), "ids")
    xv = rng.standard_normal((2, 1, K)).astype(np.float32)
    iv = np.array([[3, 0], [1, 3]], dtype=np.int32)  # [token, slot]
    got = run(gr.mul_mat_id(w, x, ids), {x: xv, ids: iv}).reshape(2, 2, M)
    we = dequantize_rows(raw.reshape(E * M, -1), DType.Q4_K).reshape(E, M, K).astype(np.float64)
    want = np.stack([[we[iv[t, e]] @ xv[t, 0] for e in range(2)] for t in range(2)])
    assert nmse(got, want) < 1e-10
