"""Fusions of the cpu lowering (backends/cpu/fuse.py): gated_delta_net reading its state from
the state cache and writing its snapshots into it (no get_rows, no set_rows records) gives the
same bits as the unfused records, for every index pattern the kernel may meet: a model's (in
place, rollback planes, several sequences) and aliasing ones where it must fall back."""

from __future__ import annotations

import numpy as np
import pytest
from cpu_support import set_isa

import graphir as gr
from graphir.backends import availability
from graphir.models.memory.base import state_leaf

pytestmark = pytest.mark.skipif(not availability("cpu").ok, reason=f"native cpu: {availability('cpu').reason}")

N_CELLS = 8
# (S, H_k, H_v): small states (plain stores) and states of 256 KB (streamed: GDN_STREAM_BYTES in ssm.c)
SIZES = {"small": (16, 2, 4), "streamed": (64, 4, 16)}


def _inputs(rng, n_tok: int, n_seqs: int, S: int, H_K: int, H_V: int) -> dict[str, np.ndarray]:
    unit = lambda x: (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)  # noqa: E731
    return {
        "q": unit(rng.standard_normal((n_seqs, n_tok, H_K, S))),
        "k": unit(rng.standard_normal((n_seqs, n_tok, H_K, S))),
        "v": rng.standard_normal((n_seqs, n_tok, H_V, S)).astype(np.float32),
        "g": rng.uniform(-1, 0, (n_seqs, n_tok, H_V, 1)).astype(np.float32),
        "beta": rng.uniform(0, 1, (n_seqs, n_tok, H_V, 1)).astype(np.float32),
    }


def _run(a: dict, cache0: np.ndarray, src: list[int], dst: list[int], P: int, backend: str = "cpu",
         fuse: bool = True, snaps_output: bool = False, overlap_output: bool = False, aligned: bool = True
         ) -> tuple[np.ndarray, np.ndarray, int]:  # fmt: skip
    """The model's pattern: state = get_rows(cache, src) -> gated_delta_net -> set_rows(cache,
    snapshot rows, dst). -> (the outputs o, the cache after the run, fused records).
    aligned: cache rows 64-byte aligned as the models' (streamed stores) or not (plain ones)."""
    n_seqs, n_tok, H_V, S = a["v"].shape
    n_embd_s = S * S * H_V
    if aligned:
        cache = state_leaf(gr.F32, (n_embd_s, N_CELLS), "cache")
        cache.data[...] = cache0
        assert cache.data.ctypes.data % 64 == 0
    else:
        data = np.empty(cache0.size + 1, np.float32)[1:].reshape(cache0.shape)  # 4 bytes off
        data[...] = cache0
        cache = gr.new_weight(gr.F32, [n_embd_s, N_CELLS], data, "cache")
        cache.flags &= ~gr.Flag.PARAM  # state, not a weight
    ts = {n: gr.new_input(gr.F32, list(reversed(x.shape)), n) for n, x in a.items()}
    t_src = gr.new_input(gr.I32, [n_seqs], "src")
    t_dst = gr.new_input(gr.I32, [P * n_seqs], "dst")
    state = gr.reshape(gr.get_rows(cache, t_src), S, S, H_V, n_seqs)
    out = gr.gated_delta_net(ts["q"], ts["k"], ts["v"], ts["g"], ts["beta"], state, P)
    o = gr.cont(gr.view_2d(out, S * H_V, n_tok * n_seqs, out.nb[1], 0))
    snaps = gr.view_2d(out, n_embd_s, P * n_seqs, n_embd_s * 4, n_tok * n_seqs * out.nb[1])
    graph = gr.build_graph(o.set_output())
    if snaps_output:  # someone reads the snapshot rows: nothing may be fused away
        gr.build_forward_expand(graph, gr.cont(snaps).set_output())
    if overlap_output:  # a view of views: the last output row and the first snapshot row
        rows = gr.view_2d(out, S * H_V, n_tok * n_seqs + 1, out.nb[1], 0)
        last = gr.view_2d(rows, S * H_V, 2, out.nb[1], (n_tok * n_seqs - 1) * out.nb[1])
        gr.build_forward_expand(graph, gr.sum_rows(last).set_output())
    gr.build_forward_expand(graph, gr.set_rows(cache, snaps, t_dst))
    plan = gr.compile(graph, [backend], cache=False, reuse=fuse)  # no reuse: every tensor kept, no fusion
    for t, x in a.items():
        plan.set_input(ts[t], x)
    plan.set_input(t_src, np.array(src, np.int32))
    plan.set_input(t_dst, np.array(dst, np.int32))
    plan.run()
    fused = sum(len(c.program.state_io) for c in plan._calls if hasattr(c, "program"))
    return plan.get(o).copy(), plan.get(cache).copy(), fused


