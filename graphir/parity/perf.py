"""The perf profile of the parity cases: fixed, model-sized parameters for a case's `build`, and
the work each shape does (what `graphir bench-ops` times, as test-backend-ops' perf mode reuses
its test cases with op_flops / op_size).

    from graphir.parity.perf import FULL, PERF
    for p in PERF["mul_mat"].shapes(FULL):
        built = CASES["mul_mat"].build(p)   # the parity case's own graph and seeded data
        PERF["mul_mat"].flops(p), PERF["mul_mat"].bytes(p)

Counting rules (so that formulas compare across ops):
- flops: additions and multiplications of the op's arithmetic (an exp, a division, a compare
  counts as one); 0 for pure data movement (copies, row writes).
- bytes: every input the op reads, once, plus the output it writes, in their storage types
  (quantized weights in their block bytes). Intermediates of a multi-op case are not counted.

Sizes come from `Dims`: FULL is a 7-8B-class layer (n_embd 4096, 128-token ubatch, 4k KV cells),
QUICK the same shapes made tiny, for tests.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar

from graphir.builders import ROPE_IMROPE
from graphir.types import DType, row_size

from .cases import CASES

F32, F16, I32 = DType.F32, DType.F16, DType.I32
CONT = {"kind": "cont"}
# every key a case may read for an input's layout: perf inputs are contiguous
_BASE: dict[str, Any] = {"seed": 0, "inplace": False, "weight": True,
                         **{k: CONT for k in ("layout", "layout_a", "layout_b", "layout_q", "layout_k", "layout_v",
                                              "layout_state", "dst_layout")}}  # fmt: skip


@dataclass(frozen=True)
class Dims:
    """The sizes the perf shapes are made of."""

    n_embd: int = 4096
    n_tokens: int = 128  # a prefill ubatch
    n_kv: int = 4096  # KV cells seen by a decode step
    head_dim: int = 128
    n_head: int = 32  # query heads
    n_head_kv: int = 8
    S_v: int = 128  # delta-net head size
    H_v: int = 16  # delta-net heads
    n_chunk: int = 64  # delta-net tokens of a prefill chunk
    moe_embd: int = 2048  # a MoE model's width (Qwen3.5 MoE class)
    n_ff_exp: int = 512
    n_expert: int = 64
    n_expert_used: int = 8


FULL = Dims()
QUICK = Dims(n_embd=256, n_tokens=4, n_kv=64, head_dim=32, n_head=4, n_head_kv=2, S_v=16, H_v=2, n_chunk=4,
             moe_embd=256, n_ff_exp=32, n_expert=4, n_expert_used=2)  # fmt: skip


def nbytes(type: DType, ne: tuple[int, ...]) -> int:
    """Bytes of a contiguous tensor of `type` and shape ne."""
    return row_size(type, ne[0]) * math.prod(ne[1:])


def _params(**kw: Any) -> dict[str, Any]:
    return {**_BASE, **kw}


# ======================================================================================
# the profile base and the registry
# ======================================================================================

PERF: dict[str, Perf] = {}


class Perf:
    """The perf shapes of one parity case (`case` names it in CASES) and the work of each."""

    case: ClassVar[str]

    def shapes(self, d: Dims) -> list[dict[str, Any]]:
        """Full parameter dicts for the case's `build`."""
        raise NotImplementedError

    def label(self, p: dict[str, Any]) -> str:
        """A short shape summary for the table."""
        raise NotImplementedError

    def flops(self, p: dict[str, Any]) -> int:
        raise NotImplementedError

    def bytes(self, p: dict[str, Any]) -> int:
        raise NotImplementedError


def perf(cls: type[Perf]) -> type[Perf]:
    """Register one instance of a profile under its case's name; the case must exist."""
    if cls.case not in CASES:
        raise ValueError(f"[perf] {cls.__name__} names no parity case: {cls.case!r}")
    if cls.case in PERF:
        raise ValueError(f"[perf] two profiles for case {cls.case!r}")
    PERF[cls.case] = cls()
    return cls


# ======================================================================================
# matrix
# ======================================================================================


@perf
class MulMatPerf(Perf):
    """Mat-vec (one token: weight-bandwidth bound) and a prefill ubatch (compute bound)."""

    case = "mul_mat"

    def shapes(self, d: Dims) -> list[dict[str, Any]]:
        one = dict(type_b=F32, K=d.n_embd, M=d.n_embd, ne02=1, ne03=1, r2=1, r3=1)
        types = (F32, F16, DType.Q8_0, DType.Q4_K)
        return [_params(**one, type=t, N=n) for n in (1, d.n_tokens) for t in types]

    def label(self, p: dict[str, Any]) -> str:
        return f"{p['type'].name} [{p['K']}, {p['M']}] x {p['N']} tok"

    def _batch(self, p: dict[str, Any]) -> int:
        return p["ne02"] * p["ne03"] * p["r2"] * p["r3"]

    def flops(self, p: dict[str, Any]) -> int:
        return 2 * p["K"] * p["M"] * p["N"] * self._batch(p)

    def bytes(self, p: dict[str, Any]) -> int:
        B = self._batch(p)
        a = nbytes(p["type"], (p["K"], p["M"], p["ne02"], p["ne03"]))
        return a + nbytes(p["type_b"], (p["K"], p["N"], B)) + nbytes(F32, (p["M"], p["N"], B))


