"""Every op case on every registered backend (but the reference) against the reference (`ref`).

Unavailable backends are skipped with their reason; an op missing from the backend's KERNELS
is skipped as "<backend>: <op> not implemented yet", and a case whose every example the backend
does not support is skipped as not supported (never counted as a pass). Examples come from
the profile named by GRAPHIR_PARITY_PROFILE ("ci" by default: fixed seed, few examples).
"""

from __future__ import annotations

import pytest

from graphir.backends import REFERENCE, availability, backend_class, names
from graphir.parity import CASES, Status, check_examples

BACKENDS = [n for n in names() if n != REFERENCE]


@pytest.mark.parametrize("case", list(CASES.values()), ids=str)
@pytest.mark.parametrize("backend", BACKENDS)
def test_parity(backend, case):
    av = availability(backend)
    if not av.ok:
        pytest.skip(f"{backend} unavailable: {av.reason}")
    if case.op is not None and case.op not in backend_class(backend).KERNELS:
        pytest.skip(f"{backend}: {case.op.value} not implemented yet")
    results = check_examples(case, backend)  # raises on the first FAIL, shrunk by hypothesis
    supported = [r for _, r in results if r.status is not Status.NOT_SUPPORTED]
    if not supported:
        pytest.skip(f"{case.name} not supported on {backend}: {results[0][1].reason}")
    assert all(r.passed for r in supported)
