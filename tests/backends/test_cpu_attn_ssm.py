"""Native cpu attention and state-space kernels (shaders/cpu/attn.c, ssm.c): flash_attn_ext,
ssm_conv and gated_delta_net against the reference at several thread counts and every ISA
level, at model-sized shapes and odd ones, and batch invariance bit for bit (a query row, a
token, a sequence gives the same bits alone as inside a batch, at any thread count)."""

from __future__ import annotations

import numpy as np
import pytest
from cpu_support import set_isa as _set_isa

import graphir as gr
from graphir.backends import availability
from graphir.parity import CASES, check_case
from graphir.parity.harness import examples

NATIVE = "cpu"  # the native C backend (alias "native")
pytestmark = pytest.mark.skipif(not availability(NATIVE).ok, reason=f"native cpu: {availability(NATIVE).reason}")

OPS = ["flash_attn_ext", "ssm_conv", "gated_delta_net"]
ISAS = [0, 1, 7]  # portable, AVX2, AVX-512 (capped to what the CPU has)


def _check(name: str, params: dict) -> None:
    r = check_case(CASES[name], params, NATIVE)
    assert r.passed, f"{name} {params}: {r.reason}"


# ---- against the reference ------------------------------------------------------------


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("n_threads", [1, 2, 3])
@pytest.mark.parametrize("name", OPS)
def test_parity_examples(native, name: str, n_threads: int, isa: int) -> None:
    native.n_threads = n_threads
    _set_isa(isa)
    for p in examples(CASES[name]):
        _check(name, p)


def _attn(**kw) -> dict:
    p = {"seed": 1, "D": 128, "Dv": 128, "n_q": 1, "n_kv": 300, "H_kv": 2, "gqa": 4, "n_seq": 1,
         "kv_type": gr.F16, "mask": gr.F16, "mask_pad": 0, "mask_seqs": False, "scale": 128**-0.5,
         "max_bias": 0.0, "softcap": 0.0, "transposed_v": False,
         "layout_q": {"kind": "cont"}, "layout_k": {"kind": "cont"}, "layout_v": {"kind": "cont"}}  # fmt: skip
    p.update(kw)
    return p


TRANSPOSED = {"kind": "perm", "axes": (1, 0, 2, 3)}  # dim 0 not innermost: nb[0] != element size

ATTN = {
    "decode_gqa_f16": _attn(),
    "prefill_f32": _attn(n_q=19, kv_type=gr.F32, mask=gr.F32, n_kv=77),
    "odd_head_dims": _attn(D=72, Dv=40, n_q=3, n_kv=45, gqa=3, H_kv=1),
    "tail_dims": _attn(D=13, Dv=7, n_q=2, n_kv=9, gqa=2),
    "alibi_softcap": _attn(n_q=4, n_kv=64, max_bias=8.0, softcap=0.3, D=64, Dv=64),
    "no_mask_seqs": _attn(mask=None, n_seq=2, n_q=3, n_kv=50, D=32, Dv=32),
    "mask_per_seq": _attn(n_seq=2, mask_seqs=True, mask_pad=2, n_q=2, n_kv=33, D=48, Dv=48, kv_type=gr.F32),
    "strided_rows": _attn(n_q=3, n_kv=21, D=24, Dv=24, layout_q=TRANSPOSED, layout_k=TRANSPOSED, layout_v=TRANSPOSED),
    "strided_f32": _attn(n_q=2, n_kv=17, D=20, Dv=20, kv_type=gr.F32, layout_k=TRANSPOSED, layout_v=TRANSPOSED),
}


def _gdn(**kw) -> dict:
    p = {"seed": 2, "S": 128, "H_k": 2, "r": 2, "n_tokens": 4, "n_seqs": 1, "g_per_channel": False,
         "snapshots": 4, "layout_q": {"kind": "cont"}, "layout_k": {"kind": "cont"}, "layout_v": {"kind": "cont"},
         "layout_state": {"kind": "cont"}}  # fmt: skip
    p.update(kw)
    return p