@perf
class MulMatIdPerf(Perf):
    """A MoE decode step: n_expert_used experts of Q4_K for one token (b shared by the experts)."""

    case = "mul_mat_id"

    def shapes(self, d: Dims) -> list[dict[str, Any]]:
        return [_params(type=DType.Q4_K, K=d.moe_embd, M=d.n_ff_exp, n_expert=d.n_expert, n_used=d.n_expert_used,
                        n_tokens=1, b_shared=True)]  # fmt: skip

    def label(self, p: dict[str, Any]) -> str:
        return f"{p['type'].name} [{p['K']}, {p['M']}] {p['n_used']}/{p['n_expert']} exp x {p['n_tokens']} tok"

    def flops(self, p: dict[str, Any]) -> int:
        return 2 * p["K"] * p["M"] * p["n_used"] * p["n_tokens"]

    def bytes(self, p: dict[str, Any]) -> int:
        n_rows = p["n_used"] * p["n_tokens"]
        experts = min(p["n_expert"], n_rows)  # NOTE: exact for one token, an upper bound for more
        b = nbytes(F32, (p["K"], 1 if p["b_shared"] else p["n_used"], p["n_tokens"]))
        return experts * nbytes(p["type"], (p["K"], p["M"])) + b + 4 * n_rows + nbytes(F32, (p["M"], n_rows))


# ======================================================================================
# norms, elementwise, softmax
# ======================================================================================


class _ElementwisePerf(Perf):
    """An op over [n_embd, n_tokens] F32 activations: `per_elem` flops per element."""

    per_elem: ClassVar[int] = 1

    def shapes(self, d: Dims) -> list[dict[str, Any]]:
        return [_params(type=F32, ne=(d.n_embd, d.n_tokens, 1, 1), eps=1e-6)]

    def label(self, p: dict[str, Any]) -> str:
        return f"F32 {list(p['ne'][:2])}"

    def flops(self, p: dict[str, Any]) -> int:
        return self.per_elem * math.prod(p["ne"])

    def bytes(self, p: dict[str, Any]) -> int:
        return 2 * nbytes(F32, p["ne"])


@perf
class RmsNormPerf(_ElementwisePerf):
    """x * rsqrt(mean(x^2) + eps): square and sum, then scale (3 flops per element)."""

    case, per_elem = "rms_norm", 3


@perf
class SiluPerf(_ElementwisePerf):
    """x / (1 + exp(-x)): 4 flops per element."""

    case, per_elem = "silu", 4


class _BinaryPerf(_ElementwisePerf):
    """a op b over [n_embd, n_tokens]; b is `b_rows` rows, broadcast over the tokens."""

    b_rows: ClassVar[str] = "n_tokens"

    def shapes(self, d: Dims) -> list[dict[str, Any]]:
        ne = (d.n_embd, d.n_tokens, 1, 1)
        ne_b = ne if self.b_rows == "n_tokens" else (d.n_embd, 1, 1, 1)
        return [_params(type_a=F32, type_b=F32, ne=ne, ne_b=ne_b)]

    def label(self, p: dict[str, Any]) -> str:
        return f"F32 {list(p['ne'][:2])} by {list(p['ne_b'][:2])}"

    def bytes(self, p: dict[str, Any]) -> int:
        return 2 * nbytes(F32, p["ne"]) + nbytes(F32, p["ne_b"])


@perf
class AddPerf(_BinaryPerf):
    """The residual add."""

    case = "add"


@perf
class MulPerf(_BinaryPerf):
    """A norm weight times the activations (one row broadcast)."""

    case, b_rows = "mul", "one"


