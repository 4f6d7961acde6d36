"""Debug output, by level of one env flag: GRAPHIR_DEBUG=1 schedule, 2 + allocation,
3 + kernel sources. From level 1 a model context also runs its graphs node by node through the
eval callback, so a NaN in the logits is reported with the first node that held one."""

from __future__ import annotations

import os
import sys

LEVEL = int(os.environ.get("GRAPHIR_DEBUG", "0") or 0)

SCHEDULE = 1
ALLOC = 2
KERNELS = 3


def log(level: int, msg: str) -> None:
    if LEVEL >= level:
        print(f"[graphir:{level}] {msg}", file=sys.stderr)


def enabled(level: int) -> bool:
    return LEVEL >= level
