"""The PyTorch side of `graphir train-tiny`: the tiny Qwen3.5 + MTP model as graphir's qwen35 graph
computes it, and the gated delta rule (chunked for training; token by token as the definition).

Parameters are keyed by their GGUF names, so export is a rename; see `tools/train_tiny.py` for the
recipe and `tests/models/test_train_tiny.py` for the parity with graphir.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

TORCH_PIN = "torch==2.13.0"


def import_torch() -> Any:
    """torch, or a clear error saying how to install the pinned CPU build."""
    try:
        import torch
    except ImportError as e:
        raise SystemExit(f"[train-tiny] PyTorch is needed: pip install -e '.[train]' (pins {TORCH_PIN})") from e
    return torch


# --------------------------------------------------------------------------------------------
# the model
# --------------------------------------------------------------------------------------------


def build_model(cfg: Any, seed: int) -> Any:
    # cfg: train_tiny.ModelConfig
    """A `TinyQwen35` (defined lazily: torch is optional)."""
    torch = import_torch()
    nn, F = torch.nn, torch.nn.functional

    def rms_norm(x: Any, w: Any, eps: float) -> Any:
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * w

    def l2_norm(x: Any, eps: float) -> Any:
        return x / x.norm(dim=-1, keepdim=True).clamp_min(eps)

    class TinyQwen35(nn.Module):
        """Parameters are keyed by their GGUF names ('.' -> '__'), stored in numpy order (ne reversed),
        except blk.N.ssm_a, kept as A_log (GGUF holds ssm_a = -exp(A_log))."""

        def __init__(self) -> None:
            super().__init__()
            self.cfg = cfg
            self.p = nn.ParameterDict()
            gen = torch.Generator().manual_seed(seed)
            E = cfg.n_embd

            def add(name: str, *shape: int, std: float | None = None, value: float | None = None) -> None:
                t = torch.empty(*shape)
                if value is not None:
                    t.fill_(value)
                else:
                    t.normal_(0.0, std if std is not None else shape[-1] ** -0.5, generator=gen)
                self.p[name.replace(".", "__")] = nn.Parameter(t)

            out_std = (2 * (cfg.n_layer + 1)) ** -0.5  # residual-branch outputs start smaller
            add("token_embd.weight", cfg.n_vocab, E, std=0.02)
            add("output_norm.weight", E, value=1.0)
            for il in range(cfg.n_layer + 1):
                p = f"blk.{il}."
                add(p + "attn_norm.weight", E, value=1.0)
                add(p + "post_attention_norm.weight", E, value=1.0)
                if il < cfg.n_layer and cfg.is_recurrent(il):
                    S, Hv = cfg.ssm_d_state, cfg.ssm_n_v_heads
                    add(p + "attn_qkv.weight", cfg.conv_channels, E)
                    add(p + "attn_gate.weight", S * Hv, E)
                    add(p + "ssm_conv1d.weight", cfg.conv_channels, cfg.ssm_d_conv, std=cfg.ssm_d_conv**-0.5)
                    add(p + "ssm_beta.weight", Hv, E)
                    add(p + "ssm_alpha.weight", Hv, E, std=0.1 * E**-0.5)
                    # decay rates spread as in Mamba-2: A in [1, 16], dt in [1e-3, 0.1] (dt.bias = softplus^-1(dt))
                    a_log = torch.log(torch.linspace(1.0, 16.0, Hv))
                    dt = torch.exp(torch.linspace(math.log(1e-3), math.log(0.1), Hv))
                    self.p[p.replace(".", "__") + "A_log"] = nn.Parameter(a_log)
                    self.p[(p + "ssm_dt.bias").replace(".", "__")] = nn.Parameter(dt + torch.log(-torch.expm1(-dt)))
                    add(p + "ssm_norm.weight", S, value=1.0)
                    add(p + "ssm_out.weight", E, S * Hv, std=out_std * (S * Hv) ** -0.5)
                else:
                    hd = cfg.head_dim
                    add(p + "attn_q.weight", 2 * hd * cfg.n_head, E)
                    add(p + "attn_k.weight", hd * cfg.n_head_kv, E)
                    add(p + "attn_v.weight", hd * cfg.n_head_kv, E)
                    add(p + "attn_output.weight", E, hd * cfg.n_head, std=out_std * (hd * cfg.n_head) ** -0.5)
                    add(p + "attn_q_norm.weight", hd, value=1.0)
                    add(p + "attn_k_norm.weight", hd, value=1.0)
                add(p + "ffn_gate.weight", cfg.n_ff, E)
                add(p + "ffn_up.weight", cfg.n_ff, E)
                add(p + "ffn_down.weight", E, cfg.n_ff, std=out_std * cfg.n_ff**-0.5)
            p = f"blk.{cfg.n_layer}.nextn."
            add(p + "eh_proj.weight", E, 2 * E)
            add(p + "enorm.weight", E, value=1.0)
            add(p + "hnorm.weight", E, value=1.0)
            add(p + "shared_head_norm.weight", E, value=1.0)
            n_pairs = cfg.n_rot // 2
            # theta_i = base^(-2i / n_rot) for the NEOX pairs (i, i + n_rot/2)
            self.register_buffer(
                "inv_freq", cfg.rope_freq_base ** (-torch.arange(n_pairs, dtype=torch.float64) * 2 / cfg.n_rot)
            )

        def w(self, name: str) -> Any:
            return self.p[name.replace(".", "__")]

        # ---- blocks --------------------------------------------------------------------------
        def rope(self, x: Any, pos: Any) -> Any:
            """NEOX rotation of the first n_rot dims of each head; x (B, T, H, hd), pos (T,)."""
            n = cfg.n_rot // 2
            ang = (pos.double()[:, None] * self.inv_freq[None, :]).float()  # (T, n)
            cos, sin = ang.cos()[None, :, None, :], ang.sin()[None, :, None, :]
            x0, x1, rest = x[..., :n], x[..., n : 2 * n], x[..., 2 * n :]
            return torch.cat([x0 * cos - x1 * sin, x0 * sin + x1 * cos, rest], -1)

        def attention(self, x: Any, il: int, pos: Any, ctx: Any = None, kv_out: list | None = None) -> Any:
            """Causal attention over x's own rows; with ctx = (k, v, mask) the rows attend to the
            context keys and their own (mask (T, T_ctx + T), True = attend) instead. kv_out
            receives this call's (k, v) (normed and rotated)."""
            B, T, _ = x.shape
            hd, H, Hkv = cfg.head_dim, cfg.n_head, cfg.n_head_kv
            p = f"blk.{il}."
            qg = F.linear(x, self.w(p + "attn_q.weight")).view(B, T, H, 2 * hd)
            q, gate = qg[..., :hd], qg[..., hd:].reshape(B, T, H * hd)
            k = F.linear(x, self.w(p + "attn_k.weight")).view(B, T, Hkv, hd)
            v = F.linear(x, self.w(p + "attn_v.weight")).view(B, T, Hkv, hd)
            q = self.rope(rms_norm(q, self.w(p + "attn_q_norm.weight"), cfg.rms_eps), pos)
            k = self.rope(rms_norm(k, self.w(p + "attn_k_norm.weight"), cfg.rms_eps), pos)
            if kv_out is not None:
                kv_out.append((k, v))
            mask = None
            if ctx is not None:
                k, v, mask = torch.cat([ctx[0], k], 1), torch.cat([ctx[1], v], 1), ctx[2]
            rep = H // Hkv  # query head h reads kv head h // rep
            k, v = k.repeat_interleave(rep, 2), v.repeat_interleave(rep, 2)
            o = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                                               attn_mask=mask, is_causal=mask is None, scale=hd**-0.5)  # fmt: skip
            o = o.transpose(1, 2).reshape(B, T, H * hd) * torch.sigmoid(gate)
            return F.linear(o, self.w(p + "attn_output.weight"))

        def delta_net(self, x: Any, il: int) -> Any:
            B, T, _ = x.shape
            S, Hk, Hv, C = cfg.ssm_d_state, cfg.ssm_n_group, cfg.ssm_n_v_heads, cfg.conv_channels
            p = f"blk.{il}."
            qkv = F.linear(x, self.w(p + "attn_qkv.weight"))  # (B, T, C)
            conv_w = self.w(p + "ssm_conv1d.weight")  # (C, d_conv)
            conv = F.conv1d(qkv.transpose(1, 2), conv_w[:, None, :], padding=cfg.ssm_d_conv - 1, groups=C)
            conv = F.silu(conv[..., :T]).transpose(1, 2)  # (B, T, C): causal, zero initial state
            q = conv[..., : S * Hk].reshape(B, T, Hk, S)
            k = conv[..., S * Hk : 2 * S * Hk].reshape(B, T, Hk, S)
            v = conv[..., 2 * S * Hk :].reshape(B, T, Hv, S)
            tile = torch.arange(Hv) % Hk  # value head j reads q/k head j % H_k
            q, k = l2_norm(q, cfg.rms_eps)[:, :, tile], l2_norm(k, cfg.rms_eps)[:, :, tile]
            beta = torch.sigmoid(F.linear(x, self.w(p + "ssm_beta.weight")))  # (B, T, Hv)
            alpha = F.linear(x, self.w(p + "ssm_alpha.weight")) + self.w(p + "ssm_dt.bias")
            g = F.softplus(alpha) * -torch.exp(self.p[p.replace(".", "__") + "A_log"])  # log decay, (B, T, Hv)
            o = delta_rule_chunked(torch, q, k, v, g, beta, self.chunk)  # (B, T, Hv, S)
            z = F.linear(x, self.w(p + "attn_gate.weight")).view(B, T, Hv, S)
            o = rms_norm(o, self.w(p + "ssm_norm.weight"), cfg.rms_eps) * F.silu(z)
            return F.linear(o.reshape(B, T, Hv * S), self.w(p + "ssm_out.weight"))

        def ffn(self, x: Any, il: int) -> Any:
            p = f"blk.{il}."
            gate = F.linear(x, self.w(p + "ffn_gate.weight"))
            return F.linear(F.silu(gate) * F.linear(x, self.w(p + "ffn_up.weight")), self.w(p + "ffn_down.weight"))

        def block(self, x: Any, il: int, pos: Any, ctx: Any = None, kv_out: list | None = None) -> Any:
            p = f"blk.{il}."
            h = rms_norm(x, self.w(p + "attn_norm.weight"), cfg.rms_eps)
            if il < cfg.n_layer and cfg.is_recurrent(il):
                mix = self.delta_net(h, il)
            else:
                mix = self.attention(h, il, pos, ctx, kv_out)
            x = x + mix
            return x + self.ffn(rms_norm(x, self.w(p + "post_attention_norm.weight"), cfg.rms_eps), il)

        # ---- forward -------------------------------------------------------------------------
        chunk = 64

        def forward(self, tokens: Any) -> tuple[Any, Any, Any, Any]:
            """tokens (B, T) at positions 0..T-1 -> (logits (B, T, V), h_nextn (B, T, E),
            MTP logits (B, T-1, V) and hidden (B, T-1, E): row r is position p = r + 1, reading
            x_p and h_{p-1}, predicting x_{p+1})."""
            logits, h = self.trunk(tokens)
            m_logits, m_hidden = self.mtp(tokens[:, 1:], h[:, :-1], torch.arange(1, tokens.shape[1]))
            return logits, h, m_logits, m_hidden

        def trunk(self, tokens: Any) -> tuple[Any, Any]:
            """tokens (B, T) at positions 0..T-1 -> (logits (B, T, V), h_nextn (B, T, E))."""
            emb = self.w("token_embd.weight")
            pos = torch.arange(tokens.shape[1])
            x = emb[tokens]
            for il in range(cfg.n_layer):
                x = self.block(x, il, pos)
            h = rms_norm(x, self.w("output_norm.weight"), cfg.rms_eps)
            return h @ emb.t(), h

        def mtp(
            self, tokens: Any, h_prev: Any, pos: Any, ctx: Any = None, kv_out: list | None = None
        ) -> tuple[Any, Any]:
            """The MTP head: tokens x_p (B, n), the trunk's h_{p-1} (B, n, E), positions (n,);
            ctx / kv_out as in `attention` (its block's attention)."""
            il, emb = cfg.n_layer, self.w("token_embd.weight")
            p = f"blk.{il}.nextn."
            e = rms_norm(emb[tokens], self.w(p + "enorm.weight"), cfg.rms_eps)
            hn = rms_norm(h_prev, self.w(p + "hnorm.weight"), cfg.rms_eps)
            x = F.linear(torch.cat([e, hn], -1), self.w(p + "eh_proj.weight"))
            x = self.block(x, il, pos, ctx, kv_out)
            hidden = rms_norm(x, self.w(p + "shared_head_norm.weight"), cfg.rms_eps)
            return hidden @ emb.t(), hidden

        def mtp_chained(self, tokens: Any, m_hidden: Any, kv: tuple[Any, Any]) -> tuple[Any, Any]:
            """The head's second draft step at every position q = 2..T-1: token x_q with the head's
            own hidden m_{q-1} (m_hidden, (B, T-1, E), rows = positions 1..T-1), attending to the
            true rows' keys/values `kv` of positions <= q-1 and its own. -> logits, hidden (B, T-2, .)"""
            return self.mtp_chain_step(tokens, m_hidden, [kv])

        def mtp_chain_step(self, tokens: Any, hidden: Any, kvs: list, kv_out: list | None = None) -> tuple[Any, Any]:
            """Draft step d = len(kvs) + 1 >= 2 at every position q = d..T-1, as a round that drafted
            from position q-d+1 computes it: token x_q with the previous step's hidden at q-1 (hidden,
            rows = positions d-1..T-1), attending to the true rows of positions <= q-d+1 (kvs[0],
            rows = positions 1..T-1), the earlier chained rows of the same round (kvs[j], step j+1,
            rows = positions j+1..: the same row index as this row) and itself. kv_out receives
            this step's (k, v). -> logits, hidden (B, T-d, .)"""
            T, d = tokens.shape[1], len(kvs) + 1
            n = T - d
            eye = torch.eye(n, dtype=torch.bool)
            mask = torch.cat([torch.ones(n, T - 1, dtype=torch.bool).tril(), *[eye] * (d - 1)], 1)
            k = torch.cat([kvs[0][0], *[kv[0][:, :n] for kv in kvs[1:]]], 1)
            v = torch.cat([kvs[0][1], *[kv[1][:, :n] for kv in kvs[1:]]], 1)
            return self.mtp(tokens[:, d:], hidden[:, :n], torch.arange(d, T), ctx=(k, v, mask), kv_out=kv_out)

        # ---- export -------------------------------------------------------------------------
        def gguf_tensors(self, dtype: Any) -> dict[str, tuple[Any, np.ndarray]]:
            """GGUF name -> (DType, numpy array in numpy order): matrices in `dtype`, 1-D tensors
            and ssm_conv1d in F32 (as converted files)."""
            from graphir.types import DType

            out = {}
            for key, prm in self.p.items():
                name = key.replace("__", ".")
                arr = prm.detach().double().numpy()
                if name.endswith("A_log"):
                    name, arr = name.removesuffix("A_log") + "ssm_a", -np.exp(arr)
                keep = arr.ndim == 1 or name.endswith("ssm_conv1d.weight")
                t = DType.F32 if keep else dtype
                out[name] = (t, arr.astype(np.float16 if t == DType.F16 else np.float32))
            return out

    return TinyQwen35()


