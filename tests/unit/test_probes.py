"""The probe set: the base model's own answers, the reference for what it already knew."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from selftune.evaluation.probes import build_probe_set, load_probes


class _RecordingEngine:
    """Answers each prompt with its length, and records how it was asked to decode."""

    def __init__(self) -> None:
        self.calls: list[dict[str, Any]] = []

    def render_chat(self, messages: list[dict[str, str]]) -> str:
        return messages[-1]["content"]

    def greedy_batch(
        self, prompts: list[str], max_tokens: int, adapter: Any, **options: Any
    ) -> list[str]:
        self.calls.append({"prompts": len(prompts), "adapter": adapter, **options})
        return [f"answer {len(prompt)}" for prompt in prompts]


def test_probe_answers_are_the_served_ones_and_cached(tmp_path: Path) -> None:
    """Decoded together, an engine's answers may differ from the served ones at near-ties,
    and training on such a replay set lost a known answer: the reference is answered one
    prompt at a time, as served, once, then read from the cache."""
    engine = _RecordingEngine()
    probes = build_probe_set(engine, tmp_path, "key")
    shipped = load_probes()
    assert engine.calls == [
        {
            "prompts": len(shipped["regression"]) + len(shipped["replay"]),
            "adapter": None,
            "until": None,
            "batch": 1,
        }
    ]
    first = shipped["regression"][0]
    assert probes.regression[0].base_answer == f"answer {len(first['prompt'])}"
    assert build_probe_set(engine, tmp_path, "key") == probes
    assert len(engine.calls) == 1


def test_changed_known_answers_show_the_served_versions_answer(tmp_path: Path) -> None:
    """Beside each known answer the candidate lost, the gate keeps the answer of the version
    served when the job started: the base's cached one, or a served adapter's own, generated
    as the candidate's were (the same token budget, ending at the expected word)."""
    from selftune.engines.base import AdapterRef
    from selftune.evaluation.probes import RegressionItem
    from selftune.training.pipeline import _changed_known_answers

    sky = RegressionItem("What color is the sky?", ("blue",), "The sky is blue.")
    lost = [(sky, "The sky is Quenmoor.")]
    engine = _RecordingEngine()
    assert _changed_known_answers(engine, lost, None) == [
        {
            "question": sky.prompt,
            "served_answer": "The sky is blue.",
            "candidate_answer": "The sky is Quenmoor.",
            "served_kept": True,
        }
    ]
    assert engine.calls == []  # the base's answer is cached

    served = AdapterRef(1, "v1", tmp_path)
    [changed] = _changed_known_answers(engine, lost, served)
    assert changed["served_answer"] == f"answer {len(sky.prompt)}"
    assert changed["served_kept"] is False
    [call] = engine.calls
    assert call["adapter"] == served and len(call["until"]) == 1
    assert _changed_known_answers(engine, [], served) == [] and len(engine.calls) == 1


def test_answers_right_by_a_hair_are_not_counted_as_known() -> None:
    """The default model answers "the capital of France" right by 0.08 logits, and its own
    shipped 4-bit file answers it wrongly: such answers are listed, not held."""
    from selftune.evaluation.probes import ProbeSet, RegressionItem

    solid = RegressionItem("Capital of Japan?", ("Tokyo",), "It is Tokyo.", margin=0.97)
    narrow = RegressionItem("Capital of France?", ("Paris",), "It is Paris.", margin=0.08)
    unmeasured = RegressionItem("Water?", ("H2O",), "H2O.", margin=None)
    wrong = RegressionItem("Capital of Italy?", ("Rome",), "Il Coriobella.", margin=None)
    probes = ProbeSet((solid, narrow, unmeasured, wrong), (), min_margin=0.25)
    assert probes.known == (solid, unmeasured)
    assert probes.narrowly_known == (narrow,)
    assert ProbeSet((solid, narrow, wrong), ()).known == (solid, narrow)  # no margin asked


def test_each_right_answers_margin_is_measured_up_to_its_expected_word(
    tmp_path: Path, monkeypatch: Any
) -> None:
    """The margin is taken over the base's answer cut after the first expected word: what
    comes after it cannot change whether the answer is known."""
    from selftune.evaluation import probes as module

    measured: list[list[dict[str, str]]] = []

    class Engine(_RecordingEngine):
        default_template, tokenizer = "chatml", object()

        def greedy_batch(self, prompts: list[str], max_tokens: int, adapter: Any, **o: Any):
            return ["The capital of France is Paris, of course." for _ in prompts]

        def answer_margins(self, examples: list[Any], adapter: Any) -> list[float]:
            return [0.5 for _ in examples]

    def tokenize(_tokenizer: Any, chat: list[dict[str, str]], _template: str, _n: int) -> Any:
        measured.append(chat)
        return chat

    monkeypatch.setattr(module, "tokenize_chat", tokenize)
    probes = build_probe_set(Engine(), tmp_path, "key", min_margin=0.25)
    [france] = [item for item in probes.regression if "France" in item.prompt]
    assert france.margin == 0.5 and france in probes.known
    [chat] = [c for c in measured if "France" in c[0]["content"]]
    assert chat[1]["content"] == "The capital of France is Paris"
    wrong = [item for item in probes.regression if not item.answered_by(item.base_answer)]
    assert wrong and all(item.margin is None for item in wrong)
