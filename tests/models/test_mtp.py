"""The MTP head (models/mtp.py) on the tiny random Qwen3.5 models (dense and MoE, F32 weights).

Oracle: an independent float64 numpy forward of the head written here from the GGUF tensors:
eh_proj(concat(enorm(embed(x_p)), hnorm(h_{p-1}))), one gated-attention block (IMRoPE with text
positions: all sections turn by p), the dense or MoE FFN, shared_head_norm and the LM head.
Tolerance as in test_context.py: max abs diff <= 1e-4 x max(1, max |reference|).
"""

from __future__ import annotations

import numpy as np
import pytest

from graphir.models import tiny
from graphir.models.batch import Batch
from graphir.models.context import Context
from graphir.models.gguf_write import random_qwen35, write_qwen35
from graphir.models.hparams import Qwen35HParams
from graphir.models.model import Model
from graphir.models.mtp import MtpContext, NoMtpHeadError

TOKENS = [5, 17, 230, 42, 99, 7, 281, 3, 64, 150, 11, 400]


def sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def silu(x):
    return x * sigmoid(x)


class RefHead:
    """The MTP head in float64 numpy, one sequence, one shot (numpy matrices are (n_out, n_in))."""

    def __init__(self, model: Model) -> None:
        self.hp = hp = model.hp
        self.il = hp.n_layer_trunk
        self.T = {}
        for name, info in model.weights.file.tensors.items():
            self.T[name] = np.asarray(info.data).view(np.float32).reshape(tuple(reversed(info.ne))).astype(np.float64)

    def w(self, name: str) -> np.ndarray:
        return self.T[f"blk.{self.il}.{name}"]

    def rms(self, x, w):
        return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + self.hp.rms_eps) * w

    def rope(self, x, p):
        n_rot = self.hp.n_rot
        half = n_rot // 2
        theta = p * self.hp.rope_freq_base ** (-2.0 * np.arange(half) / n_rot)
        out = x.copy()
        x0, x1 = x[..., :half], x[..., half:n_rot]
        out[..., :half] = x0 * np.cos(theta) - x1 * np.sin(theta)
        out[..., half:n_rot] = x0 * np.sin(theta) + x1 * np.cos(theta)
        return out

    def ffn(self, x, gate, up, down):
        return self.w(f"{down}.weight") @ (silu(self.w(f"{gate}.weight") @ x) * (self.w(f"{up}.weight") @ x))

    def moe(self, x):
        hp = self.hp
        logits = self.w("ffn_gate_inp.weight") @ x
        p = np.exp(logits - logits.max())
        p /= p.sum()
        sel = sorted(range(hp.n_expert), key=lambda e: (-p[e], e))[: hp.n_expert_used]
        out = np.zeros(hp.n_embd)
        for e in sel:
            g = self.w("ffn_gate_exps.weight")[e] @ x
            u = self.w("ffn_up_exps.weight")[e] @ x
            out += p[e] / sum(p[s] for s in sel) * (self.w("ffn_down_exps.weight")[e] @ (silu(g) * u))
        return out + sigmoid(self.w("ffn_gate_inp_shexp.weight") @ x) * self.ffn(
            x, "ffn_gate_shexp", "ffn_up_shexp", "ffn_down_shexp"
        )

    def forward(self, tokens, h_prev, pos):
        """(logits (n, V), hidden (n, E)) of rows x_p = tokens[i], h_{p-1} = h_prev[i] at pos[i]."""
        hp, T = self.hp, self.T
        hd, H, H_kv = hp.head_dim, hp.n_head, hp.n_head_kv
        Ks, Vs, logits, hidden = [], [], [], []
        for tok, h, p in zip(tokens, np.asarray(h_prev, np.float64), pos):
            e = self.rms(T.get(f"blk.{self.il}.nextn.embed_tokens.weight", T["token_embd.weight"])[tok],
                         self.w("nextn.enorm.weight"))  # fmt: skip
            hn = self.rms(h, self.w("nextn.hnorm.weight"))
            x = self.w("nextn.eh_proj.weight") @ np.concatenate([e, hn])
            cur = self.rms(x, self.w("attn_norm.weight"))
            qg = (self.w("attn_q.weight") @ cur).reshape(H, 2 * hd)
            q, gate = qg[:, :hd], qg[:, hd:].reshape(-1)
            k = (self.w("attn_k.weight") @ cur).reshape(H_kv, hd)
            v = (self.w("attn_v.weight") @ cur).reshape(H_kv, hd)
            q = self.rope(self.rms(q, self.w("attn_q_norm.weight")), p)
            Ks.append(self.rope(self.rms(k, self.w("attn_k_norm.weight")), p))
            Vs.append(v)
            out = np.zeros((H, hd))
            for hh in range(H):
                kv = hh // (H // H_kv)
                s = np.array([q[hh] @ kk[kv] for kk in Ks]) / np.sqrt(hd)
                a = np.exp(s - s.max())
                a /= a.sum()
                out[hh] = sum(a[i] * Vs[i][kv] for i in range(len(a)))
            x = x + self.w("attn_output.weight") @ (out.reshape(-1) * sigmoid(gate))
            cur = self.rms(x, self.w("post_attention_norm.weight"))
            x = x + (self.moe(cur) if hp.n_expert else self.ffn(cur, "ffn_gate", "ffn_up", "ffn_down"))
            norm = T.get(f"blk.{self.il}.nextn.shared_head_norm.weight", T["output_norm.weight"])
            hid = self.rms(x, norm)
            head = T.get(f"blk.{self.il}.nextn.shared_head_head.weight", T.get("output.weight", T["token_embd.weight"]))
            hidden.append(hid)
            logits.append(head @ hid)
        return np.array(logits), np.array(hidden)


