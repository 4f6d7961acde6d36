"""`graphir train-tiny`: train the tiny Qwen3.5 + MTP model on Python's own standard library.

PyTorch is an optional extra (`pip install -e .[train]`, torch==2.13.0 CPU); nothing at run
time imports it. Steps, each resumable from its files in the output directory:

1. corpus: every `.py` file of this interpreter's standard library (sorted relative paths;
   whole files are held out for validation by a hash of their path), files joined by
   `<|endoftext|>`;
2. tokenizer: a byte-level BPE of `vocab` tokens trained with `tokenizers` through
   `graphir.models.tokenizer.train_byte_bpe` (the qwen35 pre-tokenizer, so llama.cpp splits
   text identically); the corpus is encoded once and cached as uint16 token files;
3. training: `TinyQwen35` below computes exactly what graphir's qwen35 graph computes (and so
   llama.cpp): gated delta net layers (causal conv, L2-normed q/k tiled over the value heads,
   the gated delta rule with decay exp(softplus(alpha + dt) * ssm_a)), gated attention with
   q/k RMS norms and IMRoPE (text positions: NEOX rotation of the first n_rot dims), SwiGLU
   FFNs, tied embeddings, and ONE MTP block trained jointly: loss = CE(trunk) + mtp_weight *
   CE(MTP), where MTP row p reads token x_p and the trunk's post-norm hidden state h_{p-1}
   and predicts x_{p+1}. AdamW, linear warm-up then cosine decay, seeded per step (a resumed
   run draws the same batches), checkpoints every `ckpt_every` steps and at the time budget;
4. export through graphir's own GGUF writer (`write_qwen35`, the one `make-tiny` uses).

The gated delta rule runs chunked (`chunk` tokens at a time: a unit-triangular solve per
chunk, then a short sequential pass over chunks) instead of token by token; `delta_rule_loop`
is the token-by-token definition it is tested against. The PyTorch model lives in
`tools/train_tiny_model.py`.

    graphir train-tiny --out runs/tiny --steps 1500 --time-budget 1500
    graphir train-tiny --out runs/tiny --export model.gguf --dtype f16    # export the last checkpoint
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import math
import os
import sys
import sysconfig
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from graphir import progress

from .train_tiny_model import build_model, import_torch

SPECIAL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")


# --------------------------------------------------------------------------------------------
# configuration
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ModelConfig:
    """The model's shape (the defaults are the shipped model's)."""

    n_vocab: int = 1024
    n_embd: int = 256
    n_layer: int = 4  # trunk layers; every full_attention_interval-th is attention, the rest delta nets
    full_attention_interval: int = 4
    n_head: int = 4
    n_head_kv: int = 2
    head_dim: int = 64
    n_rot: int = 16
    rope_sections: tuple[int, int, int, int] = (3, 3, 2, 0)
    rope_freq_base: float = 10_000_000.0
    ssm_d_state: int = 32  # S_k = S_v
    ssm_n_group: int = 2  # H_k
    ssm_n_v_heads: int = 4  # H_v (GGUF ssm.time_step_rank)
    ssm_d_conv: int = 4
    n_ff: int = 512
    rms_eps: float = 1e-6
    n_ctx_train: int = 4096

    def __post_init__(self) -> None:
        if self.ssm_n_v_heads % self.ssm_n_group:
            raise ValueError("[train-tiny] ssm_n_v_heads must be a multiple of ssm_n_group")
        if self.n_head % self.n_head_kv:
            raise ValueError("[train-tiny] n_head must be a multiple of n_head_kv")
        if 2 * sum(self.rope_sections) != self.n_rot:
            raise ValueError(f"[train-tiny] rope sections {self.rope_sections} must sum to n_rot / 2")

    def is_recurrent(self, il: int) -> bool:
        return (il + 1) % self.full_attention_interval != 0

    @property
    def conv_channels(self) -> int:
        return 2 * self.ssm_d_state * self.ssm_n_group + self.ssm_d_state * self.ssm_n_v_heads

    def hparams(self) -> Any:
        """The graphir `Qwen35HParams` of this model (one MTP block after the trunk)."""
        from graphir.models.hparams import Qwen35HParams

        return Qwen35HParams(
            arch="qwen35", n_vocab=self.n_vocab, n_ctx_train=self.n_ctx_train, n_embd=self.n_embd,
            block_count=self.n_layer + 1, n_ff=self.n_ff, n_head=self.n_head, n_head_kv=self.n_head_kv,
            head_dim_k=self.head_dim, head_dim_v=self.head_dim, rms_eps=self.rms_eps, n_rot=self.n_rot,
            rope_sections=self.rope_sections, rope_freq_base=self.rope_freq_base, ssm_d_conv=self.ssm_d_conv,
            ssm_d_inner=self.ssm_d_state * self.ssm_n_v_heads, ssm_d_state=self.ssm_d_state,
            ssm_dt_rank=self.ssm_n_v_heads, ssm_n_group=self.ssm_n_group,
            full_attention_interval=self.full_attention_interval, nextn_predict_layers=1,
        )  # fmt: skip


@dataclass(frozen=True)
class TrainConfig:
    """The optimisation recipe (the defaults are the shipped model's)."""

    seed: int = 0
    steps: int = 1000
    batch: int = 16
    seq_len: int = 256
    lr: float = 2e-3
    min_lr_ratio: float = 0.1  # cosine decays to lr * min_lr_ratio
    warmup: int = 100
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.95
    grad_clip: float = 1.0
    mtp_weight: float = 0.3
    mtp_chain_weight: float = 0.0  # > 0: also train the head on its own hidden state (see `losses`)
    freeze_trunk: bool = False  # train the MTP block only (fine-tuning a head from --init-from)
    chunk: int = 64  # delta-rule chunk length
    eval_every: int = 250
    eval_windows: int = 64
    ckpt_every: int = 100
    val_percent: int = 2  # files whose path hash falls below this percentage are held out
    threads: int = 0  # torch threads; 0: torch's default

    def lr_at(self, step: int) -> float:
        """Linear warm-up over `warmup` steps, then cosine to lr * min_lr_ratio at `steps`."""
        if step < self.warmup:
            return self.lr * (step + 1) / self.warmup
        t = min(1.0, (step - self.warmup) / max(1, self.steps - self.warmup))
        return self.lr * (self.min_lr_ratio + (1 - self.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * t)))


