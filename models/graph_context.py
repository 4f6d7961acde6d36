"""The graph context of the Qwen3.5 models: `build_*` helpers shared by the architectures.

A `GraphContext` builds ONE ubatch graph. It takes plain things, not the memory module:
the ubatch's `UBatchShape` (the dims that fix the topology), the persistent state leafs
(`StateTensors`: K/V caches, conv and ssm states, owned by the memory) and the weights. It
creates the graph's input tensors (`GraphInputs`), which the caller fills before every run
(`GraphInputs.set`, or `set_from` with the memory's per-ubatch `memory.UBatchInputs`).

Rows of a ubatch are n_seqs sequences x n_seq_tokens tokens, sequence-major: row
`g * n_seq_tokens + t` is token t of the g-th sequence. Shapes are in ne order.

Graph inputs (all flagged INPUT; numpy shapes in parentheses):
    inp_tokens  I32 [n_tokens]                   token ids            (or inp_embd F32 [n_embd, n_tokens])
    inp_pos     I32 [4 * n_tokens]               rope_multi positions: the token positions 4 times (text)
    inp_out_ids I32 [n_outputs]                  rows that produce logits; absent when every row does
    kv_slots    I32 [n_tokens]                   cache cell of each row: set_rows destination (attention)
    kq_mask     F32 [n_kv, n_mask_rows]          0 / -inf; (n_mask_rows, n_kv)            (attention)
    rs_src      I32 [n_seqs]                     state rows to read the initial states from (delta net)
    rs_dst      I32 [n_seqs, 1 + n_snapshots]    (1 + n_snapshots, n_seqs): row j receives the
                                                 state j tokens before the end (j = 0: final) (delta net)

Writes into persistent state are side effects (set_rows into the cache/state leafs); the
context expands them into the graph as they are made, as ggml_build_forward_expand does.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

import graphir as gr
from graphir.types import row_size

if TYPE_CHECKING:
    from .hparams import Qwen35HParams
    from .memory import UBatchInputs
    from .weights import LayerWeights

# MoE: the floor of the top-k weight sum before normalizing (the smallest normal F16, as llama.cpp)
MOE_WEIGHTS_SUM_MIN = 6.103515625e-5


@dataclass(frozen=True)
class UBatchShape:
    """The dims that fix a ubatch graph's topology: equal shapes give equal graphs (one plan).

    Attributes:
        n_seqs, n_seq_tokens: the ubatch is n_seqs sequences x n_seq_tokens tokens.
        n_outputs: rows that produce logits (and h_nextn); 0 builds no output head.
        n_kv: cache cells attention reads (cells 0 .. n_kv-1; padded by the memory). 0: no attention.
        n_mask_rows: rows of kq_mask (>= n_tokens; padding rows are -inf). 0: n_tokens.
        n_snapshots: extra state planes to write: gated_delta_net runs with 1 + n_snapshots
            snapshots; needs n_snapshots < n_seq_tokens (a slot per token at most).
        embd: the rows come in as embeddings [n_embd, n_tokens] instead of token ids.
    """

    n_seqs: int
    n_seq_tokens: int
    n_outputs: int
    n_kv: int = 0
    n_mask_rows: int = 0
    n_snapshots: int = 0
    embd: bool = False

    def __post_init__(self) -> None:
        ok = (self.n_seqs >= 1 and self.n_seq_tokens >= 1 and 0 <= self.n_outputs <= self.n_tokens
              and self.n_kv >= 0 and self.n_mask_rows >= 0 and 0 <= self.n_snapshots < self.n_seq_tokens)  # fmt: skip
        if not ok:
            raise ValueError(f"[graph] bad ubatch shape {self}")
        if self.n_mask_rows == 0:
            object.__setattr__(self, "n_mask_rows", self.n_tokens)
        if self.n_mask_rows < self.n_tokens:
            raise ValueError(f"[graph] n_mask_rows ({self.n_mask_rows}) < n_tokens ({self.n_tokens})")

    @property
    def n_tokens(self) -> int:
        return self.n_seqs * self.n_seq_tokens

    @property
    def n_planes(self) -> int:
        """State planes written per sequence (gated_delta_net's `snapshots`)."""
        return 1 + self.n_snapshots

    @classmethod
    def of(cls, ubi: UBatchInputs) -> UBatchShape:
        """The shape of the memory's inputs for one ubatch."""
        ub = ubi.ubatch
        kv, rs = ubi.kv, ubi.rs
        return cls(
            n_seqs=ub.n_seqs, n_seq_tokens=ub.n_seq_tokens, n_outputs=len(ub.out_rows),
            n_kv=kv.n_kv if kv is not None else 0, n_mask_rows=kv.mask.shape[0] if kv is not None else 0,
            n_snapshots=rs.n_snapshots if rs is not None else 0, embd=ub.tokens is None,
        )  # fmt: skip


@dataclass(frozen=True, eq=False)
class StateTensors:
    """Persistent per-layer state leafs (owned by the memory), keyed by layer il.

    k_l[il] / v_l[il]: [n_embd_k_gqa / n_embd_v_gqa, n_ctx] F16 or F32 (column c = cell c).
    r_l[il]: F32 [(d_conv - 1) * conv_channels, n_rows], a row laid out as [d_conv - 1, conv_channels].
    s_l[il]: F32 [S_v * S_v * H_v, n_rows], a row laid out as the gated_delta_net state [S_v, S_v, H_v].
    """

    k_l: Mapping[int, gr.Tensor] = field(default_factory=dict)
    v_l: Mapping[int, gr.Tensor] = field(default_factory=dict)
    r_l: Mapping[int, gr.Tensor] = field(default_factory=dict)
    s_l: Mapping[int, gr.Tensor] = field(default_factory=dict)

    @classmethod
    def of(cls, memory: Any) -> StateTensors:
        """The leafs of a memory (KVCache, RecurrentMemory or HybridMemory: its `components`)."""
        parts: dict[str, dict[int, gr.Tensor]] = {"k_l": {}, "v_l": {}, "r_l": {}, "s_l": {}}
        for c in memory.components:
            for name, d in parts.items():
                d.update(getattr(c, name, {}))
        return cls(**parts)


@dataclass(eq=False)
class GraphInputs:
    """The input tensors of one ubatch graph (None where the graph has no such input)."""

    shape: UBatchShape
    tokens: gr.Tensor | None = None  # I32 [n_tokens]
    embd: gr.Tensor | None = None  # F32 [n_embd, n_tokens]
    pos: gr.Tensor | None = None  # I32 [4 * n_tokens]
    out_ids: gr.Tensor | None = None  # I32 [n_outputs]
    kv_slots: gr.Tensor | None = None  # I32 [n_tokens]
    kq_mask: gr.Tensor | None = None  # F32 [n_kv, n_mask_rows]
    rs_src: gr.Tensor | None = None  # I32 [n_seqs]
    rs_dst: gr.Tensor | None = None  # I32 [n_seqs, n_planes]

    def set(self, plan: gr.Plan, *, pos: np.ndarray, tokens: np.ndarray | None = None,
            embd: np.ndarray | None = None, out_ids: np.ndarray | None = None,
            kv_slots: np.ndarray | None = None, kq_mask: np.ndarray | None = None,
            rs_src: np.ndarray | None = None, rs_dst: np.ndarray | None = None) -> None:  # fmt: skip
        """Write one run's values (numpy shapes): pos (n_tokens,) token positions (tiled to the 4
        rope components here), tokens (n_tokens,), embd (n_tokens, n_embd), out_ids (n_outputs,),
        kv_slots (n_tokens,), kq_mask (n_mask_rows, n_kv), rs_src (n_seqs,), rs_dst (n_planes, n_seqs).
        Every input the graph has must be given; ValueError names a missing one, and `Plan.set_input`
        (the one size check) a misshaped one, before writing it."""
        values = (("tokens", tokens), ("embd", embd), ("pos", pos), ("out_ids", out_ids), ("kv_slots", kv_slots),
                  ("kq_mask", kq_mask), ("rs_src", rs_src), ("rs_dst", rs_dst))  # fmt: skip
        for name, value in values:
            t = getattr(self, name)
            if t is None:
                continue
            if value is None:
                raise ValueError(f"[graph] input {name} {list(t.ne)} needs a value")
            if name == "pos":  # the 4 rope components (sections) take the token's position
                value = np.concatenate((value, value, value, value))
            plan.set_input(t, value)

    def set_from(self, plan: gr.Plan, ubi: UBatchInputs) -> None:
        """Write the values of the memory's inputs for one ubatch. ubi.kv.k_shift, ubi.rs.copies and
        ubi.rs.zero_rows are not graph inputs: run `memory.build_state_update` with them first."""
        ub, kv, rs = ubi.ubatch, ubi.kv, ubi.rs
        out_rows = ub.out_rows if self.out_ids is not None else None
        self.set(plan, pos=ub.pos, tokens=ub.tokens, embd=ub.embd, out_ids=out_rows,
                 kv_slots=None if kv is None else kv.slots, kq_mask=None if kv is None else kv.mask,
                 rs_src=None if rs is None else rs.src_rows, rs_dst=None if rs is None else rs.dst_rows)  # fmt: skip


@dataclass(eq=False)
class GraphResult:
    """A built ubatch graph: its inputs and its outputs (rows = the output rows, in order)."""

    graph: gr.Graph
    inputs: GraphInputs
    logits: gr.Tensor | None  # F32 [n_vocab, n_outputs]
    h_nextn: gr.Tensor | None  # F32 [n_embd, n_outputs]: the post-output-norm hidden state (MTP)


class GraphContext:
    """Builds one ubatch graph: inputs, named intermediates, the state writes."""

    def __init__(self, hp: Qwen35HParams, shape: UBatchShape, state: StateTensors | None = None) -> None:
        self.hp, self.shape = hp, shape
        self.state = state if state is not None else StateTensors()
        self.gf = gr.Graph()
        self.inputs = GraphInputs(shape)
        self.n_tokens = shape.n_tokens
        self.n_seqs, self.n_seq_tokens = shape.n_seqs, shape.n_seq_tokens
        self.eps = hp.rms_eps

    # ---- naming and side effects -------------------------------------------------------------
    @staticmethod
    def cb(cur: gr.Tensor, name: str, il: int) -> gr.Tensor:
        """Name an intermediate `name-il` (just `name` for il < 0, the model-level tensors)."""
        return cur.set_name(f"{name}-{il}" if il >= 0 else name)

    def expand(self, t: gr.Tensor) -> gr.Tensor:
        """Add t (a write into persistent state) and its ancestors to the graph now."""
        gr.build_forward_expand(self.gf, t)
        return t

    # ---- inputs ----------------------------------------------------------------------------
    def _input(self, attr: str, type: gr.DType, ne: tuple[int, ...], name: str) -> gr.Tensor:
        t = getattr(self.inputs, attr)
        if t is None:
            t = gr.new_input(type, ne, name)
            setattr(self.inputs, attr, t)
        return t

    def build_inp_tokens(self) -> gr.Tensor:
        """Token ids, I32 [n_tokens]."""
        return self._input("tokens", gr.I32, (self.n_tokens,), "inp_tokens")

    def build_inp_embd_rows(self) -> gr.Tensor:
        """Given input rows (embeddings; the MTP head's hidden states), F32 [n_embd, n_tokens]."""
        return self._input("embd", gr.F32, (self.hp.n_embd, self.n_tokens), "inp_embd")

    def build_inp_embd(self, token_embd: gr.Tensor) -> gr.Tensor:
        """The trunk's input rows: token embeddings (get_rows) or, with shape.embd, the given rows.
        -> F32 [n_embd, n_tokens]"""
        if self.shape.embd:
            return self.build_inp_embd_rows()
        return self.cb(gr.get_rows(token_embd, self.build_inp_tokens()), "inp_embd", -1)

    def build_inp_pos(self) -> gr.Tensor:
        return self._input("pos", gr.I32, (4 * self.n_tokens,), "inp_pos")

    def build_inp_out_ids(self) -> gr.Tensor | None:
        """The output rows, or None when every row is an output (no get_rows needed) or none is."""
        if self.shape.n_outputs in (0, self.n_tokens):
            return None
        return self._input("out_ids", gr.I32, (self.shape.n_outputs,), "inp_out_ids")

    def build_inp_attn(self) -> tuple[gr.Tensor, gr.Tensor]:
        """(kv_slots I32 [n_tokens], kq_mask F32 [n_kv, n_mask_rows]), shared by every attention layer."""
        if self.shape.n_kv < 1:
            raise ValueError("[graph] an attention layer needs n_kv >= 1 in the ubatch shape")
        slots = self._input("kv_slots", gr.I32, (self.n_tokens,), "kv_slots")
        mask = self._input("kq_mask", gr.F32, (self.shape.n_kv, self.shape.n_mask_rows), "kq_mask")
        return slots, mask

    def build_inp_rs(self) -> tuple[gr.Tensor, gr.Tensor]:
        """(rs_src I32 [n_seqs], rs_dst I32 [n_seqs, n_planes]), shared by every delta-net layer."""
        src = self._input("rs_src", gr.I32, (self.n_seqs,), "rs_src")
        dst = self._input("rs_dst", gr.I32, (self.n_seqs, self.shape.n_planes), "rs_dst")
        return src, dst

    # ---- norms and FFNs ------------------------------------------------------------------------
    def build_norm(self, x: gr.Tensor, w: gr.Tensor, name: str, il: int) -> gr.Tensor:
        """rms_norm(x) * w over dim 0."""
        cur = self.cb(gr.rms_norm(x, self.eps), f"{name}_rms", il)
        return self.cb(gr.mul(cur, w), name, il)

    def build_ffn(self, x: gr.Tensor, up: gr.Tensor, gate: gr.Tensor, down: gr.Tensor, il: int,
                  name: str = "ffn") -> gr.Tensor:  # fmt: skip
        """SwiGLU: down(silu(gate x) * up x). x [n_embd, n] -> [n_embd, n]"""
        g = self.cb(gr.mul_mat(gate, x), f"{name}_gate", il)
        u = self.cb(gr.mul_mat(up, x), f"{name}_up", il)
        cur = self.cb(gr.mul(self.cb(gr.silu(g), f"{name}_gate_silu", il), u), f"{name}_swiglu", il)
        return self.cb(gr.mul_mat(down, cur), f"{name}_down", il)

    def build_layer_ffn(self, x: gr.Tensor, L: LayerWeights, il: int) -> gr.Tensor:
        """The layer's FFN as its weights say: the MoE when it has a router (qwen35moe), else SwiGLU."""
        if L.ffn_gate_inp is not None:
            return self.build_moe_ffn(x, L, il)
        return self.build_ffn(x, L.ffn_up, L.ffn_gate, L.ffn_down, il)

    def build_moe_ffn(self, x: gr.Tensor, L: LayerWeights, il: int) -> gr.Tensor:
        """Routed experts (softmax router, top-k, weights renormalized over the k) plus the shared
        expert gated by sigmoid(ffn_gate_inp_shexp x). x [n_embd, n] -> [n_embd, n]"""
        n, k, n_expert = x.ne[1], self.hp.n_expert_used, self.hp.n_expert
        logits = self.cb(gr.mul_mat(L.ffn_gate_inp, x), "ffn_moe_logits", il)  # [n_expert, n]
        probs = self.cb(gr.soft_max_ext(logits), "ffn_moe_probs", il)
        selected = self.cb(gr.top_k(probs, k), "ffn_moe_topk", il)  # I32 [k, n]
        probs_3d = self.cb(gr.reshape(probs, 1, n_expert, n), "ffn_moe_probs_3d", il)  # [1, n_expert, n]
        weights = self.cb(gr.get_rows(probs_3d, selected), "ffn_moe_weights", il)  # [1, k, n]
        weights = self.cb(gr.reshape(weights, k, n), "ffn_moe_weights_2d", il)  # [k, n]
        w_sum = self.cb(gr.sum_rows(weights), "ffn_moe_weights_sum", il)  # [1, n]
        w_sum = self.cb(gr.clamp(w_sum, MOE_WEIGHTS_SUM_MIN, math.inf), "ffn_moe_weights_sum_clamped", il)
        weights = self.cb(gr.div(weights, w_sum), "ffn_moe_weights_norm", il)
        weights = self.cb(gr.reshape(weights, 1, k, n), "ffn_moe_weights_3d", il)  # [1, k, n]

        xe = self.cb(gr.reshape(x, x.ne[0], 1, n), "ffn_moe_in", il)  # [n_embd, 1, n]
        if L.ffn_gate_up_exps is not None:  # fused [gate | up] along ne1
            gu = self.cb(gr.mul_mat_id(L.ffn_gate_up_exps, xe, selected), "ffn_moe_gate_up", il)  # [2F, k, n]
            F = gu.ne[0] // 2
            gate = self.cb(gr.view_3d(gu, F, k, n, gu.nb[1], gu.nb[2], 0), "ffn_moe_gate", il)  # [F, k, n]
            up = self.cb(gr.view_3d(gu, F, k, n, gu.nb[1], gu.nb[2], F * gu.nb[0]), "ffn_moe_up", il)  # [F, k, n]
        else:
            gate = self.cb(gr.mul_mat_id(L.ffn_gate_exps, xe, selected), "ffn_moe_gate", il)  # [F, k, n]
            up = self.cb(gr.mul_mat_id(L.ffn_up_exps, xe, selected), "ffn_moe_up", il)
        par = self.cb(gr.mul(self.cb(gr.silu(gate), "ffn_moe_gate_silu", il), up), "ffn_moe_swiglu", il)
        experts = self.cb(gr.mul_mat_id(L.ffn_down_exps, par, selected), "ffn_moe_down", il)  # [n_embd, k, n]
        experts = self.cb(gr.mul(experts, weights), "ffn_moe_weighted", il)
        moe_out = None
        for e in range(k):  # sum over the k selected experts
            view = self.cb(gr.view_2d(experts, experts.ne[0], n, experts.nb[2], e * experts.nb[1]),
                           f"ffn_moe_out_{e}", il)  # fmt: skip  # [n_embd, n]
            moe_out = view if moe_out is None else self.cb(gr.add(moe_out, view), f"ffn_moe_sum_{e}", il)
        shexp = self.build_ffn(x, L.ffn_up_shexp, L.ffn_gate_shexp, L.ffn_down_shexp, il, "ffn_shexp")
        sh_gate = self.cb(gr.mul_mat(L.ffn_gate_inp_shexp, x), "shared_expert_gate", il)  # [1, n]
        sh_gate = self.cb(gr.sigmoid(sh_gate), "shared_expert_gate_sigmoid", il)
        shexp = self.cb(gr.mul(shexp, sh_gate), "ffn_shexp_gated", il)
        return self.cb(gr.add(moe_out, shexp), "ffn_moe_out", il)

    # ---- full attention --------------------------------------------------------------------
    def build_attn(self, x: gr.Tensor, L: LayerWeights, pos: gr.Tensor, il: int) -> gr.Tensor:
        """Qwen3.5 gated attention: joint [q | gate] projection per head, q/k RMS norms, IMRoPE
        on the first n_rot dims, grouped-query attention over the KV cache, output * sigmoid(gate).
        x [n_embd, n_tokens] -> [n_embd, n_tokens]"""
        hp, n = self.hp, self.n_tokens
        hd, H, H_kv = hp.head_dim, hp.n_head, hp.n_head_kv
        if L.attn_q is not None:
            qg = self.cb(gr.mul_mat(L.attn_q, x), "Qcur_full", il)  # [2 * hd * H, n]
            k = self.cb(gr.mul_mat(L.attn_k, x), "Kcur", il)  # [hd * H_kv, n]
            v = self.cb(gr.mul_mat(L.attn_v, x), "Vcur", il)  # [hd * H_kv, n]
        else:  # fused q|gate, k, v rows
            qkv = self.cb(gr.mul_mat(L.attn_qkv, x), "QKVcur", il)  # [2 * hd * H + 2 * hd * H_kv, n]
            es, q2 = qkv.nb[0], 2 * hp.n_embd_q
            qg = self.cb(gr.view_2d(qkv, q2, n, qkv.nb[1], 0), "Qcur_full", il)  # [2 * hd * H, n]
            k = self.cb(gr.view_2d(qkv, hp.n_embd_k_gqa, n, qkv.nb[1], q2 * es), "Kcur_view", il)  # [hd * H_kv, n]
            k = self.cb(gr.cont(k), "Kcur", il)
            v = gr.view_2d(qkv, hp.n_embd_v_gqa, n, qkv.nb[1], (q2 + hp.n_embd_k_gqa) * es)
            v = self.cb(v, "Vcur", il)  # [hd * H_kv, n]
        es = qg.nb[0]
        q = self.cb(gr.view_3d(qg, hd, H, n, 2 * hd * es, qg.nb[1], 0), "Qcur_view", il)  # [hd, H, n]
        gate = self.cb(gr.view_3d(qg, hd, H, n, 2 * hd * es, qg.nb[1], hd * es), "gate_view", il)  # [hd, H, n]
        gate = self.cb(gr.cont(gate, hd * H, n), "gate_reshaped", il)  # [hd * H, n]
        q = self.build_norm(q, L.attn_q_norm, "Qcur_normed", il)
        k = self.cb(gr.reshape(k, hd, H_kv, n), "Kcur_3d", il)  # [hd, H_kv, n]
        k = self.build_norm(k, L.attn_k_norm, "Kcur_normed", il)
        q = self.cb(rope(hp, q, pos), "Qcur_rope", il)
        k = self.cb(rope(hp, k, pos), "Kcur_rope", il)

        cur = self.build_attn_mha(q, k, v, il)  # [hd * H, n]
        cur = self.cb(cur, "attn_pregate", il)
        gate = self.cb(gr.sigmoid(gate), "gate_sigmoid", il)
        cur = self.cb(gr.mul(cur, gate), "attn_gated", il)
        return self.cb(gr.mul_mat(L.attn_output, cur), "attn_output", il)

    def build_attn_mha(self, q: gr.Tensor, k: gr.Tensor, v: gr.Tensor, il: int) -> gr.Tensor:
        """Write this ubatch's K/V rows into the layer's cache (set_rows at kv_slots), then attend
        over cells 0..n_kv-1 with kq_mask. q [hd, H, n], k [hd, H_kv, n], v [hd * H_kv, n]
        -> [hd * H, n]"""
        hd, n, n_kv = q.ne[0], self.n_tokens, self.shape.n_kv
        slots, mask = self.build_inp_attn()
        k_cache, v_cache = self.state.k_l[il], self.state.v_l[il]
        if n_kv > k_cache.ne[1]:
            raise ValueError(f"[graph] layer {il}: n_kv {n_kv} exceeds the cache's {k_cache.ne[1]} cells")
        k_rows = self.cb(gr.reshape(k, k.ne[0] * k.ne[1], n), "k_rows", il)  # [n_embd_k_gqa, n]
        k_stored = self.expand(self.cb(gr.set_rows(k_cache, k_rows, slots), "k_cache_store", il))
        v_stored = self.expand(self.cb(gr.set_rows(v_cache, v, slots), "v_cache_store", il))
        # NOTE: the views read the *stored* tensors, so they run after this ubatch's rows land
        H_kv = k.ne[1]
        ek = row_size(k_cache.type, hd)
        kv_k = self.cb(gr.view_3d(k_stored, hd, H_kv, n_kv, ek, k_cache.nb[1], 0), "k_view", il)  # [hd, H_kv, n_kv]
        kv_v = self.cb(gr.view_3d(v_stored, hd, H_kv, n_kv, row_size(v_cache.type, hd), v_cache.nb[1], 0),
                       "v_view", il)  # fmt: skip  # [hd, H_kv, n_kv]
        kv_k = self.cb(gr.permute(kv_k, 0, 2, 1, 3), "k_heads", il)  # [hd, n_kv, H_kv]
        kv_v = self.cb(gr.permute(kv_v, 0, 2, 1, 3), "v_heads", il)  # [hd, n_kv, H_kv]
        q = self.cb(gr.permute(q, 0, 2, 1, 3), "q_heads", il)  # [hd, n, H]
        out = self.cb(gr.flash_attn_ext(q, kv_k, kv_v, mask, 1.0 / math.sqrt(hd)), "fattn", il)  # [hd, H, n]
        return self.cb(gr.reshape(out, hd * out.ne[1], n), "kqv_out", il)  # [hd * H, n]

    # ---- gated delta net ----------------------------------------------------------------------
    def build_rs(self, states: gr.Tensor, il: int, name: str) -> gr.Tensor:
        """The initial state of each sequence: its row of `states` at rs_src. -> [row, n_seqs]"""
        src, _ = self.build_inp_rs()
        return self.cb(gr.get_rows(states, src), name, il)

    def build_delta_net(self, x: gr.Tensor, L: LayerWeights, il: int) -> gr.Tensor:
        """A gated delta net layer. x [n_embd, n_tokens] -> [n_embd, n_tokens]"""
        hp, ns, nt = self.hp, self.n_seqs, self.n_seq_tokens
        S_k, H_k, S_v, H_v = hp.S_k, hp.H_k, hp.S_v, hp.H_v
        d_conv, channels = hp.d_conv, hp.conv_channels
        r_l, s_l = self.state.r_l[il], self.state.s_l[il]
        _, dst = self.build_inp_rs()

        qkv = self.cb(gr.mul_mat(L.attn_qkv, x), "linear_attn_qkv_mixed", il)  # [channels, n_tokens]
        qkv = self.cb(gr.reshape(qkv, channels, nt, ns), "qkv_mixed_3d", il)  # [channels, nt, ns]
        z = self.cb(gr.mul_mat(L.attn_gate, x), "z", il)  # [S_v * H_v, n_tokens]
        beta = self.cb(gr.mul_mat(L.ssm_beta, x), "beta", il)  # [H_v, n_tokens]
        beta = self.cb(gr.reshape(beta, 1, H_v, nt, ns), "beta_4d", il)  # [1, H_v, nt, ns]
        beta = self.cb(gr.sigmoid(beta), "beta_sigmoid", il)
        alpha = self.cb(gr.mul_mat(L.ssm_alpha, x), "alpha", il)  # [H_v, n_tokens]
        alpha = self.cb(gr.add(alpha, L.ssm_dt), "alpha_biased", il)
        g = self.cb(gr.softplus(alpha), "a_softplus", il)
        g = self.cb(gr.mul(g, L.ssm_a), "gate", il)  # softplus(alpha + dt) * -exp(A_log)
        g = self.cb(gr.reshape(g, 1, H_v, nt, ns), "gate_4d", il)  # [1, H_v, nt, ns]

        # causal conv over [conv_state | qkv] (time innermost), then SiLU
        conv_states = self.build_rs(r_l, il, "conv_states")  # [(d_conv-1) * channels, ns]
        conv_states = self.cb(gr.reshape(conv_states, d_conv - 1, channels, ns), "conv_states_3d", il)
        qkv_t = self.cb(gr.transpose(qkv), "qkv_mixed_t", il)  # [nt, channels, ns]
        conv_input = self.cb(gr.concat(conv_states, qkv_t, 0), "conv_input", il)  # [d_conv-1+nt, channels, ns]
        self.build_conv_state_store(conv_input, r_l, dst, il)
        conv = self.cb(gr.ssm_conv(conv_input, L.ssm_conv1d), "conv_output_raw", il)  # [channels, nt, ns]
        conv = self.cb(gr.silu(conv), "conv_output_silu", il)

        # split q, k, v (rows of the conv output), L2-norm q and k
        es, nb1, nb2 = conv.nb[0], conv.nb[1], conv.nb[2]
        q = gr.view_4d(conv, S_k, H_k, nt, ns, S_k * es, nb1, nb2, 0)  # [S_k, H_k, nt, ns]
        k = gr.view_4d(conv, S_k, H_k, nt, ns, S_k * es, nb1, nb2, S_k * H_k * es)  # [S_k, H_k, nt, ns]
        v = gr.view_4d(conv, S_v, H_v, nt, ns, S_v * es, nb1, nb2, 2 * S_k * H_k * es)  # [S_v, H_v, nt, ns]
        q, k, v = self.cb(q, "q_conv", il), self.cb(k, "k_conv", il), self.cb(v, "v_conv", il)
        q = self.cb(gr.l2_norm(q, self.eps), "q_conv_norm", il)
        k = self.cb(gr.l2_norm(k, self.eps), "k_conv_norm", il)

        state = self.build_rs(s_l, il, "ssm_states")  # [S_v * S_v * H_v, ns]
        state = self.cb(gr.reshape(state, S_v, S_v, H_v, ns), "state_predelta", il)  # [S_v, S_v, H_v, ns]
        P = self.shape.n_planes
        gdn = self.cb(gr.gated_delta_net(q, k, v, g, beta, state, snapshots=P), "gdn_out", il)
        out = self.cb(gr.view_4d(gdn, S_v, H_v, nt, ns, S_v * gdn.nb[0], gdn.nb[1], gdn.nb[1] * nt, 0),
                      "attn_output", il)  # fmt: skip  # [S_v, H_v, nt, ns]
        self.build_ssm_state_store(gdn, s_l, dst, il)

        # gated RMS norm: rms_norm(o) * ssm_norm * silu(z), then the output projection
        z = self.cb(gr.reshape(z, S_v, H_v, nt, ns), "z_4d", il)  # [S_v, H_v, nt, ns]
        out = self.build_norm(out, L.ssm_norm, "attn_out_norm", il)
        out = self.cb(gr.mul(out, self.cb(gr.silu(z), "z_silu", il)), "attn_out_gated", il)
        out = self.cb(gr.reshape(out, S_v * H_v, nt * ns), "final_output", il)  # [S_v * H_v, n_tokens]
        return self.cb(gr.mul_mat(L.ssm_out, out), "linear_attn_out", il)

    def build_conv_state_store(self, conv_input: gr.Tensor, r_l: gr.Tensor, dst: gr.Tensor, il: int) -> None:
        """Plane j of each sequence gets the conv window ending j tokens before the end:
        columns [nt - j, nt - j + d_conv - 1) of conv_input [d_conv-1+nt, channels, ns]."""
        w, channels, ns = conv_input.ne[0] - self.n_seq_tokens, conv_input.ne[1], self.n_seqs
        es = conv_input.nb[0]
        for j in range(self.shape.n_planes):
            offs = (self.n_seq_tokens - j) * es
            win = gr.view_3d(conv_input, w, channels, ns, conv_input.nb[1], conv_input.nb[2], offs)
            win = self.cb(win, f"conv_state_{j}", il)  # [d_conv-1, channels, ns]
            win = self.cb(gr.cont(win, w * channels, ns), f"conv_state_rows_{j}", il)  # [(d_conv-1) * channels, ns]
            rows = self.cb(gr.view_1d(dst, ns, j * dst.nb[1]), f"rs_dst_{j}", il)  # [ns]
            self.expand(self.cb(gr.set_rows(r_l, win, rows), f"conv_state_store_{j}", il))

    def build_ssm_state_store(self, gdn: gr.Tensor, s_l: gr.Tensor, dst: gr.Tensor, il: int) -> None:
        """gated_delta_net's state slots (slot j = j tokens before the end, [S_v, S_v, H_v, ns]
        each, contiguous) go to rs_dst[j] in one set_rows: column j * ns + s."""
        n_embd_s, P, ns = s_l.ne[0], self.shape.n_planes, self.n_seqs
        offs = self.n_tokens * gdn.nb[1]
        states = self.cb(gr.view_2d(gdn, n_embd_s, P * ns, n_embd_s * gdn.nb[0], offs), "new_states", il)
        rows = self.cb(gr.reshape(dst, P * ns), "rs_dst_flat", il)  # [P * ns]
        self.expand(self.cb(gr.set_rows(s_l, states, rows), "ssm_state_store", il))

    # ---- output ------------------------------------------------------------------------------
    def build_result(self, cur: gr.Tensor | None, output_norm: gr.Tensor, output: gr.Tensor,
                     want_h_nextn: bool = False) -> GraphResult:  # fmt: skip
        """The head on the output rows: h_nextn = rms_norm(cur) * output_norm, logits = output h.
        cur [n_embd, n_outputs] (None when n_outputs == 0: no head, the graph only writes state)."""
        logits = h = None
        if cur is not None and self.shape.n_outputs > 0:
            h = self.build_norm(cur, output_norm, "result_norm", -1)  # [n_embd, n_outputs]
            logits = self.cb(gr.mul_mat(output, h), "result_output", -1)  # [n_vocab, n_outputs]
            self.expand(logits.set_output())
            if want_h_nextn:
                h.set_output()
        if not self.gf.nodes:
            raise ValueError("[graph] nothing to compute")
        for name in ("tokens", "embd", "pos", "out_ids", "kv_slots", "kq_mask", "rs_src", "rs_dst"):
            t = getattr(self.inputs, name)
            if t is not None and t not in self.gf:  # e.g. the mask when no row reaches attention
                setattr(self.inputs, name, None)
        return GraphResult(self.gf, self.inputs, logits, h if want_h_nextn else None)


def rope(hp: Qwen35HParams, x: gr.Tensor, pos: gr.Tensor) -> gr.Tensor:
    """IMRoPE (rope_multi, NEOX pairs) of the first n_rot dims of each head.
    x [hd, heads, n], pos I32 [4 * n] -> [hd, heads, n]"""
    return gr.rope_multi(x, pos, None, hp.n_rot, hp.rope_sections, gr.ROPE_IMROPE,
                         n_ctx_orig=hp.n_ctx_train, freq_base=hp.rope_freq_base)  # fmt: skip
