"""Weight leafs of a validated GGUF: memory-mapped, created on first use, shared.

`archs.load(path)` maps and validates the file and returns its architecture's weights (a
`ModelWeights` for the Qwen3.5 family); tensors become graphir weight leafs (`gr.new_weight`)
over the file's memory map (never copied), each named exactly as in the GGUF
(`blk.3.attn_q.weight`). Leafs are created on first use and cached, so the trunk graph and the
MTP head's graph built from the same `ModelWeights` share the same leaf objects (a backend
uploads each weight once) and a context that needs only some blocks maps only those.

Per-layer attributes are named exactly as the GGUF tensors, without the `blk.N.` prefix and the
`.weight` / `.bias` suffix: `layer.ssm_conv1d`, `layer.ssm_dt` (`ssm_dt.bias`), `layer.ssm_a`
(no suffix in the file), `layer.nextn.eh_proj` (`nextn.eh_proj.weight`). Absent tensors are None.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING

import graphir as gr

if TYPE_CHECKING:
    from .gguf import GGUFModelFile
    from .hparams import Qwen35HParams

# the GGUF suffix of each attribute that is not a plain ".weight"
_SUFFIX = {"ssm_dt": ".bias", "ssm_a": ""}


@dataclass(eq=False)
class NextNWeights:
    """The MTP (NextN) tensors of a nextn block, `blk.N.nextn.*`. The optional ones fall back
    (embed_tokens -> token_embd, shared_head_head -> output, shared_head_norm -> output_norm)."""

    eh_proj: gr.Tensor  # [2 * n_embd, n_embd]: concat(enorm(embed), hnorm(h)) -> n_embd
    enorm: gr.Tensor  # [n_embd]
    hnorm: gr.Tensor  # [n_embd]
    embed_tokens: gr.Tensor | None = None  # [n_embd, n_vocab]
    shared_head_head: gr.Tensor | None = None  # [n_embd, n_vocab]
    shared_head_norm: gr.Tensor | None = None  # [n_embd]


@dataclass(eq=False)
class LayerWeights:
    """One block's tensors (shapes in ne order; E = n_embd). A field is None when the block
    does not have that tensor (e.g. attn_q in a delta-net layer)."""

    il: int
    attn_norm: gr.Tensor  # [E]
    post_attention_norm: gr.Tensor  # [E]
    # full attention: attn_q gives [q | gate] per head: [E, 2 * head_dim * n_head]
    attn_q: gr.Tensor | None = None
    attn_k: gr.Tensor | None = None  # [E, n_embd_k_gqa]
    attn_v: gr.Tensor | None = None  # [E, n_embd_v_gqa]
    attn_output: gr.Tensor | None = None  # [head_dim * n_head, E]
    attn_q_norm: gr.Tensor | None = None  # [head_dim]
    attn_k_norm: gr.Tensor | None = None  # [head_dim]
    # NOTE: in a delta-net layer attn_qkv is [E, conv_channels] (q, k, v of the conv); in an
    # attention layer it is the fused alternative to attn_q/k/v: [E, 2*n_embd_q + k + v]
    attn_qkv: gr.Tensor | None = None
    # gated delta net
    attn_gate: gr.Tensor | None = None  # [E, S_v * H_v]: z
    ssm_conv1d: gr.Tensor | None = None  # F32 [d_conv, conv_channels]
    ssm_dt: gr.Tensor | None = None  # [H_v] (ssm_dt.bias)
    ssm_a: gr.Tensor | None = None  # [H_v] = -exp(A_log)
    ssm_beta: gr.Tensor | None = None  # [E, H_v]
    ssm_alpha: gr.Tensor | None = None  # [E, H_v]
    ssm_norm: gr.Tensor | None = None  # [S_v]
    ssm_out: gr.Tensor | None = None  # [S_v * H_v, E]
    # dense FFN
    ffn_gate: gr.Tensor | None = None  # [E, n_ff]
    ffn_up: gr.Tensor | None = None  # [E, n_ff]
    ffn_down: gr.Tensor | None = None  # [n_ff, E]
    # MoE FFN
    ffn_gate_inp: gr.Tensor | None = None  # [E, n_expert] router
    ffn_gate_exps: gr.Tensor | None = None  # [E, n_ff_exp, n_expert]
    ffn_up_exps: gr.Tensor | None = None  # [E, n_ff_exp, n_expert]
    ffn_gate_up_exps: gr.Tensor | None = None  # [E, 2 * n_ff_exp, n_expert]: [gate | up] (fused option)
    ffn_down_exps: gr.Tensor | None = None  # [n_ff_exp, E, n_expert]
    ffn_gate_inp_shexp: gr.Tensor | None = None  # [E] shared-expert gate
    ffn_gate_shexp: gr.Tensor | None = None  # [E, n_ff_shexp]
    ffn_up_shexp: gr.Tensor | None = None  # [E, n_ff_shexp]
    ffn_down_shexp: gr.Tensor | None = None  # [n_ff_shexp, E]
    nextn: NextNWeights | None = None


class ModelWeights:
    """The weight leafs of one validated GGUF, created on first use and cached: the model-level
    tensors and the blocks as `LayerWeights` (trunk and nextn blocks, `hp.block_count` in all).

    Attributes:
        file: the memory-mapped GGUF.
        hp: its hyperparameters (from the architecture's `load_hparams`).
    """

    def __init__(self, file: GGUFModelFile, hp: Qwen35HParams) -> None:
        self.file, self.hp = file, hp
        self._leafs: dict[str, gr.Tensor] = {}
        self._layers: dict[int, LayerWeights] = {}
        self._lock = threading.RLock()  # leafs are created once, whichever thread builds a graph first

    # ---- leafs ----------------------------------------------------------------------------
    def get(self, name: str) -> gr.Tensor | None:
        """The leaf of GGUF tensor `name`, or None when the file does not have it."""
        leaf = self._leafs.get(name)
        if leaf is None:
            info = self.file.tensors.get(name)
            if info is None:
                return None
            with self._lock:  # contexts in several threads share one leaf per tensor
                leaf = self._leafs.get(name)
                if leaf is None:
                    # info.data is a uint8 slice of the memory map: new_weight keeps it without a copy
                    leaf = self._leafs[name] = gr.new_weight(info.dtype, info.ne, info.data, name)
        return leaf

    def tensor(self, name: str) -> gr.Tensor:
        """The leaf of GGUF tensor `name`; KeyError when absent."""
        leaf = self.get(name)
        if leaf is None:
            raise KeyError(f"[weights] {self.file.path} has no tensor {name}")
        return leaf

    @property
    def loaded(self) -> tuple[str, ...]:
        """Names of the leafs created so far."""
        return tuple(self._leafs)

    # ---- model-level tensors ----------------------------------------------------------------
    @property
    def token_embd(self) -> gr.Tensor:
        return self.tensor("token_embd.weight")

    @property
    def output_norm(self) -> gr.Tensor:
        return self.tensor("output_norm.weight")

    @property
    def output(self) -> gr.Tensor:
        """The LM head; tied to token_embd when the file has no output.weight."""
        out = self.get("output.weight")
        return out if out is not None else self.token_embd

    # ---- blocks -----------------------------------------------------------------------------
    def layer(self, il: int) -> LayerWeights:
        """Block `il` (trunk or nextn), its leafs created on first use."""
        if not 0 <= il < self.hp.block_count:
            raise IndexError(f"[weights] layer {il} out of range 0..{self.hp.block_count - 1}")
        if il in self._layers:
            return self._layers[il]
        with self._lock:
            if il in self._layers:
                return self._layers[il]
            p = f"blk.{il}."
            attrs = {f.name: self.get(p + f.name + _SUFFIX.get(f.name, ".weight"))
                     for f in fields(LayerWeights) if f.name not in ("il", "nextn")}  # fmt: skip
            nextn = None
            if self.hp.is_nextn(il):
                nextn = NextNWeights(**{f.name: self.get(f"{p}nextn.{f.name}.weight") for f in fields(NextNWeights)})
            self._layers[il] = LayerWeights(il=il, nextn=nextn, **attrs)
        return self._layers[il]

    @property
    def trunk(self) -> list[LayerWeights]:
        """The trunk blocks 0 .. n_layer_trunk-1 (the nextn blocks are left unmapped)."""
        return [self.layer(il) for il in range(self.hp.n_layer_trunk)]