def assert_close(got, ref, what=""):
    got, ref = np.asarray(got, np.float64), np.asarray(ref, np.float64)
    assert got.shape == ref.shape, (what, got.shape, ref.shape)
    err, scale = float(np.abs(got - ref).max(initial=0.0)), max(1.0, float(np.abs(ref).max(initial=0.0)))
    assert err <= 1e-4 * scale, f"{what}: max abs diff {err:.3g} (scale {scale:.3g})"


@pytest.fixture(scope="module", params=["qwen35", "qwen35moe"])
def model(request) -> Model:
    return Model.load(tiny.cached_tiny_path(request.param))


def trunk_h(model: Model, tokens: list[int]) -> np.ndarray:
    ctx = Context(model, n_ctx=64, n_batch=64, n_ubatch=64, type_k="f32", type_v="f32", embeddings_nextn=True)
    return ctx.decode(Batch.simple(tokens, all_outputs=True)).h_nextn


def test_mtp_logits_match_numpy_forward(model) -> None:
    h = trunk_h(model, TOKENS)
    n = len(TOKENS) - 1  # rows p = 1..n: x_p with h_{p-1}
    pos = np.arange(1, n + 1)
    ref_logits, ref_hidden = RefHead(model).forward(TOKENS[1:], h[:n], pos)
    mtp = MtpContext(model, n_ctx=64, n_batch=64, n_ubatch=64, type_k="f32", type_v="f32")
    out = mtp.decode(Batch(TOKENS[1:], embd=h[:n], pos=pos, output=np.ones(n, bool)))
    assert_close(out.logits, ref_logits, "logits")
    assert_close(out.hidden, ref_hidden, "hidden")
    # incrementally (several ubatches, plan reuse) the same
    mtp2 = MtpContext(model, n_ctx=64, n_batch=8, n_ubatch=4, type_k="f32", type_v="f32")
    rows = []
    for i in range(0, n, 3):
        j = min(n, i + 3)
        rows.append(mtp2.decode(Batch(TOKENS[1 + i : 1 + j], embd=h[i:j], pos=pos[i:j], output=np.ones(j - i, bool))))
    assert_close(np.concatenate([r.logits for r in rows]), ref_logits, "incremental logits")
    assert mtp2.stats.plan_hits > 0
    # seq_rm then re-decode gives the same rows
    assert mtp2.seq_rm(0, 6, -1) and mtp2.seq_pos_max(0) == 5
    again = mtp2.decode(Batch(TOKENS[6 : n + 1], embd=h[5:n], pos=pos[5:], output=np.ones(n - 5, bool)))
    assert_close(again.logits, ref_logits[5:], "after seq_rm")


def test_mtp_shares_weight_leafs_and_maps_only_the_head(model) -> None:
    mtp = MtpContext(model, n_ctx=32, n_ubatch=8)
    il = model.hp.n_layer_trunk
    assert list(mtp.memory.components[0].k_l) == [il] and mtp.target is model
    res, _ = mtp.last_graph()
    weights = [t for t in res.graph.leafs if t.name in model.weights.file.tensors]
    assert any(t is model.weights.token_embd for t in weights)  # the trunk's embedding leaf, not a copy
    assert all(model.weights.get(t.name) is t for t in weights)
    assert all(t.name.startswith(f"blk.{il}.") or not t.name.startswith("blk.") for t in weights)
    with pytest.raises(TypeError, match="both tokens"):
        mtp.decode(Batch([1, 2], pos=[1, 2]))


