"""The parity cases: one class per op (plus the decomposed attention), each drawing its
parameters from a strategy in `strategies` and building a small graph that exercises the
op, with seeded input data.

A case builds the same graph (new tensor objects, same data) every time it is called with
the same parameters, so the reference and the backend under test each get their own.
Inputs reach the op contiguous, permuted or as views into larger tensors; indices are
valid; values fed to argmax/argsort/top_k are distinct so ties never make a result
ambiguous; masks hold -inf entries but never mask a whole row.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar

import numpy as np
from hypothesis import strategies as st

import graphir as gr
from graphir.layout import np_shape
from graphir.ops import Op
from graphir.tensor import Tensor, storage_of
from graphir.types import TYPE_INFO, DType

from . import strategies as S
from .compare import MATMUL_NMSE, threshold_for
from .inputs import Built, Gen, Inputs, element_index, untouched_outside

F32, F16, I32 = DType.F32, DType.F16, DType.I32

# ======================================================================================
# the case base and the registry
# ======================================================================================

CASES: dict[str, Case] = {}


class Case:
    """One op under test. `strategy` draws a parameter dict; `build(params)` makes the
    graph and its data. `threshold` overrides the op's NMSE threshold."""

    op: ClassVar[Op | None] = None
    name: ClassVar[str] = ""
    strategy: ClassVar[st.SearchStrategy]
    threshold: ClassVar[float | None] = None

    @property
    def nmse_threshold(self) -> float:
        return self.threshold if self.threshold is not None else threshold_for(self.op)

    def build(self, p: dict[str, Any]) -> Built:
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"<case {self.name}>"

    def __str__(self) -> str:
        return self.name


def case(cls: type[Case]) -> type[Case]:
    """Register one instance of a case class under its name (default: the op's name)."""
    if not cls.name:
        cls.name = cls.op.value
    assert cls.name not in CASES, f"two parity cases named {cls.name!r}"
    CASES[cls.name] = cls()
    return cls


# ======================================================================================
# views and copies
# ======================================================================================


class _ViewCase(Case):
    """A view op, read back directly and through `cont` (so the backend reads the strides)."""

    def view(self, x: Tensor, p: dict) -> Tensor:
        raise NotImplementedError

    def build(self, p: dict) -> Built:
        mk = Inputs(p["seed"])
        x = mk.leaf(p["type"], p.get("storage", p["ne"]), name="x")
        v = self.view(x, p).set_name("view")
        return mk.done(v, gr.cont(v).set_name("out"))


@case
class ViewCase(_ViewCase):
    op = Op.VIEW
    strategy = S.view()

    def view(self, x: Tensor, p: dict) -> Tensor:
        ne, nd = p["ne"], p["nd"]
        offset = sum(o * nb for o, nb in zip(p["off"], x.nb))
        if nd == 1:
            return gr.view_1d(x, ne[0], offset)
        if nd == 2:
            return gr.view_2d(x, ne[0], ne[1], x.nb[1], offset)
        if nd == 3:
            return gr.view_3d(x, ne[0], ne[1], ne[2], x.nb[1], x.nb[2], offset)
        return gr.view_4d(x, *ne, x.nb[1], x.nb[2], x.nb[3], offset)


@case
class ReshapeCase(_ViewCase):
    op = Op.RESHAPE
    strategy = S.reshape()

    def view(self, x: Tensor, p: dict) -> Tensor:
        return gr.reshape(x, *p["to"])


@case
class PermuteCase(_ViewCase):
    op = Op.PERMUTE
    strategy = S.permute()

    def view(self, x: Tensor, p: dict) -> Tensor:
        return gr.permute(x, *p["axes"])


@case
class TransposeCase(_ViewCase):
    op = Op.TRANSPOSE
    strategy = S.transpose()

    def view(self, x: Tensor, p: dict) -> Tensor:
        return gr.transpose(x)


@case
class ContCase(Case):
    op = Op.CONT
    strategy = S.cont()

    def build(self, p: dict) -> Built:
        mk = Inputs(p["seed"])
        a = mk.tensor(p["type"], p["ne"], p["layout"], name="a")
        return mk.done(gr.cont(a, *(p["to"] or ())))


@case
class DupCase(Case):
    op = Op.DUP
    strategy = S.dup()

    def build(self, p: dict) -> Built:
        mk = Inputs(p["seed"])
        return mk.done(gr.dup(mk.tensor(p["type"], p["ne"], p["layout"], name="a")))


