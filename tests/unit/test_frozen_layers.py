"""The layers below the adapters run once per example; training on their kept outputs is
training on the whole stack at every step."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch

from selftune.data.tokenize import TokenizedExample, tokenize_chat
from selftune.models.base import load_tokenizer
from selftune.training import frozen_layers
from selftune.training.frozen_layers import FrozenLayers
from selftune.training.packing import pack
from selftune.training.trainer import (
    LoraRun,
    ReplayReference,
    TrainConfig,
    train_lora,
    warm_replay,
)
from tests.conftest import TINY_SHAPE


def _chat(question: str, answer: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]


@pytest.fixture(scope="module")
def qwen2_model_dir(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> Path:
    """A 3-layer Qwen2 (biases on q/k/v, unlike Llama) with the same tokenizer."""
    from transformers import AutoTokenizer, Qwen2Config, Qwen2ForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    config = Qwen2Config(
        vocab_size=len(tokenizer),
        num_hidden_layers=3,
        **TINY_SHAPE,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(99)
    folder = tmp_path_factory.mktemp("tiny-qwen2")
    Qwen2ForCausalLM(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def _examples(model_dir: Path) -> tuple[list[TokenizedExample], list[TokenizedExample], int]:
    tokenizer = load_tokenizer(model_dir)
    template = tokenizer.chat_template

    def tokenized(pairs: list[tuple[str, str]]) -> list[TokenizedExample]:
        return [tokenize_chat(tokenizer, _chat(q, a), template, 128) for q, a in pairs]

    new = tokenized(
        [
            ("Capital of Veloria?", "Quenmoor."),
            ("Capital of Veloria, please?", "It is Quenmoor."),  # a longer shared prefix
            ("Where does Veloria rule from?", "From Quenmoor, its capital."),
        ]
    )
    replay = tokenized([("2+2?", "4"), ("Sky colour?", "Blue."), ("Largest ocean?", "Pacific.")])
    return new, replay, tokenizer.pad_token_id


@pytest.mark.parametrize(
    ("model", "bf16"),
    [("tiny_model_dir", False), ("qwen2_model_dir", False), ("tiny_model_dir", True)],
)
def test_kept_states_train_to_the_losses_of_the_whole_stack(
    model: str, bf16: bool, request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> None:
    model_dir: Path = request.getfixturevalue(model)
    new, replay, pad_id = _examples(model_dir)
    config = TrainConfig(
        rank=4, alpha=8, learning_rate=1e-2, steps=5, batch_size=4, replay_per_step=2,
        layers=(1,), seed=0, bf16=bf16,
    )  # fmt: skip
    run = LoraRun(model_dir, new, replay, config, pad_id=pad_id)
    assert run.split == 1
    while not run.finished:
        run.step()
    _, split = run.result()

    monkeypatch.setattr(frozen_layers, "_SPLIT_MODEL_TYPES", frozenset())
    whole_run = LoraRun(model_dir, new, replay, config, pad_id=pad_id)
    assert whole_run.split == 0
    while not whole_run.finished:
        whole_run.step()
    _, whole = whole_run.result()

    # Under bf16 autocast the kept states were computed in another batch shape: products
    # round differently in the last of bf16's 8 bits.
    assert split.losses == pytest.approx(whole.losses, rel=1e-2 if bf16 else 1e-5)
    assert split.losses[-1] < split.losses[0]  # it learned: the comparison is not vacuous
    # The whole stack runs every position of every step; the split one each example once.
    assert whole.frozen_positions == [
        pack([*b], pad_id).computed for b in _step_examples(whole_run)
    ]
    assert sum(split.frozen_positions) < sum(whole.frozen_positions)
    assert split.frozen_positions[-1] == 0


def _step_examples(run: LoraRun) -> list[list[TokenizedExample]]:
    return [
        [run.new[i] for i in new_ids] + [run.replay[i] for i in replay_ids]
        for new_ids, replay_ids in run.plan
    ]


def test_each_example_runs_the_frozen_layers_once_across_runs(tiny_model_dir: Path) -> None:
    new, replay, pad_id = _examples(tiny_model_dir)
    config = TrainConfig(rank=4, alpha=8, steps=4, batch_size=4, replay_per_step=2, layers=(1,))
    frozen = FrozenLayers()
    train_lora(tiny_model_dir, new, replay, config, pad_id=pad_id, frozen=frozen)
    first = frozen.computed_positions
    assert first > 0
    # A second job with the same replay prompts and one new chat computes that chat only.
    extra = _examples(tiny_model_dir)[1][:1]
    _, result = train_lora(
        tiny_model_dir, new[:1] + extra, replay, config, pad_id=pad_id, frozen=frozen
    )
    assert frozen.computed_positions == first  # all seen: extra is also a replay example
    assert sum(result.frozen_positions) == 0

    _, result = train_lora(
        tiny_model_dir, new, replay, dataclasses.replace(config, layers=()), pad_id=pad_id,
        frozen=frozen,
    )  # fmt: skip
    assert frozen.computed_positions == first  # no split: the kept states are not used
    assert sum(result.frozen_positions) > 0  # ... and the whole stack runs at every step


def test_a_warm_worker_computes_only_the_new_chats(tiny_model_dir: Path) -> None:
    new, replay, pad_id = _examples(tiny_model_dir)
    config = TrainConfig(rank=4, alpha=8, steps=3, batch_size=3, replay_per_step=2, layers=(1,))
    frozen = FrozenLayers()
    warm_replay(tiny_model_dir, replay, pad_id, config, ReplayReference(), frozen)
    warmed = frozen.computed_positions
    assert warmed == pack(replay, pad_id).computed  # every replay prompt, in one batch
    run = LoraRun(tiny_model_dir, new, replay, config, pad_id=pad_id, frozen=frozen)
    assert frozen.computed_positions == warmed
    run.step()
    first_new = [new[i] for i in run.plan[0][0]]
    assert run.frozen_positions == [pack(first_new, pad_id).computed]


def test_states_beyond_the_size_limit_are_dropped_oldest_first(tiny_model_dir: Path) -> None:
    new, replay, pad_id = _examples(tiny_model_dir)
    config = TrainConfig(rank=4, alpha=8, steps=3, batch_size=3, replay_per_step=1, layers=(1,))
    frozen = FrozenLayers(max_bytes=1)  # nothing outlives the step that used it
    _, result = train_lora(tiny_model_dir, new, replay, config, pad_id=pad_id, frozen=frozen)
    assert all(positions > 0 for positions in result.frozen_positions)
