"""The cpu backend: native C kernels through cffi (shaders/cpu), a whole split per call on a
persistent thread pool. What users run by default; the NumPy reference is the `ref` backend.
Without the compiled extension it is unavailable with the reason, and `cpu` falls back to `ref`."""

from .backend import CPUBackend

BACKEND = CPUBackend
