"""The one-import API: `graphir.load()` returns an `LLM` that generates, chats, tokenizes and scores.

    import graphir
    llm = graphir.load()                                   # the shipped tiny model; or load("model.gguf")
    print(llm.generate("def main():", max_tokens=32, seed=1))
    for piece in llm.generate("import os", stream=True):
        print(piece, end="", flush=True)
    print(llm.chat([{"role": "user", "content": "Write a loop"}], max_tokens=32))

It is a thin layer over the low-level API, which stays at hand as `llm.model` (a `Model`) and
`llm.context` (the `Context` it decodes with): `generate` is the loop of `Context.decode` +
`Sampler.sample(logits, pos)` (or, with `spec="mtp"`, `Generator.generate`), so the text for a
seed is the same as the low-level API's, with or without MTP (coupled draws: models/sampling.py).

One `LLM` runs one generation at a time (its context holds one sequence); every call starts from a
fresh sequence, so an interrupted or failed call (Ctrl-C, an error) leaves it ready for the next.
"""

from __future__ import annotations

import os
import time
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from graphir import progress

from .argcheck import int_array, is_int, show
from .batch import Batch
from .chat import TEMPLATE_KEY, render_chat
from .context import Context
from .model import Model
from .sampling import Sampler, SamplerConfig

_BIG_FILE = 256 << 20  # a load bar only for files this large (small ones load in well under a second)


@dataclass
class GenerationStats:
    """What the last `generate` / `chat` call did.

    Attributes:
        n_prompt: prompt tokens; n_generated: tokens generated (the end-of-generation token not counted).
        t_prefill: seconds to decode the prompt; t_generate: seconds from then to the last token.
        stop_reason: "length" (max_tokens), "eog" (an end-of-generation token), "stop" (a stop
            string), or "interrupted" (the caller stopped early: Ctrl-C, a closed stream).
        spec: the speculative decoding counters (`SpecStats.summary()`), when spec="mtp".
    """

    n_prompt: int = 0
    n_generated: int = 0
    t_prefill: float = 0.0
    t_generate: float = 0.0
    stop_reason: str = "interrupted"
    spec: dict[str, Any] = field(default_factory=dict)

    @property
    def prefill_tokens_per_s(self) -> float:
        return self.n_prompt / self.t_prefill if self.t_prefill > 0 else 0.0

    @property
    def tokens_per_s(self) -> float:
        return self.n_generated / self.t_generate if self.t_generate > 0 else 0.0

    def as_dict(self) -> dict[str, Any]:
        """Every figure, for `graphir generate --json`."""
        return {"n_prompt": self.n_prompt, "n_generated": self.n_generated, "t_prefill": self.t_prefill,
                "t_generate": self.t_generate, "prefill_tokens_per_s": self.prefill_tokens_per_s,
                "tokens_per_s": self.tokens_per_s, "stop_reason": self.stop_reason, **self.spec}  # fmt: skip


def load(path: str | os.PathLike[str] | None = None, backend: str | Sequence[str] | None = None, n_ctx: int = 2048,
         n_threads: int | None = None, spec: str | None = None, draft_max: int = 1, *, n_ubatch: int = 128,
         p_min: float = 0.0, type_k: str = "f16", type_v: str = "f16", spec_adaptive: bool = True) -> LLM:  # fmt: skip
    """Load a GGUF model and make a context for it.

    Args:
        path: a Qwen3.5 GGUF file; None: the shipped tiny model (models/data/tiny-qwen35-py.gguf).
        backend: a backend name or names in priority order ("cpu", "ref", "opencl", "vulkan");
            None: "cpu".
        n_ctx: context size in tokens (prompt + generated). A warning when it exceeds the model's
            trained context length (`context_length`).
        n_threads: cpu threads (None: the CPUs this process may use).
        spec: None, or "mtp" for self-speculative decoding with the model's MTP head (the same
            text, faster when drafts are accepted).
        draft_max: spec="mtp": the most drafts per round (default 1: measured fastest on the shipped model,
            as `graphir generate --spec mtp`).
        n_ubatch: tokens per graph run (prompts are decoded in pieces of this size).
        p_min: spec="mtp": stop drafting when a draft's probability is below this.
        spec_adaptive: spec="mtp": speculate only in the rounds a policy measured cheaper than plain
            ones (default; `speculative.SpecPolicy`: the text is the same either way); False: every
            round drafts.
        type_k, type_v: KV cache types, "f16" or "f32".
    Raises:
        GGUFError (a ValueError) for a file that is not a valid model, FileNotFoundError for a
        missing shipped model, ValueError for bad sizes or options, BackendUnavailable.

    Example:
        >>> import graphir
        >>> llm = graphir.load(n_ctx=256)
        >>> llm.detokenize(llm.tokenize("x = 1"))
        'x = 1'
    """
    return LLM(path, backend, n_ctx, n_threads, spec, draft_max, n_ubatch=n_ubatch, p_min=p_min, type_k=type_k,
               type_v=type_v, spec_adaptive=spec_adaptive)  # fmt: skip


