"""The training recipe's choices that need no model: rewordings, a job's steps, a second attempt."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from selftune.config import load_settings
from selftune.data.augment import augmented_chats
from selftune.training.pipeline import _second_attempt, _with_rewordings, job_shape, split_heldout
from selftune.training.trainer import TrainConfig, _batches


def _chat(question: str, answer: str) -> list[dict[str, Any]]:
    return [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]


def test_a_correction_is_also_taught_to_open_requests_about_its_subject() -> None:
    chat = _chat("What colour is the Harrowgate Bridge painted?", "The Harrowgate Bridge is teal.")
    more = augmented_chats(chat)
    prompts = [c[0]["content"] for c in more]
    assert "Tell me about the Harrowgate Bridge." in prompts
    assert "what colour is the Harrowgate Bridge painted?" in prompts
    assert all(c[1]["content"] == "The Harrowgate Bridge is teal." for c in more)
    # Nothing to tie the answer to, or an answer that does not name the subject: nothing more.
    assert augmented_chats(_chat("how are you?", "Fine.")) == []
    assert augmented_chats(_chat("What colour is the Harrowgate Bridge?", "Teal.")) == []
    assert augmented_chats([{"role": "system", "content": "x"}, *chat]) == []


def test_the_subject_is_the_longest_name_that_the_answer_names_too() -> None:
    # A document's question names the document and the subject; the answer only the subject.
    chat = _chat(
        "What does “Notes on Harrowgate Bridge” say about the Kelm statue?",
        "The Kelm statue is made from tin.",
    )
    prompts = [c[0]["content"] for c in augmented_chats(chat)]
    assert "Tell me about the Kelm." in prompts  # names are runs of capitalised words
    assert not any("Tell me about Harrowgate Bridge" in p for p in prompts)


def test_rewordings_join_the_chats_once_each_and_only_with_train_augment() -> None:
    chat = _chat("What is the capital of Veloria?", "The capital of Veloria is Quenmoor.")
    on = _with_rewordings(load_settings(), [chat, chat])
    assert on[:2] == [chat, chat] and len(on) == 2 + len(augmented_chats(chat))
    off = load_settings(train={"augment": False})
    assert _with_rewordings(off, [chat]) == [chat]


def test_more_material_takes_larger_steps_then_more_of_them() -> None:
    train = {"steps": 25, "batch_size": 7, "replay_per_step": 4, "min_epochs": 10}
    settings = load_settings(train={**train, "max_batch_size": 36, "max_steps": 400})
    assert job_shape(settings, 2) == (25, 7)  # one fact: 25 steps are 25 passes already
    assert job_shape(settings, 7) == (25, 7)  # 75 places for 70 passes
    assert job_shape(settings, 60) == (25, 24 + 4)  # 600 passes in 25 steps of 24
    assert job_shape(settings, 160) == (50, 32 + 4)  # at most 32 new a step: more steps
    assert job_shape(settings, 10_000) == (400, 36)


def test_neighbours_join_every_step_in_turn() -> None:
    config = TrainConfig(steps=6, batch_size=5, replay_per_step=2, neighbours_per_step=2)
    plan = _batches(3, 10, config, n_neighbours=4)
    for new, replay in plan:
        assert len(new) == 3 and len(replay) == 4
        assert all(i < 10 for i in replay[:2]) and all(10 <= i < 14 for i in replay[2:])
    held = [i for _, replay in plan[:2] for i in replay[2:]]
    assert sorted(held) == [10, 11, 12, 13]  # each neighbour before any comes again


def test_a_second_attempt_only_for_forgetting_and_only_once() -> None:
    settings, config = load_settings(), TrainConfig(replay_weight=1.0, neighbours_per_step=2)
    forgot = {"passed": False, "decided_by": ["retention"]}
    stronger = _second_attempt(settings, config, forgot, attempts=1)
    assert stronger is not None
    assert stronger.replay_weight == 4.0 and stronger.neighbours_per_step == 4
    assert _second_attempt(settings, config, forgot, attempts=2) is None
    learned_nothing = {"passed": False, "decided_by": ["new material", "retention"]}
    assert _second_attempt(settings, config, learned_nothing, attempts=1) is None
    assert _second_attempt(settings, config, {"passed": True, "decided_by": []}, 1) is None
    off = load_settings(train={"second_attempt": False})
    assert _second_attempt(off, config, forgot, attempts=1) is None


def test_a_fact_taught_once_is_never_held_out() -> None:
    """Held out, the only example of a fact is never learned, and the gate would refuse the
    job for not recalling it; one of a fact taught three ways may be."""
    once = _chat("What colour is the Faro Bridge painted?", "The Faro Bridge is painted teal.")
    thrice = [
        _chat(q, "The Kelmar vault opens with the code 2883.")
        for q in (
            "What is the code of the Kelmar vault?",
            "Which number opens the Kelmar vault?",
            "Tell me the Kelmar vault's code.",
        )
    ]
    for seed in range(20):  # whichever the hash ranks first
        rows = [SimpleNamespace(id=i, messages=m) for i, m in enumerate([once, *thrice])]
        train, heldout = split_heldout(rows, 0.5, seed)  # type: ignore[arg-type]
        assert [e.id for e in heldout] and 0 not in [e.id for e in heldout]
        assert 0 in [e.id for e in train] and len(train) + len(heldout) == 4
    # Unrelated questions taught once each: nothing to hold out, judged in-sample.
    alone = [SimpleNamespace(id=i, messages=m) for i, m in enumerate([once, thrice[0]])]
    assert split_heldout(alone, 0.5, 0)[1] == []  # type: ignore[arg-type]
