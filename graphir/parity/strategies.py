"""Every hypothesis strategy of the parity cases, and the run profiles.

A strategy draws one dict of parameters for a case (always with a `seed` for the input
data). Shapes stay small: the point is coverage of layouts and parameters, not size.

Profiles: "ci" (fixed seed, few examples) and "thorough" (many examples), chosen by the
env variable GRAPHIR_PARITY_PROFILE (default "ci"). They are registered with hypothesis
as "parity-ci" / "parity-thorough" so they never replace a test suite's own profiles.
"""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

from graphir.builders import ROPE_IMROPE, ROPE_MROPE, ROPE_NEOX, ROPE_NORMAL, SORT_ASC, SORT_DESC
from graphir.types import TYPE_INFO, DType

# ---- profiles ------------------------------------------------------------------------

PROFILE_ENV = "GRAPHIR_PARITY_PROFILE"
_COMMON = dict(
    deadline=None,
    database=None,  # examples are small and seeded; failures print their parameters
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much],
)
PROFILES: dict[str, settings] = {
    "ci": settings(max_examples=16, derandomize=True, **_COMMON),
    "thorough": settings(max_examples=300, **_COMMON),
}
for _name, _settings in PROFILES.items():
    settings.register_profile(f"parity-{_name}", _settings)


def profile(name: str | None = None) -> settings:
    """The hypothesis settings of profile `name` (default: $GRAPHIR_PARITY_PROFILE or "ci")."""
    name = name or os.environ.get(PROFILE_ENV) or "ci"
    if name not in PROFILES:
        raise ValueError(f"[parity] unknown profile {name!r}; known: {', '.join(PROFILES)}")
    return PROFILES[name]


# ---- types and sizes ---------------------------------------------------------------

F32, F16, BF16, I32 = DType.F32, DType.F16, DType.BF16, DType.I32
FLOATS = (F32, F16)  # what the elementwise builders accept
PLAIN = (F32, F16, BF16)
QUANTS = (DType.Q8_0, DType.Q4_0, DType.Q4_K, DType.Q5_K, DType.Q6_K)
WEIGHTS = PLAIN + QUANTS

seeds = st.integers(0, 2**32 - 1)


def ne4(max0: int = 12, max1: int = 4, max2: int = 3, max3: int = 2) -> st.SearchStrategy:
    return st.tuples(st.integers(1, max0), st.integers(1, max1), st.integers(1, max2), st.integers(1, max3))


def row_len(draw, type: DType, max_plain: int = 24) -> int:
    """A row length valid for `type`: whole blocks for quantized types."""
    blk = TYPE_INFO[type].block_elems
    if blk == 1:
        return draw(st.integers(1, max_plain))
    return blk * draw(st.integers(1, 2 if blk == 32 else 1))


def divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


@st.composite
def layouts(draw, inner: bool = True, block: bool = False) -> dict:
    """How an input reaches the op: contiguous, a permuted view ("perm"), or a view into a
    larger tensor ("view": `pad` extra elements per dim, the view starting at `off`).
    inner=True keeps dim 0 innermost (what most kernels require, as ggml); block types
    pad dim 0 in whole blocks."""
    kind = draw(st.sampled_from(["cont", "cont", "perm", "view"]))
    if kind == "perm":
        if inner or block:
            return {"kind": "perm", "axes": (0, *draw(st.permutations([1, 2, 3])))}
        return {"kind": "perm", "axes": tuple(draw(st.permutations([0, 1, 2, 3])))}
    if kind == "view":
        pad = tuple(draw(st.integers(0, 1 if (block and i == 0) else 2)) for i in range(4))
        off = tuple(draw(st.integers(0, p)) for p in pad)
        return {"kind": "view", "pad": pad, "off": off}
    return {"kind": "cont"}


def factor(draw, n: int) -> tuple[int, int, int, int]:
    """A random 4-d shape with n elements."""
    ne = []
    for _ in range(3):
        d = draw(st.sampled_from(divisors(n)))
        ne.append(d)
        n //= d
    return (*ne, n)


