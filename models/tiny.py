"""The embedded models: the shipped trained tiny model (`graphir generate`'s default), and small
deterministic random-weight Qwen3.5 GGUFs (dense or MoE) for tests and `graphir make-tiny`
(tools/make_tiny.py).

The shipped model (`data/tiny-qwen35-py.gguf`, F16) is a 3.3M-parameter qwen35 with one MTP block
trained on the Python standard library by `graphir train-tiny`; its recipe and figures are in
`data/tiny-qwen35-py.md` next to it. `default_model_path()` returns it.

The random-weight models are complete but small: 4 trunk layers (3 gated delta net + 1 gated attention, with
`full_attention_interval` 4 as in Qwen3.5) plus one MTP (nextn) block, n_embd 128, partial
IMRoPE, and a 512-token byte-level BPE vocabulary trained with `train_byte_bpe` on
`data/tiny_corpus.txt` (English prose and Python shipped with the package) plus the Qwen chat
specials. Weights are random (`random_qwen35`, seeded), so its text is nonsense, but its numbers
are fully defined by the file: llama.cpp and graphir must agree on them, which is what the peer
test checks. Everything is a pure function of (arch, dtype, seed), so the bytes are the same on
every run.

`cached_tiny_path()` gives one in the cache dir, created on first use (`$GRAPHIR_CACHE`, else `$XDG_CACHE_HOME/graphir`, else
`~/.cache/graphir`), reused while its recorded version (`general.version`: the recipe version
plus a hash of the exact contents) matches what this code would write, regenerated otherwise.
Files are written to a temporary name and renamed into place, so concurrent creators and
readers only ever see a complete file.
"""

from __future__ import annotations

import hashlib
import os
import threading
import uuid
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

from graphir.types import DType

from .chat import CHATML
from .gguf_write import GGUFContents, qwen35_contents, random_qwen35, write_gguf
from .hparams import ARCHS, Qwen35HParams

TINY_VERSION = "1"  # NOTE: bump when the recipe changes in a way the content hash would not see
SPECIAL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")
VOCAB_SIZE = 512
DTYPES = {"f32": DType.F32, "f16": DType.F16, "q8_0": DType.Q8_0}
CORPUS = "tiny_corpus.txt"
SHIPPED_MODEL = "tiny-qwen35-py.gguf"  # trained by `graphir train-tiny`; recipe in tiny-qwen35-py.md


# --------------------------------------------------------------------------------------------
# vocabulary and hyperparameters
# --------------------------------------------------------------------------------------------


def corpus_text() -> str:
    """The training text shipped as package data (models/data/tiny_corpus.txt)."""
    return (resources.files(__package__) / "data" / CORPUS).read_text(encoding="utf-8")


@cache
def _trained_vocab() -> dict[str, Any]:
    from .tokenizer import train_byte_bpe

    # Qwen's conventions: <|endoftext|> doubles as BOS and padding (never added: add_bos_token is
    # false), <|im_end|> ends a turn; llama.cpp also detects <|im_end|> / <|endoftext|> as EOT/EOG.
    return train_byte_bpe([corpus_text()], VOCAB_SIZE, SPECIAL_TOKENS, bos="<|endoftext|>", eos="<|im_end|>",
                          pad="<|endoftext|>")  # fmt: skip


def tiny_tokenizer_fields() -> dict[str, Any]:
    """The `tokenizer.ggml.*` fields of the tiny model (a fresh copy; training is deterministic)."""
    return {k: list(v) if isinstance(v, list) else v for k, v in _trained_vocab().items()}


def tiny_hparams(arch: str = "qwen35") -> Qwen35HParams:
    """Hyperparameters of the tiny model; `arch` is "qwen35" (dense FFN) or "qwen35moe".

    Shapes scale Qwen3.5 down: head_dim 32 with a quarter rotated (n_rot 8) and IMRoPE sections
    [2, 1, 1, 0] (Qwen3.5's [11, 11, 10, 0] scaled to n_rot / 2 = 4), delta net with 2 key heads
    and 4 value heads of 32, conv kernel 4. MoE: 8 experts of width 64, top-2, plus a shared expert.
    """
    if arch not in ARCHS:
        raise ValueError(f"[make-tiny] unknown architecture {arch!r}; supported: {', '.join(ARCHS)}")
    moe = dict(n_expert=8, n_expert_used=2, n_ff_exp=64, n_ff_shexp=128) if arch == "qwen35moe" else {}
    return Qwen35HParams(
        arch=arch, n_vocab=len(_trained_vocab()["tokenizer.ggml.tokens"]), n_ctx_train=4096, n_embd=128,
        block_count=5, n_ff=256, n_head=4, n_head_kv=2, head_dim_k=32, head_dim_v=32, rms_eps=1e-6, n_rot=8,
        rope_sections=(2, 1, 1, 0), rope_freq_base=10_000_000.0, ssm_d_conv=4, ssm_d_inner=128, ssm_d_state=32,
        ssm_dt_rank=4, ssm_n_group=2, full_attention_interval=4, nextn_predict_layers=1, **moe,
    )  # fmt: skip


# --------------------------------------------------------------------------------------------
# writing
# --------------------------------------------------------------------------------------------