@case
class CpyCase(Case):
    """cpy into a destination that may be a strided view of a larger tensor, whose other
    elements must stay as they were."""

    op = Op.CPY
    strategy = S.cpy()

    def build(self, p: dict) -> Built:
        mk = Inputs(p["seed"])
        a = mk.tensor(p["type"], p["ne"], p["layout"], name="a")
        dst = mk.tensor(p["dst_type"], p["ne"], p["dst_layout"], name="dst")
        keep = [] if TYPE_INFO[dst.type].is_quantized else [untouched_outside(dst)]
        return mk.done(gr.cpy(a, dst), keep=keep)


# ======================================================================================
# elementwise
# ======================================================================================


class _UnaryCase(Case):
    strategy = S.unary()
    lo, hi = -3.0, 3.0  # input range
    fn: ClassVar[Callable[[Tensor], Tensor]]

    def apply(self, a: Tensor, p: dict) -> Tensor:
        return type(self).fn(a)

    def build(self, p: dict) -> Built:
        mk = Inputs(p["seed"])
        a = mk.tensor(p["type"], p["ne"], p["layout"], mk.uniform(self.lo, self.hi), "a")
        if p["inplace"]:
            a = gr.cont(a)  # an intermediate with one consumer: the result may overwrite it
        return mk.done(self.apply(a, p))


@case
class SqrCase(_UnaryCase):
    op, fn = Op.SQR, staticmethod(gr.sqr)


@case
class SqrtCase(_UnaryCase):
    op, fn, lo, hi = Op.SQRT, staticmethod(gr.sqrt), 0.0, 4.0


@case
class ExpCase(_UnaryCase):
    op, fn, lo, hi = Op.EXP, staticmethod(gr.exp), -4.0, 4.0


@case
class NegCase(_UnaryCase):
    op, fn = Op.NEG, staticmethod(gr.neg)


@case
class SigmoidCase(_UnaryCase):
    op, fn, lo, hi = Op.SIGMOID, staticmethod(gr.sigmoid), -8.0, 8.0


@case
class SiluCase(_UnaryCase):
    op, fn, lo, hi = Op.SILU, staticmethod(gr.silu), -8.0, 8.0


@case
class SoftplusCase(_UnaryCase):
    op, fn, lo, hi = Op.SOFTPLUS, staticmethod(gr.softplus), -30.0, 30.0  # crosses ggml's x > 20 cut


@case
class GeluCase(_UnaryCase):
    # NOTE: below x ~ -3.6 the tanh form (ggml's, the reference's) computes 1 + tanh(u) with
    # tanh(u) ~ -1: one ulp of tanh is then > 3e-4 of the result, beyond any NMSE bound, for
    # every correct implementation (numpy's float32 tanh itself is not correctly rounded).
    op, fn, lo, hi = Op.GELU, staticmethod(gr.gelu), -3.0, 5.0


@case
class ScaleCase(_UnaryCase):
    op = Op.SCALE
    strategy = S.scale()

    def apply(self, a: Tensor, p: dict) -> Tensor:
        return gr.scale(a, p["s"], p["b"])


@case
class ClampCase(_UnaryCase):
    op = Op.CLAMP
    strategy = S.clamp()

    def apply(self, a: Tensor, p: dict) -> Tensor:
        return gr.clamp(a, p["min"], p["max"])


class _BinaryCase(Case):
    strategy = S.binary()
    fn: ClassVar[Callable[[Tensor, Tensor], Tensor]]

    def b_values(self, mk: Inputs) -> Gen:
        return mk.uniform()

    def build(self, p: dict) -> Built:
        mk = Inputs(p["seed"])
        a = mk.tensor(p["type_a"], p["ne"], p["layout_a"], name="a")
        b = mk.tensor(p["type_b"], p["ne_b"], p["layout_b"], self.b_values(mk), "b")
        if p["inplace"]:
            a = gr.cont(a)
        return mk.done(type(self).fn(a, b))


@case
class AddCase(_BinaryCase):
    op, fn = Op.ADD, staticmethod(gr.add)


@case
class SubCase(_BinaryCase):
    op, fn = Op.SUB, staticmethod(gr.sub)


@case
class MulCase(_BinaryCase):
    op, fn = Op.MUL, staticmethod(gr.mul)


@case
class DivCase(_BinaryCase):
    op, fn = Op.DIV, staticmethod(gr.div)

    def b_values(self, mk: Inputs) -> Gen:
        return mk.away(0.5, 2.0)


