"""An ollama ``Modelfile`` for an exported GGUF, with the chat template in ollama's syntax.

ollama does not run Jinja: its ``TEMPLATE`` is a Go ``text/template`` over ``.Messages``. Rather
than translate arbitrary Jinja, this module knows a few chat formats (ChatML, Llama-2, Zephyr: the
presets of :mod:`selftune.models.templates`), each as a Go template plus a Python renderer that
produces the same text. A Jinja template is taken to be one of them only if it renders a set of
probe conversations exactly as that renderer does, so a Modelfile never carries a template that
formats chats differently from selftune; anything else is refused.

A default system prompt (SmolLM2's template adds "You are a helpful AI assistant named SmolLM,
trained by Hugging Face" when a chat has no system message) becomes the ``SYSTEM`` line: ollama
puts it in front of every chat whose first message is not a system message, which is what the
Jinja template does. ollama, like llama.cpp, prepends BOS by itself only where the GGUF's
``tokenizer.ggml.add_bos_token`` says so (SmolLM2: it does not).
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Sequence
from typing import Any

__all__ = [
    "SUPPORTED_FORMATS",
    "ChatFormat",
    "ModelfileError",
    "detect_chat_format",
    "ollama_modelfile",
    "render_modelfile",
]

Messages = Sequence[dict[str, str]]


class ModelfileError(ValueError):
    """No ollama template can be written for this chat template; the message says why."""


@dataclasses.dataclass(frozen=True)
class ChatFormat:
    """A chat format in ollama's terms."""

    name: str
    go_template: str
    stop: tuple[str, ...]  # end-of-turn markers: generation stops at any of them
    system: str | None = None  # the default system prompt, when the template has one


@dataclasses.dataclass(frozen=True)
class _Format:
    name: str
    # (bos, eos) -> the Go template; its Python twin renders what ollama would send the model.
    go_template: Callable[[str, str], str]
    render: Callable[[Messages, str, str], str]
    stop: Callable[[str, str], tuple[str, ...]]


# --- ChatML -------------------------------------------------------------------------------------
# ollama collects system messages into .System but also keeps them in .Messages, in place, which
# is where the Jinja template puts them too.
_CHATML_GO = """{{- range .Messages }}<|im_start|>{{ .Role }}
{{ .Content }}<|im_end|>
{{ end }}<|im_start|>assistant
"""


