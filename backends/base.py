"""The backend interface. A backend is a small package that provides buffers, a dispatch
table `KERNELS: dict[Op, kernel]` and a way to turn a split (a run of consecutive nodes the
scheduler gave it) into ONE prepared call.

`supports_op`, lowering and the op x backend matrix all read `KERNELS`; nothing else wires
an op into a backend. The values of `KERNELS` are private to each backend (a NumPy function,
a launcher that sets OpenCL kernel arguments, a C op code, ...): only the backend itself
calls them; everyone else only asks which ops are keys and what `supports` says.

Lowering happens at two grains:
  - `lower_split(nodes, place) -> Call`: the whole split, what `Plan.run()` executes. A native
    backend turns it into one C call over an array of op records, a Vulkan backend into one
    recorded command buffer, a CUDA backend into one graph launch. The default loops over
    `lower`. `live_out` names what is read after the split; the rest may be fused away (the
    cpu backend lets gated_delta_net read and write the recurrent-state cache itself).
  - `lower(node, dst, srcs) -> Call`: one node; used by the default `lower_split` and by runs
    with an eval callback, which go node by node.
"""

from __future__ import annotations

import os
import weakref
from abc import ABC, abstractmethod
from collections.abc import Callable, Collection
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from graphir.layout import host_array, np_view
from graphir.ops import Op
from graphir.tensor import Tensor, is_empty_op

Call = Callable[[], None]


def default_threads() -> int:
    """The CPUs this process may use (its affinity mask; os.cpu_count where there is none)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


@dataclass(frozen=True)
class Availability:
    ok: bool
    reason: str = ""


class Buffer:
    """Device memory owned by one backend. `handle` is backend-specific."""

    __slots__ = ("backend", "nbytes", "handle")

    def __init__(self, backend: Backend, nbytes: int, handle: Any) -> None:
        self.backend = backend
        self.nbytes = nbytes
        self.handle = handle

    def __repr__(self) -> str:
        return f"<Buffer {self.backend.name} {self.nbytes} B>"


@dataclass(frozen=True)
class Place:
    """Where a tensor's bytes are: a buffer and the byte offset of the tensor's origin."""

    buffer: Buffer
    offset: int


class Backend(ABC):
    """One executor. Subclasses set `name` and `KERNELS` and implement the abstract methods.

    A kernel may carry a `supports(node) -> bool` attribute for type/shape limits; an op
    missing from KERNELS is not supported.
    """

    name: ClassVar[str]
    KERNELS: ClassVar[dict[Op, Any]]
    alignment: ClassVar[int] = 64  # byte alignment of compute-buffer offsets

    # ---- availability ----
    @classmethod
    @abstractmethod
    def availability(cls) -> Availability:
        """Whether this backend can run here, and if not, why (driver, package, device)."""

    # ---- support ----
    def supports_op(self, node: Tensor) -> bool:
        kernel = self.KERNELS.get(node.op)
        if kernel is None:
            return False
        check = getattr(kernel, "supports", None)
        return True if check is None else bool(check(node))

    # ---- memory ----
    @abstractmethod
    def alloc_buffer(self, nbytes: int) -> Buffer:
        """A buffer of at least nbytes (contents undefined)."""

    def set_tensor(self, place: Place, t: Tensor, data: np.ndarray) -> None:
        """Write host `data` (t's numpy dtype, shape (ne3, ne2, ne1, ne0)) into t at place.

        Default, through `write_bytes`: a strided view is read, modified and written back over its
        whole storage span, so the bytes between its elements keep their values."""
        host = host_array(data, t)
        if t.is_contiguous():
            self.write_bytes(place.buffer, place.offset, host)
            return
        raw = self.read_bytes(place.buffer, place.offset, t.nbytes)
        np_view(raw, 0, t)[...] = host
        self.write_bytes(place.buffer, place.offset, raw)

    def get_tensor(self, place: Place, t: Tensor) -> np.ndarray:
        """A host copy of t (numpy shape (ne3, ne2, ne1, ne0); raw rows for quantized)."""
        return np_view(self.read_bytes(place.buffer, place.offset, t.nbytes), 0, t).copy()

    def host_view(self, place: Place, t: Tensor) -> np.ndarray | None:
        """A numpy view (shape (ne3, ne2, ne1, ne0), t's numpy dtype) of t's bytes at `place` when
        they live in this process's memory, else None (the default). With a view, `Plan.set_input`
        and `Plan.get` copy through it directly (no backend call per input: decode steps set a
        handful of small inputs on every run); the backend is still synchronized before a read."""
        return None

    @abstractmethod
    def write_bytes(self, buffer: Buffer, offset: int, data: np.ndarray) -> None:
        """Write raw bytes (a uint8 array) into buffer at offset."""

    @abstractmethod
    def read_bytes(self, buffer: Buffer, offset: int, nbytes: int) -> np.ndarray:
        """A host copy (uint8) of nbytes of buffer from offset."""

    def copy_from(self, dst: Place, t: Tensor, src_backend: Backend, src: Place) -> Call:
        """A prepared call copying the bytes of storage tensor t from another backend.

        Default: through the host. Backends may specialise (device-to-device)."""

        def run() -> None:
            src_backend.synchronize()
            self.set_tensor(dst, t, src_backend.get_tensor(src, t))

        return run

    def static_place(self, t: Tensor) -> Place:
        """Place of a leaf that carries host data (weight, constant, persistent state),
        uploaded once per backend and dropped when the tensor is garbage collected."""
        cache: dict[int, tuple[weakref.ref, Place]] = self.__dict__.setdefault("_static", {})
        hit = cache.get(id(t))
        if hit is not None and hit[0]() is t:
            return hit[1]
        place = self.upload_static(t)
        cache[id(t)] = (weakref.ref(t), place)
        weakref.finalize(t, cache.pop, id(t), None)
        return place

    def upload_static(self, t: Tensor) -> Place:
        """Make t.data (host bytes) available on this backend. Default: a buffer of its own,
        written once (host-memory backends use the bytes in place)."""
        if t.data is None:
            raise ValueError(f"[{self.name}] static tensor {t.name!r} has no host data")
        buf = self.alloc_buffer(t.data.nbytes)
        self.write_bytes(buf, 0, t.data)
        return Place(buf, 0)

    # ---- execution ----
    def lower_split(self, nodes: list[Tensor], place: Callable[[Tensor], Place],
                    live_out: Collection[Tensor] | None = None) -> Call:  # fmt: skip
        """ONE prepared call that computes every node of a split, in order.

        Args:
            nodes: the split's nodes in execution order, views included (they compute nothing).
            place: where a tensor's bytes are on this backend (`place(node)`, `place(src)`).
            live_out: storage owners that something after the split reads (other splits, the
                caller); a node of the split not in it is read only inside the split, so a
                backend may fuse it away (never write it). None: every node must be computed.

        Default: the per-node calls of `lower`, run one after another.
        """
        calls = [
            self.lower(n, place(n), [None if s is None else place(s) for s in n.src])
            for n in nodes if not is_empty_op(n)
        ]  # fmt: skip
        if len(calls) == 1:
            return calls[0]

        def run() -> None:
            for call in calls:
                call()

        return run

    @abstractmethod
    def lower(self, node: Tensor, dst: Place, srcs: list[Place | None]) -> Call:
        """A prepared call that computes node into dst from srcs (same order as node.src).
        All decisions (kernel, views, launch sizes) are made here, not in the call."""

    def synchronize(self) -> None:
        """Wait until all queued work of this backend is done."""

    def describe(self) -> str:
        return self.name
