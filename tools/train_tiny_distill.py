"""The MTP head's side of `graphir train-tiny`: fine-tuning or distilling the head of a frozen trunk.

Starting from a GGUF of the trainer's shape (its weights and tokenizer: `gguf_source`,
`load_gguf_weights`), exporting its trunk back byte for byte (`trunk_from`) and its record as a
stage of the source's (`head_stage_summary`); the windows the trunk writes itself under the
default sampler (`sampled_windows`, cached by `trunk_digest`); the head's logits at draft steps
1..depth, fed its own hidden state from step 2 on as a drafting round chains it (`head_steps`);
the distillation loss against the trunk's distribution on the sampler's candidates (`distill_kl`,
`chain_mask`); and the per-step acceptance proxy a head-only run is evaluated by
(`head_acceptance`). `tools/train_tiny.py` holds the recipe that uses them.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .train_tiny_model import import_torch

if TYPE_CHECKING:
    from .train_tiny import ModelConfig, TrainConfig


# --------------------------------------------------------------------------------------------
# starting from a GGUF (e.g. the shipped model)
# --------------------------------------------------------------------------------------------


def is_head_tensor(name: str, mcfg: ModelConfig) -> bool:
    """The MTP block's tensors (GGUF names): all that a --freeze-trunk run changes."""
    return name.startswith(f"blk.{mcfg.n_layer}.")


def gguf_source(path: Path, mcfg: ModelConfig) -> tuple[Any, dict[str, Any]]:
    """(the loaded GGUF, its `tokenizer.ggml.*` fields); the file must hold a model of `mcfg`'s shape."""
    from graphir.models.archs import validate
    from graphir.models.gguf import load_gguf

    f = load_gguf(path)
    if validate(f) != mcfg.hparams():
        raise ValueError(f"[train-tiny] {path} holds another model config than this trainer's")
    return f, {k: v for k, v in f.metadata.items() if k.startswith("tokenizer.ggml.")}


def load_gguf_weights(model: Any, f: Any) -> None:
    """Set the PyTorch model's parameters from a GGUF of the same shape (F16 / F32 values are exact
    in float32; blk.N.ssm_a becomes A_log = log(-ssm_a))."""
    torch = import_torch()
    with torch.no_grad():
        for key, prm in model.p.items():
            name = key.replace("__", ".")
            if name.endswith("A_log"):
                name = name.removesuffix("A_log") + "ssm_a"
            arr = np.asarray(f.tensors[name].array(), np.float64).reshape(prm.shape)
            prm.copy_(torch.from_numpy(np.log(-arr) if name.endswith("ssm_a") else arr))


def trunk_digest(gguf: Path, mcfg: ModelConfig) -> str:
    """sha256 (prefix) of a GGUF's tensors outside the MTP block: all that plain decoding depends on."""
    from graphir.models.gguf import load_gguf

    f, h = load_gguf(gguf), hashlib.sha256()
    for name, t in f.tensors.items():
        if not is_head_tensor(name, mcfg):
            h.update(name.encode() + bytes(t.data))
    return h.hexdigest()[:16]


def trunk_from(src: Path, tensors: dict[str, tuple[Any, np.ndarray]], mcfg: ModelConfig) -> dict[str, Any]:
    """`tensors` with every tensor outside the MTP block replaced by the raw bytes of the same tensor
    in the GGUF `src`; raises if the checkpoint's values of those tensors are not the file's."""
    from graphir.models.gguf import load_gguf
    from graphir.types import DType

    f = load_gguf(src)
    out = dict(tensors)
    for name, (_, arr) in tensors.items():
        if is_head_tensor(name, mcfg):
            continue
        t = f.tensors.get(name)
        same = (
            t is not None
            and t.dtype is not None
            and np.allclose(np.asarray(t.array(), np.float64).reshape(arr.shape), arr, rtol=1e-6, atol=0)
        )
        if not same:
            raise ValueError(f"[train-tiny] {name} of the checkpoint differs from {src}'s: not the file the run "
                             "started from, or a run that trained the trunk")  # fmt: skip
        out[name] = (DType(t.type_id), np.array(t.data))
    return out