# --------------------------------------------------------------------------------------------
# corpus and tokenizer
# --------------------------------------------------------------------------------------------


def stdlib_dir() -> Path:
    return Path(sysconfig.get_paths()["stdlib"])


def corpus_files(root: Path | None = None) -> list[Path]:
    """The standard library's .py files (no site-packages), sorted by relative path."""
    root = root or stdlib_dir()
    files = [p for p in root.rglob("*.py") if "site-packages" not in p.relative_to(root).parts]
    return sorted(files, key=lambda p: p.relative_to(root).as_posix())


def is_validation(rel_path: str, val_percent: int) -> bool:
    """Whole files are held out: those whose sha1(path) mod 100 falls below val_percent."""
    return int(hashlib.sha1(rel_path.encode()).hexdigest(), 16) % 100 < val_percent


def read_corpus(val_percent: int, root: Path | None = None) -> tuple[list[str], list[str], dict[str, Any]]:
    """(train texts, validation texts, a description with file counts, bytes and a content hash)."""
    root = root or stdlib_dir()
    train, val = [], []
    h = hashlib.sha256()
    n_bytes = 0
    for p in corpus_files(root):
        rel = p.relative_to(root).as_posix()
        text = p.read_bytes().decode("utf-8", errors="replace")
        h.update(rel.encode() + b"\0" + text.encode())
        n_bytes += len(text.encode())
        (val if is_validation(rel, val_percent) else train).append(text)
    if not train or not val:
        raise ValueError(f"[train-tiny] {root}: no .py files to train on / hold out")
    info = {"root": str(root), "python": sys.version.split()[0], "files_train": len(train),
            "files_val": len(val), "bytes": n_bytes, "sha256": h.hexdigest()[:16]}  # fmt: skip
    return train, val, info


