"""`graphir generate`: run a GGUF model on a prompt and stream the continuation.

Defaults to the shipped trained tiny model (models/data/tiny-qwen35-py.gguf, see models/tiny.py). Prints the
text to stdout as it is generated and the timing (prefill and decode tokens/s) to stderr, or with --json
the statistics as one JSON object. The prompt comes from --prompt TEXT, --prompt - (stdin) or --file PATH;
--chat runs an interactive chat through the model's chat template. Everything runs through the facade
(`graphir.load`, models/facade.py), so the text is what `LLM.generate` gives for the same options.
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from graphir.models.facade import LLM

DEFAULT_PROMPT = "def main():"


def add_generate_args(p: argparse.ArgumentParser) -> None:
    src = p.add_mutually_exclusive_group()
    src.add_argument("--prompt", "-p", help=f"text to continue ('-': read it from stdin; default {DEFAULT_PROMPT!r})")
    src.add_argument("--file", "-f", metavar="PATH", help="read the prompt from this file (UTF-8)")
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
    p.add_argument("--stop", action="append", metavar="TEXT", help="end before this text (repeatable)")
    p.add_argument("--json", nargs="?", const="-", metavar="FILE",
                   help="the statistics as one JSON object on stderr (instead of the timing lines), or into FILE")  # fmt: skip
    p.add_argument("--chat", action="store_true",
                   help="chat: each line you type is a user turn, rendered with the model's chat template; "
                        "Ctrl-C ends a reply, Ctrl-D quits (without a terminal: one turn per stdin line)")  # fmt: skip
    p.add_argument("--system", metavar="TEXT", help="--chat: a system message first")
    p.add_argument("--quiet", "-q", action="store_true", help="no timing lines or progress bars on stderr")
    p.add_argument("--spec", choices=["mtp"], help="self-speculative decoding with the model's MTP head")
    p.add_argument("--draft-max", type=int, default=1,
                   help="--spec: the most drafts per round (default 1: measured fastest on the shipped model)")  # fmt: skip
    p.add_argument("--p-min", type=float, default=0.0,
                   help="--spec: stop drafting when a draft's probability under the sampler is below this "
                        "(default 0: measured fastest on the shipped model)")  # fmt: skip
    p.add_argument("--spec-accept", choices=["coupled", "textbook"], default="coupled",
                   help="--spec: coupled (default: the same text as without --spec for the seed) or textbook "
                        "(accept with min(1, p/q), resample from the residual: more drafts accepted, the same "
                        "distribution, other text)")  # fmt: skip
    p.add_argument("--spec-fixed", action="store_true",
                   help="--spec: draft in every round (default: a policy measures rounds with and without "
                        "drafts and runs the cheaper per token, so --spec is never much slower than plain; "
                        "coupled acceptance only)")  # fmt: skip


def read_prompt(args: argparse.Namespace) -> str:
    """The prompt of --prompt TEXT, --prompt - (stdin) or --file PATH (default DEFAULT_PROMPT)."""
    if args.file is not None:
        try:
            with open(args.file, encoding="utf-8") as f:
                return f.read()
        except UnicodeDecodeError as e:
            raise ValueError(f"--file {args.file}: not UTF-8 text ({e.reason} at byte {e.start})") from e
    if args.prompt == "-":
        return sys.stdin.read()
    return DEFAULT_PROMPT if args.prompt is None else args.prompt


def load_llm(args: argparse.Namespace) -> LLM:
    """graphir.load with the command's options; its warnings (e.g. --ctx-size past the model's trained
    context length) become 'graphir generate: warning: ...' lines."""
    from graphir.models.facade import load

    for name in ("n_predict", "ctx_size", "ubatch", "draft_max"):
        if getattr(args, name) < (0 if name == "n_predict" else 1):
            raise ValueError(f"--{name.replace('_', '-')} must be >= {0 if name == 'n_predict' else 1}, "
                             f"got {getattr(args, name)}")  # fmt: skip
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        llm = load(args.model, args.backend, n_ctx=args.ctx_size, n_threads=args.threads, spec=args.spec,
                   draft_max=args.draft_max, n_ubatch=args.ubatch, p_min=args.p_min,
                   spec_adaptive=not args.spec_fixed)  # fmt: skip
    for w in caught:
        print(f"graphir generate: warning: {str(w.message).removeprefix('[load] ')}", file=sys.stderr)
    if llm.generator is not None:
        llm.generator.accept = args.spec_accept  # a choice of argparse: one of speculative.ACCEPT
    return llm


def sampling(args: argparse.Namespace) -> dict[str, Any]:
    """The generate/chat keyword arguments of the sampling options."""
    return dict(temperature=0.0 if args.greedy else args.temp, top_k=args.top_k, top_p=args.top_p, seed=args.seed,
                stop=args.stop)  # fmt: skip


def run_generate(args: argparse.Namespace) -> int:
    """Stream a continuation of the prompt (through graphir.load, models/facade.py); returns 0, or raises
    ValueError & co. for bad input (the CLI prints them, exit status 2)."""
    prompt = None if args.chat else read_prompt(args)
    llm = load_llm(args)
    if args.chat:
        return run_chat(llm, args)
    ids = llm.tokenize(prompt)
    if not ids:
        raise ValueError("the prompt encodes to no tokens")
    if len(ids) + args.n_predict > args.ctx_size:
        raise ValueError(f"prompt ({len(ids)} tokens) + --n-predict {args.n_predict} exceed --ctx-size {args.ctx_size}")
    out = sys.stdout
    out.write(prompt)
    out.flush()
    for piece in llm.generate(ids, max_tokens=args.n_predict, stream=True, **sampling(args)):
        out.write(piece)
        out.flush()
    out.write("\n")
    out.flush()
    report(llm, args)
    return 0


def report(llm: LLM, args: argparse.Namespace) -> None:
    """The statistics of the last generation: timing lines on stderr (unless --quiet), or --json."""
    st = llm.last_stats
    if args.json is not None:
        record = {"model": llm.model.path, "backends": llm.context.backends, "spec": args.spec, **st.as_dict()}
        text = json.dumps(record)
        if args.json == "-":
            print(text, file=sys.stderr)
            return
        with open(args.json, "w") as f:
            f.write(text + "\n")
    if args.quiet:
        return
    print(f"\n[graphir] {llm.model.path}", file=sys.stderr)
    if llm.generator is not None:
        print(f"[graphir] prefill: {st.n_prompt} tokens in {st.t_prefill:.3f} s; spec {args.spec}: "
              f"{llm.generator.stats.summary()}", file=sys.stderr)  # fmt: skip
        if llm.generator.policy is not None and args.spec_accept == "coupled":
            print(f"[graphir] spec policy: {llm.generator.policy.summary()}", file=sys.stderr)
        return
    print(f"[graphir] prefill: {st.n_prompt} tokens in {st.t_prefill:.3f} s ({st.prefill_tokens_per_s:.1f} tok/s); "
          f"decode: {st.n_generated} tokens in {st.t_generate:.3f} s ({st.tokens_per_s:.1f} tok/s)",
          file=sys.stderr)  # fmt: skip


def run_chat(llm: LLM, args: argparse.Namespace) -> int:
    """The --chat loop: read a user turn, stream the reply, keep the history (the oldest turns are
    dropped when it no longer fits --ctx-size). On a terminal Ctrl-C ends the reply being written
    (or clears the line being typed) and Ctrl-D quits; without one, each stdin line is a turn."""
    tty = sys.stdin.isatty()
    history = [{"role": "system", "content": args.system}] if args.system else []
    if tty:
        print(f"[graphir] chat with {llm.model.path}: Enter sends, Ctrl-C ends a reply, Ctrl-D quits",
              file=sys.stderr)  # fmt: skip
    while True:
        try:
            line = input("> ") if tty else sys.stdin.readline()
        except EOFError:
            print(file=sys.stderr)
            return 0
        except KeyboardInterrupt:
            print(file=sys.stderr)
            continue
        if not tty and not line:
            return 0
        if not line.strip():
            continue
        history.append({"role": "user", "content": line.rstrip("\n")})
        _fit(llm, history, args.n_predict)
        reply: list[str] = []
        try:
            for piece in llm.chat(history, max_tokens=args.n_predict, stream=True, **sampling(args)):
                sys.stdout.write(piece)
                sys.stdout.flush()
                reply.append(piece)
        except KeyboardInterrupt:
            if not tty:
                raise
            sys.stdout.write(" [stopped]")
        sys.stdout.write("\n")
        sys.stdout.flush()
        history.append({"role": "assistant", "content": "".join(reply)})


def _fit(llm: LLM, history: list[dict[str, str]], n_predict: int) -> None:
    """Drop the oldest turns (never the system message or the newest turn) until the rendered history
    and n_predict tokens fit the context."""
    first = 1 if history[0]["role"] == "system" else 0
    while len(llm.tokenize(llm.apply_chat_template(history))) + n_predict > llm.n_ctx:
        if len(history) - first <= 1:
            raise ValueError(f"the message does not fit --ctx-size {llm.n_ctx} with --n-predict {n_predict}")
        del history[first]