def _chatml(messages: Messages, bos: str, eos: str) -> str:
    turns = "".join(f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n" for m in messages)
    return turns + "<|im_start|>assistant\n"


# --- Llama-2 ------------------------------------------------------------------------------------
# A leading system message goes into the first [INST] block (only if a user message comes right
# after it, as in the Jinja preset); other system messages are dropped, as there.
_LLAMA2_GO = """{{- $first := 0 }}{{ $hasSystem := false }}{{ $system := "" }}
{{- if and .Messages (eq (index .Messages 0).Role "system") }}
{{- $first = 1 }}{{ $hasSystem = true }}{{ $system = (index .Messages 0).Content }}
{{- end }}
{{- range $i, $m := .Messages }}
{{- if eq $m.Role "user" }}BOS[INST] {{ if and $hasSystem (eq $i $first) }}<<SYS>>
{{ $system }}
<</SYS>>

{{ end }}{{ $m.Content }} [/INST]
{{- else if eq $m.Role "assistant" }} {{ $m.Content }} EOS
{{- end }}
{{- end }}"""


def _llama2(messages: Messages, bos: str, eos: str) -> str:
    system = None
    if messages and messages[0]["role"] == "system":
        system, messages = messages[0]["content"], messages[1:]
    parts = []
    for i, message in enumerate(messages):
        if message["role"] == "user":
            block = f"<<SYS>>\n{system}\n<</SYS>>\n\n" if system is not None and i == 0 else ""
            parts.append(f"{bos}[INST] {block}{message['content']} [/INST]")
        elif message["role"] == "assistant":
            parts.append(f" {message['content']} {eos}")
    return "".join(parts)


# --- Zephyr -------------------------------------------------------------------------------------
_ZEPHYR_GO = """{{- range .Messages }}<|{{ .Role }}|>
{{ .Content }}EOS
{{ end }}<|assistant|>
"""


def _zephyr(messages: Messages, bos: str, eos: str) -> str:
    turns = "".join(f"<|{m['role']}|>\n{m['content']}{eos}\n" for m in messages)
    return turns + "<|assistant|>\n"


def _with_tokens(go_template: str) -> Callable[[str, str], str]:
    # BOS/EOS are the model's own token text (SmolLM2's EOS is <|im_end|>, not </s>).
    return lambda bos, eos: go_template.replace("BOS", bos).replace("EOS", eos)


_FORMATS = (
    _Format(
        "chatml",
        _with_tokens(_CHATML_GO),
        _chatml,
        lambda bos, eos: ("<|im_end|>", "<|im_start|>", eos),
    ),
    _Format(
        "llama2",
        _with_tokens(_LLAMA2_GO),
        _llama2,
        lambda bos, eos: ("[INST]", "[/INST]", "<<SYS>>", "<</SYS>>", eos),
    ),
    _Format(
        "zephyr",
        _with_tokens(_ZEPHYR_GO),
        _zephyr,
        lambda bos, eos: (eos, "<|user|>", "<|system|>"),
    ),
)
SUPPORTED_FORMATS = tuple(f.name for f in _FORMATS)

# Conversations a template must render exactly as a format's renderer does to count as that
# format: with and without a system message, several turns, a newline inside a message.
_PROBE_USER = "What is the capital of France?"
_PROBES: tuple[Messages, ...] = (
    ({"role": "user", "content": _PROBE_USER},),
    ({"role": "system", "content": "Answer in one word."}, {"role": "user", "content": "Hi"}),
    (
        {"role": "user", "content": "2+2?"},
        {"role": "assistant", "content": "4"},
        {"role": "user", "content": "And 3+3?\nBe brief."},
    ),
    (
        {"role": "system", "content": "Be exact."},
        {"role": "user", "content": "a"},
        {"role": "assistant", "content": "b"},
        {"role": "user", "content": "c"},
    ),
)


def detect_chat_format(jinja_template: str, *, bos_token: str, eos_token: str) -> ChatFormat:
    """The supported format that ``jinja_template`` renders identically, or :class:`ModelfileError`.

    ChatML-style templates (``<|im_start|>`` markers) may add a default system prompt; it is
    recognized and returned as ``system``.
    """
    chatml_system = _chatml_default_system(jinja_template, bos_token, eos_token)
    for fmt in _FORMATS:
        system = chatml_system if fmt.name == "chatml" else None
        if _renders_like(fmt, jinja_template, system, bos_token, eos_token):
            stop = tuple(dict.fromkeys(s for s in fmt.stop(bos_token, eos_token) if s))
            return ChatFormat(fmt.name, fmt.go_template(bos_token, eos_token), stop, system)
    kind = "a ChatML-style" if "<|im_start|>" in jinja_template else "this"
    raise ModelfileError(
        f"cannot write an ollama template for {kind} chat template: it formats chats unlike "
        f"every supported format ({', '.join(SUPPORTED_FORMATS)}). Train with one of those "
        "presets (chat_template setting), or write the Modelfile's TEMPLATE by hand."
    )


def render_modelfile(model_file: str, chat_format: ChatFormat) -> str:
    """The Modelfile text: ``FROM ./<model_file>``, TEMPLATE, stop parameters, SYSTEM if any."""
    lines = [
        f"# ollama Modelfile written by selftune ({chat_format.name} chat format).",
        "# Create the model with: ollama create <name> -f Modelfile (in this folder)",
        f"FROM ./{model_file}",
        f'TEMPLATE """{_checked(chat_format.go_template)}"""',
    ]
    for stop in chat_format.stop:
        lines.append(f'PARAMETER stop "{_checked(stop, single_quoted=True)}"')
    if chat_format.system is not None:
        lines.append(f'SYSTEM """{_checked(chat_format.system)}"""')
    return "\n".join(lines) + "\n"


def ollama_modelfile(
    model_file: str, jinja_template: str, *, bos_token: str, eos_token: str
) -> str:
    """The Modelfile for ``model_file`` chatting with ``jinja_template``; see the module doc."""
    chat_format = detect_chat_format(jinja_template, bos_token=bos_token, eos_token=eos_token)
    return render_modelfile(model_file, chat_format)


def _chatml_default_system(template: str, bos: str, eos: str) -> str | None:
    """The system prompt a ChatML template adds to a chat without one, if it adds one."""
    try:
        text = _render_jinja(template, [{"role": "user", "content": _PROBE_USER}], bos, eos)
    except Exception:
        return None
    match = re.match(r"<\|im_start\|>system\n(.*?)<\|im_end\|>\n<\|im_start\|>user\n", text, re.S)
    return match.group(1) if match else None


def _renders_like(fmt: _Format, template: str, system: str | None, bos: str, eos: str) -> bool:
    for messages in _PROBES:
        try:
            expected = _render_jinja(template, messages, bos, eos)
        except Exception:  # a template that refuses a probe (roles must alternate, ...) is unknown
            return False
        if fmt.render(_as_ollama_sends(messages, system), bos, eos) != expected:
            return False
    return True


def _as_ollama_sends(messages: Messages, system: str | None) -> Messages:
    """ollama puts the Modelfile's SYSTEM first when a chat does not start with a system message."""
    if system is not None and (not messages or messages[0]["role"] != "system"):
        return [{"role": "system", "content": system}, *messages]
    return messages


def _render_jinja(template: str, messages: Messages, bos: str, eos: str) -> str:
    """Render as transformers' ``apply_chat_template`` does (same environment options)."""
    from jinja2.ext import loopcontrols
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(message: str) -> Any:
        raise ValueError(message)

    env = ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols]
    )
    env.globals["raise_exception"] = raise_exception
    return env.from_string(template).render(
        messages=list(messages), bos_token=bos, eos_token=eos, add_generation_prompt=True
    )


def _checked(value: str, *, single_quoted: bool = False) -> str:
    """ollama's Modelfile has no escapes: a value must not contain its own closing quotes."""
    if '"""' in value or (single_quoted and ('"' in value or "\n" in value)):
        raise ModelfileError(f"{value!r} cannot be quoted in a Modelfile")
    return value
