"""Helpers of the native cpu kernel tests (tests/backends/test_cpu_*.py)."""

from __future__ import annotations

from collections.abc import Callable

from graphir.ops import Op
from graphir.parity.cases import Case
from graphir.parity.harness import check_case
from graphir.parity.inputs import Built


def set_isa(level: int) -> None:
    """Cap the instruction sets the kernels use: 0 portable, 1 AVX2, 3 AVX-512, 7 AVX-512 VNNI."""
    from graphir.backends.cpu import native as cpu_native

    cpu_native.lib.gr_set_isa(level)


class Adhoc(Case):
    """A one-off case (not registered): `build(params)` makes the graph."""

    def __init__(self, op: Op, build: Callable[[dict], Built]) -> None:
        self.op, self.name, self._build = op, f"adhoc {op.value}", build

    def build(self, p: dict) -> Built:
        return self._build(p)


def check(case: Case, params: dict) -> None:
    """The case on the cpu backend passes against the reference."""
    r = check_case(case, params, "cpu")
    assert r.passed, f"{case.name} {params}: {r}"