def head_stage_summary(src: Path, prev: dict[str, Any], summary: dict[str, Any],
                       train_cfg: dict[str, Any]) -> dict[str, Any]:  # fmt: skip
    """The run.json of a head-only run from the GGUF `src`: `prev` (the source's own run.json; empty
    when it has none) with this run's `summary` added as a stage under "mtp_head_distill" (or
    "mtp_head_finetune"; "_2", "_3", ... for a later stage of the same kind)."""
    stage = {"init_from": src.name, **{k: v for k, v in summary.items() if k not in ("corpus", "n_params")}}
    stage["configs"] = {"train": train_cfg}
    key = "mtp_head_distill" if train_cfg.get("distill_mtp", 0) > 0 else "mtp_head_finetune"
    base, n = key, 1
    while key in prev:  # a later stage of the same kind
        n += 1
        key = f"{base}_{n}"
    return {**prev, key: stage} if prev else {**summary, "init_from": src.name}


# --------------------------------------------------------------------------------------------
# the trunk's own text
# --------------------------------------------------------------------------------------------


def sampled_windows(out: Path, gguf: Path, tokens: np.ndarray, mcfg: ModelConfig, tcfg: TrainConfig,
                    log: Any = print) -> np.ndarray:  # fmt: skip
    """Windows (n, seq_len + 1) that the model in `gguf` wrote itself, cached in out/sampled.u16: each opens
    with `sampled_prompt` tokens of a corpus window and goes on with graphir's plain decoding under the
    default sampler (temperature 0.8, top-k 40, top-p 0.95: `graphir generate`'s), the text a head drafts
    on at run time. Deterministic in (seed, window)."""
    from graphir.models.model import Model
    from graphir.models.sampling import Sampler, SamplerConfig
    from graphir.models.speculative import Generator

    n, T, P = tcfg.sampled_windows, tcfg.seq_len + 1, tcfg.sampled_prompt
    path, meta = out / "sampled.u16", out / "sampled.json"
    desc = {"trunk_sha256": trunk_digest(gguf, mcfg), "windows": n, "len": T, "prompt": P, "seed": tcfg.seed,
            "sampler": dataclasses.asdict(SamplerConfig())}  # fmt: skip
    if path.exists() and meta.exists() and json.loads(meta.read_text()) == desc:
        return np.fromfile(path, np.uint16).reshape(n, T)
    S = 32  # sequences per batch
    model, t0 = Model.load(gguf), time.perf_counter()
    gen = Generator(model, spec=None, n_ctx=S * T, n_seq=S, n_threads=tcfg.threads or None)
    starts = np.random.default_rng([tcfg.seed, 1 << 30]).integers(0, tokens.size - P, n)
    rows = []
    for b in range(0, n, S):
        prompts = [tokens[s : s + P].tolist() for s in starts[b : b + S]]
        cfg = SamplerConfig(seed=tcfg.seed * 1_000_003 + b)  # another noise for every batch
        outs = gen.generate_batch(prompts, T - P, [Sampler(cfg)] * len(prompts))
        rows += [p + o for p, o in zip(prompts, outs)]
        done = len(rows)
        log(f"sampled windows: {done}/{n} ({done * (T - P) / (time.perf_counter() - t0):.0f} tok/s)")
    arr = np.asarray(rows, np.uint16)
    arr.tofile(path)
    meta.write_text(json.dumps(desc))
    return arr


# --------------------------------------------------------------------------------------------
# the head's draft steps and the distillation loss
# --------------------------------------------------------------------------------------------


def chain_mask(torch: Any, logits: Any, top_k: int, top_p: float) -> Any:
    """The sampler's candidate set (models/sampling.py, step 2) of every row, as a bool mask over the
    vocabulary: the top_k largest logits (0: all), then the smallest prefix of them whose softmax
    (temperature 1, as the sampler cuts before applying its temperature) reaches top_p."""
    V = logits.shape[-1]
    vals, idx = logits.topk(top_k if 0 < top_k < V else V, -1)
    keep = torch.ones_like(vals, dtype=torch.bool)
    if top_p < 1.0:
        e = vals.softmax(-1)
        keep = e.cumsum(-1) - e < top_p  # the mass before a candidate is still short of top_p
    return torch.zeros_like(logits, dtype=torch.bool).scatter(-1, idx, keep)


