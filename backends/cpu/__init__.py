"""The cpu backend: what users run by default.

NOTE: until the native C backend lands, `cpu` runs the NumPy reference kernels under its
own name (so the default backend and the oracle are two instances, as they will be).
"""

from ..ref.backend import RefBackend


class CPUBackend(RefBackend):
    name = "cpu"


BACKEND = CPUBackend