GDN = {
    "decode_128": _gdn(n_tokens=1, snapshots=1),
    "verify_128_per_channel": _gdn(g_per_channel=True, n_seqs=2),
    "odd_state": _gdn(S=37, n_tokens=5, snapshots=6, g_per_channel=True, r=3, H_k=1),
    "strided": _gdn(S=24, n_tokens=3, snapshots=2, layout_q=TRANSPOSED, layout_k=TRANSPOSED, layout_v=TRANSPOSED),
}


def _conv(**kw) -> dict:
    p = {"seed": 3, "d_conv": 4, "channels": 96, "n_tokens": 37, "n_seqs": 2, "weight": True,
         "layout": {"kind": "cont"}}  # fmt: skip
    p.update(kw)
    return p


CONV = {
    "prefill": _conv(),
    "strided": _conv(seed=4, d_conv=3, channels=17, n_tokens=5, weight=False, layout=TRANSPOSED),
}


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("n_threads", [1, 2, 5])
@pytest.mark.parametrize(
    ("name", "params"),
    [("flash_attn_ext", p) for p in ATTN.values()]
    + [("gated_delta_net", p) for p in GDN.values()]
    + [("ssm_conv", p) for p in CONV.values()],
    ids=[f"attn-{k}" for k in ATTN] + [f"gdn-{k}" for k in GDN] + [f"conv-{k}" for k in CONV],
)
def test_shapes(native, name: str, params: dict, n_threads: int, isa: int) -> None:
    native.n_threads = n_threads
    _set_isa(isa)
    _check(name, params)


# ---- direct runs (bit-for-bit comparisons) ---------------------------------------------


def _run(out: gr.Tensor, inputs: dict[gr.Tensor, np.ndarray], backend: str = NATIVE) -> np.ndarray:
    plan = gr.compile(gr.build_graph(out.set_output()), [backend], cache=False)
    for t, a in inputs.items():
        plan.set_input(t, a)
    plan.run()
    return plan.get(out).copy()


def _fa(q: np.ndarray, k: np.ndarray, v: np.ndarray, mask: np.ndarray | None, backend: str = NATIVE) -> np.ndarray:
    """flash_attn_ext of numpy arrays (numpy order: q (n_seq, H, n_q, D), k/v (n_seq_kv, H_kv,
    n_kv, D) F16 or F32, mask (m3, m2, >=n_q, n_kv) F16) -> (n_seq, n_q, H, Dv)."""
    kv_type = gr.F16 if k.dtype == np.float16 else gr.F32
    tq = gr.new_input(gr.F32, list(reversed(q.shape)), "q")
    tk = gr.new_input(kv_type, list(reversed(k.shape)), "k")
    tv = gr.new_input(kv_type, list(reversed(v.shape)), "v")
    tm = None if mask is None else gr.new_input(gr.F16, list(reversed(mask.shape)), "mask")
    out = gr.flash_attn_ext(tq, tk, tv, tm, q.shape[-1] ** -0.5)
    inputs = {tq: q, tk: k, tv: v} | ({} if tm is None else {tm: mask})
    return _run(out, inputs, backend)


def _causal(n_q: int, n_kv: int) -> np.ndarray:
    """[1, 1, n_q, n_kv] F16: query i (the last n_q positions) sees keys up to its own position."""
    m = np.where(np.arange(n_kv)[None, :] <= n_kv - n_q + np.arange(n_q)[:, None], 0.0, -np.inf)
    return m.astype(np.float16)[None, None]


