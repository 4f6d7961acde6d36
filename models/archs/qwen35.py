"""Qwen3.5 (`qwen35`, dense FFN) and Qwen3.5-MoE (`qwen35moe`): hparams, tensor table, trunk graph.

Every layer: x + mixer(attn_norm(x)), then + FFN(post_attention_norm(.)); the mixer is a gated
delta net (recurrent layers) or gated full attention (every full_attention_interval-th layer);
the FFN is SwiGLU (qwen35) or the MoE (qwen35moe: softmax router, top-k experts, plus a
sigmoid-gated shared expert), chosen from the layer's weights. The nextn (MTP) blocks after the
trunk are not run here. The last layer keeps only the output rows before its FFN; the head
returns logits and, on request, the post-output-norm hidden state h_nextn that the MTP head reads.

What the registry (models/archs/__init__.py) reads from this module:
    ARCHS             the `general.architecture` names served here
    HParams           the hyperparameters (models/hparams.py, keys in QWEN35_KEYS)
    load_hparams      the hyperparameters of a GGUF file (keys checked and typed)
    tensor_groups     every tensor a file of `hp` has (llama.cpp's `llama_model_qwen35*::load_arch_tensors`)
    check_tensors     the file's tensors against that table
    Weights           the weight leafs (the generic per-layer layout of models/weights.py)
    build_graph       the trunk graph of one ubatch
"""

from __future__ import annotations

from collections.abc import Mapping

import graphir as gr

from ..gguf import FLOATS, ONLY_F32, GGUFError, GGUFModelFile, TensorGroup, read_keys
from ..gguf import check_tensors as check_table
from ..gguf import single as _one
from ..gguf import tensor_spec as _w
from ..graph_context import GraphContext, GraphResult, StateTensors, UBatchShape
from ..hparams import ARCHS, HParamsError, Qwen35HParams, keys_for
from ..weights import ModelWeights

__all__ = ["ARCHS", "HParams", "Weights", "build_graph", "check_tensors", "load_hparams", "tensor_groups"]

HParams = Qwen35HParams
Weights = ModelWeights


def load_hparams(f: GGUFModelFile, arch: str, n_vocab: int) -> Qwen35HParams:
    """The hyperparameters of `f` (arch one of ARCHS); GGUFError names a missing or bad key."""
    try:
        return Qwen35HParams.from_metadata(arch, read_keys(f, arch, keys_for(arch)), n_vocab)
    except HParamsError as e:
        raise GGUFError(f"{f.path}: {e}") from e


# --------------------------------------------------------------------------------------------
# Tensor table
# --------------------------------------------------------------------------------------------


def check_tensors(hp: Qwen35HParams, found: Mapping[str, tuple[int, tuple[int, ...]]], where: str) -> None:
    """Check `{name: (type id, ne)}` against the table of `hp`. Raises GGUFError naming the first bad tensor."""
    blocks = {n.split(".")[1] for n in found if n.startswith("blk.")}
    if hp.nextn_predict_layers and not any(str(il) in blocks for il in range(hp.n_layer_trunk)):
        # llama.cpp can load the MTP head alone as a draft model; graphir runs the head with its trunk
        raise GGUFError(f"{where}: no tensor of the trunk blocks blk.0 .. blk.{hp.n_layer_trunk - 1} ({hp.arch}.block_count "
                        f"{hp.block_count} less {hp.arch}.nextn_predict_layers {hp.nextn_predict_layers}): an MTP-only "
                        "file is not supported")  # fmt: skip
    check_table(tensor_groups(hp), found, where, hp.arch)


def tensor_groups(hp: Qwen35HParams) -> list[TensorGroup]:
    """Every tensor a Qwen3.5 (dense or MoE) file has, in writing order."""
    E, V = hp.n_embd, hp.n_vocab
    groups = [
        _one(_w("token_embd.weight", E, V)),
        _one(_w("output_norm.weight", E)),
        _one(_w("output.weight", E, V), required=False),  # absent: tied to token_embd
    ]
    for il in range(hp.block_count):
        p = f"blk.{il}."
        groups += [_one(_w(p + "attn_norm.weight", E)), _one(_w(p + "post_attention_norm.weight", E))]
        groups += _recurrent_groups(hp, p) if hp.is_recurrent(il) else _attention_groups(hp, p)
        groups += _moe_groups(hp, p) if hp.is_moe else _ffn_groups(hp, p)
        if hp.is_nextn(il):
            groups += _nextn_groups(hp, p)
    return groups