def prepare_data(out: Path, n_vocab: int, val_percent: int, log: Any = print,
                 corpus_root: Path | None = None) -> tuple[dict[str, Any], np.ndarray, np.ndarray]:  # fmt: skip
    """Train the tokenizer and encode the corpus (the .py files under `corpus_root`, default the
    standard library) once, cached in out/: (tokenizer fields, train ids, held-out ids)."""
    from graphir.models.tokenizer import Tokenizer, train_byte_bpe

    tok_path, tr_path, va_path, info_path = (out / "tokenizer.json", out / "train.u16", out / "val.u16",
                                             out / "corpus.json")  # fmt: skip
    hf_path = out / "tokenizer.hf.json"  # the `tokenizers` model itself, the reference for the GGUF vocab
    if tok_path.exists() and tr_path.exists() and va_path.exists():
        fields = json.loads(tok_path.read_text())
        return fields, np.fromfile(tr_path, np.uint16), np.fromfile(va_path, np.uint16)
    t0 = time.perf_counter()
    train, val, info = read_corpus(val_percent, corpus_root)
    log(f"corpus: {info['files_train']} train + {info['files_val']} held-out files, {info['bytes'] / 1e6:.1f} MB "
        f"({info['root']}, Python {info['python']})")  # fmt: skip
    out.mkdir(parents=True, exist_ok=True)
    fields = train_byte_bpe(train, n_vocab, SPECIAL_TOKENS, bos="<|endoftext|>", eos="<|im_end|>",
                            pad="<|endoftext|>", hf_path=hf_path)  # fmt: skip
    if len(fields["tokenizer.ggml.tokens"]) != n_vocab:
        raise ValueError(f"[train-tiny] the corpus gave {len(fields['tokenizer.ggml.tokens'])} tokens, not {n_vocab}")
    tok = Tokenizer.from_gguf_fields(fields)
    eot = tok.token_to_id["<|endoftext|>"]

    def encode(texts: list[str]) -> np.ndarray:
        ids: list[int] = []
        for row in tok.encode_batch(texts):
            ids.extend(row)
            ids.append(eot)
        return np.asarray(ids, np.uint16)

    tr, va = encode(train), encode(val)
    info.update(tokens_train=int(tr.size), tokens_val=int(va.size), seconds=round(time.perf_counter() - t0, 1))
    tr.tofile(tr_path)
    va.tofile(va_path)
    info_path.write_text(json.dumps(info, indent=1))
    tok_path.write_text(json.dumps(fields))  # last: its presence marks the data complete
    log(f"tokenizer: {n_vocab} tokens; {tr.size} train / {va.size} held-out tokens "
        f"({info['bytes'] / (tr.size + va.size):.2f} bytes/token) in {info['seconds']} s")  # fmt: skip
    return fields, tr, va


def batch_at(tokens: np.ndarray, seed: int, step: int, batch: int, seq_len: int) -> np.ndarray:
    """The windows of one training step, int64 (batch, seq_len + 1): a pure function of (seed, step)."""
    rng = np.random.default_rng([seed, step])
    starts = rng.integers(0, tokens.size - seq_len - 1, batch)
    return np.stack([tokens[s : s + seq_len + 1] for s in starts]).astype(np.int64)


def eval_windows(tokens: np.ndarray, n: int, seq_len: int) -> np.ndarray:
    """n evenly spaced held-out windows (batch, seq_len + 1)."""
    starts = np.linspace(0, tokens.size - seq_len - 2, n).astype(np.int64)
    return np.stack([tokens[s : s + seq_len + 1] for s in starts]).astype(np.int64)


# --------------------------------------------------------------------------------------------
# training
# --------------------------------------------------------------------------------------------


def losses(torch: Any, model: Any, windows: Any, mtp_weight: float,
           chain_weight: float = 0.0) -> tuple[Any, Any, Any, Any]:  # fmt: skip
    """(total, trunk CE, MTP CE, chained MTP CE or None) of windows (B, T + 1).

    The chained term trains the head on its own hidden state, as the second draft of a round
    sees it: the row at position q reads x_q with the head's hidden output m_{q-1} (not the
    trunk's h_{q-1}) and attends to the head's cache as it stands then: the true rows of
    positions <= q-1 and itself. Target x_{q+1}.
    """
    F = torch.nn.functional
    x, y = windows[:, :-1], windows[:, 1:]
    kv: list = []
    T = x.shape[1]
    logits, h = model.trunk(x)
    m_logits, m_hidden = model.mtp(x[:, 1:], h[:, :-1], torch.arange(1, T), kv_out=kv)
    V = logits.shape[-1]
    ce = F.cross_entropy(logits.reshape(-1, V), y.reshape(-1))
    m_ce = F.cross_entropy(m_logits.reshape(-1, V), y[:, 1:].reshape(-1))
    total = ce + mtp_weight * m_ce
    c_ce = None
    if chain_weight > 0:
        c_logits, _ = model.mtp_chained(x, m_hidden, kv[0])
        c_ce = F.cross_entropy(c_logits.reshape(-1, V), y[:, 2:].reshape(-1))
        total = total + chain_weight * c_ce
    return total, ce, m_ce, c_ce


