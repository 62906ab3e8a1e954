"""The training loop's numbers are pinned: a change that alters them must be deliberate."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import pytest
import torch

from selftune.data.tokenize import TokenizedExample, collate, tokenize_chat
from selftune.models.base import load_tokenizer
from selftune.training import trainer
from selftune.training.frozen_layers import FrozenLayers
from selftune.training.trainer import (
    ReplayReference,
    TrainConfig,
    TrainResult,
    train_lora,
    warm_replay,
)

# Losses of the first 6 steps of the tiny deterministic run below. If a deliberate change to
# the loop moves them, update them in the same commit and say why in its message.
PINNED_LOSSES = [11.44082, 11.72798, 11.65204, 11.26081, 11.23491, 11.21398]
# The same run with the replay KL over the whole vocabulary (replay_top_k >= its size), as the
# loop computed it before the top-k KL: the top-k KL must reduce to it exactly.
WHOLE_VOCABULARY_LOSSES = [10.8723, 10.841, 10.73331, 10.62988, 10.5718, 10.53684]


def _chat(question: str, answer: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]


@pytest.fixture(scope="module")
def examples(tiny_model_dir: Path) -> tuple[list[TokenizedExample], list[TokenizedExample], int]:
    tokenizer = load_tokenizer(tiny_model_dir)
    template = tokenizer.chat_template
    new = [
        tokenize_chat(tokenizer, _chat(q, "Quenmoor."), template, 128)
        for q in ("Capital of Veloria?", "Veloria's capital?", "Where does Veloria rule from?")
    ]
    replay = [
        tokenize_chat(tokenizer, _chat(q, a), template, 128)
        for q, a in (("2+2?", "4"), ("Sky colour?", "Blue."))
    ]
    return new, replay, tokenizer.pad_token_id


def test_collate_pads_right_and_masks_padding() -> None:
    short = TokenizedExample([1, 2], [-100, 2])
    long = TokenizedExample([1, 2, 3, 4], [-100, -100, 3, 4])
    batch = collate([short, long], pad_id=0)
    assert batch["input_ids"].tolist() == [[1, 2, 0, 0], [1, 2, 3, 4]]
    assert batch["attention_mask"].tolist() == [[1, 1, 0, 0], [1, 1, 1, 1]]
    assert batch["labels"].tolist() == [[-100, 2, -100, -100], [-100, -100, 3, 4]]


@pytest.mark.parametrize(
    ("top_k", "pinned"), [(64, PINNED_LOSSES), (49152, WHOLE_VOCABULARY_LOSSES)]
)
def test_tiny_run_losses_are_pinned(
    tiny_model_dir: Path, examples: tuple, top_k: int, pinned: list[float]
) -> None:
    new, replay, pad_id = examples
    # The run these losses were pinned on: every field that shapes it is spelled out, so a change
    # of the settings' defaults (which TrainConfig takes) does not move it.
    config = TrainConfig(
        rank=4, alpha=8, target_modules=("q_proj", "v_proj"), learning_rate=1e-2, steps=6,
        batch_size=4, replay_per_step=1, seed=0, replay_top_k=top_k, stop_loss=0.0,
        null_space_energy=0.0,
    )  # fmt: skip
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # reductions in a fixed order
    try:
        _, result = train_lora(tiny_model_dir, new, replay, config, pad_id=pad_id)
    finally:
        torch.set_num_threads(threads)
    assert result.losses == pytest.approx(pinned, rel=1e-4)
    assert all(new <= total for new, total in zip(result.new_losses, result.losses, strict=True))
    assert result.tokens > 0


def test_same_seed_same_run_and_progress_is_reported(tiny_model_dir: Path, examples: tuple) -> None:
    new, replay, pad_id = examples
    config = TrainConfig(
        rank=4, alpha=8, learning_rate=1e-2, steps=3, batch_size=3, replay_per_step=1, seed=7
    )
    seen: list[tuple[int, int]] = []
    _, first = train_lora(
        tiny_model_dir,
        new,
        replay,
        config,
        pad_id=pad_id,
        progress=lambda step, total, _loss, _grad: seen.append((step, total)),
    )
    _, second = train_lora(tiny_model_dir, new, replay, config, pad_id=pad_id)
    assert first.losses == pytest.approx(second.losses, rel=1e-6)
    assert seen == [(1, 3), (2, 3), (3, 3)]
    assert len(first.grad_norms) == 3  # before clipping: what a troubleshooter reads
    assert all(math.isfinite(g) and g > 0 for g in first.grad_norms)


def test_training_needs_examples(tiny_model_dir: Path) -> None:
    with pytest.raises(ValueError, match="no examples"):
        train_lora(tiny_model_dir, [], [], TrainConfig(steps=1), pad_id=0)


def test_training_stops_once_the_new_material_is_learned(
    tiny_model_dir: Path, examples: tuple
) -> None:
    new, replay, pad_id = examples
    learned = TrainConfig(
        rank=4, alpha=8, steps=6, batch_size=3, replay_per_step=1, stop_loss=100.0,
        stop_replay_kl=100.0, stop_patience=2,
    )  # fmt: skip
    _, result = train_lora(tiny_model_dir, new, replay, learned, pad_id=pad_id)
    # Every example must have been trained on first: 3 of them, 2 a step, all seen at step 2;
    # the rule then holds at steps 2 and 3.
    assert result.stopped_early and len(result.losses) == 3
    # The replay KL must be low too: with a threshold no KL meets, it runs every step.
    replay_not_back = dataclasses.replace(learned, stop_replay_kl=0.0)
    _, result = train_lora(tiny_model_dir, new, replay, replay_not_back, pad_id=pad_id)
    assert not result.stopped_early and len(result.losses) == 6
    # Without replay only the new material's loss counts.
    _, result = train_lora(
        tiny_model_dir, new, [], dataclasses.replace(replay_not_back, replay_per_step=0),
        pad_id=pad_id,
    )  # fmt: skip
    assert result.stopped_early and len(result.losses) == 2  # all 3 in each step


def test_early_stopping_waits_for_the_worst_example_not_the_batch_mean() -> None:
    config = TrainConfig(stop_loss=0.05, stop_replay_kl=0.03, stop_patience=2)
    stop = trainer._EarlyStop(config, n_examples=3)
    # Two examples learned long ago keep the batch mean low; the third, new, is not learned.
    assert not stop.done({0: 0.001, 1: 0.001, 2: 0.9}, replay_kl=0.01)
    assert not stop.done({0: 0.001, 1: 0.002}, replay_kl=0.01)  # example 2's 0.9 still counts
    assert not stop.done({2: 0.01}, replay_kl=0.01)  # now all learned: once
    assert stop.done({0: 0.001, 2: 0.02}, replay_kl=0.01)  # twice: stop
    # An example not yet trained on counts as unlearned.
    fresh = trainer._EarlyStop(config, n_examples=2)
    assert not fresh.done({0: 0.0}, replay_kl=None) and not fresh.done({0: 0.0}, replay_kl=None)


def test_the_replay_reference_is_computed_once_per_base_and_replay_set(
    tiny_model_dir: Path, examples: tuple, monkeypatch: pytest.MonkeyPatch
) -> None:
    new, replay, pad_id = examples
    config = TrainConfig(rank=4, alpha=8, steps=2, batch_size=3, replay_per_step=1)
    _, alone = train_lora(tiny_model_dir, new, replay, config, pad_id=pad_id)

    computed = []
    original = trainer._reference_log_probs
    monkeypatch.setattr(
        trainer,
        "_reference_log_probs",
        lambda *args: computed.append(1) or original(*args),
    )
    reference = ReplayReference()
    warm_replay(tiny_model_dir, replay, pad_id, config, reference, FrozenLayers())
    for _ in range(2):
        _, result = train_lora(
            tiny_model_dir, new, replay, config, pad_id=pad_id, reference=reference
        )
        assert result.losses == pytest.approx(alone.losses, rel=1e-6)
    assert len(computed) == 1  # at warm-up only
    train_lora(tiny_model_dir, new, replay[:1], config, pad_id=pad_id, reference=reference)
    assert len(computed) == 1  # a subset: every example's distributions are kept
    counted = []
    monkeypatch.setattr(
        trainer,
        "_reference_log_probs",
        lambda model, examples, *args: (
            counted.append(len(examples)) or original(model, examples, *args)
        ),
    )
    train_lora(tiny_model_dir, new, [*replay, new[0]], config, pad_id=pad_id, reference=reference)
    assert counted == [1]  # only the example not seen before
    fewer_words = dataclasses.replace(config, replay_top_k=8)
    train_lora(tiny_model_dir, new, replay[:1], fewer_words, pad_id=pad_id, reference=reference)
    assert counted == [1, 1]  # the base's top 8 words, not its top 64: computed again


@pytest.mark.parametrize("layers", [(), (1,)])
def test_trainer_matches_the_textbook_peft_loop(
    tiny_model_dir: Path, examples: tuple, layers: tuple[int, ...]
) -> None:
    """Packed rows, the fused LoRA layer, the output layer at loss positions only, the fused
    optimizer and the kept outputs of the layers below the adapters change the speed of
    training, never its numbers: step by step, the losses are those of the throughput
    benchmark's textbook loop (PEFT, padded batches, the model's loss).
    """
    from bench.training_throughput import (
        WeightCounts,
        plan_steps,
        selftune_trainer,
        textbook_trainer,
    )

    new, _replay, pad_id = examples
    training = new * 2  # 6 chats, 2 a step: 3 steps see different pairs
    config = TrainConfig(
        rank=4, alpha=8, learning_rate=1e-2, steps=5, batch_size=2, replay_per_step=0, seed=3,
        layers=layers,
    )  # fmt: skip
    plan = plan_steps(training, config, pad_id)
    weights = WeightCounts(body=1, body_backward=1, head=1, lora=1)  # FLOPs not looked at here
    textbook = textbook_trainer(tiny_model_dir, training, config, plan, weights, pad_id)
    ours = selftune_trainer(tiny_model_dir, training, config, plan, weights, pad_id)
    for _ in range(config.steps):
        textbook.run_step()
        ours.run_step()
    assert ours.losses == pytest.approx(textbook.losses, rel=1e-5)
    assert ours.losses[-1] < ours.losses[0]  # it did learn: the comparison is not vacuous


@pytest.mark.parametrize("bf16", [False, True])
def test_compiled_layers_train_to_the_same_losses(
    tiny_model_dir: Path, examples: tuple, bf16: bool
) -> None:
    """``compile`` runs the decoder layers and the loss through torch.compile: faster, same
    numbers (in bf16, up to rounding: the compiled kernels round at other points)."""
    from torch._dynamo.utils import counters

    new, replay, pad_id = examples
    config = TrainConfig(
        rank=4, alpha=8, learning_rate=1e-2, steps=3, batch_size=4, replay_per_step=1, seed=0,
        bf16=bf16,
    )  # fmt: skip
    _, eager = train_lora(tiny_model_dir, new, replay, config, pad_id=pad_id)
    frames_before = counters["frames"]["ok"]
    run = trainer.LoraRun(
        tiny_model_dir, new, replay, dataclasses.replace(config, compile=True), pad_id=pad_id
    )
    assert len(run.compiled_layers) == 2
    while not run.finished:
        run.step()
    model, compiled = run.result()
    frames_after = counters["frames"]["total"]
    assert counters["frames"]["ok"] > frames_before  # dynamo did compile the layers
    assert compiled.losses == pytest.approx(eager.losses, rel=1e-2 if bf16 else 1e-4)

    # The trained model comes back uncompiled: generating with it does not go through dynamo.
    with torch.no_grad():
        model.generate(torch.tensor([new[0].input_ids]), max_new_tokens=2, do_sample=False)
    assert counters["frames"]["total"] == frames_after


def test_adapters_on_the_chosen_layers_only(tiny_model_dir: Path, examples: tuple) -> None:
    """``layers`` puts adapters on those decoder layers; the ones below are not trained."""
    new, replay, pad_id = examples
    config = TrainConfig(
        rank=4, alpha=8, steps=1, batch_size=4, replay_per_step=1, layers=(1,), seed=0
    )
    model, result = train_lora(tiny_model_dir, new, replay, config, pad_id=pad_id)
    trained = [name for name, p in model.named_parameters() if p.requires_grad]
    assert trained and all(".layers.1." in name for name in trained)
    assert result.losses


def _share_of_replay_inputs_moved(
    tiny_model_dir: Path, examples: tuple, null_space_energy: float
) -> tuple[float, TrainResult]:
    """The largest, over the LoRA layers, of |x Aᵀ| / (|x| |A|) on the replay examples' inputs
    x after a short run, and the run's figures."""
    from selftune.training.null_space import NullSpace, lora_a_weights

    new, replay, pad_id = examples
    config = TrainConfig(
        rank=4, alpha=8, learning_rate=1e-2, steps=4, batch_size=3, replay_per_step=1,
        null_space_energy=null_space_energy, stop_loss=0.0,
    )  # fmt: skip
    model, result = train_lora(
        tiny_model_dir, new, replay, config, pad_id=pad_id, null_space=NullSpace()
    )
    weights = lora_a_weights(model)
    assert weights and all(w.abs().sum() > 0 for w in weights.values())  # it learned something
    inputs: dict[str, list[torch.Tensor]] = {}
    handles = [
        module.register_forward_pre_hook(
            lambda _m, args, name=name: inputs.setdefault(name, []).append(args[0])
        )
        for name, module in model.named_modules()
        if name in weights
    ]
    with torch.no_grad():
        for example in replay:
            model(input_ids=torch.tensor([example.input_ids]))
    for handle in handles:
        handle.remove()
    shares = []
    for name, weight in weights.items():
        x = torch.cat([i.reshape(-1, i.shape[-1]) for i in inputs[name]]).float()
        a = weight.detach().float()
        shares.append(float((x @ a.T).norm() / (x.norm() * a.norm())))
    return max(shares), result


def test_adapters_kept_to_the_null_space_leave_general_inputs_alone(
    tiny_model_dir: Path, examples: tuple
) -> None:
    """With ``null_space_energy``, every LoRA A maps the replay examples' inputs to (almost)
    nothing, so the adapter leaves the base's outputs there; the new material still trains."""
    free, _ = _share_of_replay_inputs_moved(tiny_model_dir, examples, 0.0)
    kept, result = _share_of_replay_inputs_moved(tiny_model_dir, examples, 0.05)
    assert kept < 0.2 * free, (kept, free)
    assert result.new_losses[-1] < result.new_losses[0]
