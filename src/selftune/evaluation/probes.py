"""The shipped probe prompts and the base model's own answers to them.

The base model's answers are the reference for "what the model already knew": replay trains on
them, and the regression set checks that a candidate still gives them. They are generated once
per base model and chat template and cached as a JSON file written atomically.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

__all__ = ["ProbeSet", "RegressionItem", "build_probe_set", "generate_answers", "load_probes"]

_PROBES = Path(__file__).with_name("probes.json")
_ANSWER_TOKENS = 32


@dataclasses.dataclass(frozen=True)
class RegressionItem:
    prompt: str
    expect: tuple[str, ...]
    base_answer: str

    def answered_by(self, answer: str) -> bool:
        return any(e.lower() in answer.lower() for e in self.expect)


@dataclasses.dataclass(frozen=True)
class ProbeSet:
    regression: tuple[RegressionItem, ...]
    replay: tuple[tuple[str, str], ...]  # (prompt, base answer)

    @property
    def known(self) -> tuple[RegressionItem, ...]:
        """The regression questions the base model answers correctly."""
        return tuple(item for item in self.regression if item.answered_by(item.base_answer))


def load_probes() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(_PROBES.read_text())
    return data


def generate_answers(
    engine: Any,
    prompts: Sequence[str | list[dict[str, str]]],
    adapter: Any,
    max_tokens: int,
    until: Sequence[Callable[[str], bool]] | None = None,
    *,
    one_at_a_time: bool = False,
) -> list[str]:
    """Greedy answers of ``engine`` (the base if ``adapter`` is None) to prompts or chats;
    ``until``: see ``EvaluatingEngine.greedy_batch``. ``one_at_a_time`` answers each prompt
    alone, exactly as served, rather than several decoded together (faster; near-ties that
    rounding decides may go the other way)."""
    texts = [
        engine.render_chat([{"role": "user", "content": p}] if isinstance(p, str) else p)
        for p in prompts
    ]
    batch = {"batch": 1} if one_at_a_time else {}
    answers: list[str] = engine.greedy_batch(texts, max_tokens, adapter, until=until, **batch)
    return answers


def build_probe_set(engine: Any, cache_dir: Path, key: str) -> ProbeSet:
    """The base model's answers to the probes, from cache or generated now (a few seconds)."""
    probes = load_probes()
    digest = hashlib.sha256(json.dumps(probes, sort_keys=True).encode()).hexdigest()[:12]
    path = cache_dir / f"probes-{key}-{digest}.json"
    if path.is_file():
        cached = json.loads(path.read_text())
    else:
        questions = [item["prompt"] for item in probes["regression"]]
        # The reference is what the base answers as served, one prompt at a time: decoded
        # together, 1 of the 52 answers of the default model went on past its end of turn,
        # and training on that replay set lost a known answer on 1 seed of 3 ("the capital of
        # France", right by 0.23 logits). Once per base model, cached: 22 s on 2 cores.
        answers = generate_answers(
            engine, questions + probes["replay"], None, _ANSWER_TOKENS, one_at_a_time=True
        )
        cached = {
            "regression": [
                {**item, "base_answer": answer}
                for item, answer in zip(probes["regression"], answers, strict=False)
            ],
            "replay": [
                [prompt, answer]
                for prompt, answer in zip(probes["replay"], answers[len(questions) :], strict=True)
            ],
        }
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".tmp-{os.getpid()}")
        tmp.write_text(json.dumps(cached, indent=1))
        os.replace(tmp, path)
    regression = tuple(
        RegressionItem(item["prompt"], tuple(item["expect"]), item["base_answer"])
        for item in cached["regression"]
    )
    return ProbeSet(
        regression=regression,
        replay=tuple((prompt, answer) for prompt, answer in cached["replay"] if answer),
    )
