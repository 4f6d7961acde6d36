"""The hypothesis profiles of the test suite, in one place (tests/conftest.py loads them).

"ci" (the default) is fixed-seed, so every run checks the same examples; "thorough"
(GRAPHIR_HYPOTHESIS_PROFILE=thorough) draws fresh random examples, many more, for long runs.
Tests never pin a number of examples: a test whose examples are expensive asks for its ci budget
through `examples(n)`, and the thorough profile raises every budget to at least its own count,
so a thorough run reaches every hypothesis test (tests/null/test_profiles.py checks that no test
pins `max_examples` to a literal).
"""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings

PROFILE = "thorough" if os.environ.get("GRAPHIR_HYPOTHESIS_PROFILE") == "thorough" else "ci"
THOROUGH_EXAMPLES = 1000

settings.register_profile(
    "ci",
    derandomize=True,
    deadline=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.register_profile(
    "thorough",
    max_examples=THOROUGH_EXAMPLES,
    deadline=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)


def examples(ci: int) -> int:
    """The max_examples of a test whose ci budget is `ci`: that under "ci", at least
    THOROUGH_EXAMPLES under "thorough"."""
    return ci if PROFILE == "ci" else max(ci, THOROUGH_EXAMPLES)
