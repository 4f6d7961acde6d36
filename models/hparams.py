"""Hyperparameters of Qwen3.5 (`qwen35`, dense FFN) and Qwen3.5-MoE (`qwen35moe`) as frozen dataclasses.

The GGUF keys, their types and defaults are declared once in `QWEN35_KEYS`; the reader
(`models/gguf.py`) and the writer (`models/gguf_write.py`) both walk that table, so a file we
write is a file we read. Requiredness and defaults follow llama.cpp's loader
(src/llama-model.cpp `load_hparams` + `llama_model_qwen35*::load_arch_hparams`): a key that
llama.cpp reads with a default is optional here with the same default, so every file
llama.cpp loads loads here too. Our writer always writes every key.

Shapes below are in ne order (innermost first), as everywhere in graphir. Each quantity has
its GGUF-named field and at most one short name (a property) that the graphs use:
`head_dim` (= head_dim_k), `d_conv` (= ssm_d_conv), `S_k` (= ssm_d_state), `H_k` (= ssm_n_group),
`H_v` (= ssm_dt_rank) and the derived `S_v` (= ssm_d_inner / H_v).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

ARCHS = ("qwen35", "qwen35moe")


class HParamsError(ValueError):
    """A missing, mistyped or inconsistent hyperparameter; the message names the GGUF key."""


# Key kinds (GGUF value types llama.cpp accepts for the key):
U32 = "u32"  # scalar UINT32
U32_LAYERS = "u32/layers"  # scalar UINT32, or an INT32/UINT32 array with one value per layer
F32 = "f32"  # scalar FLOAT32
I32X4 = "i32x4"  # INT32/UINT32 array of exactly 4, or one INT32 repeated 4 times

REQUIRED: Any = object()  # sentinel default: the key must be present

MAX_LAYERS = 512  # LLAMA_MAX_LAYERS: block_count is refused above it before any per-layer table is built
# NOTE: every other integer key is held below this, far above any real model's dimension, so that no
# product of them (a tensor's ne, a cache size) is computed from an absurd value
MAX_DIM = 1 << 24


@dataclass(frozen=True)
class KeySpec:
    """One `{arch}.<key>` entry: the dataclass field it fills, its kind and its default.

    `default` is REQUIRED, a constant, or a function of the fields parsed so far (the table is
    ordered so that those come first), mirroring llama.cpp's fallbacks.
    """

    field: str
    key: str
    kind: str
    default: Any = REQUIRED
    archs: tuple[str, ...] = ARCHS


QWEN35_KEYS: tuple[KeySpec, ...] = (
    KeySpec("n_ctx_train", "context_length", U32),
    KeySpec("n_embd", "embedding_length", U32),
    KeySpec("block_count", "block_count", U32),
    # dense: the FFN width; MoE: only the fallback for the expert widths below
    KeySpec("n_ff", "feed_forward_length", U32_LAYERS, archs=("qwen35",)),
    KeySpec("n_ff", "feed_forward_length", U32_LAYERS, 0, archs=("qwen35moe",)),
    KeySpec("n_head", "attention.head_count", U32_LAYERS),
    KeySpec("n_head_kv", "attention.head_count_kv", U32_LAYERS, lambda p: p["n_head"]),
    KeySpec("head_dim_k", "attention.key_length", U32, lambda p: p["n_embd"] // max(p["n_head"], 1)),
    KeySpec("head_dim_v", "attention.value_length", U32, lambda p: p["n_embd"] // max(p["n_head"], 1)),
    KeySpec("rms_eps", "attention.layer_norm_rms_epsilon", F32),
    KeySpec("n_rot", "rope.dimension_count", U32, lambda p: p["head_dim_k"]),
    KeySpec("rope_sections", "rope.dimension_sections", I32X4),
    KeySpec("rope_freq_base", "rope.freq_base", F32, 10000.0),
    KeySpec("ssm_d_conv", "ssm.conv_kernel", U32),
    KeySpec("ssm_d_inner", "ssm.inner_size", U32),
    KeySpec("ssm_d_state", "ssm.state_size", U32),
    KeySpec("ssm_dt_rank", "ssm.time_step_rank", U32),
    KeySpec("ssm_n_group", "ssm.group_count", U32),
    KeySpec("full_attention_interval", "full_attention_interval", U32, 4),
    KeySpec("nextn_predict_layers", "nextn_predict_layers", U32, 0),
    KeySpec("n_expert", "expert_count", U32, archs=("qwen35moe",)),
    KeySpec("n_expert_used", "expert_used_count", U32, archs=("qwen35moe",)),
    KeySpec("n_ff_exp", "expert_feed_forward_length", U32, 0, archs=("qwen35moe",)),
    KeySpec("n_ff_shexp", "expert_shared_feed_forward_length", U32, 0, archs=("qwen35moe",)),
)


def keys_for(arch: str) -> tuple[KeySpec, ...]:
    """The key table of one architecture, in parse order."""
    return tuple(k for k in QWEN35_KEYS if arch in k.archs)


def required_keys(arch: str) -> list[str]:
    """Full GGUF names of the keys `arch` cannot do without."""
    return [f"{arch}.{k.key}" for k in keys_for(arch) if k.default is REQUIRED]


@dataclass(frozen=True)
class Qwen35HParams:
    """Qwen3.5 hyperparameters, one field per GGUF key (plus `arch` and `n_vocab`).

    Layers `0 .. n_layer_trunk-1` are the trunk; trunk layer `il` is recurrent (gated delta
    net) iff `(il + 1) % full_attention_interval != 0`, else full attention. The last
    `nextn_predict_layers` blocks are MTP (NextN) heads: full attention, never recurrent.
    """

    arch: str  # "qwen35" or "qwen35moe"
    n_vocab: int  # not a key: the length of tokenizer.ggml.tokens (= token_embd ne[1])
    n_ctx_train: int
    n_embd: int
    block_count: int  # NOTE: counts the trunk AND the nextn (MTP) blocks that follow it
    n_ff: int  # dense FFN width; for MoE only a fallback (0 when absent)
    n_head: int
    n_head_kv: int
    head_dim_k: int
    head_dim_v: int
    rms_eps: float
    n_rot: int  # rotated dims per head (Qwen3.5: a quarter of the head)
    rope_sections: tuple[int, int, int, int]  # IMRoPE sections (t, h, w, e), summing to n_rot / 2
    rope_freq_base: float
    ssm_d_conv: int  # d_conv: the conv kernel width (4)
    ssm_d_inner: int  # = value head dim * value heads (S_v * H_v)
    ssm_d_state: int  # S_k: the key head dim (llama.cpp sizes value heads with it too: S_v == S_k)
    ssm_dt_rank: int  # NOTE: "time_step_rank" is H_v, the number of VALUE heads
    ssm_n_group: int  # NOTE: "group_count" is H_k, the number of KEY heads
    full_attention_interval: int = 4
    nextn_predict_layers: int = 0
    n_expert: int = 0
    n_expert_used: int = 0
    n_ff_exp: int = 0  # 0: llama.cpp falls back to n_ff / n_expert_used
    n_ff_shexp: int = 0  # 0: llama.cpp falls back to n_ff

    def __post_init__(self) -> None:
        # GGUF stores these as FLOAT32: keep exactly the value a file holds, so hparams round-trip
        for name in ("rms_eps", "rope_freq_base"):
            object.__setattr__(self, name, float(np.float32(getattr(self, name))))
        object.__setattr__(self, "rope_sections", tuple(int(s) for s in self.rope_sections))
        self.check()

    # --- layers ---------------------------------------------------------------------------
    @property
    def is_moe(self) -> bool:
        return self.arch == "qwen35moe"

    @property
    def n_layer_trunk(self) -> int:
        return self.block_count - self.nextn_predict_layers

    def is_recurrent(self, il: int) -> bool:
        """Whether block `il` is a gated delta net layer (MTP blocks never are)."""
        if not 0 <= il < self.block_count:
            raise IndexError(f"[qwen35] layer {il} out of range 0..{self.block_count - 1}")
        return il < self.n_layer_trunk and (il + 1) % self.full_attention_interval != 0

    def is_nextn(self, il: int) -> bool:
        return self.n_layer_trunk <= il < self.block_count

    # --- attention ------------------------------------------------------------------------
    @property
    def head_dim(self) -> int:
        return self.head_dim_k

    @property
    def n_embd_q(self) -> int:
        """Width of the attention output (and of Q); attn_q produces twice this: [q | gate] per head."""
        return self.head_dim_k * self.n_head

    @property
    def n_embd_k_gqa(self) -> int:
        return self.head_dim_k * self.n_head_kv

    @property
    def n_embd_v_gqa(self) -> int:
        return self.head_dim_v * self.n_head_kv

    # --- gated delta net ------------------------------------------------------------------
    @property
    def d_conv(self) -> int:
        """The conv kernel width (ssm_d_conv)."""
        return self.ssm_d_conv

    @property
    def S_k(self) -> int:
        """The key head dim (ssm_d_state)."""
        return self.ssm_d_state

    @property
    def H_k(self) -> int:
        """The key (and query) heads (ssm_n_group)."""
        return self.ssm_n_group

    @property
    def S_v(self) -> int:
        """The value head dim (ssm_d_inner / H_v)."""
        return self.ssm_d_inner // self.ssm_dt_rank

    @property
    def H_v(self) -> int:
        """The value heads (ssm_dt_rank)."""
        return self.ssm_dt_rank

    @property
    def key_dim(self) -> int:
        """Width of q (and of k): S_k * H_k."""
        return self.S_k * self.H_k

    @property
    def value_dim(self) -> int:
        """Width of v and of the delta net's output: S_v * H_v (= ssm_d_inner)."""
        return self.S_v * self.H_v

    @property
    def conv_channels(self) -> int:
        """Channels of the causal conv (and of attn_qkv's output): q, k (H_k heads each) and v."""
        return 2 * self.key_dim + self.value_dim

    # --- MoE ------------------------------------------------------------------------------
    @property
    def ff_exp(self) -> int:
        """Routed-expert FFN width, with llama.cpp's fallback."""
        return self.n_ff_exp or (self.n_ff // self.n_expert_used if self.n_expert_used else 0)

    @property
    def ff_shexp(self) -> int:
        """Shared-expert FFN width, with llama.cpp's fallback."""
        return self.n_ff_shexp or self.n_ff

    # --- construction ---------------------------------------------------------------------
    @classmethod
    def from_metadata(cls, arch: str, values: Mapping[str, Any], n_vocab: int) -> Qwen35HParams:
        """Build from `{full key: python value}` (types already checked by the reader).

        Missing optional keys take llama.cpp's defaults; a missing required key raises
        HParamsError naming it.
        """
        if arch not in ARCHS:
            raise HParamsError(f"unknown architecture {arch!r}; supported: {', '.join(ARCHS)}")
        parsed: dict[str, Any] = {}
        for k in keys_for(arch):
            name = f"{arch}.{k.key}"
            if name in values:
                parsed[k.field] = values[name]
            elif k.default is REQUIRED:
                raise HParamsError(f"missing required key {name}")
            else:
                parsed[k.field] = k.default(parsed) if callable(k.default) else k.default
        return cls(arch=arch, n_vocab=n_vocab, **parsed)

    def check(self) -> None:
        """Cross-field consistency, as llama.cpp's loader and graph assume it; raises HParamsError."""
        a = self.arch
        if a not in ARCHS:
            raise HParamsError(f"unknown architecture {a!r}; supported: {', '.join(ARCHS)}")
        _positive(self, "n_vocab", "tokenizer.ggml.tokens (length)")
        if self.block_count > MAX_LAYERS:  # first: every per-layer table is sized by it
            raise HParamsError(f"{a}.block_count must be at most {MAX_LAYERS} (llama.cpp's limit), got {self.block_count}")
        for k in keys_for(a):
            if k.kind in (U32, U32_LAYERS):
                _in_range(self, k.field, f"{a}.{k.key}", 1 if k.default is REQUIRED else 0)
        for field, key in (("rms_eps", "attention.layer_norm_rms_epsilon"), ("rope_freq_base", "rope.freq_base")):
            v = getattr(self, field)
            if not (math.isfinite(v) and v > 0):
                raise HParamsError(f"{a}.{key} must be a finite number > 0, got {v}")
        if self.n_head_kv <= 0 or self.n_head % self.n_head_kv:
            raise HParamsError(
                f"{a}.attention.head_count_kv must divide {a}.attention.head_count={self.n_head}, got {self.n_head_kv}"
            )
        if self.head_dim_k != self.head_dim_v:
            # the Qwen3.5 graph asserts n_embd_head_k == n_embd_head_v
            raise HParamsError(
                f"{a}.attention.key_length ({self.head_dim_k}) must equal {a}.attention.value_length "
                f"({self.head_dim_v})"
            )
        if self.n_rot <= 0 or self.n_rot % 2 or self.n_rot > self.head_dim_k:
            raise HParamsError(
                f"{a}.rope.dimension_count must be even and in 2..{self.head_dim_k} ({a}.attention.key_length), got {self.n_rot}"
            )
        if len(self.rope_sections) != 4 or any(s < 0 for s in self.rope_sections):
            raise HParamsError(f"{a}.rope.dimension_sections must be 4 values >= 0, got {list(self.rope_sections)}")
        if sum(self.rope_sections) != self.n_rot // 2:
            raise HParamsError(
                f"{a}.rope.dimension_sections must sum to {a}.rope.dimension_count / 2 = {self.n_rot // 2}, "
                f"got {list(self.rope_sections)} (sum {sum(self.rope_sections)})"
            )
        if self.ssm_dt_rank % self.ssm_n_group:
            raise HParamsError(
                f"{a}.ssm.time_step_rank (value heads, {self.ssm_dt_rank}) must be a multiple of "
                f"{a}.ssm.group_count (key heads, {self.ssm_n_group})"
            )
        if self.ssm_d_inner != self.ssm_d_state * self.ssm_dt_rank:
            # llama.cpp sizes value heads with ssm.state_size, so inner_size must be state_size * time_step_rank
            raise HParamsError(
                f"{a}.ssm.inner_size must be {a}.ssm.state_size * {a}.ssm.time_step_rank = "
                f"{self.ssm_d_state} * {self.ssm_dt_rank} = {self.ssm_d_state * self.ssm_dt_rank}, got {self.ssm_d_inner}"
            )
        if self.full_attention_interval <= 0:
            raise HParamsError(f"{a}.full_attention_interval must be > 0, got {self.full_attention_interval}")
        if self.nextn_predict_layers >= self.block_count:
            raise HParamsError(
                f"{a}.nextn_predict_layers ({self.nextn_predict_layers}) must be < {a}.block_count ({self.block_count})"
            )
        if self.is_moe:
            self._check_moe()
        elif self.n_expert or self.n_expert_used or self.n_ff_exp or self.n_ff_shexp:
            raise HParamsError(f"[{a}] a dense model has no experts, got {a}.expert_count={self.n_expert}")

    def _check_moe(self) -> None:
        a = self.arch
        if not 0 < self.n_expert_used <= self.n_expert:
            raise HParamsError(
                f"{a}.expert_used_count must be in 1..{a}.expert_count={self.n_expert}, got {self.n_expert_used}"
            )
        if self.ff_exp <= 0:
            raise HParamsError(f"{a}.expert_feed_forward_length is missing and {a}.feed_forward_length gives no fallback")
        if self.ff_shexp <= 0:
            raise HParamsError(
                f"{a}.expert_shared_feed_forward_length is missing and {a}.feed_forward_length gives no fallback"
            )


def _positive(hp: Qwen35HParams, field: str, key: str) -> None:
    _in_range(hp, field, key, 1)


def _in_range(hp: Qwen35HParams, field: str, key: str, lo: int) -> None:
    v = getattr(hp, field)
    if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= MAX_DIM:
        what = "a positive integer" if lo == 1 else f"an integer >= {lo}"
        raise HParamsError(f"{key} must be {what} (at most {MAX_DIM}), got {v!r}")