def evaluate(torch: Any, model: Any, windows: np.ndarray, batch: int = 16) -> dict[str, float]:
    """Held-out trunk and MTP cross-entropy (nats/token) and how often the MTP head's argmax
    equals the trunk's next-token argmax (overall, and where the head's probability >= 0.5)."""
    model.eval()
    ce = m_ce = agree = n_rows = conf_rows = conf_agree = 0.0
    with torch.no_grad():
        for i in range(0, len(windows), batch):
            w = torch.from_numpy(windows[i : i + batch])
            x, y = w[:, :-1], w[:, 1:]
            logits, _, m_logits, _ = model(x)
            V = logits.shape[-1]
            ce += torch.nn.functional.cross_entropy(logits.reshape(-1, V), y.reshape(-1), reduction="sum").item()
            m_ce += torch.nn.functional.cross_entropy(m_logits.reshape(-1, V), y[:, 1:].reshape(-1),
                                                      reduction="sum").item()  # fmt: skip
            trunk_next = logits[:, 1:].argmax(-1)  # the trunk's pick for x_{p+1} at position p
            m_prob, m_pick = m_logits.softmax(-1).max(-1)
            same = m_pick == trunk_next
            agree += same.sum().item()
            n_rows += same.numel()
            conf = m_prob >= 0.5
            conf_rows += conf.sum().item()
            conf_agree += (same & conf).sum().item()
    model.train()
    total = len(windows) * (windows.shape[1] - 1)  # trunk rows; the MTP has n_rows (one fewer per window)
    return {"val_ce": ce / total, "val_mtp_ce": m_ce / n_rows, "mtp_agree": agree / n_rows,
            "mtp_agree_conf": conf_agree / max(conf_rows, 1), "mtp_conf_frac": conf_rows / n_rows}  # fmt: skip