def _attention_groups(hp: Qwen35HParams, p: str) -> list[TensorGroup]:
    E, q2, k, v = hp.n_embd, 2 * hp.n_embd_q, hp.n_embd_k_gqa, hp.n_embd_v_gqa
    separate = (_w(p + "attn_q.weight", E, q2), _w(p + "attn_k.weight", E, k), _w(p + "attn_v.weight", E, v))
    fused = (_w(p + "attn_qkv.weight", E, q2 + k + v),)  # newer llama.cpp accepts a fused q|k|v
    return [
        TensorGroup((separate, fused)),
        _one(_w(p + "attn_output.weight", hp.n_embd_q, E)),
        _one(_w(p + "attn_q_norm.weight", hp.head_dim)),
        _one(_w(p + "attn_k_norm.weight", hp.head_dim)),
    ]


def _recurrent_groups(hp: Qwen35HParams, p: str) -> list[TensorGroup]:
    E, H_v = hp.n_embd, hp.H_v
    return [
        _one(_w(p + "attn_qkv.weight", E, hp.conv_channels)),
        _one(_w(p + "attn_gate.weight", E, hp.value_dim)),
        _one(_w(p + "ssm_conv1d.weight", hp.d_conv, hp.conv_channels, types=ONLY_F32)),
        _one(_w(p + "ssm_dt.bias", H_v)),  # NOTE: a .bias, not a .weight
        _one(_w(p + "ssm_a", H_v)),  # NOTE: no suffix at all; holds -exp(A_log)
        _one(_w(p + "ssm_beta.weight", E, H_v)),
        _one(_w(p + "ssm_alpha.weight", E, H_v)),
        _one(_w(p + "ssm_norm.weight", hp.S_v)),
        _one(_w(p + "ssm_out.weight", hp.value_dim, E)),
    ]


def _ffn_groups(hp: Qwen35HParams, p: str) -> list[TensorGroup]:
    E, F = hp.n_embd, hp.n_ff
    return [
        _one(_w(p + "ffn_gate.weight", E, F)),
        _one(_w(p + "ffn_up.weight", E, F)),
        _one(_w(p + "ffn_down.weight", F, E)),
    ]


def _moe_groups(hp: Qwen35HParams, p: str) -> list[TensorGroup]:
    E, F, X, S = hp.n_embd, hp.ff_exp, hp.n_expert, hp.ff_shexp
    separate = (_w(p + "ffn_gate_exps.weight", E, F, X), _w(p + "ffn_up_exps.weight", E, F, X))
    fused = (_w(p + "ffn_gate_up_exps.weight", E, 2 * F, X),)  # [gate | up] along ne[1]
    return [
        _one(_w(p + "ffn_gate_inp.weight", E, X)),
        _one(_w(p + "ffn_down_exps.weight", F, E, X)),
        TensorGroup((separate, fused)),
        # NOTE: converted from HF as [n_embd, 1] and kept in the float type of the conversion
        _one(_w(p + "ffn_gate_inp_shexp.weight", E, types=FLOATS)),
        _one(_w(p + "ffn_gate_shexp.weight", E, S)),
        _one(_w(p + "ffn_up_shexp.weight", E, S)),
        _one(_w(p + "ffn_down_shexp.weight", S, E)),
    ]


def _nextn_groups(hp: Qwen35HParams, p: str) -> list[TensorGroup]:
    E, V = hp.n_embd, hp.n_vocab
    return [
        _one(_w(p + "nextn.eh_proj.weight", 2 * E, E)),
        _one(_w(p + "nextn.enorm.weight", E)),
        _one(_w(p + "nextn.hnorm.weight", E)),
        _one(_w(p + "nextn.embed_tokens.weight", E, V), required=False),  # fallback: token_embd
        _one(_w(p + "nextn.shared_head_head.weight", E, V), required=False),  # fallback: output (or token_embd)
        _one(_w(p + "nextn.shared_head_norm.weight", E), required=False),  # fallback: output_norm
    ]


# --------------------------------------------------------------------------------------------
# Graph
# --------------------------------------------------------------------------------------------


def build_graph(w: ModelWeights, shape: UBatchShape, state: StateTensors, *,
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
