"""Fixtures shared by the backend tests."""

from __future__ import annotations

import pytest

from graphir.backends import get_backend


@pytest.fixture
def native(monkeypatch):
    """The native cpu backend with every split multi-threaded (up to 8 threads whatever the CPU
    count); thread count and instruction set restored after."""
    from graphir.backends.cpu import backend as cpu_backend
    from graphir.backends.cpu import native as cpu_native

    monkeypatch.setattr(cpu_backend, "SMALL_OP_BYTES", 0)
    monkeypatch.setattr(cpu_backend, "default_threads", lambda: 8)
    be = get_backend("cpu")
    saved = be.n_threads, be.repack
    yield be
    be.n_threads, be.repack = saved
    cpu_native.lib.gr_set_isa(7)
