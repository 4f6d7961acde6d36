"""tools/train_tiny: the PyTorch model computes what graphir's qwen35 graph computes.

A small model trains a few steps on the standard library's email package and is exported through our GGUF
writer; graphir's logits, h_nextn and MTP logits on the file must equal the PyTorch forward
(F32: max abs <= 1e-5 x the largest magnitude, F16: NMSE <= 2e-3). The reference runs in float64:
what is measured is graphir's float32 error, which sits at float32's own noise floor (PyTorch's
float32 forward of this model is ~1.8e-5 off its float64 forward on h_nextn, |h| up to ~4).
Needs torch (the `[train]` extra); skips otherwise.
"""

from __future__ import annotations

import email
import json
from pathlib import Path

import numpy as np
import pytest
import tokenizers

torch = pytest.importorskip("torch", reason="PyTorch is not installed (pip install -e '.[train]', torch==2.13.0)")

import graphir  # noqa: E402
from graphir.models.batch import Batch  # noqa: E402
from graphir.models.context import Context  # noqa: E402
from graphir.models.model import Model  # noqa: E402
from graphir.models.mtp import MtpContext  # noqa: E402
from graphir.tools import train_tiny as tt  # noqa: E402
from graphir.tools import train_tiny_distill as ttd  # noqa: E402
from graphir.tools import train_tiny_model as ttm  # noqa: E402

SMALL = tt.ModelConfig(n_vocab=400, n_embd=64, n_layer=4, n_head=2, n_head_kv=1, head_dim=32, n_rot=8,
                       rope_sections=(2, 1, 1, 0), ssm_d_state=16, ssm_n_group=2, ssm_n_v_heads=4, n_ff=128)  # fmt: skip
RUN = tt.TrainConfig(steps=6, batch=4, seq_len=48, warmup=2, eval_every=3, eval_windows=4, ckpt_every=3,
                     val_percent=20, chunk=16)  # fmt: skip
# the standard library's email package: small, always there, and fixed (graphir's own sources
# changed the trained model, and the F32 bound sits at float32's noise floor, with every edit)
CORPUS = Path(email.__file__).parent


def quiet(*_: object) -> None:
    pass


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("train_tiny")
    tt.train(out, SMALL, RUN, corpus_root=CORPUS, log=quiet)
    return out


def nmse(a: np.ndarray, b: np.ndarray) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(((a - b) ** 2).sum() / (b**2).sum())


@pytest.mark.parametrize("T,chunk", [(50, 16), (64, 64), (7, 4)])
def test_chunked_delta_rule_equals_the_token_loop(T: int, chunk: int) -> None:
    g = torch.Generator().manual_seed(T)
    B, H, S = 2, 3, 8
    q = torch.nn.functional.normalize(torch.randn(B, T, H, S, generator=g), dim=-1)
    k = torch.nn.functional.normalize(torch.randn(B, T, H, S, generator=g), dim=-1)
    v = torch.randn(B, T, H, S, generator=g)
    logd = -3 * torch.rand(B, T, H, generator=g)
    beta = torch.rand(B, T, H, generator=g)
    want = ttm.delta_rule_loop(torch, q, k, v, logd, beta)
    got = ttm.delta_rule_chunked(torch, q, k, v, logd, beta, chunk)
    assert got.shape == want.shape
    assert (got - want).abs().max().item() < 1e-5