@pytest.mark.parametrize("kv_type", [np.float16, np.float32])
@pytest.mark.parametrize(("n_q", "n_kv"), [(5, 70), (40, 40)])  # verify batch; prefill from empty (skipped blocks)
def test_attention_rows_are_batch_invariant(native, kv_type, n_q: int, n_kv: int) -> None:
    """Each query row of a prefill/verify batch equals the same row computed alone, bit for bit,
    at every thread count and ISA level."""
    rng = np.random.default_rng(5)
    D, H, H_kv = 64, 6, 2
    q = rng.standard_normal((1, H, n_q, D)).astype(np.float32)
    k = rng.standard_normal((1, H_kv, n_kv, D)).astype(kv_type)
    v = rng.standard_normal((1, H_kv, n_kv, D)).astype(kv_type)
    mask = _causal(n_q, n_kv)
    rows = range(n_q) if n_q <= 5 else (0, 7, 8, 17, n_q - 1)
    for isa in ISAS:
        _set_isa(isa)
        native.n_threads = 2
        batch = _fa(q, k, v, mask)  # [1, n_q, H, D]
        for n_threads in (1, 3):
            native.n_threads = n_threads
            assert np.array_equal(_fa(q, k, v, mask), batch), (isa, n_threads)
        for i in rows:
            alone = _fa(q[:, :, i : i + 1], k, v, mask[:, :, i : i + 1])
            assert np.array_equal(alone[:, 0], batch[:, i]), (isa, i)
    np.testing.assert_allclose(batch, _fa(q, k, v, mask, "ref"), rtol=1e-4, atol=1e-5)