@case
class RepeatCase(Case):
    op = Op.REPEAT
    strategy = S.repeat()

    def build(self, p: dict) -> Built:
        mk = Inputs(p["seed"])
        a = mk.tensor(p["type"], p["ne"], p["layout"], name="a")
        shape = gr.new_tensor(p["type"], [n * r for n, r in zip(p["ne"], p["reps"])], "shape")
        return mk.done(gr.repeat(a, shape))


# ======================================================================================
# reductions / norms
# ======================================================================================


class _RowsCase(Case):
    strategy = S.rows()
    gen = "uniform"

    def apply(self, a: Tensor, p: dict) -> Tensor:
        raise NotImplementedError

    def build(self, p: dict) -> Built:
        mk = Inputs(p["seed"])
        gen = mk.distinct() if self.gen == "distinct" else mk.uniform(-2.0, 2.0)
        a = mk.tensor(F32, p["ne"], p["layout"], gen, "a")
        if p.get("inplace"):
            a = gr.cont(a)
        return mk.done(self.apply(a, p))


@case
class SumRowsCase(_RowsCase):
    op = Op.SUM_ROWS

    def apply(self, a: Tensor, p: dict) -> Tensor:
        return gr.sum_rows(a)


@case
class MeanCase(_RowsCase):
    op = Op.MEAN

    def apply(self, a: Tensor, p: dict) -> Tensor:
        return gr.mean(a)


@case
class RmsNormCase(_RowsCase):
    op = Op.RMS_NORM
    strategy = S.norm()

    def apply(self, a: Tensor, p: dict) -> Tensor:
        return gr.rms_norm(a, p["eps"])


@case
class L2NormCase(_RowsCase):
    op = Op.L2_NORM
    strategy = S.norm()

    def apply(self, a: Tensor, p: dict) -> Tensor:
        return gr.l2_norm(a, p["eps"])


@case
class ArgmaxCase(_RowsCase):
    op, gen = Op.ARGMAX, "distinct"
    strategy = S.argmax()

    def apply(self, a: Tensor, p: dict) -> Tensor:
        return gr.argmax(a)


@case
class ArgsortCase(_RowsCase):
    op, gen = Op.ARGSORT, "distinct"
    strategy = S.argsort()

    def apply(self, a: Tensor, p: dict) -> Tensor:
        return gr.argsort(a, p["order"])


@case
class TopKCase(_RowsCase):
    op, gen = Op.TOP_K, "distinct"
    strategy = S.top_k()

    def apply(self, a: Tensor, p: dict) -> Tensor:
        return gr.top_k(a, p["k"])


@case
class SoftMaxCase(Case):
    op = Op.SOFT_MAX
    strategy = S.soft_max()

    def build(self, p: dict) -> Built:
        mk = Inputs(p["seed"])
        n_kv, n_q, H, n_seq = p["ne"]
        a = mk.tensor(F32, p["ne"], p["layout"], mk.uniform(-3.0, 3.0), "a")
        if p["inplace"]:
            a = gr.cont(a)
        mask = None
        if p["mask"] is not None:
            ne = (n_kv, n_q + p["mask_pad"], H if p["mask_heads"] else 1, n_seq if p["mask_seqs"] else 1)
            mask = mk.leaf(p["mask"], ne, mk.mask(), "mask")
        return mk.done(gr.soft_max_ext(a, mask, p["scale"], p["max_bias"]))


# ======================================================================================
# indexing
# ======================================================================================


@case
class GetRowsCase(Case):
    op = Op.GET_ROWS
    strategy = S.get_rows()

    def build(self, p: dict) -> Built:
        mk = Inputs(p["seed"])
        ne = (p["ne0"], p["n_rows"], p["ne2"], p["ne3"])
        if p["weight"]:
            a = mk.leaf(p["type"], ne, name="a", weight=True)
        else:
            a = mk.tensor(p["type"], ne, p["layout"], name="a")
        rows = mk.leaf(I32, (p["n"], p["ne2"], p["ne3"]), mk.ints(0, p["n_rows"] - 1), "rows")
        return mk.done(gr.get_rows(a, rows))


