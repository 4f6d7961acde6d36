"""The ref backend: the NumPy reference implementation of every op (the oracle of the
parity tests). Readable first; never what a user runs by default."""

from .backend import RefBackend

BACKEND = RefBackend
