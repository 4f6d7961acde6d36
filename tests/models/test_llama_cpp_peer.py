"""llama.cpp as a peer: the tiny GGUFs we write load in llama.cpp, tokenize the same, and give the
same logits and post-norm hidden state (h_nextn) as our graphs.

Needs llama-cpp-python with Qwen3.5 support (skipped otherwise):
    CMAKE_ARGS=-DGGML_NATIVE=ON pip install llama-cpp-python==0.3.36
llama.cpp runs with an F32 KV cache (type_k/type_v = 0), so with F32 weights both sides compute
in float32 and agree to ~1e-12 NMSE; with F16 weights llama.cpp rounds the activations to F16 for
the matrix products (ggml's vec_dot_type), hence the looser bound there. Our side runs through
`models.context.Context` when it exists, else the trunk graph driven by hand with a one-shot
causal mask (as in test_qwen35_graph.py). h_nextn comes from llama.cpp's experimental
`llama_cpp_ext.llama_get_embeddings_nextn_ith` where the binding has it.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

import graphir as gr
from graphir.models import archs, tiny
from graphir.models.gguf import load_gguf
from graphir.models.gguf_write import write_gguf
from graphir.models.graph_context import StateTensors, UBatchShape
from graphir.models.tokenizer import Tokenizer
from graphir.types import DType

INSTALL = "CMAKE_ARGS=-DGGML_NATIVE=ON pip install llama-cpp-python==0.3.36"
try:
    import llama_cpp
except ImportError:  # pragma: no cover - depends on the environment
    pytest.skip(f"llama_cpp is not installed (to run these peer tests: {INSTALL})", allow_module_level=True)
if tuple(int(x) for x in llama_cpp.__version__.split(".")[:3] if x.isdigit()) < (0, 3, 36):
    pytest.skip(f"llama_cpp {llama_cpp.__version__} predates Qwen3.5 support (to upgrade: {INSTALL})",
                allow_module_level=True)  # fmt: skip

try:
    from llama_cpp import llama_cpp_ext
except ImportError:  # older bindings: no h_nextn
    llama_cpp_ext = None

HAVE_CONTEXT = importlib.util.find_spec("graphir.models.context") is not None
GGML_TYPE_F32 = 0
PROMPT = "def add(a, b):\n    return a + b  # tensors, graphs and 東京"
TEXTS = [
    "Hello world",
    "A tensor is a block of numbers with a shape.",
    "def mean(values):\n    return sum(values) / len(values)\n",
    "   leading spaces,\ttabs\r\nand CRLF\n\n\n",
    "numbers 12345 and 3.14159, it's they're we'll I'd",
    "Grüße aus Zürich! naïve café ☕ 東京 日本語 émoji 🙂",
    "<|im_start|>user\nWrite a function.<|im_end|>\n<|im_start|>assistant\n",
    "unknown <|im_starts|> almost special <|endoftext|>",
]


def nmse(a: np.ndarray, ref: np.ndarray) -> float:
    a, ref = np.asarray(a, np.float64), np.asarray(ref, np.float64)
    return float(((a - ref) ** 2).sum() / (ref**2).sum())


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[tuple[str, str], Path]:
    d = tmp_path_factory.mktemp("peer")
    return {(a, t): tiny.make_tiny(d / f"{a}-{t}.gguf", a, t) for a, t in
            [("qwen35", "f32"), ("qwen35moe", "f32"), ("qwen35", "f16"), ("qwen35", "q8_0")]}  # fmt: skip


def llama(path: Path, n_batch: int = 64, nextn: bool = False) -> llama_cpp.Llama:
    m = llama_cpp.Llama(model_path=str(path), n_ctx=128, n_batch=n_batch, n_ubatch=n_batch, logits_all=True,
                        type_k=GGML_TYPE_F32, type_v=GGML_TYPE_F32, n_threads=2, verbose=False)  # fmt: skip
    if nextn:
        llama_cpp_ext.llama_set_embeddings_nextn(m.ctx, True, False)
    return m


def llama_outputs(m: llama_cpp.Llama, tokens: list[int], nextn: bool = False) -> tuple[np.ndarray, np.ndarray | None]:
    """llama.cpp's logits (and h_nextn) for every token of a fresh sequence."""
    m.reset()
    m.eval(tokens)
    logits = np.array(m.scores[: len(tokens)], np.float32)
    if not nextn:
        return logits, None
    n_embd = m.n_embd()
    rows = [np.ctypeslib.as_array(llama_cpp_ext.llama_get_embeddings_nextn_ith(m.ctx, i), (n_embd,)).copy()
            for i in range(len(tokens))]  # fmt: skip
    return logits, np.array(rows)


