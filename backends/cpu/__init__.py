"""The cpu backend: native C kernels through cffi, a whole split per call, a thread pool.
What users run by default; the NumPy reference is the `ref` backend.

NOTE(interim): while the kernel families are being written, the native backend registers as
`native` and `cpu` still runs the reference kernels under its own name.
"""

from ..ref.backend import RefBackend


class CPUBackend(RefBackend):
    name = "cpu"


BACKEND = CPUBackend
