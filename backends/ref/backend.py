"""The ref backend: host memory (numpy buffers, backends/host.py); a prepared call is the kernel bound to numpy views of
its destination and sources, so running it makes no decisions."""

from __future__ import annotations

from functools import partial

from graphir.tensor import Tensor

from ..base import Availability, Call, Place
from ..host import HostMemoryBackend
from .table import KERNELS


class RefBackend(HostMemoryBackend):
    """The NumPy reference of every op: the oracle of the parity tests, readable first."""

    name = "ref"
    KERNELS = KERNELS

    @classmethod
    def availability(cls) -> Availability:
        return Availability(True)

    def lower(self, node: Tensor, dst: Place, srcs: list[Place | None]) -> Call:
        kernel = self.KERNELS[node.op]
        views = [None if p is None else self.view(p, s) for p, s in zip(srcs, node.src)]
        return partial(kernel, node, self.view(dst, node), *views)
