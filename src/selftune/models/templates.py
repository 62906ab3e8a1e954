"""Chat templates: the tokenizer's own, a named preset, or a Jinja string given by the user.

The same rendering serves training and inference, so a model is always trained on the exact
prompt format it is served with.
"""

from __future__ import annotations

from typing import Any

__all__ = ["PRESETS", "render_chat", "resolve_template"]

_CHATML = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)

# Llama-2 chat: the system prompt lives inside the first [INST] block.
_LLAMA2 = (
    "{% if messages and messages[0]['role'] == 'system' %}"
    "{% set system = '<<SYS>>\\n' + messages[0]['content'] + '\\n<</SYS>>\\n\\n' %}"
    "{% set messages = messages[1:] %}"
    "{% else %}{% set system = '' %}{% endif %}"
    "{% for message in messages %}"
    "{% if message['role'] == 'user' %}"
    "{{ bos_token + '[INST] ' + (system if loop.first else '') + message['content'] + ' [/INST]' }}"
    "{% elif message['role'] == 'assistant' %}"
    "{{ ' ' + message['content'] + ' ' + eos_token }}"
    "{% endif %}"
    "{% endfor %}"
)

_ZEPHYR = (
    "{% for message in messages %}"
    "{{ '<|' + message['role'] + '|>\\n' + message['content'] + eos_token + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\\n' }}{% endif %}"
)

PRESETS: dict[str, str] = {"chatml": _CHATML, "llama2": _LLAMA2, "zephyr": _ZEPHYR}


def resolve_template(override: str | None, tokenizer_template: str | None) -> str:
    """The Jinja template to use: a preset name or Jinja string wins over the tokenizer's."""
    if override:
        if override in PRESETS:
            return PRESETS[override]
        if "{" not in override:
            raise ValueError(
                f"unknown chat template preset {override!r}; use one of {sorted(PRESETS)} "
                "or a Jinja template string"
            )
        return override
    if not tokenizer_template:
        return _CHATML
    return tokenizer_template


def render_chat(
    tokenizer: Any,
    messages: list[dict[str, str]],
    template: str,
    *,
    add_generation_prompt: bool,
) -> str:
    """Render messages to prompt text with the given template (no tokenization)."""
    text = tokenizer.apply_chat_template(
        messages,
        chat_template=template,
        tokenize=False,
        add_generation_prompt=add_generation_prompt,
    )
    assert isinstance(text, str)
    return text