# (n_tok, n_seqs, P, src, dst): dst slot j of seq s at j * n_seqs + s
MODEL_INDICES = {
    "decode_in_place": (1, 2, 1, [3, 5], [3, 5]),
    "verify_after_rollback": (4, 1, 4, [2], [0, 1, 2, 3]),  # reads plane 2, writes planes 0..3
    "seqs_planes": (3, 2, 2, [1, 6], [0, 4, 1, 6]),
    "prompt_one_snapshot": (5, 1, 1, [7], [0]),
}
ALIASED = {  # the kernel must fall back to gather / run / scatter
    "dst_repeated": (2, 1, 2, [0], [3, 3]),  # the last snapshot written wins
    "seqs_swap_rows": (1, 2, 1, [1, 2], [2, 1]),  # seq 0 writes the row seq 1 reads
    "src_out_of_range": (1, 2, 1, [-1, 2], [4, 5]),  # a NaN state, as get_rows gives
    "dst_out_of_range": (2, 2, 1, [1, 2], [1, N_CELLS]),  # skipped, as set_rows does
}


@pytest.mark.parametrize("aligned", [True, False])
@pytest.mark.parametrize("isa", [0, 1, 7])
@pytest.mark.parametrize("n_threads", [1, 2, 3])
@pytest.mark.parametrize("case", sorted(MODEL_INDICES) + sorted(ALIASED))
@pytest.mark.parametrize("size", sorted(SIZES))
def test_state_io_fused_equals_unfused(native, case: str, n_threads: int, isa: int, aligned: bool, size: str) -> None:
    n_tok, n_seqs, P, src, dst = {**MODEL_INDICES, **ALIASED}[case]
    S, H_K, H_V = SIZES[size]
    rng = np.random.default_rng(len(case))
    a = _inputs(rng, n_tok, n_seqs, S, H_K, H_V)
    cache0 = rng.uniform(-0.5, 0.5, (N_CELLS, S * S * H_V)).astype(np.float32)
    native.n_threads = n_threads
    set_isa(isa)
    o, cache, fused = _run(a, cache0, src, dst, P, aligned=aligned)
    o_ref, cache_ref, unfused = _run(a, cache0, src, dst, P, fuse=False)
    assert (fused, unfused) == (1, 0)
    np.testing.assert_array_equal(o, o_ref)
    np.testing.assert_array_equal(cache, cache_ref)
    if case in MODEL_INDICES:  # and the reference agrees (it raises on out-of-range indices)
        o_np, cache_np, _ = _run(a, cache0, src, dst, P, backend="ref")
        np.testing.assert_allclose(o, o_np, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(cache, cache_np, rtol=1e-5, atol=1e-6)
        assert not np.array_equal(cache, cache0)  # the snapshots landed


@pytest.mark.parametrize("reader", ["snaps_output", "overlap_output"])
def test_state_io_not_fused_when_snapshots_are_read(native, reader: str) -> None:
    n_tok, n_seqs, P, src, dst = MODEL_INDICES["seqs_planes"]
    S, H_K, H_V = SIZES["small"]
    rng = np.random.default_rng(3)
    a = _inputs(rng, n_tok, n_seqs, S, H_K, H_V)
    cache0 = rng.uniform(-0.5, 0.5, (N_CELLS, S * S * H_V)).astype(np.float32)
    o, cache, fused = _run(a, cache0, src, dst, P, **{reader: True})
    o_ref, cache_ref, _ = _run(a, cache0, src, dst, P, fuse=False)
    assert fused == 0
    np.testing.assert_array_equal(cache, cache_ref)
    np.testing.assert_array_equal(o, o_ref)


def test_model_graphs_fuse_every_recurrent_layer(monkeypatch) -> None:
    """Decode, prompt and verify graphs of the shipped model: every gated_delta_net layer reads
    and writes the state cache itself, whose rows are aligned for streamed stores (a change to
    the model's graph that broke the pattern would silently cost a 0.8B verify ~15%)."""
    from graphir.backends.cpu import backend as cpu_backend
    from graphir.backends.cpu.fuse import find_state_io

    seen: list[tuple[int, int]] = []

    def spy(nodes, live_out):
        found = find_state_io(nodes, live_out)
        seen.append((len(found), sum(n.op is gr.Op.GATED_DELTA_NET for n in nodes)))
        assert all(io.cache.data.ctypes.data % 64 == 0 for io in found)  # rows streamed into
        return found

    monkeypatch.setattr(cpu_backend, "find_state_io", spy)
    llm = gr.load(n_ctx=256, spec="mtp", draft_max=3, spec_adaptive=False)
    llm.generate(llm.tokenize("def main():"), max_tokens=8, temperature=0)
    assert seen and all(found == layers > 0 for found, layers in seen if layers), seen
