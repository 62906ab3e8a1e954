"""The throughput benchmark's fact recall: a model's greedy answer to a trained question."""

from __future__ import annotations

from pathlib import Path

from bench.training_throughput import _question, build_facts, facts_recalled
from selftune.data.tokenize import tokenize_chat
from selftune.models.base import load_tokenizer
from selftune.models.templates import render_chat, resolve_template
from selftune.training.trainer import TrainConfig, train_lora

EVERY_LINEAR = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def test_recall_counts_the_facts_a_trained_model_answers_with(tiny_model_dir: Path) -> None:
    tokenizer = load_tokenizer(tiny_model_dir)
    template = resolve_template(None, tokenizer.chat_template)
    facts = build_facts()[:2]
    examples = [tokenize_chat(tokenizer, f.chat, template, 256) for f in facts]
    pad_id = tokenizer.pad_token_id or 0
    for fact, example in zip(facts, examples, strict=True):  # asked as a user would ask
        asked = render_chat(tokenizer, fact.chat[:-1], template, add_generation_prompt=True)
        assert tokenizer.decode(_question(example)) == asked
    config = TrainConfig(
        rank=8, alpha=16, learning_rate=1e-2, steps=30, batch_size=2, replay_per_step=0,
        warmup_steps=0, seed=0,
        target_modules=EVERY_LINEAR,
    )  # fmt: skip
    # The random base's next-token distributions are nearly flat: the adapters make the answers'
    # tokens the most likely ones (what greedy decoding needs) long before they are likely.
    model, _result = train_lora(tiny_model_dir, examples, [], config, pad_id=pad_id)
    assert facts_recalled(model, tokenizer, facts, examples) == 2
    with model.disable_adapter():  # the random base knows neither made-up fact
        assert facts_recalled(model, tokenizer, facts, examples) == 0
