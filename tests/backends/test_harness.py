"""The parity harness itself, checked with fake backends made from the cpu backend: an exact
copy must pass every case; a perturbed kernel, a missing op, a NaN, a scribble past the
output, a write into an input or into rows set_rows must not touch must each be caught."""

from __future__ import annotations

import numpy as np
import pytest
from gguf import GGMLQuantizationType
from gguf.quants import dequantize

import graphir as gr
from graphir.backends import availability, names
from graphir.backends.base import Buffer
from graphir.backends.ref import RefBackend as CPUBackend
from graphir.ops import Op
from graphir.parity import CASES, MATMUL_NMSE, PROFILES, Status, check_case, check_examples, examples, profile, run_all
from graphir.parity.inputs import random_blocks
from graphir.types import DType

F32 = DType.F32


def fake_backend(name: str, kernels: dict | None = None, scribble: Op | None = None) -> CPUBackend:
    """A cpu backend under another name with its own KERNELS. Its buffers carry 256 bytes of
    slack so a kernel writing past the last tensor still lands inside the buffer. With
    `scribble`, every call of that op also writes 4 bytes just past its output."""

    class Fake(CPUBackend):
        KERNELS = dict(CPUBackend.KERNELS) if kernels is None else kernels

        def alloc_buffer(self, nbytes: int) -> Buffer:
            return Buffer(self, nbytes + 256, np.zeros(nbytes + 256, dtype=np.uint8))

        def lower(self, node, dst, srcs):
            call = super().lower(node, dst, srcs)
            if node.op is not scribble:
                return call

            def run() -> None:
                call()
                self.write_bytes(dst.buffer, dst.offset + node.nbytes, np.zeros(4, dtype=np.uint8))

            return run

    Fake.name = name
    return Fake()


def with_kernel(op: Op, fn) -> dict:
    kernels = dict(CPUBackend.KERNELS)
    kernels[op] = fn
    return kernels


# ---- (e) an exact copy passes everything ----------------------------------------------

EXACT = fake_backend("exact-copy")


@pytest.mark.parametrize("case", list(CASES.values()), ids=str)
def test_exact_copy_passes_every_case(case):
    results = check_examples(case, EXACT)  # raises on the first FAIL
    assert results and all(r.status is Status.PASS for _, r in results), [str(r) for _, r in results]


# ---- (a) a perturbed kernel fails with its NMSE ---------------------------------------


def test_perturbed_kernel_fails_with_nmse():
    cpu_add = CPUBackend.KERNELS[Op.ADD]

    def add_off(node, dst, a, b):
        cpu_add(node, dst, a, b)
        dst[...] = dst + np.float32(0.01)

    be = fake_backend("perturbed", with_kernel(Op.ADD, add_off))
    for p in examples(CASES["add"], "ci"):
        r = check_case(CASES["add"], p, be)
        assert r.status is Status.FAIL and "NMSE" in r.reason, (p, r)
        assert r.nmse is not None and r.nmse > 1e-7
    for p in examples(CASES["sub"], "ci"):  # the other ops of that backend are fine
        assert check_case(CASES["sub"], p, be).passed


def test_thresholds_follow_the_op():
    """A 1e-3 relative error fails an elementwise op (1e-7) but passes mul_mat (5e-4)."""

    def off(op):
        fn = CPUBackend.KERNELS[op]

        def kernel(node, dst, *src):
            fn(node, dst, *src)
            dst[...] = dst * np.float32(1.001)

        return kernel

    be = fake_backend("relative", {**CPUBackend.KERNELS, Op.MUL: off(Op.MUL), Op.MUL_MAT: off(Op.MUL_MAT)})
    layout = {"kind": "cont"}
    mul = {"seed": 1, "ne": (16, 4, 2, 1), "ne_b": (16, 1, 1, 1), "type_a": F32, "type_b": F32,
           "layout_a": layout, "layout_b": layout, "inplace": False}  # fmt: skip
    mm = {"seed": 2, "type": F32, "type_b": F32, "K": 16, "M": 4, "N": 3, "ne02": 1, "ne03": 1, "r2": 1, "r3": 1,
          "weight": True, "layout_a": layout, "layout_b": layout}  # fmt: skip
    r = check_case(CASES["mul"], mul, be)
    assert r.failed and 1e-7 < r.nmse < MATMUL_NMSE
    r = check_case(CASES["mul_mat"], mm, be)
    assert r.passed and 1e-7 < r.nmse < MATMUL_NMSE


# ---- (b) a missing op is NOT SUPPORTED, never a pass ----------------------------------