@pytest.mark.parametrize("dtype", ["f32", "f16"])
def test_export_parity(run_dir: Path, dtype: str) -> None:
    path = tt.export(run_dir, run_dir / f"model-{dtype}.gguf", dtype)
    ck = torch.load(run_dir / "ckpt.pt", weights_only=False)
    tm = ttm.build_model(SMALL, 1)  # another init: everything must come from the checkpoint
    tm.load_state_dict(ck["model"])
    tm.double().eval()  # the reference in float64: what is compared is graphir's float32 error
    toks = np.fromfile(run_dir / "val.u16", np.uint16)[:40].astype(np.int64)
    n = len(toks)
    with torch.no_grad():
        logits, h, m_logits, m_hidden = (x[0].numpy() for x in tm(torch.from_numpy(toks)[None]))

    model = Model.load(path)
    ctx = Context(model, n_ctx=64, n_batch=64, n_ubatch=16, embeddings_nextn=True, type_k="f32", type_v="f32")
    res = ctx.decode(Batch.simple(toks.tolist(), 0, all_outputs=True))
    mtp = MtpContext(model, n_ctx=64, type_k="f32", type_v="f32")
    # rows p = 1 .. n-1: token x_p with the trunk's h_{p-1} (PyTorch's, so only the head is compared)
    m_res = mtp.decode(Batch(toks[1:].tolist(), embd=h[:-1], pos=np.arange(1, n), output=np.ones(n - 1, bool)))
    pairs = {"logits": (res.logits, logits), "h_nextn": (res.h_nextn, h), "mtp logits": (m_res.logits, m_logits),
             "mtp hidden": (m_res.hidden, m_hidden)}  # fmt: skip
    for what, (got, want) in pairs.items():
        assert got.shape == want.shape, what
        if dtype == "f32":  # 1e-5 of the largest magnitude: float32's own noise here (see the docstring)
            assert np.abs(got - want).max() <= 1e-5 * max(1.0, np.abs(want).max()), what
        else:
            assert nmse(got, want) <= 2e-3, what


def test_chained_head_step_equals_the_speculative_protocol(run_dir: Path) -> None:
    """The chained MTP loss's rows are what a second draft step computes: graphir's MTP context
    fed the true rows 1..q-1, then x_q with the head's own hidden m_{q-1}, gives PyTorch's
    chained logits for position q."""
    path = tt.export(run_dir, run_dir / "chain-f32.gguf", "f32")
    tm = ttm.build_model(SMALL, 0)
    tm.load_state_dict(torch.load(run_dir / "ckpt.pt", weights_only=False)["model"])
    tm.double().eval()
    toks = np.fromfile(run_dir / "val.u16", np.uint16)[:24].astype(np.int64)
    x = torch.from_numpy(toks)[None]
    with torch.no_grad():
        _, h = tm.trunk(x)
        kv: list = []
        _, m_hidden = tm.mtp(x[:, 1:], h[:, :-1], torch.arange(1, len(toks)), kv_out=kv)
        c_logits = tm.mtp_chained(x, m_hidden, kv[0])[0][0].numpy()
    h, m_hidden = h[0].numpy(), m_hidden[0].numpy()
    mtp = MtpContext(Model.load(path), n_ctx=64, type_k="f32", type_v="f32")
    for q in (2, 7, 23):
        mtp.clear()
        mtp.decode(Batch(toks[1:q].tolist(), embd=h[: q - 1], pos=np.arange(1, q)))  # true rows 1..q-1
        got = mtp.decode(Batch([int(toks[q])], embd=m_hidden[q - 2 : q - 1], pos=[q])).logits[0]
        assert np.abs(got - c_logits[q - 2]).max() <= 1e-5 * max(1.0, np.abs(c_logits[q - 2]).max()), q


def test_freeze_trunk_trains_the_head_only(run_dir: Path, tmp_path: Path) -> None:
    cfg = tt.TrainConfig(**{**RUN.__dict__, "steps": 2, "freeze_trunk": True, "mtp_chain_weight": 0.5})
    rec = tt.train(tmp_path, SMALL, cfg, corpus_root=CORPUS, log=quiet, init_from=run_dir)
    assert "chain_ce" in rec["history"][-1]
    a = torch.load(tmp_path / "ckpt.pt", weights_only=False)["model"]
    b = torch.load(run_dir / "ckpt.pt", weights_only=False)["model"]
    head = f"p.blk__{SMALL.n_layer}__"
    assert all(torch.equal(a[k], b[k]) for k in b if not k.startswith(head))  # the trunk (and embeddings) as it was
    assert not all(torch.equal(a[k], b[k]) for k in b if k.startswith(head))