def distill_kl(torch: Any, student: Any, teacher: Any, temperature: float, top_k: int = 0,
               top_p: float = 1.0) -> Any:  # fmt: skip
    """Mean over rows of KL(p || q): p = softmax(teacher / temperature) on the sampler's candidates of
    the teacher (`chain_mask`; all tokens with top_k 0 and top_p 1), q = softmax(student / temperature)
    over the whole vocabulary. The teacher gets no gradient. Zero iff q = p (without a cut: iff the
    logits agree up to a constant per row); with a cut, q also pays for its mass off p's support, where
    a coupled draft is always rejected."""
    t = teacher.detach().to(student.dtype) / temperature
    if top_k or top_p < 1.0:
        t = t.masked_fill(~chain_mask(torch, teacher.detach(), top_k, top_p), -math.inf)
    logp = t.log_softmax(-1)
    logq = (student / temperature).log_softmax(-1)
    terms = logp.exp() * (logp - logq)
    return torch.where(torch.isfinite(logp), terms, torch.zeros_like(terms)).sum(-1).mean()


def head_steps(torch: Any, model: Any, x: Any, h: Any, depth: int) -> list[Any]:
    """The head's logits at draft steps 1..depth of a round started at every position: step d has rows
    for positions q = d..T-1 (token x_q; step 1 reads the trunk's h_{q-1}, step d > 1 the head's own
    hidden from step d-1, as `Generator._draft` chains), predicting x_{q+1}; (B, T - d, V) each."""
    kvs: list = []
    T = x.shape[1]
    logits, hidden = model.mtp(x[:, 1:], h[:, :-1], torch.arange(1, T), kv_out=kvs)
    out = [logits]
    for _ in range(2, depth + 1):
        kv: list = []
        logits, hidden = model.mtp_chain_step(x, hidden, kvs, kv_out=kv)
        kvs.append(kv[0])
        out.append(logits)
    return out


# --------------------------------------------------------------------------------------------
# acceptance proxy
# --------------------------------------------------------------------------------------------


def coupled_draw(torch: Any, logits: Any, gumbel: Any, temperature: float, top_k: int, top_p: float) -> Any:
    """The sampler's draw of every row (models/sampling.py): Gumbel-max over its candidates."""
    z = logits.double() / temperature + gumbel
    return z.masked_fill(~chain_mask(torch, logits, top_k, top_p), -math.inf).argmax(-1)


def head_acceptance(torch: Any, model: Any, windows: np.ndarray, depth: int, batch: int = 16, seed: int = 0,
                    temperature: float = 0.8, top_k: int = 40, top_p: float = 0.95) -> dict[str, list[float]]:  # fmt: skip
    """How often the head's draft at steps 1..depth equals the trunk's draw at the same position, on
    held-out text (a proxy of speculative acceptance: the earlier drafts are taken as the text's own
    tokens). "acc_greedy": argmax against argmax; "acc_sampled": coupled draws (the sampler's chain,
    default graphir generate's, and the SAME Gumbel noise for both, seeded); "kl": distill_kl at the
    sampler's temperature, full vocabulary."""
    model.eval()
    gen = torch.Generator().manual_seed(seed)
    n = np.zeros(depth)
    acc_g, acc_s, kl = np.zeros(depth), np.zeros(depth), np.zeros(depth)
    with torch.no_grad():
        for i in range(0, len(windows), batch):
            x = torch.from_numpy(windows[i : i + batch, :-1])
            logits, h = model.trunk(x)
            for d, lg in enumerate(head_steps(torch, model, x, h, depth)):
                t = logits[:, d + 1 :]
                u = torch.rand(t.shape, generator=gen, dtype=torch.float64).clamp_(1e-300, 1 - 1e-16)
                g = -torch.log(-torch.log(u))
                chain = (temperature, top_k, top_p)
                n[d] += t.shape[0] * t.shape[1]
                acc_g[d] += (lg.argmax(-1) == t.argmax(-1)).sum().item()
                acc_s[d] += (coupled_draw(torch, lg, g, *chain) == coupled_draw(torch, t, g, *chain)).sum().item()
                kl[d] += distill_kl(torch, lg, t, temperature).item() * t.shape[0] * t.shape[1]
    model.train()
    return {"acc_greedy": list(acc_g / n), "acc_sampled": list(acc_s / n), "kl": list(kl / n)}
