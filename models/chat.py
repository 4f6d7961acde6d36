"""Chat templates: a GGUF's `tokenizer.chat_template` rendered with Jinja2, as llama.cpp's `--jinja` does.

    text = render_chat(template, [{"role": "user", "content": "hi"}], bos_token="", eos_token="<|im_end|>")

The template sees what llama.cpp's and Hugging Face's template engines pass it: `messages` (dicts with
"role" and "content"), `add_generation_prompt` (True: end with the opening of an assistant turn),
`bos_token`, `eos_token`, `tools` (None), and the helpers `raise_exception(msg)` and
`strftime_now(fmt)`. The environment is Jinja2's immutable sandbox (a template is data from a
file: it may not call into Python objects), with `trim_blocks` and `lstrip_blocks` on and the
`loopcontrols` extension (`{% break %}`), and a `tojson` filter that keeps non-ASCII text, as
Hugging Face's `apply_chat_template` sets it up.

A file without a template gets CHATML (`<|im_start|>role\\ncontent<|im_end|>\\n` per message),
the format of the Qwen family whose vocabulary carries those tokens.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from datetime import datetime
from functools import lru_cache
from typing import Any

TEMPLATE_KEY = "tokenizer.chat_template"

CHATML = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


class ChatTemplateError(ValueError):
    """A template that does not parse or fails while rendering (its `raise_exception` included)."""


def check_messages(messages: Any) -> list[dict[str, Any]]:
    """The messages as a list of dicts with string "role" and "content"; ValueError naming the bad one."""
    if isinstance(messages, str | bytes) or not isinstance(messages, Sequence):
        raise ValueError(f"[chat] messages must be a list of {{'role': ..., 'content': ...}} dicts, "
                         f"got {type(messages).__name__}")  # fmt: skip
    if not messages:
        raise ValueError("[chat] messages is empty")
    out = []
    for i, m in enumerate(messages):
        if not isinstance(m, Mapping):
            raise ValueError(f"[chat] messages[{i}] must be a dict with 'role' and 'content', got {type(m).__name__}")
        for key in ("role", "content"):
            if not isinstance(m.get(key), str):
                raise ValueError(f"[chat] messages[{i}][{key!r}] must be a string, got {m.get(key)!r}")
        out.append(dict(m))
    return out


def render_chat(template: str | None, messages: Any, *, add_generation_prompt: bool = True, bos_token: str = "",
                eos_token: str = "", **extra: Any) -> str:  # fmt: skip
    """The prompt text of `messages` under `template` (None: CHATML). Raises ValueError for bad
    messages and ChatTemplateError for a template that does not parse or fails."""
    messages = check_messages(messages)
    compiled = _compile(template if template is not None else CHATML)
    try:
        return compiled.render(messages=messages, add_generation_prompt=add_generation_prompt, bos_token=bos_token,
                               eos_token=eos_token, tools=extra.pop("tools", None), **extra)  # fmt: skip
    except ChatTemplateError:
        raise
    except Exception as e:  # noqa: BLE001 - any error inside the template is the template's
        raise ChatTemplateError(f"[chat] the chat template failed: {type(e).__name__}: {e}") from e


@lru_cache(maxsize=8)
def _compile(template: str) -> Any:
    import jinja2
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(message: str) -> None:
        raise ChatTemplateError(f"[chat] the chat template raised: {message}")

    def tojson(x: Any, ensure_ascii: bool = False, indent: int | None = None, separators: Any = None,
               sort_keys: bool = False) -> str:  # fmt: skip
        return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=["jinja2.ext.loopcontrols"])
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    try:
        return env.from_string(template)
    except jinja2.TemplateSyntaxError as e:
        raise ChatTemplateError(f"[chat] the chat template does not parse (line {e.lineno}): {e.message}") from e