def test_chain_steps_equal_the_speculative_protocol(run_dir: Path) -> None:
    """`head_steps` step 3 is the third draft of a round: graphir's MTP context fed the true rows
    1..q-2, then x_{q-1} with the head's hidden of step 1 at q-2, then x_q with the hidden of that
    step-2 row, gives PyTorch's step-3 logits for position q."""
    path = tt.export(run_dir, run_dir / "chain3-f32.gguf", "f32")
    tm = ttm.build_model(SMALL, 0)
    tm.load_state_dict(torch.load(run_dir / "ckpt.pt", weights_only=False)["model"])
    tm.double().eval()
    toks = np.fromfile(run_dir / "val.u16", np.uint16)[:24].astype(np.int64)
    x = torch.from_numpy(toks)[None]
    with torch.no_grad():
        _, h = tm.trunk(x)
        steps = ttd.head_steps(torch, tm, x, h, 3)
        _, m_hidden = tm.mtp(x[:, 1:], h[:, :-1], torch.arange(1, len(toks)))
    assert [s.shape[1] for s in steps] == [23, 22, 21]
    h, m_hidden, want = h[0].numpy(), m_hidden[0].numpy(), steps[2][0].numpy()
    mtp = MtpContext(Model.load(path), n_ctx=64, type_k="f32", type_v="f32")
    for q in (3, 9, 23):
        mtp.clear()
        mtp.decode(Batch(toks[1 : q - 1].tolist(), embd=h[: q - 2], pos=np.arange(1, q - 1)))  # true rows 1..q-2
        step2 = mtp.decode(Batch([int(toks[q - 1])], embd=m_hidden[q - 3 : q - 2], pos=[q - 1]))
        got = mtp.decode(Batch([int(toks[q])], embd=step2.hidden[:1], pos=[q])).logits[0]
        assert np.abs(got - want[q - 3]).max() <= 1e-5 * max(1.0, np.abs(want[q - 3]).max()), q


def test_distill_kl_is_the_kl_of_the_samplers_distributions() -> None:
    from graphir.models.sampling import Sampler, SamplerConfig

    g = torch.Generator().manual_seed(0)
    teacher = 3 * torch.randn(5, 64, generator=g, dtype=torch.float64)
    student = 3 * torch.randn(5, 64, generator=g, dtype=torch.float64)
    assert ttd.distill_kl(torch, teacher.clone(), teacher, 0.8).item() == pytest.approx(0.0, abs=1e-12)
    assert ttd.distill_kl(torch, teacher + 2.5, teacher, 0.8).item() == pytest.approx(0.0, abs=1e-12)  # shift-free
    for top_k, top_p in ((0, 1.0), (10, 1.0), (40, 0.9), (0, 0.5)):
        cfg = SamplerConfig(temperature=0.8, top_k=top_k, top_p=top_p)
        want = 0.0
        for t, s in zip(teacher.numpy(), student.numpy()):
            ids, p = Sampler(cfg).probs(t)  # the sampler's chain: its candidates and their probabilities
            mask = ttd.chain_mask(torch, torch.from_numpy(t), top_k, top_p).numpy()
            assert set(np.flatnonzero(mask)) == set(ids.tolist())
            logq = s / 0.8 - np.log(np.exp(s / 0.8).sum())
            want += (p * (np.log(p) - logq[ids])).sum() / len(teacher)
        got = ttd.distill_kl(torch, student, teacher, 0.8, top_k, top_p).item()
        assert got == pytest.approx(want, rel=1e-9) and got > 0.1
    s = student.clone().requires_grad_()
    t = teacher.clone().requires_grad_()
    ttd.distill_kl(torch, s, t, 0.8).backward()
    assert t.grad is None and s.grad.abs().sum() > 0  # the teacher is a target, never trained


