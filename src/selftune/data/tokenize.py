"""Chats to token ids with a loss mask: only the final assistant turn is learned.

The prompt (everything before the final answer, rendered with the generation prompt) and the
full chat are rendered with the same template as serving. The answer's tokens, including the
end-of-turn token the template puts after it, carry the loss; a template whose rendered prompt
is not a prefix of the rendered chat is refused, because training on it would teach a format
that serving never produces.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Protocol

from selftune.models.templates import render_chat

if TYPE_CHECKING:
    import torch

__all__ = [
    "IGNORE_INDEX",
    "LabelledTokens",
    "TemplateMismatch",
    "TokenizedExample",
    "answer_positions",
    "collate",
    "first_answer_tokens",
    "tokenize_chat",
]

IGNORE_INDEX = -100


class TemplateMismatch(ValueError):
    """The chat template renders the prompt differently inside the full conversation."""


class LabelledTokens(Protocol):
    """What a loss is taken on: token ids, and a label per position that is either the token
    to learn there or :data:`IGNORE_INDEX` (no loss)."""

    @property
    def input_ids(self) -> Sequence[int]: ...

    @property
    def labels(self) -> Sequence[int]: ...


@dataclasses.dataclass(frozen=True)
class TokenizedExample:
    input_ids: list[int]
    labels: list[int]  # IGNORE_INDEX where no loss is taken

    @property
    def n_loss_tokens(self) -> int:
        return sum(1 for label in self.labels if label != IGNORE_INDEX)


def answer_positions(example: LabelledTokens) -> list[int]:
    """The positions whose next token is an answer token (position t predicts token t + 1)."""
    labels = list(example.labels)
    return [t for t in range(len(labels) - 1) if labels[t + 1] != IGNORE_INDEX]


def collate(examples: Sequence[LabelledTokens], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-pad to the longest example. Returns input_ids, attention_mask, labels: (B, T)."""
    import torch

    longest = max(len(e.input_ids) for e in examples)
    ids = torch.full((len(examples), longest), pad_id, dtype=torch.long)
    labels = torch.full((len(examples), longest), IGNORE_INDEX, dtype=torch.long)
    mask = torch.zeros((len(examples), longest), dtype=torch.long)
    for row, example in enumerate(examples):
        n = len(example.input_ids)
        ids[row, :n] = torch.tensor(list(example.input_ids))
        labels[row, :n] = torch.tensor(list(example.labels))
        mask[row, :n] = 1
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def tokenize_chat(
    tokenizer: Any, messages: list[dict[str, str]], template: str, max_len: int
) -> TokenizedExample:
    if not messages or messages[-1]["role"] != "assistant":
        raise ValueError("a training chat must end with the assistant turn to learn")
    prompt = render_chat(tokenizer, messages[:-1], template, add_generation_prompt=True)
    full = render_chat(tokenizer, messages, template, add_generation_prompt=False)
    if not full.startswith(prompt):
        raise TemplateMismatch(
            "the chat template renders the prompt differently from the start of the full chat; "
            "pick a template whose generation prompt matches its assistant turns"
        )
    answer = full[len(prompt) :]
    prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    answer_ids = tokenizer(answer, add_special_tokens=False)["input_ids"]
    answer_ids = _through_end_of_turn(tokenizer, answer_ids)
    # Keep the whole answer; cut the prompt from the left if the pair is too long.
    room = max_len - len(answer_ids)
    if room <= 0:
        prompt_ids, answer_ids = [], answer_ids[:max_len]
    elif len(prompt_ids) > room:
        prompt_ids = prompt_ids[-room:]
    return TokenizedExample(
        input_ids=prompt_ids + answer_ids,
        labels=[IGNORE_INDEX] * len(prompt_ids) + answer_ids,
    )


def _through_end_of_turn(tokenizer: Any, ids: list[int]) -> list[int]:
    """Drop what the template adds after the answer's end-of-turn token (e.g. a newline)."""
    eos = tokenizer.eos_token_id
    if eos is not None and eos in ids:
        return ids[: ids.index(eos) + 1]
    return ids


def first_answer_tokens(example: TokenizedExample, n: int) -> TokenizedExample:
    """The example cut after the first ``n`` tokens of its answer (the loss-carrying part)."""
    for start, label in enumerate(example.labels):
        if label != IGNORE_INDEX:
            return TokenizedExample(example.input_ids[: start + n], example.labels[: start + n])
    return example