# ---- views and copies ------------------------------------------------------------------


@st.composite
def view(draw) -> dict:
    s = draw(ne4(10, 4, 3, 2))
    nd = draw(st.integers(1, 4))
    off = [draw(st.integers(0, s[i] - 1)) if i < nd else 0 for i in range(4)]
    ne = [draw(st.integers(1, s[i] - off[i])) if i < nd else 1 for i in range(4)]
    if nd == 1:  # a 1-d view may run across rows
        total = s[0] * s[1] * s[2] * s[3]
        off = [draw(st.integers(0, total - 1)), 0, 0, 0]
        ne = [draw(st.integers(1, total - off[0])), 1, 1, 1]
    return {"seed": draw(seeds), "type": draw(st.sampled_from((F32, F16, I32))), "storage": s, "nd": nd,
            "ne": tuple(ne), "off": tuple(off)}  # fmt: skip


@st.composite
def reshape(draw) -> dict:
    ne = draw(ne4(12, 4, 3, 2))
    n = ne[0] * ne[1] * ne[2] * ne[3]
    return {"seed": draw(seeds), "type": draw(st.sampled_from((F32, F16, I32))), "ne": ne, "to": factor(draw, n)}


def permute() -> st.SearchStrategy:
    return st.fixed_dictionaries(
        {
            "seed": seeds,
            "type": st.sampled_from((F32, F16, I32)),
            "ne": ne4(8, 4, 3, 2),
            "axes": st.permutations([0, 1, 2, 3]).map(tuple),
        }
    )


def transpose() -> st.SearchStrategy:
    return st.fixed_dictionaries({"seed": seeds, "type": st.sampled_from((F32, F16, I32)), "ne": ne4(8, 5, 3, 2)})


@st.composite
def cont(draw) -> dict:
    ne = draw(ne4(10, 4, 3, 2))
    n = ne[0] * ne[1] * ne[2] * ne[3]
    to = factor(draw, n) if draw(st.booleans()) else None
    return {"seed": draw(seeds), "type": draw(st.sampled_from(PLAIN + (I32,))), "ne": ne,
            "layout": draw(layouts(inner=False)), "to": to}  # fmt: skip


def dup() -> st.SearchStrategy:
    return st.fixed_dictionaries(
        {"seed": seeds, "type": st.sampled_from(PLAIN + (I32,)), "ne": ne4(10, 4, 3, 2), "layout": layouts(inner=False)}
    )


@st.composite
def cpy(draw) -> dict:
    dst = draw(st.sampled_from(PLAIN + (DType.Q8_0, DType.Q4_0)))
    quant = TYPE_INFO[dst].is_quantized
    ne = draw(ne4(10, 4, 3, 2))
    if quant:
        ne = (32 * draw(st.integers(1, 2)), *ne[1:])
    return {"seed": draw(seeds), "type": draw(st.sampled_from(PLAIN)), "dst_type": dst, "ne": ne,
            "layout": draw(layouts(inner=False)),
            "dst_layout": {"kind": "cont"} if quant else draw(layouts(inner=False))}  # fmt: skip


# ---- elementwise ---------------------------------------------------------------------


@st.composite
def unary(draw) -> dict:
    return {"seed": draw(seeds), "type": draw(st.sampled_from(FLOATS)), "ne": draw(ne4()),
            "layout": draw(layouts()), "inplace": draw(st.booleans())}  # fmt: skip


@st.composite
def scale(draw) -> dict:
    return {**draw(unary()), "s": draw(st.sampled_from([-0.5, 1.75, 1.0, 0.0])),
            "b": draw(st.sampled_from([0.5, 0.0, -1.25]))}  # fmt: skip


@st.composite
def clamp(draw) -> dict:
    lo, hi = sorted(draw(st.sampled_from([-2.0, -0.5, 0.0, 0.25, 1.5])) for _ in range(2))
    return {**draw(unary()), "min": lo, "max": hi}


