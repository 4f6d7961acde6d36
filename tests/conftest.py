"""Shared test setup: hypothesis profiles and a clean plan cache per test.

Profiles: "ci" (default) is fixed-seed so every run checks the same examples; "thorough"
(GRAPHIR_HYPOTHESIS_PROFILE=thorough) draws fresh random examples, more of them, for long runs.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, settings

import graphir

settings.register_profile(
    "ci",
    derandomize=True,
    deadline=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.register_profile(
    "thorough",
    max_examples=1000,
    deadline=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.load_profile("thorough" if os.environ.get("GRAPHIR_HYPOTHESIS_PROFILE") == "thorough" else "ci")


@pytest.fixture(autouse=True)
def _clear_plan_cache() -> Iterator[None]:
    """Every test starts with an empty plan cache, so cache hits/misses are its own."""
    graphir.plan_cache.clear()
    yield
    graphir.plan_cache.clear()
