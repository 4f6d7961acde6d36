"""Backend registry: backends register by name and are imported lazily, so a missing
driver or Python package makes a backend unavailable (with the reason), never an import
error of `graphir`."""

from __future__ import annotations

import importlib
import warnings

from .base import Availability, Backend, Buffer, Place

# name -> module exposing `BACKEND` (a Backend subclass); priority order for scheduling
_MODULES: dict[str, str] = {
    "cuda": "graphir.backends.cuda",
    "vulkan": "graphir.backends.vulkan",
    "opencl": "graphir.backends.opencl",
    "cpu": "graphir.backends.cpu",
    "ref": "graphir.backends.ref",
}
# other names users may type for a backend; not listed by names() (no backend appears twice)
_ALIASES: dict[str, str] = {"native": "cpu"}
FALLBACK = "cpu"  # runs what no chosen backend supports (every op); the default of compile/Context
REFERENCE = "ref"  # the NumPy oracle that parity tests and `graphir compare` check against
_INSTANCES: dict[str, Backend] = {}


class BackendUnavailable(RuntimeError):
    """The named backend cannot run here; the message says why."""


def register(name: str, module: str) -> None:
    """Register a backend module (exposing `BACKEND`) under `name`."""
    _MODULES[name] = module


def names() -> list[str]:
    return list(_MODULES)


def backend_class(name: str) -> type[Backend] | None:
    """The Backend subclass for `name`, or None when its module is absent (not yet built)."""
    name = _ALIASES.get(name, name)
    if name not in _MODULES:
        raise ValueError(f"unknown backend {name!r}; known: {', '.join(_MODULES)}")
    try:
        mod = importlib.import_module(_MODULES[name])
    except ModuleNotFoundError as e:
        if e.name == _MODULES[name]:
            return None
        raise
    return mod.BACKEND


def availability(name: str) -> Availability:
    name = _ALIASES.get(name, name)
    try:
        cls = backend_class(name)
    except ImportError as e:  # a dependency of the backend is missing
        return Availability(False, f"import failed: {e}")
    if cls is None:
        return Availability(False, "not built in this version")
    return cls.availability()


def get_backend(name: str | Backend) -> Backend:
    """The (shared) instance of backend `name`; raises BackendUnavailable with the reason."""
    if isinstance(name, Backend):
        return name
    name = _ALIASES.get(name, name)
    if name in _INSTANCES:
        return _INSTANCES[name]
    av = availability(name)
    if not av.ok and name == FALLBACK:
        # NOTE: the default backend must always run: without its native extension, the reference
        warnings.warn(f"graphir: backend {name!r} is unavailable ({av.reason}); using {REFERENCE!r}", stacklevel=2)
        _INSTANCES[name] = get_backend(REFERENCE)
        return _INSTANCES[name]
    if not av.ok:
        raise BackendUnavailable(f"backend {name!r} is unavailable: {av.reason}")
    inst = backend_class(name)()  # type: ignore[misc]
    _INSTANCES[name] = inst
    return inst


__all__ = [
    "FALLBACK", "REFERENCE", "Availability", "Backend", "BackendUnavailable", "Buffer", "Place",
    "availability", "backend_class", "get_backend", "names", "register",
]  # fmt: skip
