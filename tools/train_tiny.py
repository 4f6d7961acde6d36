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
`tools/train_tiny_model.py`; the MTP head's fine-tuning and distillation from a frozen trunk
(a GGUF source, sampled windows, the head's draft steps, the KL and the acceptance proxy) in
`tools/train_tiny_distill.py`.

    graphir train-tiny --out runs/tiny --steps 1500 --time-budget 1500
    graphir train-tiny --out runs/tiny --export model.gguf --dtype f16    # export the last checkpoint
"""

from __future__ import annotations

import argparse
import contextlib
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

from .train_tiny_distill import (
    distill_kl,
    gguf_source,
    head_acceptance,
    head_stage_summary,
    head_steps,
    load_gguf_weights,
    sampled_windows,
    trunk_from,
)
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
    mtp_depth: int = 2  # draft steps the chained terms cover (2: the second step only; see `losses`)
    distill_mtp: float = 0.0  # > 0: weight of KL(trunk || head) at every draft step (see `distill_kl`)
    distill_temp: float = 0.8  # the temperature both distributions are taken at (the default sampler's)
    distill_top_k: int = 0  # restrict the trunk's distribution to the sampler's candidates (0: all)
    distill_top_p: float = 1.0  # ... (1.0: no nucleus cut)
    distill_data: str = "text"  # "text": corpus windows; "sampled": the model's own text (`sampled_windows`)
    sampled_windows: int = 1536  # how many ("sampled")
    sampled_prompt: int = 32  # corpus tokens that open each sampled window
    chunk: int = 64  # delta-rule chunk length
    eval_every: int = 250
    eval_windows: int = 64
    ckpt_every: int = 100
    val_percent: int = 2  # files whose path hash falls below this percentage are held out
    threads: int = 0  # torch threads; 0: torch's default

    def __post_init__(self) -> None:
        if self.mtp_depth < 1:
            raise ValueError(f"[train-tiny] mtp_depth must be >= 1, got {self.mtp_depth}")
        if self.distill_mtp > 0 and not self.freeze_trunk:
            raise ValueError("[train-tiny] --distill-mtp distills the frozen trunk into the head: add --freeze-trunk")
        if self.distill_data not in ("text", "sampled"):
            raise ValueError(f"[train-tiny] distill_data must be 'text' or 'sampled', got {self.distill_data!r}")
        if self.distill_temp <= 0 or not 0 < self.distill_top_p <= 1 or self.distill_top_k < 0:
            raise ValueError(f"[train-tiny] bad distillation chain: temperature {self.distill_temp}, "
                             f"top-k {self.distill_top_k}, top-p {self.distill_top_p}")  # fmt: skip

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


def prepare_data(out: Path, n_vocab: int, val_percent: int, log: Any = print, corpus_root: Path | None = None,
                 vocab: dict[str, Any] | None = None) -> tuple[dict[str, Any], np.ndarray, np.ndarray]:  # fmt: skip
    """Train the tokenizer and encode the corpus (the .py files under `corpus_root`, default the
    standard library) once, cached in out/: (tokenizer fields, train ids, held-out ids).
    vocab: `tokenizer.ggml.*` fields to encode with instead of training a tokenizer (a GGUF's own)."""
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
    if vocab is None:
        fields = train_byte_bpe(train, n_vocab, SPECIAL_TOKENS, bos="<|endoftext|>", eos="<|im_end|>",
                                pad="<|endoftext|>", hf_path=hf_path)  # fmt: skip
    else:
        fields = dict(vocab)
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


def losses(torch: Any, model: Any, windows: Any, tcfg: TrainConfig) -> dict[str, Any]:
    """The loss terms of windows (B, T + 1): {"total", "ce" (trunk), "mtp_ce" (step 1), "chain_ce" (steps
    2.., mean; when trained), "kl" (per step; when distilling)}.

    total = CE(trunk) (not with freeze_trunk) + mtp_weight * CE(step 1)
            + mtp_chain_weight * sum_{d=2..mtp_depth} CE(step d) + distill_mtp * sum_d KL_d.
    Step d > 1 trains the head on its own hidden state, as the d-th draft of a round sees it
    (`head_steps`; the row at position q reads x_q with the head's hidden output of step d-1 at q-1
    and attends to the true rows of positions <= q-d+1, the round's earlier chained rows and
    itself); its hard target is x_{q+1}. KL_d (`distill_kl`) is against the frozen trunk's own
    next-token distribution at q, the one a verify row draws the token from.
    """
    F = torch.nn.functional
    x, y = windows[:, :-1], windows[:, 1:]
    with torch.no_grad() if tcfg.freeze_trunk else contextlib.nullcontext():
        logits, h = model.trunk(x)
    V = logits.shape[-1]
    ce = F.cross_entropy(logits.reshape(-1, V), y.reshape(-1))
    chained = tcfg.mtp_chain_weight > 0 or tcfg.distill_mtp > 0
    steps = head_steps(torch, model, x, h, tcfg.mtp_depth if chained else 1)
    total = ce if not tcfg.freeze_trunk else 0.0
    out: dict[str, Any] = {"ce": ce}
    step_ce, kl = [], []
    for d, lg in enumerate(steps, 1):
        step_ce.append(F.cross_entropy(lg.reshape(-1, V), y[:, d:].reshape(-1)))
        total = total + (tcfg.mtp_weight if d == 1 else tcfg.mtp_chain_weight) * step_ce[-1]
        if tcfg.distill_mtp > 0:
            kl.append(distill_kl(torch, lg, logits[:, d:], tcfg.distill_temp, tcfg.distill_top_k, tcfg.distill_top_p))
            total = total + tcfg.distill_mtp * kl[-1]
    out.update(total=total, mtp_ce=step_ce[0])
    if len(step_ce) > 1:
        out["chain_ce"] = sum(step_ce[1:]) / (len(step_ce) - 1)
    if kl:
        out["kl"] = kl
    return out


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
    and step are not taken), e.g. to fine-tune the MTP head with `tcfg.freeze_trunk`; or a GGUF
    file of this shape (e.g. the shipped model), whose weights and tokenizer the run starts from
    (the corpus is encoded with that tokenizer; `export` then copies the file's trunk tensors
    byte for byte when the trunk was frozen)."""
    torch = import_torch()
    if tcfg.threads:
        torch.set_num_threads(tcfg.threads)
    out.mkdir(parents=True, exist_ok=True)
    src_gguf = vocab = None
    if init_from is not None and Path(init_from).is_file():
        src_gguf, vocab = gguf_source(Path(init_from), mcfg)
        hf = Path(init_from).with_suffix(".tokenizer.json")
        if hf.exists() and not (out / "tokenizer.hf.json").exists():
            (out / "tokenizer.hf.json").write_bytes(hf.read_bytes())
    fields, tr, va = prepare_data(out, mcfg.n_vocab, tcfg.val_percent, log, corpus_root, vocab)
    ckpt_path, record_path = out / "ckpt.pt", out / "run.json"
    cfgs = {"model": dataclasses.asdict(mcfg), "train": dataclasses.asdict(tcfg)}
    model = build_model(mcfg, tcfg.seed)
    model.chunk = tcfg.chunk
    if src_gguf is not None:
        if fields != json.loads(json.dumps(vocab)):
            raise ValueError(f"[train-tiny] {out} holds data encoded with another tokenizer than {init_from}'s")
        load_gguf_weights(model, src_gguf)
    elif init_from is not None:
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
    if init_from is not None:
        record["init_from"] = str(Path(init_from).resolve())
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

    def run_eval() -> None:
        ev: dict[str, Any] = {k: round(v, 4) for k, v in evaluate(torch, model, val_w).items()}
        if tcfg.freeze_trunk:  # a head-only run is about acceptance: measure its proxy per draft step
            acc = head_acceptance(torch, model, val_w, max(tcfg.mtp_depth, 1), seed=tcfg.seed)
            ev.update({k: [round(a, 4) for a in v] for k, v in acc.items()})
        record["evals"].append({"step": step, **ev})
        log(f"\nstep {step}: held-out ce {ev['val_ce']:.3f}, MTP ce {ev['val_mtp_ce']:.3f}, MTP agrees with the "
            f"trunk {ev['mtp_agree']:.1%} ({ev['mtp_agree_conf']:.1%} where p >= 0.5, {ev['mtp_conf_frac']:.0%} of rows)")  # fmt: skip
        if "acc_sampled" in ev:
            log("  per draft step: greedy " + " ".join(f"{a:.3f}" for a in ev["acc_greedy"]) + ", coupled sampled "
                + " ".join(f"{a:.3f}" for a in ev["acc_sampled"]) + ", KL " + " ".join(f"{a:.3f}" for a in ev["kl"]))  # fmt: skip

    if tcfg.freeze_trunk and step == 0 and not record["evals"]:
        run_eval()  # where the head starts

    def save() -> None:
        tmp = ckpt_path.with_suffix(".tmp")
        torch.save({"model": model.state_dict(), "opt": opt.state_dict(), "step": step, "record": record,
                    "configs": cfgs}, tmp)  # fmt: skip
        os.replace(tmp, ckpt_path)
        record_path.write_text(json.dumps(record, indent=1))

    pool = None
    if tcfg.distill_data == "sampled":
        if src_gguf is None:
            raise ValueError(
                "[train-tiny] distill_data 'sampled' needs --init-from a GGUF (the model that writes them)"
            )
        pool = sampled_windows(out, Path(init_from), tr, mcfg, tcfg, log)
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
        if pool is None:
            w = torch.from_numpy(batch_at(tr, tcfg.seed, step, tcfg.batch, tcfg.seq_len))
        else:  # windows of the trunk's own samples: a function of (seed, step) too
            pick = np.random.default_rng([tcfg.seed, step]).integers(0, len(pool), tcfg.batch)
            w = torch.from_numpy(pool[pick].astype(np.int64))
        terms = losses(torch, model, w, tcfg)
        opt.zero_grad(set_to_none=True)
        terms["total"].backward()
        gnorm = torch.nn.utils.clip_grad_norm_(list(trained.values()), tcfg.grad_clip).item()
        opt.step()
        step += 1
        # the bar shows the trunk's CE and the head's: its step-1 CE, or its summed KL when distilling
        now = (terms["ce"].item(), sum(terms["kl"]).item() if "kl" in terms else terms["mtp_ce"].item())
        ema = now if ema is None else (0.95 * ema[0] + 0.05 * now[0], 0.95 * ema[1] + 0.05 * now[1])
        record["train_seconds"] = t_base + time.perf_counter() - t_start
        if step % 10 == 0 or step == tcfg.steps:
            record["history"].append({"step": step, "ce": round(now[0], 4), "mtp_ce": round(terms["mtp_ce"].item(), 4),
                                      "lr": lr, "grad_norm": round(gnorm, 3),
                                      "seconds": round(record["train_seconds"], 1)})  # fmt: skip
            if "chain_ce" in terms:
                record["history"][-1]["chain_ce"] = round(terms["chain_ce"].item(), 4)
            if "kl" in terms:
                record["history"][-1]["kl"] = [round(k.item(), 4) for k in terms["kl"]]
        bar.update(step, f"ce {ema[0]:.3f} {'kl' if 'kl' in terms else 'mtp'} {ema[1]:.3f} lr {lr:.1e}")
        if step % tcfg.eval_every == 0 or step == tcfg.steps:
            run_eval()
        if step % tcfg.ckpt_every == 0 or step == tcfg.steps:
            save()
    bar.close()
    save()
    return record


def export(out: Path, path: Path, dtype: str = "f16", name: str = "graphir-tiny-qwen35-py") -> Path:
    """Write the checkpoint in `out` as a Qwen3.5 GGUF through graphir's writer, with two files
    beside it: <stem>.run.json (configs, corpus, losses, held-out evaluations) and
    <stem>.tokenizer.json (the `tokenizers` model the vocabulary was trained as).

    A run that started from a GGUF with its trunk frozen exports the head's tensors and copies every
    other tensor of that file byte for byte (after checking that the checkpoint still holds them), so
    the trunk's logits are exactly the source's; its run.json is the source's with this run added
    under "mtp_head_distill" (or "mtp_head_finetune")."""
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
    tensors = model.gguf_tensors(dt)
    rec = ck["record"]
    src = Path(rec.get("init_from", ""))
    frozen_from_gguf = src.is_file() and ck["configs"]["train"].get("freeze_trunk", False)
    prev_summary = None
    if frozen_from_gguf:
        tensors = trunk_from(src, tensors, mcfg)
        prev = src.with_suffix(".run.json")
        prev_summary = json.loads(prev.read_text()) if prev.exists() else {}
    tmp_path = None
    if path.exists() and path.resolve() == src.resolve():  # replacing the source itself: write beside, then move
        tmp_path = path.with_suffix(".tmp.gguf")
    path.parent.mkdir(parents=True, exist_ok=True)
    write_qwen35(tmp_path or path, mcfg.hparams(), tensors, fields, name=name, chat_template=CHATML)
    if tmp_path is not None:
        os.replace(tmp_path, path)
    corpus = json.loads((out / "corpus.json").read_text()) if (out / "corpus.json").exists() else {}
    summary = {"configs": ck["configs"], "step": ck["step"], "n_params": rec.get("n_params"),
               "train_seconds": round(rec["train_seconds"], 1), "torch": torch.__version__, "corpus": corpus,
               "evals": rec["evals"], "history": rec["history"][4::5]}  # fmt: skip
    if prev_summary is not None:
        summary = head_stage_summary(src, prev_summary, summary, ck["configs"]["train"])
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
    p.add_argument("--mtp-depth", type=int, default=d.mtp_depth,
                   help="draft steps the chained / distillation terms cover, the head fed its own hidden state "
                        f"from step 2 on (default {d.mtp_depth})")  # fmt: skip
    p.add_argument("--init-from", metavar="DIR|GGUF", help="start from the weights of another run's checkpoint, "
                   "or of a GGUF of this shape (e.g. the shipped model: its tokenizer too; with --freeze-trunk the "
                   "export copies its trunk tensors byte for byte)")  # fmt: skip
    p.add_argument("--freeze-trunk", action="store_true", help="train the MTP block only")
    p.add_argument("--distill-mtp", type=float, default=d.distill_mtp, metavar="W",
                   help="train the head (needs --freeze-trunk) to match the trunk's own next-token distribution: "
                        "+ W x KL(trunk || head) at every draft step 1..--mtp-depth, both at --distill-temp, "
                        "which raises coupled-sampling acceptance (default 0: off; the hard-label terms "
                        "--mtp-weight / --mtp-chain-weight still apply, set them to 0 for pure distillation)")  # fmt: skip
    p.add_argument(
        "--distill-temp",
        type=float,
        default=d.distill_temp,
        help=f"temperature of both distributions (default {d.distill_temp}, the default sampler's)",
    )
    p.add_argument(
        "--distill-top-k",
        type=int,
        default=d.distill_top_k,
        help="take the trunk's distribution on its top-k candidates only (default 0: all)",
    )
    p.add_argument(
        "--distill-top-p", type=float, default=d.distill_top_p, help="... and on its top-p nucleus (default 1: no cut)"
    )
    p.add_argument("--distill-data", choices=("text", "sampled"), default=d.distill_data,
                   help="what the head is trained on: corpus windows, or windows the --init-from GGUF wrote "
                        "itself with graphir under the default sampler (the text a head drafts on at run "
                        f"time; made once, cached in --out) (default {d.distill_data})")  # fmt: skip
    p.add_argument("--sampled-windows", type=int, default=d.sampled_windows,
                   help=f"how many sampled windows (default {d.sampled_windows}), each opened by "
                        f"{d.sampled_prompt} corpus tokens")  # fmt: skip
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
                           freeze_trunk=args.freeze_trunk, threads=args.threads, mtp_depth=args.mtp_depth,
                           distill_mtp=args.distill_mtp, distill_temp=args.distill_temp,
                           distill_top_k=args.distill_top_k, distill_top_p=args.distill_top_p,
                           distill_data=args.distill_data, sampled_windows=args.sampled_windows)  # fmt: skip
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