class LLM:
    """A loaded model with its context: `generate`, `chat`, `tokenize`, `detokenize`, `logits`.
    Made by `graphir.load` (same arguments)."""

    def __init__(self, path: str | os.PathLike[str] | None = None, backend: str | Sequence[str] | None = None,
                 n_ctx: int = 2048, n_threads: int | None = None, spec: str | None = None, draft_max: int = 1, *,
                 n_ubatch: int = 128, p_min: float = 0.0, type_k: str = "f16", type_v: str = "f16",
                 spec_adaptive: bool = True) -> None:  # fmt: skip
        if spec not in (None, "mtp"):
            raise ValueError(f"[load] spec must be None or 'mtp', got {spec!r}")
        for name, v in (("n_ctx", n_ctx), ("n_ubatch", n_ubatch), ("draft_max", draft_max)):
            if isinstance(v, bool) or not isinstance(v, int | np.integer) or v < 1:
                raise ValueError(f"[load] {name} must be an integer >= 1, got {v!r}")
        backends = _backends(backend)
        if path is None:
            from .tiny import shipped_model_path

            path = shipped_model_path()
        path = os.fspath(path)
        big = os.path.isfile(path) and os.path.getsize(path) >= _BIG_FILE
        with progress.bar(total=2, desc="load model", unit="step", show=big) as bar:
            self.model = Model.load(path)
            bar.update(1)
            bar.set_description("compile context")
            if n_ctx > self.model.hp.n_ctx_train:
                warnings.warn(f"[load] n_ctx={n_ctx} exceeds the model's trained context length "
                              f"({self.model.hp.n_ctx_train}); quality may drop past it", stacklevel=3)  # fmt: skip
            self.n_ctx, self.spec = int(n_ctx), spec
            n_ubatch = min(int(n_ubatch), self.n_ctx)
            if spec == "mtp":
                from .speculative import Generator

                self._gen = Generator(self.model, spec=spec, draft_max=draft_max, p_min=p_min, n_ctx=self.n_ctx,
                                      n_ubatch=n_ubatch, backends=backends, type_k=type_k, type_v=type_v,
                                      n_threads=n_threads, adaptive=spec_adaptive)  # fmt: skip
                self.context: Context = self._gen.target
            else:
                self._gen = None
                self.context = Context(self.model, n_ctx=self.n_ctx, n_batch=self.n_ctx, n_ubatch=n_ubatch,
                                       backends=backends, type_k=type_k, type_v=type_v, n_threads=n_threads)  # fmt: skip
            bar.update(1)
        self.tokenizer = self.model.tokenizer
        self.last_stats = GenerationStats()
        self._busy = False

    @property
    def generator(self) -> Any:
        """The `Generator` (models/speculative.py) that runs spec="mtp" (its `stats` are the last
        call's drafting counters); None without spec."""
        return self._gen

    # ---- text <-> tokens ----------------------------------------------------------------------
    def tokenize(self, text: str, add_special: bool = True, parse_special: bool = True) -> list[int]:
        """Token ids of `text`. add_special: BOS/EOS where the vocabulary asks for them (Qwen: none);
        parse_special: special tokens written in the text (`<|im_start|>`) become their ids.

        >>> llm.tokenize("<|im_end|>")
        [2]
        """
        if not isinstance(text, str):
            raise TypeError(f"[tokenize] text must be a str, got {type(text).__name__}")
        return self.tokenizer.encode(text, add_special=add_special, parse_special=parse_special)

    def detokenize(self, ids: Sequence[int], special: bool = True) -> str:
        """The text of token ids (special tokens as their text unless special=False)."""
        return self.tokenizer.decode([int(t) for t in ids], special=special)

    @property
    def chat_template(self) -> str | None:
        """The GGUF's `tokenizer.chat_template`, None when the file has none (chat then uses ChatML)."""
        t = self.model.weights.file.metadata.get(TEMPLATE_KEY)
        return t if isinstance(t, str) and t else None

    def apply_chat_template(self, messages: Sequence[dict[str, str]], add_generation_prompt: bool = True) -> str:
        """The prompt text `chat` generates from: the messages rendered by the chat template."""
        tok = self.tokenizer
        bos = tok.tokens[tok.bos_id] if tok.bos_id is not None else ""
        eos = tok.tokens[tok.eos_id] if tok.eos_id is not None else ""
        return render_chat(self.chat_template, messages, add_generation_prompt=add_generation_prompt,
                           bos_token=bos, eos_token=eos)  # fmt: skip

    # ---- scoring ------------------------------------------------------------------------------
    def logits(self, ids: Sequence[int]) -> np.ndarray:
        """float32 (len(ids), n_vocab): the logits after each token of `ids`, decoded as a fresh
        sequence from position 0 (row i predicts token i + 1)."""
        ids = self._ids(ids, "logits")
        self._start()
        try:
            self.context.clear()
            return self.context.decode(Batch.simple(ids, 0, all_outputs=True)).logits
        finally:
            self._busy = False

    # ---- generation ---------------------------------------------------------------------------
    def generate(self, prompt: str | Sequence[int], max_tokens: int = 64, temperature: float = 0.8, top_k: int = 40,
                 top_p: float = 0.95, seed: int = 0, stop: str | Sequence[str] | None = None,
                 stream: bool = False) -> str | Iterator[str]:  # fmt: skip
        """The continuation of `prompt` (text, or token ids): at most max_tokens tokens, ending early at an
        end-of-generation token or before the first stop string (not included).

        Sampling: temperature <= 0 is greedy; otherwise top-k, then top-p, then a draw at the
        temperature that is a function of (seed, position): the same seed gives the same text.
        stream=True returns an iterator of text pieces as they are generated (stop strings are held
        back until they can no longer match). `last_stats` says how it went.

        >>> text = llm.generate("def add(a, b):", max_tokens=16, seed=1)
        >>> "".join(llm.generate("def add(a, b):", max_tokens=16, seed=1, stream=True)) == text
        True
        """
        ids = self._ids(self.tokenize(prompt) if isinstance(prompt, str) else prompt, "generate")
        cfg = _sampler_config(temperature, top_k, top_p, seed)
        stops = _stops(stop)
        if isinstance(max_tokens, bool) or not isinstance(max_tokens, int | np.integer) or max_tokens < 0:
            raise ValueError(f"[generate] max_tokens must be an integer >= 0, got {max_tokens!r}")
        if len(ids) >= self.n_ctx:
            raise ValueError(f"[generate] the prompt ({len(ids)} tokens) leaves no room to generate in "
                             f"n_ctx={self.n_ctx}")  # fmt: skip
        n = min(int(max_tokens), self.n_ctx - len(ids))  # as llama-cpp-python: the room left caps max_tokens
        pieces = self._pieces(ids, n, Sampler(cfg), stops)
        return pieces if stream else "".join(pieces)

    def chat(self, messages: Sequence[dict[str, str]], max_tokens: int = 64, temperature: float = 0.8,
             top_k: int = 40, top_p: float = 0.95, seed: int = 0, stop: str | Sequence[str] | None = None,
             stream: bool = False) -> str | Iterator[str]:  # fmt: skip
        """The assistant's reply to `messages` (`[{"role": "user", "content": "..."}, ...]`): the
        messages rendered through the GGUF's chat template (ChatML when it has none), then
        `generate` with the same options; the reply ends at the end-of-turn token.

        >>> history = [{"role": "system", "content": "You write Python."}, {"role": "user", "content": "A loop"}]
        >>> reply = llm.chat(history, max_tokens=32)
        >>> history.append({"role": "assistant", "content": reply})
        """
        text = self.apply_chat_template(messages)
        bos = self.tokenizer.bos_id
        lead_bos = bos is not None and text.startswith(self.tokenizer.tokens[bos])
        ids = self.tokenizer.encode(text, add_special=not lead_bos, parse_special=True)
        return self.generate(ids, max_tokens, temperature, top_k, top_p, seed, stop, stream)

    # ---- internals ----------------------------------------------------------------------------
    def _start(self) -> None:
        if self._busy:
            raise RuntimeError("[llm] a generation is still running: finish or close its stream first "
                               "(one LLM runs one generation at a time; load another for concurrent work)")  # fmt: skip
        self._busy = True

    def _ids(self, ids: Sequence[int], where: str) -> list[int]:
        if isinstance(ids, str | bytes) or not isinstance(ids, Sequence | np.ndarray):
            raise TypeError(f"[{where}] expected a str or a sequence of token ids, got {type(ids).__name__}")
        if not isinstance(ids, np.ndarray):  # element by element: numpy would turn [True, 5] into ints
            bad = next((i for i, t in enumerate(ids) if not is_int(t)), None)
            if bad is not None:
                raise ValueError(f"[{where}] token ids must be integers, got ids[{bad}] = {show(ids[bad])}")
        out = int_array(where, "token ids", ids).tolist()
        if not out:
            raise ValueError(f"[{where}] the prompt is empty (no tokens)")
        bad = next((t for t in out if not 0 <= t < self.model.n_vocab), None)
        if bad is not None:
            raise ValueError(f"[{where}] token id {bad} is out of range for a vocabulary of {self.model.n_vocab}")
        if len(out) > self.n_ctx:
            raise ValueError(f"[{where}] the prompt ({len(out)} tokens) does not fit n_ctx={self.n_ctx}")
        return out

    def _pieces(self, ids: list[int], n: int, sampler: Sampler, stops: list[str]) -> Iterator[str]:
        """Text pieces of the generation; keeps last_stats and releases the LLM when done or closed."""
        self._start()  # NOTE: here, not in generate: a stream never iterated never holds the LLM
        st = self.last_stats = GenerationStats(n_prompt=len(ids))
        dec, held = self.tokenizer.stream(), _StopFilter(stops)
        try:
            for tid in self._tokens(ids, n, sampler, st):
                text, hit = held.push(dec.push(tid))
                if text:
                    yield text
                if hit:
                    st.stop_reason = "stop"
                    return
            text, hit = held.push(dec.flush())
            if hit:
                st.stop_reason = "stop"
            if text := text + ("" if hit else held.flush()):
                yield text
        finally:
            self._busy = False

    def _tokens(self, ids: list[int], n: int, sampler: Sampler, st: GenerationStats) -> Iterator[int]:
        """Generated token ids (the end-of-generation token not yielded); fills st's counts and times."""
        is_eog = self.tokenizer.is_eog
        st.stop_reason = "length"
        if n == 0:
            return
        if self._gen is not None:
            self._gen.sampler = sampler
            try:
                for tid in self._gen.generate(ids, n, stop_at_eog=True):
                    if is_eog(tid):
                        st.stop_reason = "eog"
                        return
                    st.n_generated += 1
                    yield tid
            finally:
                gs = self._gen.stats
                st.t_prefill, st.t_generate = gs.t_prompt, gs.t_generate
                st.spec = {"rounds": gs.rounds, "plain_rounds": gs.plain_rounds, "drafted": gs.drafted,
                           "accepted": gs.accepted,
                           "acceptance_rate": gs.acceptance_rate, "acceptance_at": gs.acceptance_at}  # fmt: skip
            return
        ctx = self.context
        ctx.clear()
        t0 = time.perf_counter()
        logits = self._prefill(ids)
        t1 = time.perf_counter()
        st.t_prefill, pos = t1 - t0, len(ids)
        try:
            for i in range(n):
                tid = sampler.sample(logits, pos)  # coupled draws: the token of position pos, sequence 0
                if is_eog(tid):
                    st.stop_reason = "eog"
                    return
                st.n_generated += 1
                yield tid
                if i + 1 == n:
                    return
                logits = ctx.decode(Batch.simple([tid], pos)).logits[-1]
                pos += 1
        finally:
            st.t_generate = time.perf_counter() - t1

    def _prefill(self, ids: list[int]) -> np.ndarray:
        """Decode the prompt; the logits of its last token. A long prompt goes in n_ubatch pieces
        under a progress bar: the same ubatches decode() would make, so the same numbers."""
        ctx, step = self.context, self.context.n_ubatch
        if len(ids) <= 2 * step or not progress.enabled():
            return ctx.decode(Batch.simple(ids, 0)).logits[-1]
        with progress.bar(total=len(ids), desc="prefill", unit="tok") as bar:
            for p0 in range(0, len(ids), step):
                out = ctx.decode(Batch.simple(ids[p0 : p0 + step], p0))
                bar.update(min(step, len(ids) - p0))
        return out.logits[-1]

    def __repr__(self) -> str:
        spec = f", spec={self.spec!r}" if self.spec else ""
        return f"LLM({self.model.path!r}, n_ctx={self.n_ctx}, backends={self.context.backends}{spec})"


