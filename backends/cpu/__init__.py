"""The cpu backend: the NumPy reference implementation of every op (the oracle of the
parity tests)."""

from .backend import CPUBackend

BACKEND = CPUBackend
