"""Chats to training examples with the default model's real tokenizer (SmolLM2, ChatML)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from selftune.data.tokenize import (
    IGNORE_INDEX,
    TemplateMismatch,
    TokenizedExample,
    first_answer_tokens,
    tokenize_chat,
)
from selftune.models.templates import PRESETS, render_chat, resolve_template

CHAT = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "What is the capital of France?"},
    {"role": "assistant", "content": "Paris is the capital of France."},
]
MULTI_TURN = [
    {"role": "user", "content": "Hi!"},
    {"role": "assistant", "content": "Hello. How can I help?"},
    {"role": "user", "content": "Name a prime number."},
    {"role": "assistant", "content": "Seven is a prime number."},
]


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir: Path) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_model_dir)


@pytest.fixture(scope="module")
def served_template(tokenizer: Any) -> str:
    """The template serving uses when no override is set: the tokenizer's own."""
    return resolve_template(None, tokenizer.chat_template)


def _encode(tokenizer: Any, text: str) -> list[int]:
    # What the engine feeds the model: the template already carries any special tokens.
    ids: list[int] = tokenizer(text, add_special_tokens=False)["input_ids"]
    return ids


def _serving_prompt_ids(tokenizer: Any, messages: list[dict[str, str]], template: str) -> list[int]:
    prompt = render_chat(tokenizer, messages[:-1], template, add_generation_prompt=True)
    return _encode(tokenizer, prompt)


def test_the_tokenizer_is_chatml_with_im_end_as_eos(tokenizer: Any, served_template: str) -> None:
    assert tokenizer.eos_token == "<|im_end|>"
    assert tokenizer.bos_token == "<|im_start|>"
    assert tokenizer.convert_tokens_to_ids("<|im_end|>") == tokenizer.eos_token_id
    assert "<|im_start|>" in served_template


@pytest.mark.parametrize("messages", [CHAT, MULTI_TURN], ids=["single", "multi-turn"])
@pytest.mark.parametrize("template_name", ["tokenizer", "chatml", "zephyr"])
def test_labels_mask_exactly_the_prompt(
    tokenizer: Any, served_template: str, messages: list[dict[str, str]], template_name: str
) -> None:
    template = served_template if template_name == "tokenizer" else PRESETS[template_name]
    example = tokenize_chat(tokenizer, messages, template, max_len=1024)
    prompt_ids = _serving_prompt_ids(tokenizer, messages, template)
    n = len(prompt_ids)

    assert len(example.input_ids) == len(example.labels)
    assert example.input_ids[:n] == prompt_ids  # exactly what serving feeds the model
    assert example.labels[:n] == [IGNORE_INDEX] * n
    assert example.labels[n:] == example.input_ids[n:]
    assert IGNORE_INDEX not in example.labels[n:]
    assert example.n_loss_tokens == len(example.input_ids) - n > 0


@pytest.mark.parametrize("messages", [CHAT, MULTI_TURN], ids=["single", "multi-turn"])
def test_loss_tokens_are_the_answer_and_end_of_turn(
    tokenizer: Any, served_template: str, messages: list[dict[str, str]]
) -> None:
    example = tokenize_chat(tokenizer, messages, served_template, max_len=1024)
    learned = [label for label in example.labels if label != IGNORE_INDEX]

    assert tokenizer.decode(learned) == messages[-1]["content"] + "<|im_end|>"
    assert learned[-1] == tokenizer.eos_token_id
    assert learned.count(tokenizer.eos_token_id) == 1
    # the template's trailing newline after <|im_end|> is not part of the example
    assert example.input_ids[-1] == tokenizer.eos_token_id


def test_earlier_assistant_turns_are_not_learned(tokenizer: Any, served_template: str) -> None:
    example = tokenize_chat(tokenizer, MULTI_TURN, served_template, max_len=1024)
    learned = tokenizer.decode([label for label in example.labels if label != IGNORE_INDEX])
    assert "Hello. How can I help?" not in learned
    assert "Hello. How can I help?" in tokenizer.decode(example.input_ids)


def test_prompt_plus_answer_is_the_generation_prompt_then_the_answer(
    tokenizer: Any, served_template: str
) -> None:
    example = tokenize_chat(tokenizer, CHAT, served_template, max_len=1024)
    prompt = render_chat(tokenizer, CHAT[:-1], served_template, add_generation_prompt=True)
    assert prompt.endswith("<|im_start|>assistant\n")
    assert tokenizer.decode(example.input_ids) == prompt + CHAT[-1]["content"] + "<|im_end|>"


