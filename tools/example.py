"""A small transformer-shaped example graph with random weights (pre-norm attention with
rope + grouped KV heads, SwiGLU FFN, LM head). Used by `graphir dump --example` and the plan
benchmark; it is not a model, just a realistic graph."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

import graphir as gr
from graphir.tensor import Tensor


@dataclass(frozen=True)
class ExampleConfig:
    n_layer: int = 2
    n_embd: int = 64
    n_head: int = 4
    n_head_kv: int = 2
    n_ff: int = 128
    n_vocab: int = 256
    n_tokens: int = 8
    eps: float = 1e-6

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head


class ExampleWeights:
    """Random F32 weights named like GGUF tensors (ne order)."""

    def __init__(self, cfg: ExampleConfig, seed: int = 0) -> None:
        rng = np.random.default_rng(seed)
        self.cfg = cfg

        def w(name: str, *ne: int) -> Tensor:
            data = (rng.standard_normal(tuple(reversed(ne))) / np.sqrt(ne[0])).astype(np.float32)
            return gr.from_numpy(data, name)

        e, d, kv = cfg.n_embd, cfg.head_dim, cfg.n_head_kv
        self.tok_embd = w("token_embd.weight", e, cfg.n_vocab)
        self.output_norm = w("output_norm.weight", e)
        self.output = w("output.weight", e, cfg.n_vocab)
        self.layers = [
            {
                "attn_norm": w(f"blk.{il}.attn_norm.weight", e),
                "wq": w(f"blk.{il}.attn_q.weight", e, e),
                "wk": w(f"blk.{il}.attn_k.weight", e, d * kv),
                "wv": w(f"blk.{il}.attn_v.weight", e, d * kv),
                "wo": w(f"blk.{il}.attn_output.weight", e, e),
                "ffn_norm": w(f"blk.{il}.ffn_norm.weight", e),
                "gate": w(f"blk.{il}.ffn_gate.weight", e, cfg.n_ff),
                "up": w(f"blk.{il}.ffn_up.weight", e, cfg.n_ff),
                "down": w(f"blk.{il}.ffn_down.weight", cfg.n_ff, e),
            }
            for il in range(cfg.n_layer)
        ]


def build_example(weights: ExampleWeights) -> gr.Graph:
    """The forward graph over cfg.n_tokens tokens: inputs 'tokens', 'pos', 'kq_mask'; output 'logits'."""
    cfg = weights.cfg
    n, d = cfg.n_tokens, cfg.head_dim

    def cb(t: Tensor, name: str, il: int | None = None) -> Tensor:
        return t.set_name(name if il is None else f"{name}-{il}")

    tokens = gr.new_input(gr.I32, [n], "tokens")
    pos = gr.new_input(gr.I32, [n], "pos")
    mask = gr.new_input(gr.F32, [n, n], "kq_mask")
    cur = cb(gr.get_rows(weights.tok_embd, tokens), "inp_embd")  # [n_embd, n]
    for il, w in enumerate(weights.layers):
        inp = cur
        cur = cb(gr.mul(gr.rms_norm(cur, cfg.eps), w["attn_norm"]), "attn_norm", il)
        q = cb(gr.reshape(gr.mul_mat(w["wq"], cur), d, cfg.n_head, n), "Qcur", il)  # [d, H, n]
        k = cb(gr.reshape(gr.mul_mat(w["wk"], cur), d, cfg.n_head_kv, n), "Kcur", il)  # [d, H_kv, n]
        v = cb(gr.reshape(gr.mul_mat(w["wv"], cur), d, cfg.n_head_kv, n), "Vcur", il)
        q = cb(gr.rope_ext(q, pos, None, d, gr.ROPE_NEOX), "Qrope", il)
        k = cb(gr.rope_ext(k, pos, None, d, gr.ROPE_NEOX), "Krope", il)
        q = gr.permute(q, 0, 2, 1, 3)  # [d, n, H]
        k = gr.permute(k, 0, 2, 1, 3)  # [d, n, H_kv]
        v = gr.permute(v, 0, 2, 1, 3)  # [d, n, H_kv]
        att = cb(gr.flash_attn_ext(q, k, v, mask, 1.0 / np.sqrt(d)), "attn", il)  # [d, H, n]
        att = gr.reshape(att, cfg.n_embd, n)
        cur = cb(gr.mul_mat(w["wo"], att), "attn_out", il)
        cur = cb(gr.add(cur, inp), "ffn_inp", il)
        ffn_inp = cur
        cur = cb(gr.mul(gr.rms_norm(cur, cfg.eps), w["ffn_norm"]), "ffn_norm", il)
        gate = cb(gr.silu(gr.mul_mat(w["gate"], cur)), "ffn_gate", il)
        up = cb(gr.mul_mat(w["up"], cur), "ffn_up", il)
        cur = cb(gr.mul_mat(w["down"], gr.mul(gate, up)), "ffn_out", il)
        cur = cb(gr.add(cur, ffn_inp), "l_out", il)
    cur = cb(gr.mul(gr.rms_norm(cur, cfg.eps), weights.output_norm), "result_norm")
    logits = cb(gr.mul_mat(weights.output, cur), "logits")
    return gr.build_graph(logits)


def example_inputs(cfg: ExampleConfig, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    n = cfg.n_tokens
    causal = np.where(np.arange(n)[None, :] <= np.arange(n)[:, None], 0.0, -np.inf).astype(np.float32)
    return {
        "tokens": rng.integers(0, cfg.n_vocab, n, dtype=np.int32),
        "pos": np.arange(n, dtype=np.int32),
        "kq_mask": causal,
    }
