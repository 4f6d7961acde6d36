"""Progress bars for work that can take more than a couple of seconds, through tqdm (one choice for every
tool: model load, prefill, parity, bench, bench_spec, make-08b, train-tiny).

    with progress.bar(total=n, desc="prefill", unit="tok") as bar:
        for chunk in chunks:
            ...
            bar.update(len(chunk))

A bar draws on stderr only when stderr is a terminal and nobody asked for quiet (`set_quiet(True)`,
what the CLI's `--quiet` does, or GRAPHIR_PROGRESS=0); otherwise it is a no-op object with the
same methods, so piped or logged output never holds carriage returns. tqdm is imported on first
use: `import graphir` needs only numpy.
"""

from __future__ import annotations

import os
import sys
from typing import Any

_quiet = os.environ.get("GRAPHIR_PROGRESS", "1").strip().lower() in ("0", "no", "off", "false")


def set_quiet(quiet: bool = True) -> None:
    """Turn every progress bar of this process off (or back on, where stderr is a terminal)."""
    global _quiet
    _quiet = bool(quiet)


def is_quiet() -> bool:
    """Whether progress was turned off (set_quiet, GRAPHIR_PROGRESS=0), whatever stderr is."""
    return _quiet


def enabled() -> bool:
    """Whether a bar would draw: not quiet, and stderr is a terminal."""
    try:
        return not _quiet and sys.stderr.isatty()
    except (AttributeError, ValueError):  # a replaced or closed stderr
        return False


class _Off:
    """The bar when progress is off: every tqdm method used here, doing nothing."""

    n = 0

    def update(self, n: float = 1) -> None:
        self.n += n

    def set_description(self, desc: str | None = None, refresh: bool = True) -> None:
        pass

    def set_postfix_str(self, s: str = "", refresh: bool = True) -> None:
        pass

    def write(self, s: str) -> None:
        print(s, file=sys.stderr)

    def close(self) -> None:
        pass

    def __enter__(self) -> _Off:
        return self

    def __exit__(self, *exc: object) -> None:
        pass


def bar(total: float | None = None, desc: str = "", unit: str = "it", *, show: bool = True, **kw: Any) -> Any:
    """A tqdm bar on stderr (leave=False: it disappears when done), or a no-op when progress is off
    or `show` is False (a caller's own quiet option)."""
    if not (show and enabled()):
        return _Off()
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit=unit, leave=False, file=sys.stderr, dynamic_ncols=True, **kw)