@st.composite
def binary(draw) -> dict:
    """b broadcasts over a: each dim of b divides a's (ggml's can_repeat)."""
    ne = draw(ne4())
    ne_b = tuple(draw(st.sampled_from(divisors(n))) for n in ne)
    return {"seed": draw(seeds), "ne": ne, "ne_b": ne_b,
            "type_a": draw(st.sampled_from(FLOATS)), "type_b": draw(st.sampled_from(FLOATS)),
            "layout_a": draw(layouts()), "layout_b": draw(layouts()), "inplace": draw(st.booleans())}  # fmt: skip


def repeat() -> st.SearchStrategy:
    return st.fixed_dictionaries(
        {
            "seed": seeds,
            "type": st.sampled_from(FLOATS),
            "ne": ne4(6, 3, 2, 2),
            "reps": st.tuples(*[st.integers(1, 3)] * 4),
            "layout": layouts(),
        }
    )


# ---- reductions / norms ---------------------------------------------------------------


def rows() -> st.SearchStrategy:
    return st.fixed_dictionaries({"seed": seeds, "ne": ne4(40), "layout": layouts()})


def norm() -> st.SearchStrategy:
    return st.fixed_dictionaries(
        {
            "seed": seeds,
            "ne": ne4(40),
            "layout": layouts(),
            "inplace": st.booleans(),
            "eps": st.sampled_from([1e-6, 1e-5, 1e-2]),
        }
    )


def argmax() -> st.SearchStrategy:
    return st.fixed_dictionaries({"seed": seeds, "ne": ne4(40), "layout": layouts()})


def argsort() -> st.SearchStrategy:
    return st.fixed_dictionaries(
        {"seed": seeds, "ne": ne4(24), "layout": layouts(), "order": st.sampled_from([SORT_ASC, SORT_DESC])}
    )


@st.composite
def top_k(draw) -> dict:
    ne = draw(ne4(24))
    return {"seed": draw(seeds), "ne": ne, "layout": draw(layouts()), "k": draw(st.integers(1, ne[0]))}


@st.composite
def soft_max(draw) -> dict:
    """a [n_kv, n_q, H, n_seq]; the mask [n_kv, n_q + pad, 1 | H, 1 | n_seq] holds -inf entries."""
    ne = draw(ne4(16, 5, 4, 2))
    mask = draw(st.sampled_from([F16, F32, None, F16]))
    return {"seed": draw(seeds), "ne": ne, "layout": draw(layouts()), "inplace": draw(st.booleans()),
            "mask": mask, "mask_pad": draw(st.integers(0, 2)), "mask_heads": draw(st.booleans()),
            "mask_seqs": draw(st.booleans()), "scale": draw(st.sampled_from([0.7, 0.125, 1.0])),
            "max_bias": draw(st.sampled_from([8.0, 0.0])) if mask is not None else 0.0}  # fmt: skip


# ---- indexing --------------------------------------------------------------------------


@st.composite
def get_rows(draw) -> dict:
    type = draw(st.sampled_from(WEIGHTS + (I32,)))
    blk = TYPE_INFO[type].block_elems > 1
    return {"seed": draw(seeds), "type": type, "ne0": row_len(draw, type, 16), "n_rows": draw(st.integers(1, 6)),
            "ne2": draw(st.integers(1, 3)), "ne3": draw(st.integers(1, 2)), "n": draw(st.integers(1, 6)),
            "weight": draw(st.booleans()), "layout": draw(layouts(block=blk))}  # fmt: skip


