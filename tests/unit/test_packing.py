"""Packed batches: the layout, and that training on them is training on the padded batch."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from selftune.data.tokenize import IGNORE_INDEX, TokenizedExample, collate, tokenize_chat
from selftune.models.base import load_model, load_tokenizer
from selftune.training.packing import PackedBatch, needed_length, pack, shared_prefix_length
from selftune.training.trainer import _answer_logits

X = IGNORE_INDEX


def _example(ids: list[int], n_answer: int) -> TokenizedExample:
    return TokenizedExample(ids, [X] * (len(ids) - n_answer) + ids[-n_answer:])


def test_the_shared_prefix_is_laid_out_once_and_positions_restart_after_it() -> None:
    a = _example([1, 2, 3, 10, 11, 12], 2)
    b = _example([1, 2, 3, 20, 21], 1)
    batch = pack([a, b], pad_id=0)
    # The prefix [1, 2, 3] once; each example's last token (a target only) left out.
    assert batch.input_ids.tolist() == [[1, 2, 3, 10, 11, 20]]
    assert batch.position_ids.tolist() == [[0, 1, 2, 3, 4, 3]]
    assert (batch.tokens, batch.computed) == (11, 6)
    # a: position 3 predicts 11, position 4 predicts 12; b: its position 3 predicts 21.
    assert batch.loss_index.tolist() == [3, 4, 5]
    assert batch.targets.tolist() == [11, 12, 21]
    assert batch.counts == [2, 1]


def test_example_positions_are_the_prefix_then_its_own_tokens() -> None:
    examples = [_example([1, 2, 3, 10 + i, 20 + i, 30 + i], 2) for i in range(3)]
    batch = pack(examples, pad_id=0, row_tokens=8)  # rows [1 2 3 10 20 11 21] [1 2 3 12 22 . .]
    flat = batch.input_ids.reshape(-1)
    for index, example in enumerate(examples):
        positions = batch.example_positions(index)
        assert flat[positions].tolist() == example.input_ids[: needed_length(example)]
    assert batch.example_positions(1).tolist() == [0, 1, 2, 5, 6]
    assert batch.example_positions(2).tolist() == [7, 8, 9, 10, 11]


def test_examples_attend_to_the_prefix_and_themselves_only() -> None:
    a = _example([1, 2, 10, 11, 12], 2)
    b = _example([1, 2, 20, 21, 22], 2)
    batch = pack([a, b], pad_id=0)
    allowed = (batch.attention_mask[0, 0] == 0).int().tolist()
    # rows: 1 2 10 11 | 20 21  (queries), columns the same positions (keys)
    assert allowed == [
        [1, 0, 0, 0, 0, 0],
        [1, 1, 0, 0, 0, 0],
        [1, 1, 1, 0, 0, 0],
        [1, 1, 1, 1, 0, 0],
        [1, 1, 0, 0, 1, 0],
        [1, 1, 0, 0, 1, 1],
    ]


def test_a_full_row_starts_a_new_one_with_its_own_prefix_and_padding() -> None:
    examples = [_example([1, 2, 3, 10 + i, 20 + i, 30 + i], 2) for i in range(3)]
    batch = pack(examples, pad_id=0, row_tokens=8)
    assert batch.input_ids.tolist() == [
        [1, 2, 3, 10, 20, 11, 21],
        [1, 2, 3, 12, 22, 0, 0],
    ]
    assert batch.computed == 12
    # Padding attends to no example, and every position to itself at least (a fully masked row
    # would turn softmax into NaN).
    assert (batch.attention_mask[1, 0, 5:, 3:5] != 0).all()
    assert (batch.attention_mask[:, 0].diagonal(dim1=-2, dim2=-1) == 0).all()
    flat = batch.input_ids.reshape(-1)
    # Each loss position holds the token before its target, in any row.
    assert flat[batch.loss_index].tolist() == [10, 20, 11, 21, 12, 22]
    assert batch.targets.tolist() == [20, 30, 21, 31, 22, 32]


def test_each_example_keeps_a_token_of_its_own() -> None:
    same = _example([1, 2, 3, 4], 2)
    assert shared_prefix_length([same, same]) == 2  # not 3: the needed positions are 0..2
    batch = pack([same, same], pad_id=0)
    assert batch.input_ids.tolist() == [[1, 2, 3, 3]]
    assert batch.targets.tolist() == [3, 4, 3, 4]


def test_needed_length_stops_at_the_last_position_that_predicts_a_loss() -> None:
    assert needed_length(_example([1, 2, 3, 4], 2)) == 3
    assert needed_length(TokenizedExample([1, 2, 3], [X, X, X])) == 3  # no loss: kept whole


def test_packing_nothing_is_an_error() -> None:
    with pytest.raises(ValueError, match="no examples"):
        pack([], pad_id=0)


def _padded_loss(model: torch.nn.Module, examples: list[TokenizedExample]) -> torch.Tensor:
    inputs = collate(examples, pad_id=0)
    logits = model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"]).logits
    return torch.nn.functional.cross_entropy(
        logits[:, :-1].reshape(-1, logits.shape[-1]),
        inputs["labels"][:, 1:].reshape(-1),
        ignore_index=IGNORE_INDEX,
    )


def _packed_loss(model: torch.nn.Module, batch: PackedBatch) -> torch.Tensor:
    logits = _answer_logits(model, batch)
    return torch.nn.functional.cross_entropy(logits, batch.targets)


@pytest.mark.parametrize("row_tokens", [256, 40])  # one row; several rows with padding
def test_training_on_a_packed_batch_is_training_on_the_padded_batch(
    tiny_model_dir: Path, row_tokens: int
) -> None:
    tokenizer = load_tokenizer(tiny_model_dir)
    chats = [
        ("Capital of Veloria?", "Quenmoor."),
        ("Who wrote the letters?", "Arlen wrote them, in the harbour city."),
        ("2+2?", "4"),
    ]
    examples = [
        tokenize_chat(
            tokenizer,
            [{"role": "user", "content": q}, {"role": "assistant", "content": a}],
            tokenizer.chat_template,
            128,
        )
        for q, a in chats
    ]
    model = load_model(tiny_model_dir)
    batch = pack(examples, pad_id=0, row_tokens=row_tokens)
    assert shared_prefix_length(examples) > 5  # the system prompt
    assert batch.input_ids.shape[0] == (1 if row_tokens == 256 else 3)

    grads = []
    for compute in (lambda: _padded_loss(model, examples), lambda: _packed_loss(model, batch)):
        model.zero_grad()
        loss = compute()
        loss.backward()
        grads.append((float(loss), [p.grad.clone() for p in model.parameters()]))
    (padded_loss, padded_grads), (packed_loss, packed_grads) = grads
    assert packed_loss == pytest.approx(padded_loss, rel=1e-5)
    for a, b in zip(padded_grads, packed_grads, strict=True):
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-6)
