"""Debug output, by level of one env flag: GRAPHIR_DEBUG=1 schedule, 2 + allocation,
3 + kernel sources. From level 1 a model context also runs its graphs node by node through the
eval callback, so a NaN in the logits is reported with the first node that held one."""

from __future__ import annotations

import os
import sys
import warnings

SCHEDULE = 1
ALLOC = 2
KERNELS = 3


def parse_level(value: str | None) -> tuple[int, str | None]:
    """(level, None) for an unset, empty or integer GRAPHIR_DEBUG value (negative: 0); (0, the error)
    otherwise. Never raises: a bad value must not break `import graphir`; the CLI reports the error."""
    text = (value or "").strip()
    if not text:
        return 0, None
    try:
        return max(0, int(text)), None
    except ValueError:
        return 0, (f"GRAPHIR_DEBUG must be an integer level (0 off, {SCHEDULE} schedule, {ALLOC} + allocation, "
                   f"{KERNELS} + kernel sources), got {value!r}")  # fmt: skip


LEVEL, ENV_ERROR = parse_level(os.environ.get("GRAPHIR_DEBUG"))
_warned = False


def _warn_bad_env() -> None:
    """A library user with a bad GRAPHIR_DEBUG hears of it once, when debug output is first asked
    about (the CLI refuses to start with it instead: `graphir` exits 2)."""
    global _warned
    if ENV_ERROR is not None and not _warned:
        _warned = True
        warnings.warn(f"{ENV_ERROR}; debug output is off", stacklevel=3)


def log(level: int, msg: str) -> None:
    _warn_bad_env()
    if LEVEL >= level:
        print(f"[graphir:{level}] {msg}", file=sys.stderr)


def enabled(level: int) -> bool:
    _warn_bad_env()
    return LEVEL >= level