@st.composite
def set_rows(draw) -> dict:
    """Rows of b land in a at distinct indices per (dim 2, dim 3) slice of c."""
    ne = draw(ne4(16, 8, 3, 2))
    return {"seed": draw(seeds), "type": draw(st.sampled_from(PLAIN)), "ne": ne, "n": draw(st.integers(1, ne[1])),
            "c_b2": draw(st.booleans()), "c_b3": draw(st.booleans()),
            "layout": draw(st.sampled_from([{"kind": "cont"}]) | layouts().filter(lambda x: x["kind"] == "view")),
            "layout_b": draw(layouts())}  # fmt: skip


@st.composite
def concat(draw) -> dict:
    ne = draw(ne4(8, 4, 3, 2))
    dim = draw(st.integers(0, 3))
    ne_b = list(ne)
    ne_b[dim] = draw(st.integers(1, 4))
    return {"seed": draw(seeds), "type": draw(st.sampled_from((F32, F16, I32))), "dim": dim, "ne": ne,
            "ne_b": tuple(ne_b), "layout_a": draw(layouts()), "layout_b": draw(layouts())}  # fmt: skip


# ---- matrix ----------------------------------------------------------------------------


# NOTE: at least 16 weight rows, as ggml's test-backend-ops: a backend that rounds the activations
# (Q8_0/Q8_K, as ggml-cpu does) errs by ~|w| * step per dot product, and the NMSE of a handful of
# outputs that happen to cancel can exceed MATMUL_NMSE (1 output: ~10% of seeds; 16: < 1.3e-4).
MATMUL_ROWS = (16, 24)


@st.composite
def mul_mat(draw) -> dict:
    """a [K, M, ne02, ne03] of any weight type, b [K, N, ne02*r2, ne03*r3]."""
    type = draw(st.sampled_from(WEIGHTS))
    blk = TYPE_INFO[type].block_elems > 1
    weight = draw(st.booleans())
    return {"seed": draw(seeds), "type": type, "type_b": draw(st.sampled_from(FLOATS)),
            "K": row_len(draw, type, 40), "M": draw(st.integers(*MATMUL_ROWS)), "N": draw(st.integers(1, 6)),
            "ne02": draw(st.integers(1, 2)), "ne03": draw(st.integers(1, 2)),
            "r2": draw(st.integers(1, 2)), "r3": draw(st.integers(1, 2)), "weight": weight,
            "layout_a": {"kind": "cont"} if weight else draw(layouts(block=blk)),
            "layout_b": draw(layouts())}  # fmt: skip


@st.composite
def mul_mat_id(draw) -> dict:
    """as [K, M, n_expert], b [K, 1 | n_used, n_tokens], ids [n_used, n_tokens] (distinct per token)."""
    type = draw(st.sampled_from(WEIGHTS))
    n_expert = draw(st.integers(1, 6))
    return {"seed": draw(seeds), "type": type, "K": row_len(draw, type, 40), "M": draw(st.integers(*MATMUL_ROWS)),
            "n_expert": n_expert, "n_used": draw(st.integers(1, min(4, n_expert))),
            "n_tokens": draw(st.integers(1, 5)), "b_shared": draw(st.booleans()), "weight": draw(st.booleans()),
            "layout_b": draw(layouts())}  # fmt: skip


# ---- position / attention / state space -----------------------------------------------


@st.composite
def sections(draw, n_dims: int) -> tuple[int, int, int, int]:
    """rope_multi sections: mostly [t, h, w, 0] covering the n_dims/2 rotated pairs, as models
    use them; sometimes any 4 counts (the pair's sector wraps modulo their sum)."""
    if draw(st.booleans()):
        return draw(st.tuples(*[st.integers(0, 4)] * 4).filter(lambda s: sum(s[:3]) > 0))  # ggml needs a t/h/w section
    half = n_dims // 2
    t = draw(st.integers(0, half))
    h = draw(st.integers(0, half - t))
    return (t, h, half - t - h, 0) if half - t - h or t or h else (half, 0, 0, 0)


