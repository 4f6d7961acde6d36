"""The cpu reference ssm_conv and gated_delta_net against independent per-token loops (float64):
scalar and per-channel decay, tiled q/k heads (H_v = 2 H_k), several sequences, snapshot slot
order, unwritten slots left untouched, and chaining batches through the final state."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis_profiles import examples

import graphir as gr

# ---- formulas (float64, explicit loops) -------------------------------------------------


def conv_formula(sx: np.ndarray, c: np.ndarray) -> np.ndarray:
    """sx (n_seqs, channels, d_conv-1+n_tokens), c (channels, d_conv) -> (n_seqs, n_tokens, channels)."""
    n_seqs, channels, width = sx.shape
    d_conv = c.shape[1]
    out = np.zeros((n_seqs, width - d_conv + 1, channels))
    for s in range(n_seqs):
        for t in range(width - d_conv + 1):
            for ch in range(channels):
                out[s, t, ch] = sum(float(sx[s, ch, t + k]) * float(c[ch, k]) for k in range(d_conv))
    return out


def gdn_formula(q, k, v, g, beta, state, decay_along_j: bool = False):
    """Numpy-order inputs: q/k (n_seqs, n_tokens, H_k, S), v (n_seqs, n_tokens, H_v, S), g (.., 1|S),
    beta (.., 1), state (n_seqs, H_v, S, S) with state[s, h, j, i] = S[i][j].
    Returns o (n_seqs, n_tokens, H_v, S) and the states after each token (n_tokens, n_seqs, H_v, S, S)
    in the same [j, i] storage order."""
    n_seqs, n_tokens, H_v, S_v = v.shape
    H_k = k.shape[2]
    o = np.zeros((n_seqs, n_tokens, H_v, S_v))
    after = np.zeros((n_tokens, n_seqs, H_v, S_v, S_v))
    for s in range(n_seqs):
        for h in range(H_v):
            Smat = state[s, h].astype(np.float64).T  # Smat[i, j], i the k index
            for t in range(n_tokens):
                qv, kv = q[s, t, h % H_k].astype(np.float64), k[s, t, h % H_k].astype(np.float64)
                decay = np.exp(g[s, t, h].astype(np.float64))  # [1] or [S_v], along i
                Smat = decay[None, :] * Smat if decay_along_j else decay[:, None] * Smat
                delta = beta[s, t, h, 0] * (v[s, t, h] - Smat.T @ kv)
                Smat = Smat + np.outer(kv, delta)
                o[s, t, h] = Smat.T @ qv / np.sqrt(S_v)
                after[t, s, h] = Smat.T
    return o, after


# ---- graphs ----------------------------------------------------------------------------


def gdn_data(rng, S_v, H_k, H_v, n_tokens, n_seqs, per_channel):
    k = rng.standard_normal((n_seqs, n_tokens, H_k, S_v))
    k /= np.linalg.norm(k, axis=-1, keepdims=True)  # l2-normed as in Qwen3.5
    return dict(
        q=rng.standard_normal((n_seqs, n_tokens, H_k, S_v)).astype(np.float32),
        k=k.astype(np.float32),
        v=rng.standard_normal((n_seqs, n_tokens, H_v, S_v)).astype(np.float32),
        g=-rng.uniform(0.0, 1.5, (n_seqs, n_tokens, H_v, S_v if per_channel else 1)).astype(np.float32),
        beta=rng.uniform(0.1, 1.0, (n_seqs, n_tokens, H_v, 1)).astype(np.float32),
        state=(0.5 * rng.standard_normal((n_seqs, H_v, S_v, S_v))).astype(np.float32),
    )


def gdn_graph(d: dict, snapshots: int):
    t = {name: gr.new_input(gr.F32, list(arr.shape[::-1]), name) for name, arr in d.items()}
    return t, gr.gated_delta_net(t["q"], t["k"], t["v"], t["g"], t["beta"], t["state"], snapshots)


def run_gdn(d: dict, snapshots: int = 1, sentinel: float | None = None) -> np.ndarray:
    """Run the op; returns the raw output as (rows, S_v * H_v). With `sentinel`, the output's
    bytes are filled with it before the run (to see what the kernel leaves alone)."""
    t, out = gdn_graph(d, snapshots)
    plan = gr.compile(gr.build_graph(out), ["ref"], cache=False)
    for name, arr in d.items():
        plan.set_input(t[name], arr)
    if sentinel is not None:
        place = plan.place(out)
        fill = np.full(out.nelements, sentinel, np.float32)
        plan.backend_of(out).write_bytes(place.buffer, place.offset, fill)
    plan.run()
    return plan.get(out)[0, 0]


def split_output(raw: np.ndarray, S_v, H_v, n_tokens, n_seqs, snapshots):
    """(o as (n_seqs, n_tokens, H_v, S_v), slots as (snapshots, n_seqs, H_v, S_v, S_v))."""
    rows_o = n_tokens * n_seqs
    o = raw[:rows_o].reshape(n_seqs, n_tokens, H_v, S_v)
    slots = raw[rows_o:].reshape(snapshots, n_seqs, H_v, S_v, S_v)
    return o, slots


# ---- tests -----------------------------------------------------------------------------


@settings(max_examples=examples(25), deadline=None)
@given(
    d_conv=st.integers(1, 4), channels=st.integers(1, 5), n_tokens=st.integers(1, 4),
    n_seqs=st.integers(1, 3), strided=st.booleans(), seed=st.integers(0, 2**16),
)  # fmt: skip
def test_ssm_conv_matches_formula(d_conv, channels, n_tokens, n_seqs, strided, seed):
    rng = np.random.default_rng(seed)
    width = d_conv - 1 + n_tokens
    sx_np = rng.standard_normal((n_seqs, channels, width)).astype(np.float32)
    c_np = rng.standard_normal((channels, d_conv)).astype(np.float32)
    if strided:  # sx a view of a wider buffer (rows padded by 2 floats, one row of offset)
        big = gr.new_input(gr.F32, [width + 2, channels, n_seqs + 1], "sx")
        sx = gr.view_3d(big, width, channels, n_seqs, big.nb[1], big.nb[2], big.nb[2])
        host = np.zeros((n_seqs + 1, channels, width + 2), np.float32)
        host[1:, :, :width] = sx_np
    else:
        big = sx = gr.new_input(gr.F32, [width, channels, n_seqs], "sx")
        host = sx_np
    c = gr.new_input(gr.F32, [d_conv, channels], "c")
    out = gr.ssm_conv(sx, c)
    plan = gr.compile(gr.build_graph(out), ["ref"], cache=False)
    plan.set_input(big, host)
    plan.set_input(c, c_np)
    plan.run()
    np.testing.assert_allclose(plan.get(out)[0], conv_formula(sx_np, c_np), rtol=1e-5, atol=1e-5)


@st.composite
def gdn_cases(draw):
    n_tokens = draw(st.integers(1, 4))
    return dict(
        S_v=draw(st.sampled_from([2, 4, 8])), H_k=draw(st.sampled_from([1, 2])),
        ratio=draw(st.sampled_from([1, 2])), n_tokens=n_tokens, n_seqs=draw(st.integers(1, 2)),
        per_channel=draw(st.booleans()),
        snapshots=draw(st.sampled_from([1, 2, n_tokens, n_tokens + 2])),
        seed=draw(st.integers(0, 2**16)),
    )  # fmt: skip


@settings(max_examples=examples(40), deadline=None)
@given(gdn_cases())
def test_gated_delta_net_matches_formula(c):
    S_v, H_k, n_tokens, n_seqs, K = c["S_v"], c["H_k"], c["n_tokens"], c["n_seqs"], c["snapshots"]
    H_v = H_k * c["ratio"]
    d = gdn_data(np.random.default_rng(c["seed"]), S_v, H_k, H_v, n_tokens, n_seqs, c["per_channel"])
    sentinel = 1234.5
    raw = run_gdn(d, K, sentinel=sentinel)
    o, slots = split_output(raw, S_v, H_v, n_tokens, n_seqs, K)
    o_ref, after = gdn_formula(**d)
    np.testing.assert_allclose(o, o_ref, rtol=1e-4, atol=1e-5)
    for s in range(K):
        if s <= n_tokens - 1:  # slot s = the state s tokens before the end
            np.testing.assert_allclose(slots[s], after[n_tokens - 1 - s], rtol=1e-4, atol=1e-5)
        else:  # never written: the sentinel survives
            assert np.all(slots[s] == sentinel), f"slot {s} of {K} was written with n_tokens={n_tokens}"


def test_tiled_heads_not_grouped():
    """With H_v = 2 H_k, v head j reads q/k head j % H_k: heads 0 and 2 share q/k head 0."""
    d = gdn_data(np.random.default_rng(7), 4, 2, 4, 3, 1, per_channel=False)
    o, _ = split_output(run_gdn(d), 4, 4, 3, 1, 1)
    np.testing.assert_allclose(o, gdn_formula(**d)[0], rtol=1e-4, atol=1e-5)
    grouped = {**d, "q": np.repeat(d["q"], 2, axis=2), "k": np.repeat(d["k"], 2, axis=2)}  # j // 2
    assert not np.allclose(o, gdn_formula(**grouped)[0], atol=1e-3)


def test_per_channel_decay_runs_along_the_k_index():
    """A per-channel g decays row i (the k index) of S; decaying column j instead differs."""
    d = gdn_data(np.random.default_rng(8), 4, 1, 1, 2, 1, per_channel=True)
    d["g"][...] = np.array([0.0, -3.0, 0.0, -3.0], np.float32)
    o, slots = split_output(run_gdn(d), 4, 1, 2, 1, 1)
    o_ref, after = gdn_formula(**d)
    np.testing.assert_allclose(o, o_ref, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(slots[0], after[-1], rtol=1e-4, atol=1e-5)
    o_j, _ = gdn_formula(**d, decay_along_j=True)
    assert not np.allclose(o, o_j, atol=1e-3)


@pytest.mark.parametrize("per_channel", [False, True])
def test_chained_batches_and_snapshots_equal_shorter_runs(per_channel):
    """Running tokens [0, n) equals running [0, m) then [m, n) from slot 0; slot s of the full run
    equals the final state of running only the first n - s tokens. Bit for bit (batch invariance)."""
    S_v, H_k, H_v, n, m, n_seqs = 4, 1, 2, 5, 2, 2
    d = gdn_data(np.random.default_rng(9), S_v, H_k, H_v, n, n_seqs, per_channel)
    first = lambda r: {name: (a if name == "state" else a[:, :r]) for name, a in d.items()}
    o_all, slots = split_output(run_gdn(d, snapshots=n), S_v, H_v, n, n_seqs, n)

    o_head, st_head = split_output(run_gdn(first(m), 1), S_v, H_v, m, n_seqs, 1)
    rest = {name: (a if name == "state" else a[:, m:]) for name, a in d.items()}
    rest["state"] = np.ascontiguousarray(st_head[0])
    o_tail, st_tail = split_output(run_gdn(rest, 1), S_v, H_v, n - m, n_seqs, 1)
    np.testing.assert_array_equal(np.concatenate([o_head, o_tail], axis=1), o_all)
    np.testing.assert_array_equal(st_tail[0], slots[0])

    for s in range(n):
        _, st_s = split_output(run_gdn(first(n - s), 1), S_v, H_v, n - s, n_seqs, 1)
        np.testing.assert_array_equal(st_s[0], slots[s])