def test_distillation_from_a_gguf_trains_only_the_head_and_exports_the_trunk_verbatim(run_dir: Path,
                                                                                         tmp_path: Path) -> None:  # fmt: skip
    from graphir.models.gguf import load_gguf

    src = tt.export(run_dir, tmp_path / "src.gguf", "f16")
    cfg = tt.TrainConfig(**{**RUN.__dict__, "steps": 2, "freeze_trunk": True, "distill_mtp": 1.0, "mtp_weight": 0.0,
                            "mtp_depth": 3})  # fmt: skip
    out = tmp_path / "distill"
    rec = tt.train(out, SMALL, cfg, corpus_root=CORPUS, log=quiet, init_from=src)
    assert len(rec["history"][-1]["kl"]) == 3 and len(rec["evals"][-1]["acc_sampled"]) == 3
    assert rec["evals"][0]["step"] == 0  # where the head started
    # the loss reaches the head's parameters only
    tm = ttm.build_model(SMALL, 0)
    tm.load_state_dict(torch.load(out / "ckpt.pt", weights_only=False)["model"])
    head = f"blk__{SMALL.n_layer}__"
    for name, prm in tm.p.items():
        prm.requires_grad_(name.startswith(head))
    w = torch.from_numpy(tt.batch_at(np.fromfile(out / "train.u16", np.uint16), 0, 0, 2, 32))
    terms = tt.losses(torch, tm, w, cfg)
    terms["total"].backward()
    assert all(p.grad is None for n, p in tm.p.items() if not n.startswith(head))
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for n, p in tm.p.items() if n.startswith(head))
    # the export: the source's trunk bytes, a new head, the source's record with this run added
    dst = tt.export(out, tmp_path / "dst.gguf", "f16")
    a, b = load_gguf(src), load_gguf(dst)
    assert list(a.tensors) == list(b.tensors) and a.metadata == b.metadata
    for name, t in a.tensors.items():
        same = bytes(t.data) == bytes(b.tensors[name].data)
        assert same != name.startswith(f"blk.{SMALL.n_layer}."), name
    summary = json.loads(dst.with_suffix(".run.json").read_text())
    assert summary["evals"] == json.loads(src.with_suffix(".run.json").read_text())["evals"]
    assert summary["mtp_head_distill"]["configs"]["train"]["distill_mtp"] == 1.0
    with pytest.raises(ValueError, match="--freeze-trunk"):
        tt.TrainConfig(distill_mtp=1.0)


def test_distillation_on_the_models_own_samples(run_dir: Path, tmp_path: Path) -> None:
    """--distill-data sampled: windows open with corpus tokens and go on as graphir's plain decoding
    under the default sampler (the same tokens for the same seed), made once and cached."""
    from graphir.models.sampling import Sampler, SamplerConfig
    from graphir.models.speculative import Generator

    src = tt.export(run_dir, tmp_path / "src.gguf", "f32")
    cfg = tt.TrainConfig(**{**RUN.__dict__, "steps": 1, "freeze_trunk": True, "distill_mtp": 1.0,
                            "distill_data": "sampled", "sampled_windows": 3, "sampled_prompt": 8})  # fmt: skip
    out = tmp_path / "distill"
    tt.train(out, SMALL, cfg, corpus_root=CORPUS, log=quiet, init_from=src)
    pool = np.fromfile(out / "sampled.u16", np.uint16).reshape(3, RUN.seq_len + 1)
    corpus = np.fromfile(out / "train.u16", np.uint16)
    starts = np.random.default_rng([cfg.seed, 1 << 30]).integers(0, corpus.size - 8, 3)
    prompt = corpus[starts[0] : starts[0] + 8].tolist()
    assert pool[0, :8].tolist() == prompt
    gen = Generator(Model.load(src), spec=None, n_ctx=64)
    sampler = Sampler(SamplerConfig(seed=cfg.seed * 1_000_003))  # window 0: batch 0, sequence 0
    assert pool[0, 8:].tolist() == gen.generate_batch([prompt], RUN.seq_len + 1 - 8, [sampler])[0]
    again = ttd.sampled_windows(out, src, corpus, SMALL, cfg, quiet)  # cached: not generated again
    assert np.array_equal(again, pool)


