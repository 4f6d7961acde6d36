"""`graphir bench-ops` (tools/bench_ops.py) on the reference backend with tiny shapes, and the
flops / bytes formulas of the perf profiles (graphir/parity/perf.py) against hand counts.
No timing is asserted beyond "a positive number"."""

from __future__ import annotations

import json

import pytest

from graphir.backends import _MODULES, get_backend
from graphir.ops import Op
from graphir.parity.perf import FULL, PERF, QUICK
from graphir.tools.bench_ops import run_bench
from graphir.tools.cli import main
from graphir.types import DType


def _rows(text: str, case: str) -> list[list[str]]:
    """The table rows of `case`: the cells after the shape, split per backend."""
    return [[c.split() for c in line.split(" | ")[1:]] for line in text.splitlines() if line.startswith(case + " ")]


def test_quick_table_on_ref_has_every_row_with_positive_numbers(capsys) -> None:
    argv = ["bench-ops", "-b", "ref", "--case", "rms_norm", "--case", "mul_mat", "--quick", "--reps", "2"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "GB/s" in out and "GFLOP/s" in out
    assert len(_rows(out, "rms_norm")) == 1 and len(_rows(out, "mul_mat")) == len(PERF["mul_mat"].shapes(QUICK)) == 8
    for row in _rows(out, "rms_norm") + _rows(out, "mul_mat"):
        (cell,) = row  # one backend
        assert len(cell) == 3 and all(float(x) > 0 for x in cell), row


def test_json_lists_unavailable_backends_and_checks_against_the_reference(capsys, monkeypatch) -> None:
    monkeypatch.setitem(_MODULES, "nowhere", "graphir.backends.nowhere")
    argv = ["bench-ops", "-b", "ref", "-b", "nowhere", "-c", "add", "--quick", "--reps", "1", "--json", "--check"]
    assert main(argv) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["backends"] == ["ref"] and data["unavailable"] == {"nowhere": "not built in this version"}
    (row,) = data["rows"]
    assert row["case"] == "add" and row["flops"] == 256 * 4 and row["bytes"] == 3 * 256 * 4 * 4
    res = row["results"]["ref"]
    assert res["status"] == "ok" and res["us"] > 0 and res["gb_s"] > 0 and res["nmse"] == 0.0


def test_an_op_the_backend_lacks_is_not_supported(monkeypatch) -> None:
    ref = get_backend("ref")
    monkeypatch.setattr(ref, "supports_op", lambda n: n.op is not Op.RMS_NORM)
    table = run_bench(["ref"], ["rms_norm"], QUICK, reps=1)
    (row,) = table.rows
    assert row.cells["ref"].status == "n/s" and "rms_norm" in row.cells["ref"].reason
    assert _rows(table.format(), "rms_norm") == [[["n/s"]]]


def test_every_perf_shape_runs_on_the_reference() -> None:
    table = run_bench(["ref"], None, QUICK, reps=1)
    assert {r.case for r in table.rows} == set(PERF)
    for r in table.rows:
        assert r.cells["ref"].status == "ok", (r.case, r.shape, r.cells["ref"].reason)
        assert r.bytes > 0 and r.flops >= 0


def _shape(case: str, **want) -> dict:
    (p,) = [p for p in PERF[case].shapes(FULL) if all(p[k] == v for k, v in want.items())]
    return p


@pytest.mark.parametrize(
    "case, want, flops, nbytes",
    [
        # mat-vec: 2 K M; weights + x + y
        ("mul_mat", {"type": DType.F16, "N": 1}, 2 * 4096 * 4096, 4096 * 4096 * 2 + 4096 * 4 + 4096 * 4),
        # Q4_K rows: 16 super-blocks of 144 bytes
        ("mul_mat", {"type": DType.Q4_K, "N": 1}, 2 * 4096 * 4096, 4096 * 16 * 144 + 4096 * 4 + 4096 * 4),
        ("mul_mat", {"type": DType.Q8_0, "N": 128}, 2 * 4096 * 4096 * 128,
         4096 * 128 * 34 + 4096 * 128 * 4 + 4096 * 128 * 4),
        ("rms_norm", {}, 3 * 4096 * 128, 2 * 4096 * 128 * 4),
        # 32 query heads over 8 F16 kv heads of 4096 cells, head dim 128, one F16 mask row
        ("flash_attn_ext", {"n_kv": 4096}, 32 * 4096 * (2 * 128 + 2 * 128),
         128 * 32 * 4 + 2 * 128 * 4096 * 8 * 2 + 4096 * 2 + 128 * 32 * 4),
        # per token and head: 7 S^2 + 3 S; q, k, v, g, beta, state in, o and the final state out
        ("gated_delta_net", {"n_tokens": 1}, 16 * (7 * 128 * 128 + 3 * 128),
         3 * 128 * 16 * 4 + 2 * 16 * 4 + 128 * 128 * 16 * 4 + 128 * 16 * 4 + 128 * 128 * 16 * 4),
    ],
)  # fmt: skip
def test_flops_and_bytes_match_hand_counts(case, want, flops, nbytes) -> None:
    p = _shape(case, **want)
    assert PERF[case].flops(p) == flops
    assert PERF[case].bytes(p) == nbytes
