"""A Qwen3.5-0.8B-shaped random GGUF for benchmarks (n_embd 1024, 24 trunk + 1 MTP block,
8/2 attention heads of 256, linear-attention heads 16/16 of 128, n_ff 3584, vocab 248320),
written in Q8_0 and F16. Random weights: for speed and memory figures, not for text."""

from __future__ import annotations

from pathlib import Path

from graphir.models.gguf_write import random_qwen35, write_qwen35
from graphir.models.hparams import Qwen35HParams
from graphir.models.tokenizer import BYTE_TO_UNICODE
from graphir.types import DType

N_VOCAB = 248320


def hparams_08b() -> Qwen35HParams:
    return Qwen35HParams(
        arch="qwen35", n_vocab=N_VOCAB, n_ctx_train=262144, n_embd=1024, block_count=25, n_ff=3584,
        n_head=8, n_head_kv=2, head_dim_k=256, head_dim_v=256, rms_eps=1e-6, n_rot=64,
        rope_sections=(11, 11, 10, 0), rope_freq_base=10_000_000.0, ssm_d_conv=4, ssm_d_inner=2048,
        ssm_d_state=128, ssm_dt_rank=16, ssm_n_group=16, full_attention_interval=4, nextn_predict_layers=1,
    )  # fmt: skip


def synthetic_vocab(n_vocab: int) -> dict:
    """GPT-2 byte tokens, a few merges, filler tokens up to n_vocab and three control tokens."""
    byte_chars = [BYTE_TO_UNICODE[b] for b in range(256)]
    merged = ["Ġt", "he", "Ġthe"]
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    filler = [f"<filler{i}>" for i in range(n_vocab - len(byte_chars) - len(merged) - len(specials))]
    tokens = byte_chars + merged + filler + specials
    types = [1] * (len(tokens) - len(specials)) + [3] * len(specials)
    return {
        "tokens": tokens, "token_type": types, "merges": ["Ġ t", "h e", "Ġt he"],
        "bos_token_id": tokens.index("<|endoftext|>"), "eos_token_id": tokens.index("<|im_end|>"),
        "padding_token_id": tokens.index("<|endoftext|>"), "add_bos_token": False,
    }  # fmt: skip


def write_08b_models(out_dir: Path, dtypes=(DType.Q8_0, DType.F16)) -> list[Path]:
    """Write the 0.8B-shaped model once per dtype (skipping files that exist); returns the paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    hp = hparams_08b()
    paths = []
    for dt in dtypes:
        path = out_dir / f"qwen35-0.8b-shaped-{dt.name.lower()}.gguf"
        if not path.exists():
            tmp = path.with_suffix(".tmp")
            write_qwen35(tmp, hp, random_qwen35(hp, seed=0, dtype=dt, show_progress=True), synthetic_vocab(N_VOCAB),
                         name=f"qwen35 0.8B-shaped random {dt.name}", show_progress=True)  # fmt: skip
            tmp.rename(path)
        paths.append(path)
    return paths