def test_no_nextn_block_is_a_clear_error(tmp_path) -> None:
    hp: Qwen35HParams = tiny.tiny_hparams("qwen35")
    import dataclasses

    hp = dataclasses.replace(hp, block_count=hp.n_layer_trunk, nextn_predict_layers=0)
    path = tmp_path / "no_mtp.gguf"
    write_qwen35(path, hp, random_qwen35(hp, 0), tiny.tiny_tokenizer_fields())
    with pytest.raises(NoMtpHeadError, match="no MTP head"):
        MtpContext(Model.load(path), n_ctx=32)


def llama_cpp_mtp_outputs(path: str, tokens: list[int], h_prev: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
    """llama.cpp's MTP context (ctx_type MTP, model loaded with load_mtp) on rows x_p = tokens[i],
    h_{p-1} = h_prev[i] at positions 1..n: one batch carrying tokens AND embd, as the MTP draft
    loop builds it. F32 KV cache. Returns the logits and, where the binding exposes it
    (llama_cpp_ext embeddings_nextn), the head's hidden state for chaining."""
    L = pytest.importorskip("llama_cpp", reason="llama_cpp is not installed")
    if not hasattr(L, "LLAMA_CONTEXT_TYPE_MTP") or not hasattr(L.llama_model_default_params(), "load_mtp"):
        pytest.skip("this llama-cpp-python has no MTP context (ctx_type MTP / load_mtp)")
    import ctypes

    n, n_embd = len(tokens), h_prev.shape[1]
    L.llama_backend_init()
    mp = L.llama_model_default_params()
    mp.load_mtp = True
    lm = L.llama_model_load_from_file(path.encode(), mp)
    assert lm, "llama.cpp did not load the model with its MTP block"
    cp = L.llama_context_default_params()
    cp.n_ctx, cp.n_batch, cp.n_ubatch, cp.type_k, cp.type_v = 128, 64, 64, 0, 0  # 0: F32 KV
    cp.n_threads = cp.n_threads_batch = 2
    cp.ctx_type = L.LLAMA_CONTEXT_TYPE_MTP
    lctx = L.llama_init_from_model(lm, cp)
    assert lctx, "llama.cpp could not create an MTP context"
    try:
        try:
            from llama_cpp import llama_cpp_ext as ext

            ext.llama_set_embeddings_nextn(lctx, True, False)
        except (ImportError, AttributeError):
            ext = None
        b = L.llama_batch_init(n, n_embd, 1)  # embd rows allocated; the token array is ours
        tok = (ctypes.c_int32 * n)(*tokens)
        b.token = ctypes.cast(tok, ctypes.POINTER(ctypes.c_int32))
        b.n_tokens = n
        rows = np.ascontiguousarray(h_prev, np.float32).reshape(-1)
        ctypes.memmove(b.embd, rows.ctypes.data, rows.nbytes)
        for i in range(n):
            b.pos[i], b.n_seq_id[i], b.logits[i] = i + 1, 1, 1
            b.seq_id[i][0] = 0
        assert L.llama_decode(lctx, b) == 0
        n_vocab = L.llama_vocab_n_tokens(L.llama_model_get_vocab(lm))
        out = np.array([np.ctypeslib.as_array(L.llama_get_logits_ith(lctx, i), (n_vocab,)) for i in range(n)])
        hidden = None
        if ext is not None:
            hidden = np.array([np.ctypeslib.as_array(ext.llama_get_embeddings_nextn_ith(lctx, i), (n_embd,))
                               for i in range(n)])  # fmt: skip
        b.token = None  # not llama.cpp's to free
        L.llama_batch_free(b)
        return out, hidden
    finally:
        L.llama_free(lctx)
        L.llama_model_free(lm)


def test_mtp_logits_match_llama_cpp(model) -> None:
    h = trunk_h(model, TOKENS)
    n = len(TOKENS) - 1
    ref, ref_hidden = llama_cpp_mtp_outputs(model.path, TOKENS[1:], h[:n])
    mtp = MtpContext(model, n_ctx=64, n_batch=64, n_ubatch=64, type_k="f32", type_v="f32")
    res = mtp.decode(Batch(TOKENS[1:], embd=h[:n], pos=np.arange(1, n + 1), output=np.ones(n, bool)))
    ours = res.logits
    if ref_hidden is not None:  # the chained state is llama.cpp's post-shared_head_norm row too
        err_h = float(((res.hidden - ref_hidden) ** 2).sum() / (ref_hidden**2).sum())
        assert err_h <= 1e-5, f"MTP hidden NMSE vs llama.cpp {err_h:.3g}"
    err = float(((ours - ref) ** 2).sum() / (ref**2).sum())
    print(f"\n{model.arch}: MTP logits NMSE vs llama.cpp {err:.3g}")
    assert err <= 1e-5, f"MTP logits NMSE vs llama.cpp {err:.3g}"
    assert float(((ours[1:] - ref[:-1]) ** 2).sum() / (ref**2).sum()) > 1e-2  # the comparison has teeth
