"""`graphir generate`: run a GGUF model on a prompt and stream the continuation.

Defaults to the shipped trained tiny model (models/data/tiny-qwen35-py.gguf, see models/tiny.py). Prints the
text to stdout as it is generated and the timing (prefill and decode tokens/s) to stderr.
"""

from __future__ import annotations

import argparse
import sys
import time


def add_generate_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--prompt", "-p", default="def main():", help="text to continue")
    p.add_argument("--model", "-m", help="GGUF file (default: the shipped trained tiny qwen35 model)")
    p.add_argument("--n-predict", "-n", type=int, default=64, help="tokens to generate (default 64)")
    p.add_argument("--ctx-size", "-c", type=int, default=512, help="context size in tokens (default 512)")
    p.add_argument("--ubatch", type=int, default=128, help="tokens per compute step (default 128)")
    p.add_argument("--backend", "-b", action="append", help="backend(s) in priority order (default cpu)")
    p.add_argument("--threads", "-t", type=int, default=None,
                   help="cpu threads (default: the CPUs this process may use)")  # fmt: skip
    p.add_argument("--greedy", action="store_true", help="argmax decoding (overrides the sampling options)")
    p.add_argument("--temp", type=float, default=0.8, help="temperature (default 0.8; <= 0 is greedy)")
    p.add_argument("--top-k", type=int, default=40, help="top-k cut (default 40; 0 = off)")
    p.add_argument("--top-p", type=float, default=0.95, help="nucleus cut (default 0.95; 1 = off)")
    p.add_argument("--seed", type=int, default=0, help="sampler seed (default 0)")
    p.add_argument("--quiet", "-q", action="store_true", help="no timing lines on stderr")
    p.add_argument("--spec", choices=["mtp"], help="self-speculative decoding with the model's MTP head")
    p.add_argument("--draft-max", type=int, default=3, help="--spec: the most drafts per round (default 3)")
    p.add_argument("--p-min", type=float, default=0.0, help="--spec: stop drafting below this probability")


def run_generate(args: argparse.Namespace) -> int:
    """Stream a continuation of args.prompt; returns 0, or 2 with a message on bad input."""
    from graphir.models.batch import Batch
    from graphir.models.context import Context
    from graphir.models.model import Model
    from graphir.models.sampling import Sampler, SamplerConfig

    if args.n_predict < 0:
        raise ValueError(f"--n-predict must be >= 0, got {args.n_predict}")
    sampler = Sampler(SamplerConfig(greedy=args.greedy, temperature=args.temp, top_k=args.top_k,
                                    top_p=args.top_p, seed=args.seed))  # fmt: skip
    if args.model is None:
        from graphir.models.tiny import default_model_path

        args.model = str(default_model_path())
    model = Model.load(args.model)
    tok = model.tokenizer
    prompt = tok.encode(args.prompt)
    if not prompt:
        raise ValueError("the prompt encodes to no tokens")
    if len(prompt) + args.n_predict > args.ctx_size:
        raise ValueError(
            f"prompt ({len(prompt)} tokens) + --n-predict {args.n_predict} exceed --ctx-size {args.ctx_size}"
        )
    n_ubatch = min(args.ubatch, args.ctx_size)
    if args.spec:
        return _run_spec(args, model, prompt, sampler, n_ubatch)
    ctx = Context(model, n_ctx=args.ctx_size, n_batch=max(len(prompt), n_ubatch), n_ubatch=n_ubatch,
                  backends=tuple(args.backend or ["cpu"]), n_threads=args.threads)  # fmt: skip

    t0 = time.perf_counter()
    logits = ctx.decode(Batch.simple(prompt, 0)).logits[-1]
    t_prefill = time.perf_counter() - t0
    sys.stdout.write(args.prompt)
    sys.stdout.flush()
    stream = tok.stream()
    n_gen, pos = 0, len(prompt)
    t1 = time.perf_counter()
    for _ in range(args.n_predict):
        tid = sampler.sample(logits, pos)  # coupled draws: the token of position pos, sequence 0
        if tok.is_eog(tid):
            break
        sys.stdout.write(stream.push(tid))
        sys.stdout.flush()
        n_gen += 1
        if n_gen == args.n_predict:
            break
        logits = ctx.decode(Batch.simple([tid], pos)).logits[-1]
        pos += 1
    t_decode = time.perf_counter() - t1
    sys.stdout.write(stream.flush() + "\n")
    if not args.quiet:
        print(f"\n[graphir] {args.model}", file=sys.stderr)
        print(f"[graphir] prefill: {len(prompt)} tokens in {t_prefill:.3f} s ({len(prompt) / t_prefill:.1f} tok/s); "
              f"decode: {n_gen} tokens in {t_decode:.3f} s ({n_gen / max(t_decode, 1e-9):.1f} tok/s)",
              file=sys.stderr)  # fmt: skip
    return 0


def _run_spec(args: argparse.Namespace, model, prompt: list[int], sampler, n_ubatch: int) -> int:
    """--spec mtp: the same streaming output through models.speculative.Generator, then its stats."""
    from graphir.models.speculative import Generator

    gen = Generator(model, spec=args.spec, draft_max=args.draft_max, p_min=args.p_min, sampler=sampler,
                    n_ctx=args.ctx_size, n_ubatch=n_ubatch, backends=tuple(args.backend or ["cpu"]),
                    n_threads=args.threads)  # fmt: skip
    tok = model.tokenizer
    sys.stdout.write(args.prompt)
    sys.stdout.flush()
    stream = tok.stream()
    for tid in gen.generate(prompt, args.n_predict, stop_at_eog=True):
        if tok.is_eog(tid):
            break
        sys.stdout.write(stream.push(tid))
        sys.stdout.flush()
    sys.stdout.write(stream.flush() + "\n")
    st = gen.stats
    if not args.quiet:
        print(f"\n[graphir] {args.model}", file=sys.stderr)
        print(f"[graphir] prefill: {st.n_prompt} tokens in {st.t_prompt:.3f} s; spec {args.spec}: {st.summary()}",
              file=sys.stderr)  # fmt: skip
    return 0