# --------------------------------------------------------------------------------------------
# our side
# --------------------------------------------------------------------------------------------


def _state_leaf(ne: tuple[int, int], name: str) -> gr.Tensor:
    t = gr.new_weight(DType.F32, ne, np.zeros((ne[1], ne[0]), np.float32), name)
    t.flags &= ~gr.Flag.PARAM  # writable state, not a weight
    return t


def graph_outputs(path: Path, tokens: list[int]) -> tuple[np.ndarray, np.ndarray]:
    """Logits and h_nextn of one fresh sequence in one ubatch, from the trunk graph on the cpu
    reference: zero recurrent state in row 0, K/V in cells 0..n-1, a causal mask."""
    w = archs.load(path)
    hp = w.hp
    n = len(tokens)
    n_kv = -(-n // 32) * 32
    attn = [il for il in range(hp.n_layer_trunk) if not hp.is_recurrent(il)]
    recr = [il for il in range(hp.n_layer_trunk) if hp.is_recurrent(il)]
    state = StateTensors(
        k_l={il: _state_leaf((hp.n_embd_k_gqa, n_kv), f"cache_k_l{il}") for il in attn},
        v_l={il: _state_leaf((hp.n_embd_v_gqa, n_kv), f"cache_v_l{il}") for il in attn},
        r_l={il: _state_leaf(((hp.ssm_d_conv - 1) * hp.conv_channels, 1), f"cache_r_l{il}") for il in recr},
        s_l={il: _state_leaf((hp.S_v * hp.S_v * hp.H_v, 1), f"cache_s_l{il}") for il in recr},
    )
    res = archs.get(hp.arch).build_graph(w, UBatchShape(1, n, n, n_kv=n_kv), state, want_h_nextn=True)
    plan = gr.compile(res.graph, ["cpu"])
    mask = np.where(np.arange(n_kv)[None, :] <= np.arange(n)[:, None], 0.0, -np.inf)
    res.inputs.set(plan, pos=np.arange(n), tokens=np.array(tokens), kv_slots=np.arange(n), kq_mask=mask,
                   rs_src=np.array([0]), rs_dst=np.array([[0]]))  # fmt: skip
    plan.run()
    return plan.get(res.logits).reshape(n, -1).copy(), plan.get(res.h_nextn).reshape(n, -1).copy()


def our_logits(path: Path, tokens: list[int], n_ubatch: int = 64) -> np.ndarray:
    """Our logits for every token of a fresh sequence: through the Context when it exists."""
    if not HAVE_CONTEXT:
        return graph_outputs(path, tokens)[0]
    from graphir.models.batch import Batch
    from graphir.models.context import Context
    from graphir.models.model import Model

    ctx = Context(Model.load(path), n_ctx=128, n_batch=max(len(tokens), n_ubatch), n_ubatch=n_ubatch)
    return np.asarray(ctx.decode(Batch.simple(tokens, 0, 0, True)).logits, np.float32).reshape(len(tokens), -1)


# --------------------------------------------------------------------------------------------
# tests
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("key", [("qwen35", "f32"), ("qwen35moe", "f32"), ("qwen35", "f16")])
def test_llama_cpp_loads_the_tiny_models(models, key) -> None:
    m = llama(models[key])
    hp = tiny.tiny_hparams(key[0])
    assert m.metadata["general.architecture"] == key[0]
    assert (m.n_vocab(), m.n_embd()) == (hp.n_vocab, hp.n_embd) and m.n_ctx() >= 128  # llama.cpp pads n_ctx
    assert llama_cpp.llama_model_n_layer_nextn(m.model) == 1
    assert m.token_eos() == 2  # <|im_end|>
    assert load_with_mtp(models[key])


def load_with_mtp(path: Path) -> bool:
    """Whether llama.cpp loads the file with its MTP tensors (the Llama class skips them)."""
    params = llama_cpp.llama_model_default_params()
    if not hasattr(params, "load_mtp"):
        pytest.skip("this llama-cpp-python has no load_mtp model parameter")
    params.load_mtp = True
    model = llama_cpp.llama_model_load_from_file(str(path).encode(), params)
    if not model:
        return False
    llama_cpp.llama_model_free(model)
    return True


def test_llama_cpp_refuses_a_missing_mtp_tensor(tmp_path) -> None:
    """The load check has teeth: without blk.4.nextn.eh_proj llama.cpp refuses the MTP block."""
    c = tiny.tiny_contents()
    del c.tensors["blk.4.nextn.eh_proj.weight"]
    write_gguf(tmp_path / "no_eh_proj.gguf", c)
    assert not load_with_mtp(tmp_path / "no_eh_proj.gguf")


@pytest.mark.parametrize("text", TEXTS)
def test_tokenization_matches_llama_cpp(models, text) -> None:
    path = models[("qwen35", "f32")]
    ours = Tokenizer.from_gguf_fields(load_gguf(path).metadata)
    m = _vocab_only(path)
    for special in (True, False):
        ids = ours.encode(text, parse_special=special)
        assert m.tokenize(text.encode(), add_bos=False, special=special) == ids, special
        assert m.detokenize(ids, special=special) == ours.decode(ids, special=special).encode()


_VOCABS: dict[Path, llama_cpp.Llama] = {}


def _vocab_only(path: Path) -> llama_cpp.Llama:
    if path not in _VOCABS:
        _VOCABS[path] = llama_cpp.Llama(model_path=str(path), vocab_only=True, verbose=False)
    return _VOCABS[path]


@pytest.mark.parametrize(("key", "bound"), [(("qwen35", "f32"), 1e-5), (("qwen35moe", "f32"), 1e-5),
                                            (("qwen35", "f16"), 2e-3), (("qwen35", "q8_0"), 5e-4)])  # fmt: skip
def test_logits_match_llama_cpp(models, key, bound, record_property) -> None:
    path = models[key]
    tokens = Tokenizer.from_gguf_fields(load_gguf(path).metadata).encode(PROMPT)
    ref, _ = llama_outputs(llama(path), tokens)
    ours = our_logits(path, tokens)
    err = nmse(ours, ref)
    record_property("nmse", err)
    print(f"\n{key}: {len(tokens)} tokens, logits NMSE vs llama.cpp {err:.3g} (bound {bound:g})")
    assert ours.shape == ref.shape == (len(tokens), 512)
    assert err <= bound
    # the comparison has teeth: a shifted prompt is far off
    assert nmse(ours[1:], ref[:-1]) > 1e-2


def test_chunked_prefill_matches_one_shot(models) -> None:
    """llama.cpp in ubatches of 8 tokens (state carried across) against our logits (in ubatches of
    8 too when the Context is there, else one shot)."""
    path = models[("qwen35", "f32")]
    tokens = Tokenizer.from_gguf_fields(load_gguf(path).metadata).encode(PROMPT * 2)
    assert len(tokens) > 24
    ref, _ = llama_outputs(llama(path, n_batch=8), tokens)
    assert nmse(our_logits(path, tokens, n_ubatch=8), ref) <= 1e-5


@pytest.mark.skipif(llama_cpp_ext is None or not hasattr(llama_cpp_ext, "llama_get_embeddings_nextn_ith"),
                    reason="this llama-cpp-python exposes no embeddings_nextn")  # fmt: skip
@pytest.mark.parametrize("arch", ["qwen35", "qwen35moe"])
def test_h_nextn_matches_llama_cpp(models, arch) -> None:
    """The trunk's post-output-norm hidden state, which the MTP head reads."""
    path = models[(arch, "f32")]
    tokens = Tokenizer.from_gguf_fields(load_gguf(path).metadata).encode(PROMPT)
    ref_logits, ref_h = llama_outputs(llama(path, nextn=True), tokens, nextn=True)
    logits, h = graph_outputs(path, tokens)
    assert h.shape == ref_h.shape == (len(tokens), 128)
    assert nmse(h, ref_h) <= 1e-5 and nmse(logits, ref_logits) <= 1e-5


def test_shipped_model_matches_llama_cpp() -> None:
    """The trained model graphir ships (F16): llama.cpp loads it with its MTP block, tokenizes
    code as we do and computes the same logits (F16 weights on both sides)."""
    path = tiny.shipped_model_path()
    assert load_with_mtp(path)
    text = "import os\n\n\ndef main(argv):\n    for name in sorted(os.listdir('.')):\n        print(name)\n"
    tokens = Tokenizer.from_gguf_fields(load_gguf(path).metadata).encode(text)
    assert _vocab_only(path).tokenize(text.encode(), add_bos=False, special=True) == tokens
    ref, _ = llama_outputs(llama(path), tokens)
    ours = our_logits(path, tokens)
    assert ours.shape == ref.shape == (len(tokens), 1024)
    assert nmse(ours, ref) <= 2e-3 and nmse(ours[1:], ref[:-1]) > 1e-2