def _check_dtype(dtype: DType | str) -> DType:
    if isinstance(dtype, str):
        if dtype.lower() not in DTYPES:
            raise ValueError(f"[make-tiny] dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
        return DTYPES[dtype.lower()]
    if dtype not in DTYPES.values():
        raise ValueError(f"[make-tiny] dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    return DType(dtype)


def tiny_contents(arch: str = "qwen35", dtype: DType | str = DType.F32, seed: int = 0) -> GGUFContents:
    """Everything the tiny GGUF holds, `general.version` included (recipe version + content hash)."""
    dtype = _check_dtype(dtype)
    hp = tiny_hparams(arch)
    name = f"graphir-tiny-{arch}"
    c = qwen35_contents(hp, random_qwen35(hp, seed, dtype), tiny_tokenizer_fields(), name=name, chat_template=CHATML)
    # NOTE: general.* keys go first (readers show them first); the hash covers every other key and tensor
    c.kv = {"general.name": c.kv.pop("general.name"), "general.version": (tiny_version(c), "STRING", None), **c.kv}
    return c


def tiny_version(c: GGUFContents) -> str:
    """`TINY_VERSION+<16 hex>`: a sha256 over the architecture, the KVs (but general.version) and the tensors."""
    h = hashlib.sha256(f"{TINY_VERSION}\0{c.arch}\0".encode())
    for key, value in c.kv.items():
        if key != "general.version":
            h.update(repr((key, value)).encode())
    for name, (type_id, ne, raw) in c.tensors.items():
        h.update(repr((name, type_id, tuple(ne))).encode())
        h.update(memoryview(raw).cast("B"))
    return f"{TINY_VERSION}+{h.hexdigest()[:16]}"


def _write_atomic(path: Path, c: GGUFContents) -> None:
    """Write to a temporary file next to `path`, then rename it over `path` (atomic on POSIX and Windows)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    # a unique name (not mkstemp, whose 0600 mode the renamed file would keep)
    tmp = path.parent / f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:12]}.tmp"
    try:
        write_gguf(tmp, c)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def make_tiny(
    path: str | os.PathLike[str], arch: str = "qwen35", dtype: DType | str = DType.F32, seed: int = 0
) -> Path:
    """Write the tiny model to `path` (same bytes for the same arguments); returns the path.

    Args:
        arch: "qwen35" or "qwen35moe".
        dtype: storage type of the weight matrices, F32, F16 or Q8_0 (norms, ssm_a/dt, conv and router stay F32).
        seed: the weights' random seed.
    """
    path = Path(path)
    _write_atomic(path, tiny_contents(arch, dtype, seed))
    return path


# --------------------------------------------------------------------------------------------
# the embedded models: the shipped file and the random ones in the cache
# --------------------------------------------------------------------------------------------


def cache_dir() -> Path:
    """Where the random-weight models live: $GRAPHIR_CACHE, else $XDG_CACHE_HOME/graphir, else ~/.cache/graphir."""
    if os.environ.get("GRAPHIR_CACHE"):
        return Path(os.environ["GRAPHIR_CACHE"]).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg).expanduser() if xdg else Path.home() / ".cache") / "graphir"


_verified: dict[Path, tuple[int, int, int]] = {}  # path -> (st_ino, st_mtime_ns, st_size) when last found current
_lock = threading.Lock()


def _recorded_version(path: Path) -> str | None:
    from .gguf import GGUFError, load_gguf

    try:
        value = load_gguf(path).metadata.get("general.version")
    except (GGUFError, OSError):
        return None
    return value if isinstance(value, str) else None


def cached_tiny_path(arch: str = "qwen35", dtype: DType | str = DType.F32, seed: int = 0) -> Path:
    """The tiny model for (arch, dtype, seed) in the cache dir: created if missing or stale, else reused."""
    dtype = _check_dtype(dtype)
    tiny_hparams(arch)  # checks arch before anything touches the disk
    suffix = "" if (dtype, seed) == (DType.F32, 0) else f"-{dtype.name.lower()}-seed{seed}"
    path = cache_dir() / f"tiny-{arch}{suffix}.gguf"
    with _lock:
        st = _stat(path)
        if st is not None and _verified.get(path) == st:
            return path
        c = tiny_contents(arch, dtype, seed)
        expected = c.kv["general.version"][0]
        if st is None or _recorded_version(path) != expected:
            _write_atomic(path, c)
        _verified[path] = _stat(path)
    return path


def shipped_model_path() -> Path:
    """The trained tiny qwen35 + MTP model shipped as package data (F16, ~7 MB)."""
    path = Path(str(resources.files(__package__) / "data" / SHIPPED_MODEL))
    if not path.is_file():
        raise FileNotFoundError(f"[tiny] the shipped model {path} is missing: reinstall graphir, or train one with "
                                "`graphir train-tiny --out DIR --export FILE` and pass --model FILE")  # fmt: skip
    return path


def default_model_path(arch: str = "qwen35") -> Path:
    """The model `graphir generate` runs without --model: the shipped trained model for "qwen35";
    for "qwen35moe" (no trained MoE is shipped) the random-weight tiny MoE from the cache."""
    if arch == "qwen35":
        return shipped_model_path()
    return cached_tiny_path(arch)


def _stat(path: Path) -> tuple[int, int, int] | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return st.st_ino, st.st_mtime_ns, st.st_size
