"""The decoding Context on tiny random Qwen3.5 models (dense and MoE, F32 weights, F32 KV cache).

Oracles: one-shot prompt processing in a fresh context (incremental decode, several sequences,
rollback, the state machine's recompute-from-scratch reference), and a hand-driven trunk graph
with no memory module (h_nextn and logits). Logits compare with `assert_close`: max abs diff
<= 1e-4 x max(1, max |reference|) (float32 sums in a different order: observed ~1e-6).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, precondition, rule, run_state_machine_as_test
from hypothesis_profiles import examples

import graphir as gr
from graphir.models import tiny
from graphir.models.batch import Batch, BatchError, split
from graphir.models.context import Context
from graphir.models.gguf import GGUFError
from graphir.models.gguf_write import random_qwen35, write_qwen35
from graphir.models.graph_context import StateTensors, UBatchShape
from graphir.models.hparams import Qwen35HParams
from graphir.models.memory import MemoryFullError
from graphir.models.model import Model
from graphir.types import DType

TOKENIZER = tiny.tiny_tokenizer_fields()  # the package's 512-token BPE (loads through Tokenizer)
N_VOCAB = len(TOKENIZER["tokenizer.ggml.tokens"])
DENSE = Qwen35HParams(
    arch="qwen35", n_vocab=N_VOCAB, n_ctx_train=256, n_embd=64, block_count=5, n_ff=96,
    n_head=4, n_head_kv=2, head_dim_k=16, head_dim_v=16, rms_eps=1e-6, n_rot=8, rope_sections=(2, 1, 1, 0),
    rope_freq_base=10_000.0, ssm_d_conv=4, ssm_d_inner=64, ssm_d_state=16, ssm_dt_rank=4, ssm_n_group=2,
    full_attention_interval=2, nextn_predict_layers=1,
)  # fmt: skip  # layers: delta net, attention, delta net, attention (+ one nextn block)
MOE = dataclasses.replace(DENSE, arch="qwen35moe", n_expert=4, n_expert_used=2, n_ff_exp=32, n_ff_shexp=48)
PROMPT = [5, 17, 230, 42, 99, 7, 281, 3, 64, 150, 11, 400]
OTHER = [300, 8, 77, 190, 3, 9, 501, 60]


def assert_close(got: np.ndarray, ref: np.ndarray, what: str = "") -> None:
    got, ref = np.asarray(got, np.float64), np.asarray(ref, np.float64)
    assert got.shape == ref.shape, (what, got.shape, ref.shape)
    err, scale = float(np.abs(got - ref).max(initial=0.0)), max(1.0, float(np.abs(ref).max(initial=0.0)))
    assert err <= 1e-4 * scale, f"{what}: max abs diff {err:.3g} (logits scale {scale:.3g})"


def write_model(path: Path, hp: Qwen35HParams, seed: int) -> tuple[Model, dict]:
    tensors = random_qwen35(hp, seed)
    write_qwen35(path, hp, tensors, TOKENIZER)
    return Model.load(path), tensors


@pytest.fixture(scope="module")
def dense(tmp_path_factory) -> Model:
    return write_model(tmp_path_factory.mktemp("ctx") / "dense.gguf", DENSE, 1)[0]


@pytest.fixture(scope="module")
def moe(tmp_path_factory) -> Model:
    return write_model(tmp_path_factory.mktemp("ctx") / "moe.gguf", MOE, 2)[0]


def context(model: Model, **kw) -> Context:
    kw = {"n_ctx": 64, "n_batch": 64, "n_ubatch": 64, "type_k": "f32", "type_v": "f32", **kw}
    return Context(model, **kw)


def one_shot(model: Model, tokens: list[int], pos0: int = 0) -> np.ndarray:
    """Logits of every token of a fresh sequence, one ubatch, fresh context."""
    ctx = context(model, n_ctx=max(64, pos0 + len(tokens)), n_batch=len(tokens), n_ubatch=len(tokens))
    return ctx.decode(Batch.simple(tokens, pos0, all_outputs=True)).logits


def snapshot(ctx: Context) -> tuple[dict, dict]:
    """Bookkeeping and the bytes of every state tensor."""
    leafs = StateTensors.of(ctx.memory)
    data = {t.name: t.data.copy() for d in (leafs.k_l, leafs.v_l, leafs.r_l, leafs.s_l) for t in d.values()}
    return ctx.memory.bookkeeping(), data


def assert_same(a: tuple[dict, dict], b: tuple[dict, dict]) -> None:
    for da, db in zip(a, b):
        assert da.keys() == db.keys()
        for k in da:
            assert np.array_equal(np.asarray(da[k]), np.asarray(db[k])), k


# --------------------------------------------------------------------------------------------
# model
# --------------------------------------------------------------------------------------------


def test_model_load(dense, tmp_path) -> None:
    assert dense.arch == "qwen35" and dense.n_vocab == N_VOCAB and dense.n_embd == 64
    assert list(dense.trunk_layers) == [0, 1, 2, 3] and dense.tokenizer.n_vocab == N_VOCAB
    assert dense.tokenizer.encode("def", add_special=False)
    assert dense.weights.file.path == dense.path and "qwen35" in repr(dense)
    with pytest.raises(GGUFError, match="cannot open"):
        Model.load(tmp_path / "missing.gguf")
    truncated = tmp_path / "truncated.gguf"
    truncated.write_bytes(Path(dense.path).read_bytes()[:1000])
    with pytest.raises(GGUFError, match="truncated.gguf"):
        Model.load(truncated)
    bad_pre = tmp_path / "bad_pre.gguf"  # valid for the validator, refused by the tokenizer
    write_qwen35(bad_pre, DENSE, random_qwen35(DENSE, 0), {**TOKENIZER, "tokenizer.ggml.pre": "nonesuch"})
    with pytest.raises(GGUFError, match=r"bad_pre.gguf.*pre.*nonesuch"):
        Model.load(bad_pre)


# --------------------------------------------------------------------------------------------
# decoding
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("arch", ["dense", "moe"])
@pytest.mark.parametrize("n_rs_seq", [0, 2])
def test_incremental_decode_equals_one_shot(arch, n_rs_seq, request) -> None:
    """Chunks of every size 1..n, with n_ubatch (5) smaller than the prompt: each chunk continues
    the sequence, ubatch boundaries fall anywhere, outputs for every token."""
    model = request.getfixturevalue(arch)
    ref = one_shot(model, PROMPT)
    for chunk in range(1, len(PROMPT) + 1):
        ctx = context(model, n_batch=len(PROMPT), n_ubatch=5, n_rs_seq=n_rs_seq)
        got = []
        for p in range(0, len(PROMPT), chunk):
            out = ctx.decode(Batch.simple(PROMPT[p : p + chunk], p, all_outputs=True))
            assert out.out_idx.tolist() == list(range(len(out.logits))) and out.h_nextn is None
            got.append(out.logits)
        assert_close(np.concatenate(got), ref, f"chunk {chunk}")
        assert ctx.seq_pos_max(0) == len(PROMPT) - 1 and ctx.stats.tokens == len(PROMPT)


def test_outputs_only_for_flagged_tokens(dense) -> None:
    ctx = context(dense, n_ubatch=4)
    flags = np.zeros(len(PROMPT), bool)
    flags[[0, 5, 6, 11]] = True
    out = ctx.decode(Batch(PROMPT, pos=np.arange(len(PROMPT)), output=flags))
    assert out.out_idx.tolist() == [0, 5, 6, 11] and out.logits.shape == (4, N_VOCAB)
    assert out.logits.dtype == np.float32
    assert_close(out.logits, one_shot(dense, PROMPT)[[0, 5, 6, 11]])


def test_single_token_steps_reuse_one_plan(dense, monkeypatch) -> None:
    """After the first step, 10 single-token steps build no graph and compile nothing (not even
    through gr.compile); n_kv is padded to 256, so only crossing cell 256 builds a new plan."""
    ctx = context(dense, n_ctx=512, n_batch=128, n_ubatch=64)
    assert ctx.stats.graph_builds == 1 and ctx.compute_buffer_bytes() > 0  # the worst-case reservation
    prompt = (PROMPT * 22)[:250]
    ctx.decode(Batch(prompt[:64], pos=np.arange(64)))
    ctx.decode(Batch(prompt[64:128], pos=np.arange(64, 128)))
    ctx.decode(Batch(prompt[128:], pos=np.arange(128, 250)))
    logits = [ctx.decode(Batch.simple([7], 250)).logits[0]]
    compiles = []
    real_compile = gr.compile
    monkeypatch.setattr(gr, "compile", lambda *a, **k: compiles.append(1) or real_compile(*a, **k))
    builds, runs, hits = ctx.stats.graph_builds, ctx.stats.plan_runs, ctx.stats.plan_hits
    history = prompt + [7]
    for i in range(10):
        tok = (31 * i + 5) % N_VOCAB
        logits.append(ctx.decode(Batch.simple([tok], 251 + i)).logits[0])
        history.append(tok)
        if i == 4:  # positions 251..255: cells 0..255, n_kv 256 all along
            assert (ctx.stats.graph_builds, compiles) == (builds, [])
    # position 256 needed a plan with n_kv 512, built once; 257..260 reuse it
    assert ctx.stats.graph_builds == builds + 1 and len(compiles) == 1
    assert ctx.stats.plan_runs == runs + 10 and ctx.stats.plan_hits == hits + 9
    assert_close(np.array(logits), one_shot(dense, history)[250:], "single-token steps")


def test_several_sequences_equal_each_alone(dense, moe) -> None:
    for model in (dense, moe):
        a, b = PROMPT[:7], OTHER[:5]
        seq = [0] * 3 + [1] * 2 + [0] * 4 + [1] * 3  # interleaved: the split groups them
        toks = a[:3] + b[:2] + a[3:] + b[2:]
        pos = [0, 1, 2, 0, 1, 3, 4, 5, 6, 2, 3, 4]
        ctx = context(model, n_seq_max=2, n_ubatch=6)
        out = ctx.decode(Batch(toks, pos=pos, seq_id=seq, output=np.ones(12, bool)))
        ra, rb = one_shot(model, a + [33]), one_shot(model, b + [44])
        order = np.argsort(seq, kind="stable")
        assert_close(out.logits[order], np.concatenate([ra[:7], rb[:5]]), model.arch)
        # two more each, interleaved: one ubatch with groups seq 0 (rows 0, 3) then seq 1 (rows 1, 2)
        out = ctx.decode(Batch([33, 44, 55, 66], pos=[7, 5, 6, 8], seq_id=[0, 1, 1, 0], output=np.ones(4, bool)))
        assert out.out_idx.tolist() == [0, 1, 2, 3]
        ra, rb = one_shot(model, a + [33, 66]), one_shot(model, b + [44, 55])
        assert_close(out.logits, np.stack([ra[7], rb[5], rb[6], ra[8]]), model.arch)


def test_h_nextn_matches_the_graph_run_by_hand(dense) -> None:
    """h_nextn (post-output-norm) and logits against the trunk graph with hand-made state, mask
    and slots (no memory module), one ubatch of the whole prompt."""
    hp, n = DENSE, len(PROMPT)
    state = StateTensors(
        k_l={il: _leaf((hp.n_embd_k_gqa, 32)) for il in (1, 3)}, v_l={il: _leaf((hp.n_embd_v_gqa, 32)) for il in (1, 3)},
        r_l={il: _leaf(((hp.ssm_d_conv - 1) * hp.conv_channels, 1)) for il in (0, 2)},
        s_l={il: _leaf((hp.S_v * hp.S_v * hp.H_v, 1)) for il in (0, 2)},
    )  # fmt: skip
    res = dense.build_graph(dense.weights, UBatchShape(1, n, n, n_kv=32), state, want_h_nextn=True)
    plan = gr.compile(res.graph, ["cpu"])
    mask = np.where(np.arange(32)[None, :] <= np.arange(n)[:, None], 0.0, -np.inf)
    res.inputs.set(plan, pos=np.arange(n), tokens=np.array(PROMPT), kv_slots=np.arange(n), kq_mask=mask,
                   rs_src=[0], rs_dst=[[0]])  # fmt: skip
    plan.run()
    ref_h, ref_logits = plan.get(res.h_nextn).reshape(n, -1), plan.get(res.logits).reshape(n, -1)

    ctx = context(dense, n_ubatch=5, embeddings_nextn=True)
    flags = np.zeros(n, bool)
    rows = [2, 3, 9, 11]  # two in the first ubatch of 5
    flags[rows] = True
    out = ctx.decode(Batch(PROMPT, pos=np.arange(n), output=flags))
    assert out.h_nextn.shape == (4, hp.n_embd) and out.h_nextn.dtype == np.float32
    assert_close(out.h_nextn, ref_h[rows], "h_nextn")
    assert_close(out.logits, ref_logits[rows], "logits")
    # the rows are normalized (times output_norm): not the pre-norm residual
    w = dense.weights.file.tensors["output_norm.weight"].array().reshape(-1)
    assert np.allclose(np.sqrt(np.mean((out.h_nextn / w) ** 2, axis=1)), 1.0, atol=1e-3)


def _leaf(ne: tuple[int, int]) -> gr.Tensor:
    t = gr.new_weight(DType.F32, ne, np.zeros((ne[1], ne[0]), np.float32), "state")
    t.flags &= ~gr.Flag.PARAM
    return t


def test_embedding_rows_decode_like_tokens(dense) -> None:
    embd = dense.weights.file.tensors["token_embd.weight"].array().reshape(N_VOCAB, -1)[PROMPT[:6]]
    out = context(dense, n_ubatch=4).decode(Batch(embd=embd, pos=np.arange(6), output=np.ones(6, bool)))
    assert_close(out.logits, one_shot(dense, PROMPT[:6]), "embd")


def test_interleaved_sequences_get_their_own_output_rows(dense) -> None:
    """Outputs of two sequences interleaved in the batch (s0, s1, s0, s1): the ubatch runs them
    sequence by sequence, and each batch row still gets its own logits."""
    ctx = context(dense, n_seq_max=2)
    b = Batch(PROMPT[:1] + OTHER[:1] + PROMPT[1:2] + OTHER[1:2], pos=[0, 0, 1, 1], seq_id=[0, 1, 0, 1],
              output=np.ones(4, bool))  # fmt: skip
    got = ctx.decode(b).logits
    assert_close(got[[0, 2]], one_shot(dense, PROMPT[:2]), "seq 0 rows")
    assert_close(got[[1, 3]], one_shot(dense, OTHER[:2]), "seq 1 rows")


def test_copied_and_fresh_sequences_update_host_state_in_place(dense) -> None:
    """On a host-memory backend the state rows of seq_cp copies and fresh sequences are written in
    place (no state-update graph); the logits are those of the copied / fresh sequence."""
    ctx = context(dense, n_seq_max=2, n_ubatch=4)
    ctx.decode(Batch.simple(PROMPT[:5], seq_id=0))
    ctx.seq_cp(0, 1)
    copied = ctx.decode(Batch.simple([9], 5, seq_id=1)).logits[0]
    ctx.seq_rm(0, -1, -1)  # seq 0's rows hold its state: a fresh seq 0 must start from zeros
    fresh = ctx.decode(Batch.simple(OTHER[:3], seq_id=0, all_outputs=True)).logits
    assert ctx.stats.state_updates == 0, "no update graph on a host-memory backend"
    assert_close(copied, one_shot(dense, PROMPT[:5] + [9])[5], "copied sequence")
    assert_close(fresh, one_shot(dense, OTHER[:3]), "fresh sequence in a used row")


def test_seq_add_and_seq_keep(dense) -> None:
    """seq_add shifts positions (K re-rotated by the state-update graph): relative positions are
    what attention sees, so the next logits equal a sequence that started at the shifted pos."""
    ctx = context(dense, n_seq_max=2, n_ubatch=4)
    ctx.decode(Batch.simple(PROMPT[:6], seq_id=0))
    ctx.decode(Batch.simple(OTHER[:3], seq_id=1))
    ctx.seq_add(0, 0, -1, 3)
    assert (ctx.seq_pos_min(0), ctx.seq_pos_max(0)) == (3, 8)
    updates = ctx.stats.state_updates
    got = ctx.decode(Batch.simple(PROMPT[6:8], 9, all_outputs=True)).logits
    assert ctx.stats.state_updates == updates + 1
    assert_close(got, one_shot(dense, PROMPT[:8], pos0=3)[6:], "after seq_add")
    ctx.seq_keep(1)
    assert ctx.seq_pos_max(0) == -1 and ctx.seq_pos_max(1) == 2
    assert_close(ctx.decode(Batch.simple([9], 3, seq_id=1)).logits[0], one_shot(dense, OTHER[:3] + [9])[3])
    ctx.clear()
    assert ctx.seq_pos_max(1) == -1
    assert_close(ctx.decode(Batch.simple(PROMPT[:3], all_outputs=True)).logits, one_shot(dense, PROMPT[:3]))


# --------------------------------------------------------------------------------------------
# rollback
# --------------------------------------------------------------------------------------------


def test_rollback_equals_never_having_seen_the_tokens(dense) -> None:
    """n_rs_seq = 3: decode n tokens in one batch after a prefix, seq_rm the last r
    (1 <= r <= min(n-1, 3)), continue: the logits equal a context that never saw them."""
    prefix = PROMPT[:4]
    for n in range(2, 7):
        for r in range(1, min(n - 1, 3) + 1):
            ctx = context(dense, n_ubatch=8, n_rs_seq=3)
            ctx.decode(Batch.simple(prefix))
            ctx.decode(Batch.simple(OTHER[:n], len(prefix)))
            assert ctx.seq_rm(0, len(prefix) + n - r, -1), (n, r)
            assert ctx.seq_pos_max(0) == len(prefix) + n - r - 1
            kept = prefix + OTHER[: n - r]
            got = ctx.decode(Batch.simple(PROMPT[6:9], len(kept), all_outputs=True)).logits
            assert_close(got, one_shot(dense, kept + PROMPT[6:9])[len(kept) :], f"n={n} r={r}")


def test_refused_rollbacks_change_nothing(dense) -> None:
    history = PROMPT[:4] + OTHER[:3]
    ref = one_shot(dense, history + [77])[-1]

    def fresh(n_rs_seq: int) -> Context:
        ctx = context(dense, n_ubatch=8, n_rs_seq=n_rs_seq)
        ctx.decode(Batch.simple(PROMPT[:4]))
        ctx.decode(Batch.simple(OTHER[:3], 4))  # 3 tokens: 2 valid snapshots (at most n_rs_seq)
        return ctx

    cases = [
        (3, [(4, -1)], "3 tokens back, only 2 snapshots are valid"),
        (3, [(2, 5)], "a hole in the middle"),
        (0, [(6, -1)], "no snapshots at all (n_rs_seq = 0)"),
    ]
    for n_rs_seq, calls, why in cases:
        ctx = fresh(n_rs_seq)
        before = snapshot(ctx)
        for p0, p1 in calls:
            assert not ctx.can_seq_rm(0, p0, p1), why
            assert not ctx.seq_rm(0, p0, p1), why
        assert_same(before, snapshot(ctx))
        assert_close(ctx.decode(Batch.simple([77], 7)).logits[0], ref, why)
    # a second rollback while one is pending is refused; the first one holds
    ctx = fresh(3)
    assert ctx.seq_rm(0, 6, -1)
    assert not ctx.seq_rm(0, 5, -1) and ctx.seq_pos_max(0) == 5
    assert_close(ctx.decode(Batch.simple([77], 6)).logits[0], one_shot(dense, history[:-1] + [77])[-1])
    # after a single-token step there is nothing to roll back to
    assert not ctx.seq_rm(0, 6, -1)
    assert ctx.seq_rm(0, 0, -1) and ctx.seq_pos_max(0) == -1  # removing the whole sequence always works


# --------------------------------------------------------------------------------------------
# errors: refused before anything changes
# --------------------------------------------------------------------------------------------


def test_bad_batches_are_refused_and_memory_is_unchanged(dense) -> None:
    ctx = context(dense, n_ctx=16, n_batch=8, n_ubatch=4, n_seq_max=2, n_rs_seq=1)
    ctx.decode(Batch.simple(PROMPT[:6]))
    ctx.decode(Batch.simple(OTHER[:4], seq_id=1))
    ref = one_shot(dense, PROMPT[:7])[-1]
    bad = [
        (Batch.simple([5, N_VOCAB], 6), BatchError, f"id {N_VOCAB}, must be in \\[0, {N_VOCAB}\\)"),
        (Batch.simple([-1], 6), BatchError, "id -1"),
        (Batch.simple([5], 8), BatchError, "starts at pos 8 but its memory ends at pos 5"),
        (Batch.simple([5], 3), BatchError, "positions must continue at 6"),
        (Batch.simple([5], 0, seq_id=2), BatchError, "seq_id 2, must be in \\[0, 2\\)"),
        (Batch.simple(list(range(9)), 6), BatchError, "9 tokens, more than n_batch=8"),
        (Batch.simple(list(range(7)), 6), MemoryFullError, "context full: need 7 cells, 6 free"),
        (Batch(embd=np.zeros((1, 63)), pos=[6]), BatchError, "n_embd=64"),
        ([5, 6], TypeError, "takes a models.batch.Batch"),
    ]
    for batch, exc, msg in bad:
        before = snapshot(ctx)
        runs = ctx.stats.plan_runs
        with pytest.raises(exc, match=msg):
            ctx.decode(batch)
        assert_same(before, snapshot(ctx))
        assert ctx.stats.plan_runs == runs and ctx.stats.decodes == 2
    with pytest.raises(BatchError, match="positions must be >= 0"):  # refused by Batch itself
        Batch.simple([5], -1)
    with pytest.raises(BatchError, match="consecutive"):
        Batch([5, 6], pos=[6, 8])
    assert_close(ctx.decode(Batch.simple([PROMPT[6]], 6)).logits[0], ref, "after the refusals")


def test_a_failing_graph_run_removes_its_sequences(dense, monkeypatch) -> None:
    """Should not happen, but if a graph run raises midway, the failing ubatch's sequences are
    removed (their state may be half written); other sequences keep working."""
    ctx = context(dense, n_seq_max=2, n_ubatch=4)
    ctx.decode(Batch.simple(OTHER[:3], seq_id=1))
    ctx.decode(Batch.simple(PROMPT[:2]))
    real_entry, calls = ctx._entry, []

    def flaky(shape):
        calls.append(shape)
        if len(calls) == 2:
            raise RuntimeError("injected")
        return real_entry(shape)

    monkeypatch.setattr(ctx, "_entry", flaky)
    with pytest.raises(RuntimeError, match="injected") as e:
        ctx.decode(Batch.simple(PROMPT[2:10], 2))  # ubatches of 4: the second one fails
    assert "sequences [0] were removed" in "".join(e.value.__notes__)
    assert ctx.seq_pos_max(0) == -1 and ctx.seq_pos_max(1) == 2
    monkeypatch.undo()
    assert_close(ctx.decode(Batch.simple([9], 3, seq_id=1)).logits[0], one_shot(dense, OTHER[:3] + [9])[-1])
    assert_close(ctx.decode(Batch.simple(PROMPT[:4], all_outputs=True)).logits, one_shot(dense, PROMPT[:4]))


def test_bad_context_parameters(dense) -> None:
    with pytest.raises(ValueError, match="n_ubatch .* must be >= 1 \\+ n_rs_seq"):
        Context(dense, n_ubatch=2, n_rs_seq=2)
    with pytest.raises(ValueError, match="n_ctx must be an integer >= 1"):
        Context(dense, n_ctx=0)
    with pytest.raises(ValueError, match="type_k"):
        Context(dense, n_ctx=8, type_k="q8_0")
    with pytest.raises(ValueError, match="unknown backend"):
        Context(dense, n_ctx=8, backends=("nonesuch",))
    small = Context(dense, n_ctx=32, n_batch=8, n_ubatch=16)
    assert small.n_ubatch == 8  # clamped to n_batch, as llama.cpp does
    snap = Context(dense, n_ctx=32, n_ubatch=8, n_rs_seq=3, n_seq_max=2).memory_sizes()
    assert snap.rs_snapshot_bytes == 3 * snap.rs_bytes // 4 and snap.kv_bytes == small.memory_sizes().kv_bytes
    assert small.compute_buffer_bytes() < Context(dense, n_ctx=32, n_ubatch=32).compute_buffer_bytes()


# --------------------------------------------------------------------------------------------
# state machine: random decode / seq_rm (rollbacks included) / seq_cp against recomputation
# --------------------------------------------------------------------------------------------

N_CTX_SM, N_UBATCH_SM, N_RS_SM = 32, 4, 2


class DecodeMachine(RuleBasedStateMachine):
    """Two sequences with their kept token histories; every decode's logits must equal a fresh
    context fed the history. Rollbacks must succeed exactly when the last ubatch of the sequence
    left enough snapshots and none is pending."""

    model: Model
    reference: Context

    def __init__(self) -> None:
        super().__init__()
        self.ctx = context(self.model, n_ctx=N_CTX_SM, n_batch=8, n_ubatch=N_UBATCH_SM, n_seq_max=2,
                           n_rs_seq=N_RS_SM)  # fmt: skip
        self.hist: dict[int, list[int]] = {0: [], 1: []}
        self.valid = {0: 0, 1: 0}  # tokens a rollback may undo
        self.pending = {0: False, 1: False}

    def expect(self, s: int, tokens: list[int], logits: np.ndarray) -> None:
        self.reference.clear()
        ref = self.reference.decode(Batch.simple(self.hist[s] + tokens)).logits[0]
        assert_close(logits, ref, f"seq {s} after {self.hist[s]} + {tokens}")

    def after_decode(self, batch: Batch) -> None:
        for ub in split(batch, N_UBATCH_SM, N_RS_SM):
            for s in ub.seqs:
                self.valid[s] = min(ub.n_seq_tokens - 1, N_RS_SM)
                self.pending[s] = False

    def room(self, n: int) -> bool:
        return sum(map(len, self.hist.values())) + n <= N_CTX_SM

    @rule(s=st.integers(0, 1), tokens=st.lists(st.integers(0, N_VOCAB - 1), min_size=1, max_size=6))
    def decode(self, s: int, tokens: list[int]) -> None:
        self.decode_one(s, tokens)

    def decode_one(self, s: int, tokens: list[int]) -> bool:
        if not self.room(len(tokens)):
            return False
        batch = Batch.simple(tokens, len(self.hist[s]), s)
        out = self.ctx.decode(batch)
        self.expect(s, tokens, out.logits[0])
        self.after_decode(batch)
        self.hist[s] += tokens
        return True

    @rule(n0=st.integers(1, 3), n1=st.integers(1, 4), tok=st.integers(0, N_VOCAB - 1))
    def decode_both(self, n0: int, n1: int, tok: int) -> None:
        if not self.room(n0 + n1):
            return
        new = {0: [(tok + i) % N_VOCAB for i in range(n0)], 1: [(tok * 7 + i) % N_VOCAB for i in range(n1)]}
        batch = Batch(new[1] + new[0], pos=[*range(len(self.hist[1]), len(self.hist[1]) + n1),
                      *range(len(self.hist[0]), len(self.hist[0]) + n0)], seq_id=[1] * n1 + [0] * n0)  # fmt: skip
        out = self.ctx.decode(batch)
        assert out.out_idx.tolist() == [n1 - 1, n1 + n0 - 1]
        self.expect(1, new[1], out.logits[0])
        self.expect(0, new[0], out.logits[1])
        self.after_decode(batch)
        for s in (0, 1):
            self.hist[s] += new[s]

    @precondition(lambda self: any(self.hist.values()))
    @rule(s=st.integers(0, 1), r=st.integers(1, N_RS_SM + 1))
    def roll_back(self, s: int, r: int) -> None:
        n = len(self.hist[s])
        r = min(r, n) if n else r
        whole = r >= n  # removing everything always works
        expected = whole or (not self.pending[s] and r <= self.valid[s])
        assert self.ctx.seq_rm(s, n - r, -1) == expected, (self.hist[s], r, self.valid[s], self.pending[s])
        if expected:
            self.hist[s] = self.hist[s][: n - r]
            self.pending[s] = not whole and n > 0
            self.valid[s] = 0 if whole else self.valid[s]
        assert self.ctx.seq_pos_max(s) == len(self.hist[s]) - 1

    @rule(s=st.integers(0, 1), tokens=st.lists(st.integers(0, N_VOCAB - 1), min_size=2, max_size=4),
          r=st.integers(1, N_RS_SM))  # fmt: skip
    def verify(self, s: int, tokens: list[int], r: int) -> None:
        """A speculative round: decode a few tokens, then drop the rejected tail."""
        if self.decode_one(s, tokens):
            self.roll_back(s, min(r, len(tokens) - 1))

    @rule(s=st.integers(0, 1))
    def remove(self, s: int) -> None:
        assert self.ctx.seq_rm(s, -1, -1)
        self.hist[s], self.valid[s], self.pending[s] = [], 0, False

    @precondition(lambda self: any(self.hist.values()))
    @rule(src=st.integers(0, 1))
    def copy(self, src: int) -> None:
        if not self.hist[src]:  # mostly copy a non-empty sequence (an empty one just resets dst)
            src = 1 - src
        dst = 1 - src
        assert self.ctx.seq_rm(dst, -1, -1)
        self.ctx.seq_cp(src, dst)
        self.hist[dst], self.valid[dst], self.pending[dst] = list(self.hist[src]), 0, False


def test_decode_state_machine(dense) -> None:
    class Machine(DecodeMachine):
        model = dense
        reference = context(dense, n_ctx=N_CTX_SM + 6, n_batch=N_CTX_SM + 6, n_ubatch=N_CTX_SM + 6,
                            plan_cache_size=64)  # fmt: skip

    run_state_machine_as_test(Machine, settings=settings(max_examples=examples(30), stateful_step_count=15, deadline=None))


def test_ubatches_without_outputs_still_write_state(tmp_path) -> None:
    """A ubatch with no output rows where the only attention layer is the last trunk layer: the
    attention output (and its mask) is unused, the K/V and recurrent writes must still happen."""
    hp = dataclasses.replace(DENSE, block_count=4, full_attention_interval=4, nextn_predict_layers=0)
    model = write_model(tmp_path / "last_attn.gguf", hp, 3)[0]
    tokens = list(range(3, 23))
    chunked = context(model, n_ubatch=8).decode(Batch.simple(tokens, 0)).logits  # outputs only in the last ubatch
    assert_close(chunked, one_shot(model, tokens)[-1:], "chunked prompt, last-layer attention")
