"""The memory of a context: KV cache (attention layers), recurrent state (delta-net layers) and
their hybrid, behind one interface where only `MemoryContext.apply()` mutates what a graph
depends on (DESIGN section 7; the interface and the decode protocol are in base.py).

Modules, imported one way: base (interface, per-ubatch inputs, helpers, `state_leaf`) <-
kv_cache, recurrent <- hybrid (`HybridMemory`, `make_memory`); update builds the pending
state updates (llama.cpp's init_update) as a graph.
"""

from .base import (
    STATE_TYPES,
    KVInputs,
    Memory,
    MemoryComponent,
    MemoryContext,
    MemoryFullError,
    MemorySizes,
    RSInputs,
    UBatchInputs,
    check_continuity,
    norm_range,
    state_leaf,
)
from .hybrid import HybridMemory, make_memory
from .kv_cache import KVCache
from .recurrent import RecurrentMemory
from .update import build_state_update

__all__ = [
    "STATE_TYPES",
    "HybridMemory",
    "KVCache",
    "KVInputs",
    "Memory",
    "MemoryComponent",
    "MemoryContext",
    "MemoryFullError",
    "MemorySizes",
    "RSInputs",
    "RecurrentMemory",
    "UBatchInputs",
    "build_state_update",
    "check_continuity",
    "make_memory",
    "norm_range",
    "state_leaf",
]