class Progress:
    """Training progress: graphir's tqdm bar (graphir/progress.py) on a terminal; without one, a plain
    line every 30 s (a log for runs in the background)."""

    def __init__(self, total: int, start: int = 0) -> None:
        self.total, self.t0, self.start = total, time.perf_counter(), start
        self.bar = progress.bar(total=total, desc="train", unit="step", initial=start) if progress.enabled() else None
        self.last_line = 0.0

    def update(self, step: int, text: str) -> None:
        if self.bar is not None:
            self.bar.set_postfix_str(text, refresh=False)
            self.bar.update(step - self.bar.n)
            return
        if time.perf_counter() - self.last_line > 30 or step == self.total:
            done, el = step - self.start, time.perf_counter() - self.t0
            eta = el / max(done, 1) * (self.total - step)
            print(f"{step}/{self.total} {text} {el / max(done, 1):.2f} s/step eta {eta / 60:.1f} min",
                  file=sys.stderr, flush=True)  # fmt: skip
            self.last_line = time.perf_counter()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def train(out: Path, mcfg: ModelConfig, tcfg: TrainConfig, *, time_budget: float | None = None,
          resume: bool = True, log: Any = print, corpus_root: Path | None = None,
          init_from: Path | None = None) -> dict[str, Any]:  # fmt: skip
    """Train (or continue) the run in `out`; returns the run record (also out/run.json).
    init_from: a run directory whose checkpoint's weights start a new run (its optimizer state
    and step are not taken), e.g. to fine-tune the MTP head with `tcfg.freeze_trunk`."""
    torch = import_torch()
    if tcfg.threads:
        torch.set_num_threads(tcfg.threads)
    out.mkdir(parents=True, exist_ok=True)
    fields, tr, va = prepare_data(out, mcfg.n_vocab, tcfg.val_percent, log, corpus_root)
    ckpt_path, record_path = out / "ckpt.pt", out / "run.json"
    cfgs = {"model": dataclasses.asdict(mcfg), "train": dataclasses.asdict(tcfg)}
    model = build_model(mcfg, tcfg.seed)
    model.chunk = tcfg.chunk
    if init_from is not None:
        src = torch.load(Path(init_from) / "ckpt.pt", weights_only=False)
        if src["configs"]["model"] != cfgs["model"]:
            raise ValueError(f"[train-tiny] {init_from} holds another model config")
        model.load_state_dict(src["model"])
    head = f"blk__{mcfg.n_layer}__"  # the MTP block's parameters (token_embd is the trunk's)
    for name, prm in model.p.items():
        prm.requires_grad_(not tcfg.freeze_trunk or name.startswith(head))
    trained = {n: p for n, p in model.p.items() if p.requires_grad}
    decay = [p for p in trained.values() if p.dim() >= 2]
    no_decay = [p for p in trained.values() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": tcfg.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}],
                            lr=tcfg.lr, betas=(tcfg.beta1, tcfg.beta2))  # fmt: skip
    record: dict[str, Any] = {**cfgs, "history": [], "evals": [], "train_seconds": 0.0}
    step = 0
    if resume and ckpt_path.exists():
        ck = torch.load(ckpt_path, weights_only=False)
        if ck["configs"]["model"] != cfgs["model"]:
            raise ValueError(f"[train-tiny] {ckpt_path} was trained with another model config; use a new --out")
        model.load_state_dict(ck["model"])
        opt.load_state_dict(ck["opt"])
        step, record = ck["step"], ck["record"]
        record["train"] = cfgs["train"]  # e.g. more steps or a new time budget
        log(f"resumed at step {step}")
    n_params = sum(p.numel() for p in model.p.values())
    record["n_params"] = n_params
    log(f"model: {n_params / 1e6:.2f}M parameters ({mcfg.n_layer} trunk layers + 1 MTP block), "
        f"{tcfg.steps} steps of {tcfg.batch} x {tcfg.seq_len} tokens, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads")  # fmt: skip
    val_w = eval_windows(va, tcfg.eval_windows, tcfg.seq_len)

    def save() -> None:
        tmp = ckpt_path.with_suffix(".tmp")
        torch.save({"model": model.state_dict(), "opt": opt.state_dict(), "step": step, "record": record,
                    "configs": cfgs}, tmp)  # fmt: skip
        os.replace(tmp, ckpt_path)
        record_path.write_text(json.dumps(record, indent=1))

    t_start = time.perf_counter()
    t_base = record["train_seconds"]
    bar = Progress(tcfg.steps, step)
    ema = None
    while step < tcfg.steps:
        if time_budget is not None and time.perf_counter() - t_start > time_budget:
            log(f"\ntime budget {time_budget:.0f} s reached at step {step}; resume with the same --out")
            break
        lr = tcfg.lr_at(step)
        for group in opt.param_groups:
            group["lr"] = lr
        w = torch.from_numpy(batch_at(tr, tcfg.seed, step, tcfg.batch, tcfg.seq_len))
        loss, ce, m_ce, c_ce = losses(torch, model, w, tcfg.mtp_weight, tcfg.mtp_chain_weight)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        gnorm = torch.nn.utils.clip_grad_norm_(list(trained.values()), tcfg.grad_clip).item()
        opt.step()
        step += 1
        ema = (ce.item(), m_ce.item()) if ema is None else (0.95 * ema[0] + 0.05 * ce.item(),
                                                           0.95 * ema[1] + 0.05 * m_ce.item())  # fmt: skip
        record["train_seconds"] = t_base + time.perf_counter() - t_start
        if step % 10 == 0 or step == tcfg.steps:
            record["history"].append({"step": step, "ce": round(ce.item(), 4), "mtp_ce": round(m_ce.item(), 4),
                                      "lr": lr, "grad_norm": round(gnorm, 3),
                                      "seconds": round(record["train_seconds"], 1)})  # fmt: skip
            if c_ce is not None:
                record["history"][-1]["chain_ce"] = round(c_ce.item(), 4)
        bar.update(step, f"ce {ema[0]:.3f} mtp {ema[1]:.3f} lr {lr:.1e}")
        if step % tcfg.eval_every == 0 or step == tcfg.steps:
            ev = evaluate(torch, model, val_w)
            record["evals"].append({"step": step, **{k: round(v, 4) for k, v in ev.items()}})
            log(f"\nstep {step}: held-out ce {ev['val_ce']:.3f}, MTP ce {ev['val_mtp_ce']:.3f}, MTP agrees with the "
                f"trunk {ev['mtp_agree']:.1%} ({ev['mtp_agree_conf']:.1%} where p >= 0.5, {ev['mtp_conf_frac']:.0%} of rows)")  # fmt: skip
        if step % tcfg.ckpt_every == 0 or step == tcfg.steps:
            save()
    bar.close()
    save()
    return record


