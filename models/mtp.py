"""The MTP (NextN) head of Qwen3.5 / Qwen3.5-MoE and the context that runs it (DESIGN section 6, 9).

The head predicts token p+1 from the token x_p and the trunk's post-norm hidden state h_{p-1}:

    x = eh_proj(concat(enorm(embed(x_p)), hnorm(h_{p-1})))      # concat along n_embd: [e | h]
    x = x + attn(attn_norm(x))                                   # one full-attention block, its own KV
    x = x + ffn(post_attention_norm(x))                          # dense SwiGLU or MoE, as the block has
    hidden = shared_head_norm(x)   (fallback output_norm)
    logits = shared_head_head hidden (fallback output, fallback tied token_embd)

`hidden` is returned with the logits: a chained draft feeds it as the next step's h (the head's
own post-norm state, the same kind of row the trunk's h_nextn is).

    mtp = MtpContext(model, n_ctx=512)
    out = mtp.decode(Batch(tokens, embd=h_rows, pos=pos, output=...))   # out.logits, out.hidden

`MtpContext` is a `Context` whose "trunk" is the one nextn block: the same ubatch splitting,
validation, plan reuse and `seq_*` calls, a KV cache for that block only, and the target model's
`ModelWeights` (so the embedding/head leafs are the very same objects the trunk uses).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

import graphir as gr

from .batch import Batch
from .context import Context, DecodeResult
from .graph_context import GraphContext, GraphResult, StateTensors, UBatchShape
from .model import Model
from .weights import ModelWeights


class NoMtpHeadError(ValueError):
    """The model has no nextn (MTP) block."""


def mtp_layer(w: ModelWeights) -> int:
    """The layer index of the (first) nextn block; NoMtpHeadError when the model has none."""
    hp = w.hp
    if hp.nextn_predict_layers < 1:
        raise NoMtpHeadError(f"[mtp] {w.file.path} has no MTP head ({hp.arch}.nextn_predict_layers = 0)")
    il = hp.n_layer_trunk
    if w.layer(il).nextn is None or w.layer(il).nextn.eh_proj is None:
        raise NoMtpHeadError(f"[mtp] {w.file.path}: block {il} has no nextn.eh_proj")
    return il


def build_mtp_graph(w: ModelWeights, shape: UBatchShape, state: StateTensors, *,
                    want_h_nextn: bool = True) -> GraphResult:  # fmt: skip
    """The MTP head graph of one ubatch: inputs inp_tokens I32 [n_tokens] and inp_embd F32
    [n_embd, n_tokens] (h_{p-1} rows); outputs logits [n_vocab, n_outputs] and the head's
    hidden state [n_embd, n_outputs] (GraphResult.h_nextn)."""
    hp = w.hp
    il = mtp_layer(w)
    L = w.layer(il)
    nx = L.nextn
    ctx = GraphContext(hp, shape, state)
    cb = ctx.cb
    tokens = ctx.build_inp_tokens()
    h_in = ctx.build_inp_embd_rows()  # [n_embd, n_tokens]
    inp_pos = ctx.build_inp_pos()
    out_ids = ctx.build_inp_out_ids()

    embd_w = nx.embed_tokens if nx.embed_tokens is not None else w.token_embd
    e = cb(gr.get_rows(embd_w, tokens), "mtp_tok_embd", il)  # [n_embd, n_tokens]
    e_norm = ctx.build_norm(e, nx.enorm, "mtp_enorm", il)
    h_norm = ctx.build_norm(h_in, nx.hnorm, "mtp_hnorm", il)
    cat = cb(gr.concat(e_norm, h_norm, 0), "mtp_concat", il)  # [2 * n_embd, n_tokens]: [e | h]
    cur = cb(gr.mul_mat(nx.eh_proj, cat), "mtp_eh_proj", il)  # [n_embd, n_tokens]

    inpSA = cur
    cur = ctx.build_norm(cur, L.attn_norm, "attn_norm", il)
    cur = ctx.build_attn(cur, L, inp_pos, il)
    if shape.n_outputs == 0:
        # NOTE: only the K/V writes matter; the attention output is kept so that every input
        # (kq_mask included) is read by the graph and can be set
        ctx.expand(cur)
        return GraphResult(ctx.gf, ctx.inputs, None, None)
    if out_ids is not None:  # only the output rows go on
        cur = cb(gr.get_rows(cur, out_ids), "attn_out_rows", il)
        inpSA = cb(gr.get_rows(inpSA, out_ids), "inp_out_rows", il)
    cur = cb(gr.add(cur, inpSA), "attn_residual", il)
    ffn_residual = cur
    cur = ctx.build_norm(cur, L.post_attention_norm, "attn_post_norm", il)
    cur = ctx.build_layer_ffn(cur, L, il)  # dense SwiGLU or MoE, as the block has
    cur = cb(gr.add(cur, ffn_residual), "l_out", il)

    head_norm = nx.shared_head_norm if nx.shared_head_norm is not None else w.output_norm
    head = nx.shared_head_head if nx.shared_head_head is not None else w.output
    return ctx.build_result(cur, head_norm, head, want_h_nextn=True)


class _MtpModel(Model):
    """The target model seen through its nextn block: same weights object, the head's graph."""

    @property
    def trunk_layers(self) -> range:
        il = mtp_layer(self.weights)
        return range(il, il + 1)


@dataclass(frozen=True, eq=False)
class MtpResult:
    """Outputs of an MTP decode for the flagged rows, in batch order: logits (n_out, n_vocab),
    hidden (n_out, n_embd) the head's post-norm state (for chaining), out_idx (n_out,)."""

    logits: np.ndarray
    hidden: np.ndarray
    out_idx: np.ndarray


class MtpContext(Context):
    """Runs the MTP head of `model` with its own KV cache (one block), sharing the weight leafs.

    decode(Batch(tokens, embd=h_rows, pos=..., seq_id=..., output=...)) -> MtpResult. Every
    row needs both its token x_p and the hidden row h_{p-1}. The other arguments are Context's.
    Raises NoMtpHeadError when the GGUF has no nextn block.
    """

    def __init__(self, model: Model, n_ctx: int = 512, n_batch: int = 512, n_ubatch: int = 512, n_seq_max: int = 1,
                 backends: Sequence[str] = ("cpu",), type_k: str = "f16", type_v: str = "f16",
                 *, plan_cache_size: int = 16, n_threads: int | None = None) -> None:  # fmt: skip
        mtp_layer(model.weights)  # fail early and clearly
        head = _MtpModel(model.path, model.weights, model.tokenizer, build_mtp_graph)
        self.target = model
        super().__init__(head, n_ctx, n_batch, n_ubatch, n_seq_max, 0, backends, type_k, type_v,
                         embeddings_nextn=True, plan_cache_size=plan_cache_size, n_threads=n_threads)  # fmt: skip

    def check(self, batch: Batch) -> None:
        super().check(batch)
        if batch.tokens is None or batch.embd is None:
            raise TypeError("[mtp] an MTP batch needs both tokens (x_p) and embd rows (h_{p-1})")

    def decode(self, batch: Batch) -> MtpResult:  # type: ignore[override]
        res: DecodeResult = super().decode(batch)
        return MtpResult(res.logits, res.h_nextn, res.out_idx)

    def __repr__(self) -> str:
        return "Mtp" + super().__repr__()