@perf
class SoftMaxPerf(Perf):
    """Attention scores of a decode step over n_kv cells, all heads, F16 mask: per element the
    scale, the mask add, max, subtract, exp, sum and normalise (7 flops)."""

    case = "soft_max"

    def shapes(self, d: Dims) -> list[dict[str, Any]]:
        return [_params(ne=(d.n_kv, 1, d.n_head, 1), mask=F16, mask_pad=0, mask_heads=False, mask_seqs=False,
                        scale=d.head_dim**-0.5, max_bias=0.0)]  # fmt: skip

    def label(self, p: dict[str, Any]) -> str:
        n_kv, n_q, H, _ = p["ne"]
        return f"n_kv {n_kv}, {n_q} q, {H} heads, mask {p['mask'].name if p['mask'] else '-'}"

    def flops(self, p: dict[str, Any]) -> int:
        return (6 + (p["mask"] is not None)) * math.prod(p["ne"])

    def bytes(self, p: dict[str, Any]) -> int:
        n_kv, n_q, H, n_seq = p["ne"]
        mask = 0
        if p["mask"] is not None:
            mask = nbytes(p["mask"], (n_kv, n_q, H if p["mask_heads"] else 1, n_seq if p["mask_seqs"] else 1))
        return 2 * nbytes(F32, p["ne"]) + mask


# ======================================================================================
# position / attention / state space
# ======================================================================================


