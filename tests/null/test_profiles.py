"""The hypothesis profiles decide how many examples every test draws: no test pins max_examples to a
literal (a test asks for its ci budget with `examples(n)`, which the thorough profile raises)."""

from __future__ import annotations

import re
from pathlib import Path

from hypothesis_profiles import THOROUGH_EXAMPLES, examples

TESTS = Path(__file__).resolve().parents[1]
PINNED = re.compile(r"max_examples\s*=\s*\d")


def test_no_test_pins_max_examples() -> None:
    pinned = [f"{p.relative_to(TESTS)}:{i}: {line.strip()}" for p in sorted(TESTS.rglob("*.py"))
              for i, line in enumerate(p.read_text().splitlines(), 1) if PINNED.search(line)]  # fmt: skip
    assert not pinned, "use max_examples=examples(n) so the thorough profile reaches the test:\n" + "\n".join(pinned)


def test_the_budget_follows_the_profile() -> None:
    from hypothesis_profiles import PROFILE

    assert examples(7) == (7 if PROFILE == "ci" else THOROUGH_EXAMPLES)