def test_missing_op_is_not_supported():
    be = fake_backend("no-silu", {op: fn for op, fn in CPUBackend.KERNELS.items() if op is not Op.SILU})
    for p in examples(CASES["silu"], "ci"):
        r = check_case(CASES["silu"], p, be)
        assert r.status is Status.NOT_SUPPORTED and "silu" in r.reason, r
    assert check_case(CASES["gelu"], examples(CASES["gelu"], "ci")[0], be).passed


def test_partial_support_is_per_example():
    cpu_add = CPUBackend.KERNELS[Op.ADD]

    def add(node, dst, a, b):
        cpu_add(node, dst, a, b)

    add.supports = lambda node: node.type == F32 and node.src[1].type == F32
    be = fake_backend("f32-add", with_kernel(Op.ADD, add))
    seen = set()
    for p in examples(CASES["add"], "thorough")[:40]:
        r = check_case(CASES["add"], p, be)
        all_f32 = p["type_a"] == F32 and p["type_b"] == F32
        assert r.status is (Status.PASS if all_f32 else Status.NOT_SUPPORTED), (p, r)
        seen.add(all_f32)
    assert seen == {True, False}


def test_unsupported_helper_node_is_not_supported():
    """A case whose graph needs another op (cont, for the in-place variant) the backend lacks."""
    be = fake_backend("no-cont", {op: fn for op, fn in CPUBackend.KERNELS.items() if op is not Op.CONT})
    p = {"seed": 3, "type": F32, "ne": (8, 2, 1, 1), "layout": {"kind": "cont"}, "inplace": True}
    r = check_case(CASES["neg"], p, be)
    assert r.status is Status.NOT_SUPPORTED and "cont" in r.reason
    assert check_case(CASES["neg"], {**p, "inplace": False}, be).passed


# ---- (c) NaN / inf ----------------------------------------------------------------------


@pytest.mark.parametrize("bad, word", [(np.nan, "NaN"), (np.inf, "inf")])
def test_non_finite_output_fails(bad, word):
    cpu_neg = CPUBackend.KERNELS[Op.NEG]

    def neg(node, dst, a):
        cpu_neg(node, dst, a)
        dst[0, 0, 0, 0] = bad

    be = fake_backend("non-finite", with_kernel(Op.NEG, neg))
    for p in examples(CASES["neg"], "ci"):
        r = check_case(CASES["neg"], p, be)
        assert r.failed and word in r.reason and "[0, 0, 0, 0]" in r.reason, r


# ---- (d) memory: sentinels, inputs, untouched rows --------------------------------------


def test_scribble_past_output_fails_on_sentinel():
    be = fake_backend("scribbler", scribble=Op.NEG)
    for p in examples(CASES["neg"], "ci"):
        r = check_case(CASES["neg"], p, be)
        assert r.failed and "sentinel" in r.reason and "0 bytes past the end of 'out'" in r.reason, r


def test_writing_into_an_input_fails():
    cpu_neg = CPUBackend.KERNELS[Op.NEG]

    def neg(node, dst, a):
        cpu_neg(node, dst, a)
        a[...] = 0

    be = fake_backend("input-writer", with_kernel(Op.NEG, neg))
    p = {"seed": 4, "type": F32, "ne": (8, 3, 2, 1), "layout": {"kind": "perm", "axes": (0, 2, 1, 3)},
         "inplace": False}  # fmt: skip
    r = check_case(CASES["neg"], p, be)
    assert r.failed and "input 'a.src' was modified" in r.reason


def test_set_rows_must_leave_other_rows_untouched():
    cpu_set_rows = CPUBackend.KERNELS[Op.SET_ROWS]

    def set_rows(node, dst, a, b, c):
        dst[...] = 0  # clobbers the rows it was not asked to write
        cpu_set_rows(node, dst, a, b, c)

    be = fake_backend("row-clobber", with_kernel(Op.SET_ROWS, set_rows))
    n_checked = 0
    for p in examples(CASES["set_rows"], "thorough")[:30]:
        if p["n"] < p["ne"][1]:
            r = check_case(CASES["set_rows"], p, be)
            assert r.failed and "must leave untouched" in r.reason, (p, r)
            n_checked += 1
    assert n_checked


def test_sentinel_check_is_quiet_for_an_exact_copy_with_slack():
    """The slack bytes of the fake's buffers hold the sentinel after a run (no false alarm)."""
    for name in ("neg", "add", "set_rows", "cpy", "gated_delta_net"):
        for p in examples(CASES[name], "ci")[:4]:
            assert check_case(CASES[name], p, EXACT).passed