@perf
class RopePerf(Perf):
    """IMROPE (Qwen3.5) on a ubatch of query heads, half of each head rotated: per rotated pair
    4 multiplications and 2 additions (3 flops per rotated element)."""

    case = "rope"

    def shapes(self, d: Dims) -> list[dict[str, Any]]:
        n_dims = d.head_dim // 2
        half = n_dims // 2
        t = -(-half // 3)
        h = -(-(half - t) // 2)
        return [_params(multi=True, mode=ROPE_IMROPE, sections=(t, h, half - t - h, 0), head_dim=d.head_dim,
                        n_dims=n_dims, n_head=d.n_head, n_tokens=d.n_tokens, freq_factors=False, freq_base=1e7,
                        freq_scale=1.0, ext_factor=0.0, n_ctx_orig=0, attn_factor=1.0)]  # fmt: skip

    def label(self, p: dict[str, Any]) -> str:
        return f"[{p['head_dim']}, {p['n_head']}, {p['n_tokens']}], n_dims {p['n_dims']}"

    def flops(self, p: dict[str, Any]) -> int:
        return 3 * p["n_dims"] * p["n_head"] * p["n_tokens"]

    def bytes(self, p: dict[str, Any]) -> int:
        x = nbytes(F32, (p["head_dim"], p["n_head"], p["n_tokens"]))
        pos = nbytes(I32, (p["n_tokens"] * (4 if p["multi"] else 1),))
        ff = nbytes(F32, (p["n_dims"] // 2,)) if p["freq_factors"] else 0
        return 2 * x + pos + ff


class _AttnPerf(Perf):
    """GQA attention of one query token over n_kv cells of an F16 cache: the two matrix products
    (2 D n_kv + 2 Dv n_kv per query head; the softmax is not counted)."""

    n_kvs: ClassVar[tuple[str, ...]] = ("n_kv",)

    def shapes(self, d: Dims) -> list[dict[str, Any]]:
        one = dict(D=d.head_dim, Dv=d.head_dim, n_q=1, H_kv=d.n_head_kv, gqa=d.n_head // d.n_head_kv, n_seq=1,
                   kv_type=F16, mask=F16, mask_pad=0, mask_seqs=False, scale=d.head_dim**-0.5, max_bias=0.0,
                   softcap=0.0, transposed_v=False)  # fmt: skip
        sizes = {"n_kv": d.n_kv, "n_kv/8": d.n_kv // 8}
        return [_params(**one, n_kv=sizes[n]) for n in self.n_kvs]

    def label(self, p: dict[str, Any]) -> str:
        H = p["H_kv"] * p["gqa"]
        return f"D {p['D']}, {H}/{p['H_kv']} heads, n_kv {p['n_kv']}, {p['n_q']} q"

    def flops(self, p: dict[str, Any]) -> int:
        H = p["H_kv"] * p["gqa"]
        return 2 * (p["D"] + p["Dv"]) * p["n_kv"] * p["n_q"] * H * p["n_seq"]

    def bytes(self, p: dict[str, Any]) -> int:
        D, Dv, n_q, n_kv, H_kv, n_seq = (p[k] for k in ("D", "Dv", "n_q", "n_kv", "H_kv", "n_seq"))
        H = H_kv * p["gqa"]
        kv = nbytes(p["kv_type"], (D, n_kv, H_kv, n_seq)) + nbytes(p["kv_type"], (Dv, n_kv, H_kv, n_seq))
        mask = nbytes(p["mask"], (n_kv, n_q, 1, n_seq if p["mask_seqs"] else 1)) if p["mask"] is not None else 0
        return nbytes(F32, (D, n_q, H, n_seq)) + kv + mask + nbytes(F32, (Dv, H, n_q, n_seq))


@perf
class FlashAttnExtPerf(_AttnPerf):
    case, n_kvs = "flash_attn_ext", ("n_kv/8", "n_kv")


@perf
class AttnDecomposedPerf(_AttnPerf):
    """mul_mat + soft_max_ext + mul_mat (V transposed by cont): the same work as the fused op."""

    case = "attn_decomposed"


@perf
class SsmConvPerf(Perf):
    """The delta-net input conv over a ubatch: channels (2 H_k + H_v) S_v, d_conv 4; per output
    d_conv multiply-adds."""

    case = "ssm_conv"

    def shapes(self, d: Dims) -> list[dict[str, Any]]:
        return [_params(d_conv=4, channels=3 * d.H_v * d.S_v, n_tokens=d.n_tokens, n_seqs=1)]

    def label(self, p: dict[str, Any]) -> str:
        return f"d_conv {p['d_conv']}, {p['channels']} ch, {p['n_tokens']} tok"

    def flops(self, p: dict[str, Any]) -> int:
        return 2 * p["d_conv"] * p["channels"] * p["n_tokens"] * p["n_seqs"]

    def bytes(self, p: dict[str, Any]) -> int:
        d_conv, ch, n_tok, n_seqs = p["d_conv"], p["channels"], p["n_tokens"], p["n_seqs"]
        sx = nbytes(F32, (d_conv - 1 + n_tok, ch, n_seqs))
        return sx + nbytes(F32, (d_conv, ch)) + nbytes(F32, (ch, n_tok, n_seqs))


@perf
class GatedDeltaNetPerf(Perf):
    """The gated delta rule, a decode token and a prefill chunk. Per token and v-head with S = S_v:
    decay S^2, S^T k 2 S^2, delta 2 S, the rank-1 update 2 S^2, S^T q 2 S^2, the 1/sqrt(S) scale S
    (7 S^2 + 3 S flops)."""

    case = "gated_delta_net"

    def shapes(self, d: Dims) -> list[dict[str, Any]]:
        one = dict(S=d.S_v, H_k=d.H_v, r=1, n_seqs=1, g_per_channel=False, snapshots=1)
        return [_params(**one, n_tokens=n) for n in (1, d.n_chunk)]

    def label(self, p: dict[str, Any]) -> str:
        return f"S_v {p['S']}, H_v {p['H_k'] * p['r']}, {p['n_tokens']} tok"

    def flops(self, p: dict[str, Any]) -> int:
        S = p["S"]
        return (7 * S * S + 3 * S) * p["H_k"] * p["r"] * p["n_tokens"] * p["n_seqs"]

    def bytes(self, p: dict[str, Any]) -> int:
        S, H_k, T, n_seqs = p["S"], p["H_k"], p["n_tokens"], p["n_seqs"]
        H_v = H_k * p["r"]
        qk = 2 * nbytes(F32, (S, H_k, T, n_seqs))
        v = nbytes(F32, (S, H_v, T, n_seqs))
        g_beta = nbytes(F32, (S if p["g_per_channel"] else 1, H_v, T, n_seqs)) + nbytes(F32, (1, H_v, T, n_seqs))
        state = nbytes(F32, (S, S, H_v, n_seqs))
        out = nbytes(F32, (S, H_v, T, n_seqs)) + min(p["snapshots"], T) * state  # the slots it writes
        return qk + v + g_beta + state + out


# ======================================================================================
# data movement (0 flops)
# ======================================================================================


@perf
class SetRowsPerf(Perf):
    """A ubatch's K rows written into an F16 cache of n_kv cells."""

    case = "set_rows"

    def shapes(self, d: Dims) -> list[dict[str, Any]]:
        return [_params(type=F16, ne=(d.head_dim * d.n_head_kv, d.n_kv, 1, 1), n=d.n_tokens, c_b2=False,
                        c_b3=False)]  # fmt: skip

    def label(self, p: dict[str, Any]) -> str:
        return f"{p['n']} rows of {p['ne'][0]} into {p['type'].name} x {p['ne'][1]}"

    def flops(self, p: dict[str, Any]) -> int:
        return 0

    def bytes(self, p: dict[str, Any]) -> int:
        ne0, n = p["ne"][0], p["n"]
        return nbytes(F32, (ne0, n)) + nbytes(I32, (n,)) + nbytes(p["type"], (ne0, n))


@perf
class CpyPerf(Perf):
    """Activations converted F32 -> F16."""

    case = "cpy"

    def shapes(self, d: Dims) -> list[dict[str, Any]]:
        return [_params(type=F32, dst_type=F16, ne=(d.n_embd, d.n_tokens, 1, 1))]

    def label(self, p: dict[str, Any]) -> str:
        return f"{p['type'].name} -> {p['dst_type'].name} {list(p['ne'][:2])}"

    def flops(self, p: dict[str, Any]) -> int:
        return 0

    def bytes(self, p: dict[str, Any]) -> int:
        return nbytes(p["type"], p["ne"]) + nbytes(p["dst_type"], p["ne"])
