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
