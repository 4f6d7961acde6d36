"""The opencl backend beyond per-op parity: how it reports itself unavailable, a graph split
between opencl and the cpu fallback, and the tiny Qwen3.5 model decoding on it.

Everything but the availability tests skips (with the reason) where no OpenCL device exists.
"""

from __future__ import annotations

import numpy as np
import pytest

import graphir as gr
from graphir.backends import availability, get_backend
from graphir.backends.opencl import runtime
from graphir.graph import build_graph
from graphir.quants import dequantize_rows, quantize_rows
from graphir.types import DType

AV = availability("opencl")
needs_device = pytest.mark.skipif(not AV.ok, reason=f"opencl unavailable: {AV.reason}")


def nmse(got: np.ndarray, ref: np.ndarray) -> float:
    return float(np.mean((got - ref) ** 2) / max(np.mean(ref**2), 1e-30))


# ---- availability ---------------------------------------------------------------------


def test_unavailable_without_pyopencl(monkeypatch):
    monkeypatch.setattr(runtime, "cl", None)
    av = availability("opencl")
    assert not av.ok and av.reason.startswith("pyopencl is not installed")


@pytest.mark.skipif(runtime.cl is None, reason="pyopencl is not installed")
@pytest.mark.parametrize(("value", "why"), [("no-such-device-xyz", "matches no device"), ("99", "only")])
def test_device_selection_reason(monkeypatch, value, why):
    monkeypatch.setenv(runtime.ENV_DEVICE, value)
    av = availability("opencl")
    assert not av.ok
    assert av.reason.startswith(f"{runtime.ENV_DEVICE}=") and why in av.reason


@needs_device
def test_device_selection_by_index_and_name(monkeypatch):
    first = runtime.all_devices()[0][1]
    monkeypatch.setenv(runtime.ENV_DEVICE, "0")
    assert runtime.select_device().int_ptr == first.int_ptr
    monkeypatch.setenv(runtime.ENV_DEVICE, first.name[:4])
    assert not isinstance(runtime.select_device(), str)


# ---- a graph split between opencl and the cpu fallback ------------------------------


_RNG = np.random.default_rng(0)
W_Q = quantize_rows(_RNG.standard_normal((12, 256)).astype(np.float32), DType.Q4_K)
BIAS = _RNG.standard_normal(12).astype(np.float32)


def _mixed_graph():
    """rms_norm -> mul_mat by Q4_K weights (not on opencl) -> silu -> add -> scale -> cpy to I32 (not on opencl)."""
    K, M, N = 256, 12, 5
    x = gr.new_input(DType.F32, (K, N), "x")
    w = gr.new_weight(DType.Q4_K, (K, M), W_Q, "w")
    bias = gr.from_numpy(BIAS, "bias")
    h = gr.mul_mat(w, gr.rms_norm(x, 1e-6))
    c = gr.add(gr.silu(h), bias)
    return x, c, gr.cpy(gr.scale(c, 100.0), gr.new_tensor(DType.I32, c.ne, "c_i32"))


@needs_device
def test_mixed_graph_falls_back_to_cpu_with_copies():
    rng = np.random.default_rng(0)
    x, c, trunc = _mixed_graph()
    xv = rng.standard_normal((5, 256)).astype(np.float32)
    graph = build_graph(c, trunc)
    outs = {}
    for backends in (["cpu"], ["opencl"]):
        plan = gr.compile(graph, backends, cache=False)
        plan.set_input(x, xv)
        plan.run()
        outs[backends[0]] = (plan.get(c), plan.get(trunc))
        if backends == ["opencl"]:
            where = {n.op.value: plan.schedule.node_backend[n].name for n in graph.nodes}
            assert where == {"rms_norm": "opencl", "mul_mat": "cpu", "silu": "opencl", "add": "opencl",
                             "scale": "opencl", "cpy": "cpu"}  # fmt: skip
            assert plan.stats.n_splits == 4 and plan.stats.n_copies >= 3
    (c_cpu, o_cpu), (c_cl, o_cl) = outs["cpu"], outs["opencl"]
    assert nmse(c_cl, c_cpu) < 1e-10
    np.testing.assert_array_equal(o_cl, o_cpu)
    # and against the formula: silu(W (x / rms(x))) + bias, and 100 times that truncated
    w = dequantize_rows(W_Q.reshape(12, -1), DType.Q4_K).astype(np.float64)
    xn = xv / np.sqrt(np.mean(xv.astype(np.float64) ** 2, axis=-1, keepdims=True) + 1e-6)
    h = xn @ w.T
    want = h / (1.0 + np.exp(-h)) + BIAS
    assert nmse(c_cl.reshape(5, 12), want) < 1e-10
    assert np.abs(o_cl.reshape(5, 12) - np.trunc(want * 100)).max() <= 1  # truncation near an integer may differ


# ---- the tiny model end to end ---------------------------------------------------------


@needs_device
@pytest.mark.parametrize("arch", ["qwen35", "qwen35moe"])
def test_tiny_model_decodes_on_opencl(arch):
    from graphir.models.batch import Batch
    from graphir.models.context import Context
    from graphir.models.model import Model
    from graphir.models.tiny import cached_tiny_path

    model = Model.load(cached_tiny_path(arch))
    prompt = [1, 5, 9, 13, 2, 7, 11, 3]

    def decode(backends: tuple[str, ...]) -> tuple[np.ndarray, object]:
        ctx = Context(model, n_ctx=64, n_batch=16, n_ubatch=16, backends=backends)
        rows = [ctx.decode(Batch.simple(prompt, 0, all_outputs=True)).logits]
        tok = int(rows[0][-1].argmax())
        for i in range(3):  # greedy decode steps
            rows.append(ctx.decode(Batch.simple([tok], len(prompt) + i)).logits)
            tok = int(rows[-1][0].argmax())
        return np.concatenate(rows), ctx.last_graph()[1]

    ref, _ = decode(("cpu",))
    got, plan = decode(("opencl",))
    assert got.shape == ref.shape == (len(prompt) + 3, model.hp.n_vocab)
    assert nmse(got, ref) <= 2e-3
    # every op of the decode graph runs on opencl: one split, nothing copied from the cpu
    assert all(plan.schedule.node_backend[n] is get_backend("opencl") for n in plan.graph.nodes)
    assert plan.stats.n_splits == 1 and plan.stats.n_copies == 0