def test_attention_fully_masked_row_is_zero(native) -> None:
    """A row whose every key is masked sums nothing: zeros (ggml's S == 0 rule), as the reference."""
    rng = np.random.default_rng(6)
    D, n_kv = 16, 9
    q = rng.standard_normal((1, 2, 2, D)).astype(np.float32)
    k = rng.standard_normal((1, 1, n_kv, D)).astype(np.float16)
    v = rng.standard_normal((1, 1, n_kv, D)).astype(np.float16)
    mask = np.zeros((1, 1, 2, n_kv), np.float16)
    mask[..., 0, :] = -np.inf
    got = _fa(q, k, v, mask)
    assert np.array_equal(got[:, 0], np.zeros_like(got[:, 0]))
    np.testing.assert_allclose(got, _fa(q, k, v, mask, "ref"), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("isa", ISAS)
def test_attention_never_reads_masked_cells(native, isa: int) -> None:
    """K/V cells masked for every query (unwritten cache cells) may hold anything, NaN included:
    as in ggml they are skipped, never read into the result."""
    _set_isa(isa)
    rng = np.random.default_rng(9)
    D, n_q, n_kv = 32, 3, 50
    q = rng.standard_normal((1, 4, n_q, D)).astype(np.float32)
    k = rng.standard_normal((1, 2, n_kv, D)).astype(np.float16)
    v = rng.standard_normal((1, 2, n_kv, D)).astype(np.float16)
    mask = _causal(n_q, n_kv - 20)
    mask = np.concatenate([mask, np.full((1, 1, n_q, 20), -np.inf, np.float16)], axis=-1)
    mask[..., 5] = -np.inf  # one cell in the middle, too
    want = _fa(q, k, v, mask, "ref")
    k[:, :, -20:], v[:, :, -20:], k[:, :, 5], v[:, :, 5] = np.nan, np.nan, np.nan, np.nan
    got = _fa(q, k, v, mask)
    assert np.isfinite(got).all()
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


def test_attention_kv_shared_by_sequences(native) -> None:
    """q seq s reads kv seq s / (n_seq / n_seq_kv); mask broadcast over heads, GQA heads grouped."""
    rng = np.random.default_rng(10)
    D, n_q, n_kv = 40, 2, 33
    q = rng.standard_normal((4, 6, n_q, D)).astype(np.float32)
    k = rng.standard_normal((2, 3, n_kv, D)).astype(np.float16)
    v = rng.standard_normal((2, 3, n_kv, D)).astype(np.float16)
    mask = np.where(rng.random((2, 1, n_q + 1, n_kv)) < 0.3, -np.inf, 0.0).astype(np.float16)
    mask[..., 0] = 0
    for n_threads in (1, 2, 5):
        native.n_threads = n_threads
        np.testing.assert_allclose(_fa(q, k, v, mask), _fa(q, k, v, mask, "ref"), rtol=1e-4, atol=1e-5)


def _gdn_run(S: int, H_k: int, H_v: int, n_tok: int, n_seqs: int, snapshots: int, a: dict) -> np.ndarray:
    ts = {n: gr.new_input(gr.F32, list(reversed(x.shape)), n) for n, x in a.items()}
    out = gr.gated_delta_net(ts["q"], ts["k"], ts["v"], ts["g"], ts["beta"], ts["state"], snapshots)
    return _run(out, {ts[n]: x for n, x in a.items()})[0, 0]  # [rows, S * H_v]


def _gdn_inputs(rng, S: int, H_k: int, H_v: int, n_tok: int, n_seqs: int, per_channel: bool) -> dict:
    unit = lambda x: (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)  # noqa: E731
    return {
        "q": unit(rng.standard_normal((n_seqs, n_tok, H_k, S))),
        "k": unit(rng.standard_normal((n_seqs, n_tok, H_k, S))),
        "v": rng.standard_normal((n_seqs, n_tok, H_v, S)).astype(np.float32),
        "g": rng.uniform(-1, 0, (n_seqs, n_tok, H_v, S if per_channel else 1)).astype(np.float32),
        "beta": rng.uniform(0, 1, (n_seqs, n_tok, H_v, 1)).astype(np.float32),
        "state": rng.uniform(-0.5, 0.5, (n_seqs, H_v, S, S)).astype(np.float32),
    }


@pytest.mark.parametrize("per_channel", [False, True])
def test_delta_net_tokens_and_seqs_are_batch_invariant(native, per_channel: bool) -> None:
    """A batch of tokens equals the tokens fed one by one (each starting from the previous
    final state) and a sequence of a batch equals the sequence alone, bit for bit; every
    snapshot slot equals the state after its token."""
    rng = np.random.default_rng(7)
    S, H_k, H_v, n_tok, n_seqs = 32, 2, 4, 4, 2
    a = _gdn_inputs(rng, S, H_k, H_v, n_tok, n_seqs, per_channel)
    rows_o, rows_s = n_tok * n_seqs, S * n_seqs
    for isa in ISAS:
        _set_isa(isa)
        for n_threads in (1, 2, 3):
            native.n_threads = n_threads
            batch = _gdn_run(S, H_k, H_v, n_tok, n_seqs, n_tok, a)
            o = batch[:rows_o].reshape(n_seqs, n_tok, -1)
            snaps = [batch[rows_o + s * rows_s : rows_o + (s + 1) * rows_s] for s in range(n_tok)]
            for s in range(n_seqs):  # one sequence alone
                one = {n: x[s : s + 1] for n, x in a.items()}
                alone = _gdn_run(S, H_k, H_v, n_tok, 1, 1, one)
                assert np.array_equal(alone[:n_tok], o[s])
            state = a["state"]
            for t in range(n_tok):  # token by token
                step = {n: (x[:, t : t + 1] if n != "state" else state) for n, x in a.items()}
                got = _gdn_run(S, H_k, H_v, 1, n_seqs, 1, step)
                assert np.array_equal(got[:n_seqs], o[:, t]), (isa, n_threads, t)
                state = got[n_seqs:].reshape(n_seqs, H_v, S, S)
                assert np.array_equal(got[n_seqs:], snaps[n_tok - 1 - t]), (isa, n_threads, t)


def _conv_run(sxv: np.ndarray, cv: np.ndarray) -> np.ndarray:
    sx = gr.new_input(gr.F32, list(reversed(sxv.shape)), "sx")
    c = gr.new_input(gr.F32, list(reversed(cv.shape)), "c")
    return _run(gr.ssm_conv(sx, c), {sx: sxv, c: cv})[0]  # [n_seqs, n_tokens, channels]


@pytest.mark.parametrize("n_tok", [4, 5, 9, 13])  # the 8- and 4-token steps and the single tail
def test_ssm_conv_tokens_are_batch_invariant(native, n_tok: int) -> None:
    """Each token of a prefill equals the same window convolved alone, bit for bit."""
    rng = np.random.default_rng(8)
    d_conv, ch, n_seqs = 4, 40, 2
    sxv = rng.standard_normal((n_seqs, ch, d_conv - 1 + n_tok)).astype(np.float32)
    cv = rng.standard_normal((ch, d_conv)).astype(np.float32)
    for n_threads in (1, 2, 3):
        native.n_threads = n_threads
        batch = _conv_run(sxv, cv)
        for t in range(n_tok):
            assert np.array_equal(_conv_run(sxv[..., t : t + d_conv], cv)[:, 0], batch[:, t])