# ---- tables, profiles, registry ---------------------------------------------------------


def test_run_all_counts_per_op_and_backend():
    lacking = fake_backend("no-add", {op: fn for op, fn in CPUBackend.KERNELS.items() if op is not Op.ADD})
    unavailable = [n for n in names() if not availability(n).ok]
    table = run_all([EXACT, lacking, *unavailable[:1]], profile="ci", cases=["add", "neg"])
    n = len(examples(CASES["add"], "ci"))
    assert (table.cells["add", "exact-copy"].passed, table.cells["add", "exact-copy"].failed) == (n, 0)
    assert (table.cells["add", "no-add"].not_supported, table.cells["add", "no-add"].passed) == (n, 0)
    assert table.cells["neg", "no-add"].passed == len(examples(CASES["neg"], "ci"))
    assert table.ok
    text = table.format()
    assert "add" in text and "no-add" in text and f"{n}/0/0" in text and f"0/0/{n}" in text
    if unavailable:
        assert unavailable[0] in table.unavailable


def test_run_all_reports_failures():
    cpu_neg = CPUBackend.KERNELS[Op.NEG]
    be = fake_backend("neg-nan", with_kernel(Op.NEG, lambda node, dst, a: (cpu_neg(node, dst, a), dst.fill(np.nan))))
    table = run_all([be], profile="ci", cases=["neg"])
    assert not table.ok and table.cells["neg", "neg-nan"].failed == len(examples(CASES["neg"], "ci"))
    assert "FAIL neg on neg-nan" in table.format()


def test_profiles(monkeypatch):
    assert examples(CASES["rope"], "ci") == examples(CASES["rope"], "ci")  # fixed seed
    assert PROFILES["ci"].derandomize and PROFILES["thorough"].max_examples > PROFILES["ci"].max_examples
    monkeypatch.setenv("GRAPHIR_PARITY_PROFILE", "thorough")
    assert profile() is PROFILES["thorough"]
    monkeypatch.delenv("GRAPHIR_PARITY_PROFILE")
    assert profile() is PROFILES["ci"]
    with pytest.raises(ValueError, match="unknown profile"):
        profile("nightly")


def test_one_case_class_per_op():
    ops = [c.op for c in CASES.values() if c.op is not None]
    assert sorted(o.name for o in ops) == sorted(o.name for o in Op if o is not Op.NONE)
    assert len({type(c) for c in CASES.values()}) == len(CASES)
    assert CASES["mul_mat"].nmse_threshold == CASES["attn_decomposed"].nmse_threshold == 5e-4
    assert CASES["argmax"].nmse_threshold == CASES["top_k"].nmse_threshold == 0.0
    assert CASES["add"].nmse_threshold == 1e-7


def test_strategies_reach_non_contiguous_inputs():
    """Across the thorough draws, the op sees permuted and offset views, not just leafs."""
    kinds = set()
    for p in examples(CASES["add"], "thorough")[:60]:
        built = CASES["add"].build(p)
        a = built.outputs[0].src[0]
        kinds.add("view" if a.view_offs else "perm" if a.is_view and not a.is_contiguous() else "plain")
    assert {"view", "perm", "plain"} <= kinds


@pytest.mark.parametrize("type", [DType.Q8_0, DType.Q4_0, DType.Q4_K, DType.Q5_K, DType.Q6_K])
def test_random_blocks_decode_to_moderate_values(type):
    raw = random_blocks(type, 3, 256, np.random.default_rng(0))
    x = dequantize(raw, GGMLQuantizationType(int(type)))
    assert x.shape == (3, 256) and np.isfinite(x).all()
    assert 0.05 < np.abs(x).mean() < 3 and np.abs(x).max() < 8


def test_layout_views_address_the_right_elements():
    """The view layout an op sees holds the elements the strategy intended (checked by a
    straightforward numpy slice of the storage data)."""
    from graphir.parity.inputs import Inputs

    mk = Inputs(5)
    t = mk.tensor(F32, (3, 2, 2, 1), {"kind": "view", "pad": (2, 1, 0, 1), "off": (1, 1, 0, 1)}, name="x")
    (src, data), = mk.data.items()  # fmt: skip
    plan = gr.compile(gr.build_graph(gr.cont(t)), ["cpu"], cache=False)
    plan.set_input(src, data)
    plan.run()
    np.testing.assert_array_equal(plan.get(plan.graph.outputs[0]), data[1:2, 0:2, 1:3, 1:4])