def delta_rule_chunked(torch: Any, q: Any, k: Any, v: Any, g: Any, beta: Any, chunk: int) -> Any:
    """The gated delta rule from a zero state, `chunk` tokens at a time (same result as `delta_rule_loop`).

    q, k, v (B, T, H, S) (q, k L2-normed), g (B, T, H) log decays, beta (B, T, H) -> o (B, T, H, S).
    Within a chunk with cumulative log decay G_t and initial state S0:
        delta = (I + A)^-1 diag(beta) (V - diag(e^G) K S0),  A[t, s] = beta_t e^(G_t - G_s) k_t.k_s (s < t)
        o_t   = scale (e^G_t S0^T q_t + sum_{s <= t} e^(G_t - G_s) (q_t.k_s) delta_s)
        S_C   = e^G_C S0 + sum_s e^(G_C - G_s) k_s delta_s^T
    """
    B, T, H, S = v.shape
    pad = (-T) % chunk
    if pad:  # padded tokens (g = 0, beta = 0, k = 0) come last and change nothing before them
        pad_t = torch.nn.functional.pad
        q, k, v = (pad_t(x, (0, 0, 0, 0, 0, pad)) for x in (q, k, v))
        g, beta = (pad_t(x, (0, 0, 0, pad)) for x in (g, beta))
    N = (T + pad) // chunk
    scale = S**-0.5

    def split(x: Any) -> Any:  # (B, T, H, ...) -> (B, H, N, C, ...)
        x = x.transpose(1, 2)
        return x.reshape(B, H, N, chunk, *x.shape[3:])

    q, k, v, g, beta = split(q), split(k), split(v), split(g), split(beta)
    G = g.cumsum(-1)  # (B, H, N, C)
    diff = G[..., :, None] - G[..., None, :]  # G_t - G_s
    causal = torch.ones(chunk, chunk, dtype=torch.bool).tril()
    decay = torch.where(causal, diff, torch.full_like(diff, -math.inf)).exp()  # e^(G_t - G_s), s <= t
    strict = decay * (~torch.eye(chunk, dtype=torch.bool))
    A = beta[..., None] * strict * (k @ k.transpose(-1, -2))
    eye = torch.eye(chunk).expand_as(A)
    eG = G.exp()[..., None]
    rhs = torch.cat([beta[..., None] * eG * k, beta[..., None] * v], -1)
    sol = torch.linalg.solve_triangular(eye + A, rhs, upper=False, unitriangular=True)
    W, U = sol[..., :S], sol[..., S:]  # delta = U - W S0
    P = decay * (q @ k.transpose(-1, -2))  # (q_t.k_s) e^(G_t - G_s), s <= t
    Qg = eG * q
    Kd = (G[..., -1:] - G).exp()[..., None] * k  # e^(G_C - G_s) k_s
    last = G[..., -1].exp()  # (B, H, N)

    state = q.new_zeros(B, H, S, S)  # S[i][j], i the k index
    outs = []
    for n in range(N):
        delta = U[:, :, n] - W[:, :, n] @ state
        outs.append(scale * (Qg[:, :, n] @ state + P[:, :, n] @ delta))
        state = last[:, :, n, None, None] * state + Kd[:, :, n].transpose(-1, -2) @ delta
    o = torch.stack(outs, 2).reshape(B, H, N * chunk, S).transpose(1, 2)
    return o[:, :T]


def delta_rule_loop(torch: Any, q: Any, k: Any, v: Any, g: Any, beta: Any) -> Any:
    """The gated delta rule token by token (the definition; graphir's gated_delta_net)."""
    B, T, H, S = v.shape
    state = q.new_zeros(B, H, S, S)
    outs = []
    for t in range(T):
        state = state * g[:, t].exp()[..., None, None]
        kt, qt = k[:, t], q[:, t]
        sk = (kt[..., :, None] * state).sum(-2)  # S^T k
        delta = (v[:, t] - sk) * beta[:, t, :, None]
        state = state + kt[..., :, None] * delta[..., None, :]
        outs.append((qt[..., :, None] * state).sum(-2) * S**-0.5)
    return torch.stack(outs, 1)
