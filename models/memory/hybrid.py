"""The hybrid memory (one KV cache + one recurrent memory, split by layer) and `make_memory`,
which picks the memory a model's layers need."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from .base import Memory, MemoryComponent
from .kv_cache import KVCache
from .recurrent import RecurrentMemory

if TYPE_CHECKING:
    from ..hparams import Qwen35HParams


class HybridMemory(Memory):
    """One KV cache (attention layers) and one recurrent memory (delta-net layers). Every call
    goes to both; `seq_rm` dry-runs both first, so a refusal by either changes neither."""

    def __init__(self, kv: MemoryComponent, rs: MemoryComponent) -> None:
        if kv.n_seq_max != rs.n_seq_max:
            raise ValueError(f"[hybrid] n_seq_max differs: kv {kv.n_seq_max}, recurrent {rs.n_seq_max}")
        super().__init__(kv.n_seq_max)
        self.kv, self.rs = kv, rs

    @property
    def components(self) -> tuple[MemoryComponent, ...]:
        return (self.kv, self.rs)


def make_memory(hp: Qwen35HParams, layers: Sequence[int], n_ctx: int, n_seq_max: int = 1, n_rs_seq: int = 0,
                type_k: Any = "f16", type_v: Any = "f16", kv_pad: int = 256) -> Memory:  # fmt: skip
    """The memory for `layers` of a model (the trunk for the main context, the nextn blocks for
    the MTP head): a KVCache if none is recurrent, a RecurrentMemory if all are, else a hybrid."""
    attn = [il for il in layers if not hp.is_recurrent(il)]
    recr = [il for il in layers if hp.is_recurrent(il)]
    kv = KVCache.for_model(hp, attn, n_ctx, n_seq_max, type_k, type_v, kv_pad) if attn else None
    rs = RecurrentMemory.for_model(hp, recr, n_seq_max, n_rs_seq) if recr else None
    if kv is not None and rs is not None:
        return HybridMemory(kv, rs)
    if kv is None and rs is None:
        raise ValueError("[memory] no layers given")
    return kv or rs
