"""Qwen3.5 (`qwen35`, dense FFN) and Qwen3.5-MoE (`qwen35moe`): the trunk graph of one ubatch.

Every layer: x + mixer(attn_norm(x)), then + FFN(post_attention_norm(.)); the mixer is a gated
delta net (recurrent layers) or gated full attention (every full_attention_interval-th layer);
the FFN is SwiGLU (qwen35) or the MoE (qwen35moe: softmax router, top-k experts, plus a
sigmoid-gated shared expert), chosen from the layer's weights. The nextn (MTP) blocks after the
trunk are not run here. The last layer keeps only the output rows before its FFN; the head
returns logits and, on request, the post-output-norm hidden state h_nextn that the MTP head reads.
"""

from __future__ import annotations

import graphir as gr

from .graph_context import GraphContext, GraphResult, StateTensors, UBatchShape
from .weights import Qwen35Weights


def build_graph(w: Qwen35Weights, shape: UBatchShape, state: StateTensors, *,
                want_h_nextn: bool = False) -> GraphResult:  # fmt: skip
    """The trunk graph of one ubatch of `shape`, reading and writing the leafs of `state`."""
    hp = w.hp
    ctx = GraphContext(hp, shape, state)
    cb = ctx.cb
    inpL = ctx.build_inp_embd(w.token_embd)  # [n_embd, n_tokens]
    inp_pos = ctx.build_inp_pos()
    out_ids = ctx.build_inp_out_ids()
    n_layer = hp.n_layer_trunk

    for il in range(n_layer):
        L = w.layer(il)
        inpSA = inpL
        cur = ctx.build_norm(inpL, L.attn_norm, "attn_norm", il)
        if hp.is_recurrent(il):
            cur = ctx.build_delta_net(cur, L, il)
        else:
            cur = ctx.build_attn(cur, L, inp_pos, il)
        if il == n_layer - 1 and out_ids is not None:  # only the output rows go on
            cur = cb(gr.get_rows(cur, out_ids), "attn_out_rows", il)  # [n_embd, n_outputs]
            inpSA = cb(gr.get_rows(inpSA, out_ids), "inp_out_rows", il)
        cur = cb(gr.add(cur, inpSA), "attn_residual", il)
        ffn_residual = cur
        cur = ctx.build_norm(cur, L.post_attention_norm, "attn_post_norm", il)
        cur = ctx.build_layer_ffn(cur, L, il)
        cur = cb(gr.add(cur, ffn_residual), "l_out", il)
        inpL = cur

    return ctx.build_result(inpL, w.output_norm, w.output, want_h_nextn)