class _StopFilter:
    """Holds back streamed text that could still become a stop string; reports the first hit."""

    def __init__(self, stops: list[str]) -> None:
        self.stops, self.buf = stops, ""

    def push(self, text: str) -> tuple[str, bool]:
        """(text safe to emit, whether a stop string was found: then text ends just before it)."""
        if not self.stops:
            return text, False
        self.buf += text
        hits = [i for i in (self.buf.find(s) for s in self.stops) if i >= 0]
        if hits:
            out, self.buf = self.buf[: min(hits)], ""
            return out, True
        keep = max((k for s in self.stops for k in range(1, len(s)) if self.buf.endswith(s[:k])), default=0)
        out, self.buf = self.buf[: len(self.buf) - keep], self.buf[len(self.buf) - keep :]
        return out, False

    def flush(self) -> str:
        out, self.buf = self.buf, ""
        return out


def _backends(backend: str | Sequence[str] | None) -> tuple[str, ...]:
    if backend is None:
        return ("cpu",)
    if isinstance(backend, str):
        return (backend,)
    if not all(isinstance(b, str) for b in backend) or not backend:
        raise ValueError(f"[load] backend must be a name or a list of names, got {backend!r}")
    return tuple(backend)


def _sampler_config(temperature: float, top_k: int, top_p: float, seed: int) -> SamplerConfig:
    for name, v, kind in (("temperature", temperature, (int, float, np.number)), ("top_p", top_p, (int, float, np.number)),
                          ("top_k", top_k, (int, np.integer)), ("seed", seed, (int, np.integer))):  # fmt: skip
        if isinstance(v, bool) or not isinstance(v, kind):
            raise TypeError(f"[generate] {name} must be a number, got {v!r}")
    if seed < 0:
        raise ValueError(f"[generate] seed must be >= 0, got {seed}")
    try:
        return SamplerConfig(greedy=temperature <= 0, temperature=float(temperature), top_k=int(top_k),
                             top_p=float(top_p), seed=int(seed))  # fmt: skip
    except ValueError as e:
        raise ValueError(str(e).replace("[sampler]", "[generate]")) from e


def _stops(stop: str | Sequence[str] | None) -> list[str]:
    if stop is None:
        return []
    stops = [stop] if isinstance(stop, str) else list(stop)
    if not all(isinstance(s, str) and s for s in stops):
        raise ValueError(f"[generate] stop must be a non-empty string or a list of them, got {stop!r}")
    return stops
