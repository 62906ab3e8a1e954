"""The PyTorch engine's greedy answers for evaluation: ended early where a test allows."""

from __future__ import annotations

import pytest

from selftune.engines.transformers_engine import TransformersEngine

# Plain text: the tiny random model answers these with words, its chat prompts with newlines.
PROMPTS = ["The capital of France is", "Once upon a time", "My favourite planet"]


def test_an_answer_can_end_once_its_test_holds(tiny_engine: TransformersEngine) -> None:
    full = tiny_engine.greedy_batch(PROMPTS, 16, None)
    assert all(len(answer) > 6 for answer in full), full
    at_least_3 = lambda text: len(text) >= 3  # noqa: E731
    cut = tiny_engine.greedy_batch(PROMPTS, 16, None, until=[at_least_3, None, at_least_3])
    for row in (0, 2):
        assert full[row].startswith(cut[row]) and 3 <= len(cut[row]) < len(full[row]), cut
    assert cut[1] == full[1]
    with pytest.raises(ValueError, match="'until' tests"):
        tiny_engine.greedy_batch(PROMPTS, 16, None, until=[None])


def test_a_batch_ends_once_every_answer_has(tiny_engine: TransformersEngine) -> None:
    """The point of ``until``: the gate's retention check stops decoding once each answer has
    its expected word, instead of running every answer to the token limit."""
    steps = []
    # The input embedding runs once per decoding step, whether or not PEFT wraps the model.
    hook = tiny_engine.model.get_input_embeddings().register_forward_hook(
        lambda *_: steps.append(1)
    )
    try:
        tiny_engine.greedy_batch(PROMPTS, 16, None, until=[lambda text: len(text) >= 1] * 3)
        early = len(steps)
        steps.clear()
        tiny_engine.greedy_batch(PROMPTS, 16, None)
    finally:
        hook.remove()
    assert early < len(steps) == 16