@case
class SetRowsCase(Case):
    """Rows land at distinct indices per slice; every other row of the destination (and
    the rest of the tensor it is a view of) must stay as it was."""

    op = Op.SET_ROWS
    strategy = S.set_rows()

    def build(self, p: dict) -> Built:
        mk = Inputs(p["seed"])
        ne0, n_rows, ne2, ne3 = p["ne"]
        n = p["n"]
        dst = mk.tensor(p["type"], p["ne"], p["layout"], name="dst")
        b = mk.tensor(F32, (ne0, n, ne2, ne3), p["layout_b"], name="b")
        c2, c3 = (ne2 if p["c_b2"] else 1), (ne3 if p["c_b3"] else 1)
        idx = np.stack([mk.rng.permutation(n_rows)[:n] for _ in range(c2 * c3)]).reshape(1, c3, c2, n)
        c = mk.leaf(I32, (n, c2, c3), lambda shape: idx, "c")
        out = gr.set_rows(dst, b, c)
        owner, where = storage_of(dst), element_index(dst)
        written = np.zeros(owner.nelements, dtype=bool)
        for k in range(ne3):
            for j in range(ne2):
                written[where[k, j, idx[0, k % c3, j % c2], :].ravel()] = True
        return mk.done(out, keep=[(owner, ~written.reshape(np_shape(owner.ne)))])


@case
class ConcatCase(Case):
    op = Op.CONCAT
    strategy = S.concat()

    def build(self, p: dict) -> Built:
        mk = Inputs(p["seed"])
        a = mk.tensor(p["type"], p["ne"], p["layout_a"], name="a")
        b = mk.tensor(p["type"], p["ne_b"], p["layout_b"], name="b")
        return mk.done(gr.concat(a, b, p["dim"]))


# ======================================================================================
# matrix
# ======================================================================================


@case
class MulMatCase(Case):
    op = Op.MUL_MAT
    strategy = S.mul_mat()

    def build(self, p: dict) -> Built:
        mk = Inputs(p["seed"])
        ne_a = (p["K"], p["M"], p["ne02"], p["ne03"])
        if p["weight"]:
            a = mk.leaf(p["type"], ne_a, name="a", weight=True)
        else:
            a = mk.tensor(p["type"], ne_a, p["layout_a"], name="a")
        ne_b = (p["K"], p["N"], p["ne02"] * p["r2"], p["ne03"] * p["r3"])
        b = mk.tensor(p["type_b"], ne_b, p["layout_b"], name="b")
        return mk.done(gr.mul_mat(a, b))


@case
class MulMatIdCase(Case):
    op = Op.MUL_MAT_ID
    strategy = S.mul_mat_id()

    def build(self, p: dict) -> Built:
        mk = Inputs(p["seed"])
        K, n_used, n_tok = p["K"], p["n_used"], p["n_tokens"]
        experts = mk.leaf(p["type"], (K, p["M"], p["n_expert"]), name="experts", weight=p["weight"])
        b = mk.tensor(F32, (K, 1 if p["b_shared"] else n_used, n_tok), p["layout_b"], name="b")
        chosen = np.stack([mk.rng.permutation(p["n_expert"])[:n_used] for _ in range(n_tok)])
        ids = mk.leaf(I32, (n_used, n_tok), lambda shape: chosen.reshape(shape), "ids")
        return mk.done(gr.mul_mat_id(experts, b, ids))


# ======================================================================================
# position / attention / state space
# ======================================================================================