def test_export_writes_ssm_a_and_keeps_1d_tensors_f32(run_dir: Path) -> None:
    from graphir.models.gguf import load_gguf

    path = tt.export(run_dir, run_dir / "types.gguf", "f16")
    f = load_gguf(path)
    ck = torch.load(run_dir / "ckpt.pt", weights_only=False)
    a_log = ck["model"]["p.blk__0__A_log"].numpy()
    np.testing.assert_allclose(f.tensors["blk.0.ssm_a"].array().reshape(-1), -np.exp(a_log), rtol=1e-6)
    for name, t in f.tensors.items():
        want = "F32" if len(t.ne) == 1 or name.endswith("ssm_conv1d.weight") else "F16"
        assert t.type_name == want, name
    assert "output.weight" not in f.tensors  # tied embeddings
    rec = json.loads(path.with_suffix(".run.json").read_text())  # the record exported beside the model
    assert rec["step"] == RUN.steps and [e["step"] for e in rec["evals"]] == [3, 6]
    hf = tokenizers.Tokenizer.from_file(str(path.with_suffix(".tokenizer.json")))
    text = Path(tt.__file__).read_text()[:2000]
    assert hf.encode(text, add_special_tokens=False).ids == Model.load(path).tokenizer.encode(text, add_special=False)


def test_resume_equals_an_uninterrupted_run(run_dir: Path, tmp_path: Path) -> None:
    half = tmp_path / "half"
    rec = tt.train(half, SMALL, RUN, corpus_root=CORPUS, log=quiet, time_budget=0.0)  # stops before step 1
    assert rec["history"] == [] and (half / "ckpt.pt").exists()
    tt.train(half, SMALL, RUN, corpus_root=CORPUS, log=quiet)
    a = torch.load(half / "ckpt.pt", weights_only=False)
    b = torch.load(run_dir / "ckpt.pt", weights_only=False)
    assert a["step"] == b["step"] == RUN.steps
    for key, want in b["model"].items():
        assert torch.allclose(a["model"][key], want, atol=1e-6), key


def test_bad_input(run_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        tt.export(tmp_path, tmp_path / "x.gguf")
    from graphir.tools.cli import main

    assert main(["train-tiny", "--out", str(tmp_path), "--export-only"]) == 2  # a clear error, no traceback
    with pytest.raises(ValueError, match="f32 or f16"):
        tt.export(run_dir, tmp_path / "x.gguf", "q8_0")
    other = tt.ModelConfig(**{**SMALL.__dict__, "n_ff": 64})
    with pytest.raises(ValueError, match="another model config"):
        tt.train(run_dir, other, RUN, corpus_root=CORPUS, log=quiet)
    with pytest.raises(ValueError, match="multiple of"):
        tt.ModelConfig(ssm_n_group=3)


def test_corpus_holds_out_whole_files() -> None:
    files = [p.relative_to(CORPUS).as_posix() for p in tt.corpus_files(CORPUS)]
    val = [f for f in files if tt.is_validation(f, RUN.val_percent)]
    assert 0 < len(val) < len(files)
    train, held, info = tt.read_corpus(RUN.val_percent, CORPUS)
    assert (len(train), len(held)) == (len(files) - len(val), len(val)) == (info["files_train"], info["files_val"])


def test_lr_schedule() -> None:
    c = tt.TrainConfig(steps=100, warmup=10, lr=1.0, min_lr_ratio=0.1)
    lrs = [c.lr_at(s) for s in range(100)]
    assert lrs[0] == pytest.approx(0.1) and lrs[9] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(lrs[10:], lrs[11:]))  # cosine: non-increasing
    assert c.lr_at(100) == pytest.approx(0.1)