@st.composite
def rope(draw) -> dict:
    """rope_ext (NORMAL, NEOX) or rope_multi (MROPE, IMROPE); YaRN (ext_factor > 0) only
    changes anything when freq_scale < 1, so it is drawn with one."""
    multi = draw(st.booleans())
    head_dim = draw(st.sampled_from([2, 4, 8, 16, 32]))
    n_dims = 2 * draw(st.integers(1, head_dim // 2))
    ext = draw(st.sampled_from([0.0, 1.0]))
    return {"seed": draw(seeds), "multi": multi,
            "mode": draw(st.sampled_from([ROPE_MROPE, ROPE_IMROPE] if multi else [ROPE_NORMAL, ROPE_NEOX])),
            "sections": draw(sections(n_dims)), "head_dim": head_dim, "n_dims": n_dims,
            "n_head": draw(st.integers(1, 4)), "n_tokens": draw(st.integers(1, 5)),
            "freq_factors": draw(st.booleans()), "freq_base": draw(st.sampled_from([10000.0, 1e6, 100.0])),
            "freq_scale": draw(st.sampled_from([0.5, 0.25] if ext else [1.0, 0.5])), "ext_factor": ext,
            "n_ctx_orig": 64 if ext else 0, "attn_factor": draw(st.sampled_from([0.75, 1.0])),
            "layout": draw(layouts()), "inplace": draw(st.booleans())}  # fmt: skip


@st.composite
def attention(draw) -> dict:
    """q [D, n_q, H, n_seq], k/v [D, n_kv, H_kv, n_seq] with H = H_kv * gqa, mask
    [n_kv, n_q + pad, 1, 1 | n_seq] holding -inf entries."""
    D = draw(st.sampled_from([4, 8, 16, 32, 64]))
    mask = draw(st.sampled_from([F16, F32, None, F16]))
    return {"seed": draw(seeds), "D": D, "Dv": draw(st.sampled_from([D, D, max(D // 2, 1)])),
            "n_q": draw(st.integers(1, 5)), "n_kv": draw(st.integers(1, 12)), "H_kv": draw(st.integers(1, 2)),
            "gqa": draw(st.integers(1, 3)), "n_seq": draw(st.integers(1, 2)),
            "kv_type": draw(st.sampled_from(FLOATS)), "mask": mask, "mask_pad": draw(st.integers(0, 2)),
            "mask_seqs": draw(st.booleans()), "scale": draw(st.sampled_from([1.5, 0.5, 1.0])) / D**0.5,
            "max_bias": draw(st.sampled_from([8.0, 0.0])) if mask is not None else 0.0,
            # NOTE: a cap near the scores' size, so that capping changes the result beyond 5e-4
            "softcap": draw(st.sampled_from([0.3, 0.0])), "transposed_v": draw(st.booleans()),
            "layout_q": draw(layouts()), "layout_k": draw(layouts()), "layout_v": draw(layouts())}  # fmt: skip


def ssm_conv() -> st.SearchStrategy:
    return st.fixed_dictionaries(
        {
            "seed": seeds,
            "d_conv": st.integers(2, 4),
            "channels": st.integers(1, 8),
            "n_tokens": st.integers(1, 5),
            "n_seqs": st.integers(1, 2),
            "weight": st.booleans(),
            "layout": layouts(),
        }
    )


@st.composite
def gated_delta_net(draw) -> dict:
    n_tokens = draw(st.integers(1, 5))
    return {"seed": draw(seeds), "S": draw(st.sampled_from([2, 4, 8, 16])), "H_k": draw(st.integers(1, 2)),
            "r": draw(st.integers(1, 2)), "n_tokens": n_tokens, "n_seqs": draw(st.integers(1, 2)),
            "g_per_channel": draw(st.booleans()), "snapshots": draw(st.integers(1, n_tokens + 1)),
            "layout_q": draw(layouts()), "layout_k": draw(layouts()), "layout_v": draw(layouts()),
            "layout_state": draw(st.sampled_from([{"kind": "cont"}]) | layouts().filter(lambda x: x["kind"] == "view"))}  # fmt: skip