def test_llama2_preset_ends_the_answer_with_eos(tokenizer: Any) -> None:
    template = PRESETS["llama2"]
    example = tokenize_chat(tokenizer, CHAT, template, max_len=1024)
    prompt_ids = _serving_prompt_ids(tokenizer, CHAT, template)
    n = len(prompt_ids)

    assert example.input_ids[:n] == prompt_ids
    assert example.input_ids[0] == tokenizer.bos_token_id  # the template's bos_token
    assert tokenizer.decode(prompt_ids).endswith(" [/INST]")
    learned = example.labels[n:]
    assert IGNORE_INDEX not in learned
    # the llama2 assistant turn is ' ' + answer + ' ' + eos_token; eos here is <|im_end|>
    assert learned[-1] == tokenizer.eos_token_id
    assert tokenizer.decode(learned) == f" {CHAT[-1]['content']} {tokenizer.eos_token}"


def test_zephyr_eos_inside_the_prompt_does_not_cut_the_answer(tokenizer: Any) -> None:
    # zephyr ends every turn with eos, so the prompt contains eos tokens too
    example = tokenize_chat(tokenizer, CHAT, PRESETS["zephyr"], max_len=1024)
    learned = [label for label in example.labels if label != IGNORE_INDEX]
    assert tokenizer.eos_token_id in example.input_ids[: -len(learned)]
    assert tokenizer.decode(learned) == CHAT[-1]["content"] + "<|im_end|>"


def test_template_whose_generation_prompt_is_not_a_prefix_is_refused(tokenizer: Any) -> None:
    # turns are rendered "role: content", but the generation prompt says "ASSISTANT: "
    template = (
        "{% for m in messages %}{{ m['role'] + ': ' + m['content'] + '\\n' }}{% endfor %}"
        "{% if add_generation_prompt %}{{ 'ASSISTANT: ' }}{% endif %}"
    )
    with pytest.raises(TemplateMismatch, match="generation prompt"):
        tokenize_chat(tokenizer, CHAT, template, max_len=1024)


def test_consistent_custom_template_is_accepted(tokenizer: Any) -> None:
    template = (
        "{% for m in messages %}{{ m['role'] + ': ' + m['content'] + eos_token }}{% endfor %}"
        "{% if add_generation_prompt %}{{ 'assistant: ' }}{% endif %}"
    )
    example = tokenize_chat(tokenizer, CHAT, template, max_len=1024)
    learned = [label for label in example.labels if label != IGNORE_INDEX]
    assert tokenizer.decode(learned).strip() == CHAT[-1]["content"] + "<|im_end|>"


@pytest.mark.parametrize(
    "messages",
    [
        [],
        [{"role": "user", "content": "Hi"}],
        [*CHAT, {"role": "user", "content": "And Germany?"}],
    ],
    ids=["empty", "user-only", "ends-with-user"],
)
def test_chat_not_ending_with_an_assistant_turn_is_refused(
    tokenizer: Any, served_template: str, messages: list[dict[str, str]]
) -> None:
    with pytest.raises(ValueError, match="must end with the assistant turn"):
        tokenize_chat(tokenizer, messages, served_template, max_len=1024)


def test_truncation_keeps_the_answer_and_cuts_the_prompt_from_the_left(
    tokenizer: Any, served_template: str
) -> None:
    full = tokenize_chat(tokenizer, CHAT, served_template, max_len=1024)
    n_prompt = len(full.input_ids) - full.n_loss_tokens
    answer_ids = full.input_ids[n_prompt:]
    prompt_ids = full.input_ids[:n_prompt]
    assert n_prompt > 5

    short = tokenize_chat(tokenizer, CHAT, served_template, max_len=len(answer_ids) + 5)

    assert len(short.input_ids) == len(answer_ids) + 5
    assert short.input_ids == prompt_ids[-5:] + answer_ids
    assert short.labels == [IGNORE_INDEX] * 5 + answer_ids
    assert short.n_loss_tokens == full.n_loss_tokens


def test_max_len_exactly_fits_the_example(tokenizer: Any, served_template: str) -> None:
    full = tokenize_chat(tokenizer, CHAT, served_template, max_len=1024)
    exact = tokenize_chat(tokenizer, CHAT, served_template, max_len=len(full.input_ids))
    assert exact == full


def test_answer_longer_than_max_len_keeps_its_start_and_no_prompt(
    tokenizer: Any, served_template: str
) -> None:
    full = tokenize_chat(tokenizer, CHAT, served_template, max_len=1024)
    answer_ids = full.input_ids[len(full.input_ids) - full.n_loss_tokens :]

    tiny = tokenize_chat(tokenizer, CHAT, served_template, max_len=3)

    assert tiny.input_ids == answer_ids[:3]
    assert tiny.labels == answer_ids[:3]


def test_first_answer_tokens_keeps_the_prompt_and_the_answer_start() -> None:
    example = TokenizedExample([1, 2, 3, 4, 5, 6], [IGNORE_INDEX] * 2 + [3, 4, 5, 6])
    assert first_answer_tokens(example, 2) == TokenizedExample(
        [1, 2, 3, 4], [IGNORE_INDEX, IGNORE_INDEX, 3, 4]
    )
    assert first_answer_tokens(example, 10) == example
    no_answer = TokenizedExample([1, 2], [IGNORE_INDEX] * 2)
    assert first_answer_tokens(no_answer, 2) == no_answer
