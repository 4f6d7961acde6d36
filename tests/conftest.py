"""Shared test setup: hypothesis profiles and a clean plan cache per test.

Profiles (tests/hypothesis_profiles.py): "ci" (default) is fixed-seed so every run checks the same
examples; "thorough" (GRAPHIR_HYPOTHESIS_PROFILE=thorough) draws fresh random examples, more of them,
for long runs, and raises every test's budget (`examples(n)`) to its own count.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from hypothesis import settings
from hypothesis_profiles import PROFILE

import graphir

settings.load_profile(PROFILE)


@pytest.fixture(autouse=True)
def _clear_plan_cache() -> Iterator[None]:
    """Every test starts with an empty plan cache, so cache hits/misses are its own."""
    graphir.plan_cache.clear()
    yield
    graphir.plan_cache.clear()