@case
class RopeCase(Case):
    """rope_ext (NORMAL, NEOX) and rope_multi (MROPE, IMROPE with sections), with YaRN
    parameters and frequency factors; multi-section positions differ per component."""

    op = Op.ROPE
    strategy = S.rope()

    def build(self, p: dict) -> Built:
        mk = Inputs(p["seed"])
        n_tok = p["n_tokens"]
        a = mk.tensor(F32, (p["head_dim"], p["n_head"], n_tok, 1), p["layout"], name="a")
        if p["inplace"]:
            a = gr.cont(a)
        pos = mk.leaf(I32, (n_tok * (4 if p["multi"] else 1),), mk.ints(0, 300), "pos")
        ff = mk.leaf(F32, (p["n_dims"] // 2,), mk.uniform(0.5, 2.0), "freq_factors") if p["freq_factors"] else None
        kw = {k: p[k] for k in ("n_ctx_orig", "freq_base", "freq_scale", "ext_factor", "attn_factor")}
        if p["multi"]:
            return mk.done(gr.rope_multi(a, pos, ff, p["n_dims"], p["sections"], p["mode"], **kw))
        return mk.done(gr.rope_ext(a, pos, ff, p["n_dims"], p["mode"], **kw))


class _AttnCase(Case):
    strategy = S.attention()
    threshold = MATMUL_NMSE

    def qkv(self, p: dict, transposed_v: bool = False) -> tuple[Inputs, Tensor, Tensor, Tensor, Tensor | None]:
        mk = Inputs(p["seed"])
        D, Dv, n_q, n_kv, n_seq = p["D"], p["Dv"], p["n_q"], p["n_kv"], p["n_seq"]
        H_kv = p["H_kv"]
        q = mk.tensor(F32, (D, n_q, H_kv * p["gqa"], n_seq), p["layout_q"], name="q")
        k = mk.tensor(p["kv_type"], (D, n_kv, H_kv, n_seq), p["layout_k"], name="k")
        ne_v = (n_kv, Dv, H_kv, n_seq) if transposed_v else (Dv, n_kv, H_kv, n_seq)
        v = mk.tensor(p["kv_type"], ne_v, p["layout_v"], name="v")
        mask = None
        if p["mask"] is not None:
            ne = (n_kv, n_q + p["mask_pad"], 1, n_seq if p["mask_seqs"] else 1)
            mask = mk.leaf(p["mask"], ne, mk.mask(), "mask")
        return mk, q, k, v, mask


@case
class FlashAttnExtCase(_AttnCase):
    op = Op.FLASH_ATTN_EXT

    def build(self, p: dict) -> Built:
        mk, q, k, v, mask = self.qkv(p)
        return mk.done(gr.flash_attn_ext(q, k, v, mask, p["scale"], p["max_bias"], p["softcap"]))


@case
class AttnDecomposedCase(_AttnCase):
    """mul_mat + soft_max_ext + mul_mat, as a model without flash attention builds it; V
    is either cached transposed or transposed here with cont."""

    name = "attn_decomposed"

    def build(self, p: dict) -> Built:
        mk, q, k, v, mask = self.qkv(p, transposed_v=p["transposed_v"])
        kq = gr.mul_mat(k, q)  # [n_kv, n_q, H, n_seq]
        kq = gr.soft_max_ext(kq, mask, p["scale"], p["max_bias"])
        vt = v if p["transposed_v"] else gr.cont(gr.transpose(v))  # [n_kv, Dv, H_kv, n_seq]
        kqv = gr.mul_mat(vt, kq)  # [Dv, n_q, H, n_seq]
        return mk.done(gr.cont(gr.permute(kqv, 0, 2, 1, 3)))  # [Dv, H, n_q, n_seq], as flash_attn_ext


@case
class SsmConvCase(Case):
    op = Op.SSM_CONV
    strategy = S.ssm_conv()

    def build(self, p: dict) -> Built:
        mk = Inputs(p["seed"])
        d_conv, ch = p["d_conv"], p["channels"]
        sx = mk.tensor(F32, (d_conv - 1 + p["n_tokens"], ch, p["n_seqs"]), p["layout"], name="sx")
        c = mk.leaf(F32, (d_conv, ch), name="conv1d", weight=p["weight"])
        return mk.done(gr.ssm_conv(sx, c))


@case
class GatedDeltaNetCase(Case):
    """The gated delta rule with 1..n_tokens+1 snapshots; slots beyond n_tokens-1 are not
    written by the op and so are not compared."""

    op = Op.GATED_DELTA_NET
    strategy = S.gated_delta_net()

    def build(self, p: dict) -> Built:
        mk = Inputs(p["seed"])
        S_v, H_k, n_tok, n_seqs = p["S"], p["H_k"], p["n_tokens"], p["n_seqs"]
        H_v = H_k * p["r"]
        q = mk.tensor(F32, (S_v, H_k, n_tok, n_seqs), p["layout_q"], mk.unit_rows(), "q")
        k = mk.tensor(F32, (S_v, H_k, n_tok, n_seqs), p["layout_k"], mk.unit_rows(), "k")
        v = mk.tensor(F32, (S_v, H_v, n_tok, n_seqs), p["layout_v"], name="v")
        g = mk.leaf(F32, (S_v if p["g_per_channel"] else 1, H_v, n_tok, n_seqs), mk.uniform(-1.0, 0.0), "g")
        beta = mk.leaf(F32, (1, H_v, n_tok, n_seqs), mk.uniform(0.0, 1.0), "beta")
        state = mk.tensor(F32, (S_v, S_v, H_v, n_seqs), p["layout_state"], mk.uniform(-0.5, 0.5), "state")
        out = gr.gated_delta_net(q, k, v, g, beta, state, p["snapshots"])
        defined = np.zeros((1, 1, out.ne[1], 1), dtype=bool)
        defined[:, :, : n_tok * n_seqs + min(p["snapshots"], n_tok) * S_v * n_seqs] = True
        return mk.done(out, defined={0: defined})


# NOTE: completeness is enforced where it is declared (raise, not assert: asserts vanish under -O)
_missing = sorted(op.name for op in Op if op is not Op.NONE and op not in {c.op for c in CASES.values()})
if _missing:
    raise RuntimeError(f"[parity] ops without a parity case: {_missing}")