def export(out: Path, path: Path, dtype: str = "f16", name: str = "graphir-tiny-qwen35-py") -> Path:
    """Write the checkpoint in `out` as a Qwen3.5 GGUF through graphir's writer, with two files
    beside it: <stem>.run.json (configs, corpus, losses, held-out evaluations) and
    <stem>.tokenizer.json (the `tokenizers` model the vocabulary was trained as)."""
    torch = import_torch()
    from graphir.models.chat import CHATML
    from graphir.models.gguf_write import write_qwen35
    from graphir.types import DType

    ckpt = out / "ckpt.pt"
    if not ckpt.exists():
        raise FileNotFoundError(f"[train-tiny] no checkpoint at {ckpt}: train first")
    dt = {"f32": DType.F32, "f16": DType.F16}.get(dtype)
    if dt is None:
        raise ValueError(f"[train-tiny] --dtype must be f32 or f16, got {dtype!r}")
    ck = torch.load(ckpt, weights_only=False)
    mcfg = ModelConfig(**{**ck["configs"]["model"], "rope_sections": tuple(ck["configs"]["model"]["rope_sections"])})
    model = build_model(mcfg, 0)
    model.load_state_dict(ck["model"])
    fields = json.loads((out / "tokenizer.json").read_text())
    path.parent.mkdir(parents=True, exist_ok=True)
    write_qwen35(path, mcfg.hparams(), model.gguf_tensors(dt), fields, name=name, chat_template=CHATML)
    rec = ck["record"]
    corpus = json.loads((out / "corpus.json").read_text()) if (out / "corpus.json").exists() else {}
    summary = {"configs": ck["configs"], "step": ck["step"], "n_params": rec.get("n_params"),
               "train_seconds": round(rec["train_seconds"], 1), "torch": torch.__version__, "corpus": corpus,
               "evals": rec["evals"], "history": rec["history"][4::5]}  # fmt: skip
    path.with_suffix(".run.json").write_text(json.dumps(summary, indent=1))
    if (out / "tokenizer.hf.json").exists():
        path.with_suffix(".tokenizer.json").write_bytes((out / "tokenizer.hf.json").read_bytes())
    return path


# --------------------------------------------------------------------------------------------
# command line
# --------------------------------------------------------------------------------------------


def add_args(p: argparse.ArgumentParser) -> None:
    d = TrainConfig()
    p.add_argument("--out", required=True, help="run directory (data cache, checkpoint, run.json)")
    p.add_argument("--steps", type=int, default=d.steps, help=f"optimizer steps (default {d.steps})")
    p.add_argument("--time-budget", type=float, default=None, help="stop (checkpointed) after this many seconds")
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--batch", type=int, default=d.batch)
    p.add_argument("--seq-len", type=int, default=d.seq_len)
    p.add_argument("--lr", type=float, default=d.lr)
    p.add_argument("--mtp-weight", type=float, default=d.mtp_weight)
    p.add_argument(
        "--mtp-chain-weight",
        type=float,
        default=d.mtp_chain_weight,
        help="weight of the chained-draft MTP loss (default 0: off)",
    )
    p.add_argument("--init-from", metavar="DIR", help="start from the weights of another run's checkpoint")
    p.add_argument("--freeze-trunk", action="store_true", help="train the MTP block only")
    p.add_argument("--warmup", type=int, default=d.warmup)
    p.add_argument("--threads", type=int, default=d.threads, help="torch threads (default: torch's)")
    p.add_argument("--no-resume", action="store_true", help="start over even if out/ has a checkpoint")
    p.add_argument("--export", metavar="GGUF", help="after training, write the model to this GGUF file")
    p.add_argument("--export-only", action="store_true", help="skip training: export the checkpoint in --out")
    p.add_argument("--dtype", choices=("f16", "f32"), default="f16", help="exported matrix type (default f16)")


def main(argv: Sequence[str] | argparse.Namespace | None = None) -> int:
    if isinstance(argv, argparse.Namespace):
        args = argv
    else:
        p = argparse.ArgumentParser(prog="graphir train-tiny", description=__doc__.splitlines()[0])
        add_args(p)
        args = p.parse_args(argv)
    out = Path(args.out)
    if not args.export_only:
        mcfg = ModelConfig()
        tcfg = TrainConfig(seed=args.seed, steps=args.steps, batch=args.batch, seq_len=args.seq_len, lr=args.lr,
                           warmup=args.warmup, mtp_weight=args.mtp_weight, mtp_chain_weight=args.mtp_chain_weight,
                           freeze_trunk=args.freeze_trunk, threads=args.threads)  # fmt: skip
        rec = train(out, mcfg, tcfg, time_budget=args.time_budget, resume=not args.no_resume,
                    init_from=Path(args.init_from) if args.init_from else None)  # fmt: skip
        if rec["evals"]:
            print(json.dumps(rec["evals"][-1]))
    if args.export or args.export_only:
        path = export(out, Path(args.export or out / f"model-{args.dtype}.gguf"), args.dtype)
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
