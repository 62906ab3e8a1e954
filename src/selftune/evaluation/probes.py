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

from selftune.data.neighbours import neighbour_questions
from selftune.data.tokenize import tokenize_chat
from selftune.evaluation.matching import mention_end, mentions

__all__ = ["ProbeSet", "RegressionItem", "build_probe_set", "generate_answers", "load_probes"]

_PROBES = Path(__file__).with_name("probes.json")
_ANSWER_TOKENS = 32


@dataclasses.dataclass(frozen=True)
class RegressionItem:
    prompt: str
    expect: tuple[str, ...]
    base_answer: str
    # The base's smallest logit gap between its likeliest and second likeliest token, over its
    # answer up to the first expected word: how narrowly it knows (None: not measured).
    margin: float | None = None

    def answered_by(self, answer: str) -> bool:
        """Whether ``answer`` mentions an expected answer whole: "-10" does not say "0"."""
        return any(mentions(answer, e) for e in self.expect)


@dataclasses.dataclass(frozen=True)
class ProbeSet:
    regression: tuple[RegressionItem, ...]
    replay: tuple[tuple[str, str], ...]  # (prompt, base answer)
    min_margin: float = 0.0  # gate.min_known_margin

    @property
    def known(self) -> tuple[RegressionItem, ...]:
        """The regression questions the base model answers correctly, and not by a hair: by at
        least ``min_margin`` logits at every token up to the answer."""
        return tuple(item for item in self._right if not self._narrow(item))

    @property
    def narrowly_known(self) -> tuple[RegressionItem, ...]:
        """Answered correctly by the base, but by a smaller margin than ``min_margin``: the
        same weights computed in another order (the shipped 4-bit file against the f16
        serving copy) already answer some of these otherwise, so no candidate is held to them."""
        return tuple(item for item in self._right if self._narrow(item))

    @property
    def _right(self) -> tuple[RegressionItem, ...]:
        return tuple(item for item in self.regression if item.answered_by(item.base_answer))

    def _narrow(self, item: RegressionItem) -> bool:
        return item.margin is not None and item.margin < self.min_margin


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


def build_probe_set(
    engine: Any,
    cache_dir: Path,
    key: str,
    replay_subjects: int = 0,
    *,
    min_margin: float = 0.0,
    max_seq_len: int = 256,
) -> ProbeSet:
    """The base model's answers to the probes, from cache or generated now (a few seconds).

    ``replay_subjects``: the replay prompts also come with this many of their neighbours each
    (the same question about other subjects, :mod:`selftune.data.neighbours`), so that replay
    holds the model on the shapes of simple questions around them, not on 40 prompts alone.
    """
    probes = load_probes()
    if replay_subjects:
        more = [n for p in probes["replay"] for n in neighbour_questions(p, replay_subjects)]
        probes = {**probes, "replay": list(dict.fromkeys(probes["replay"] + more))}
    # "margins": the cache holds each regression answer's margin (a cache without them is old).
    digest_of = {**probes, "margins": 1}
    digest = hashlib.sha256(json.dumps(digest_of, sort_keys=True).encode()).hexdigest()[:12]
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
        regression_answers = answers[: len(questions)]
        margins = _margins(engine, probes["regression"], regression_answers, max_seq_len)
        cached = {
            "regression": [
                {**item, "base_answer": answer, "margin": margin}
                for item, answer, margin in zip(
                    probes["regression"], regression_answers, margins, strict=True
                )
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
        RegressionItem(
            item["prompt"], tuple(item["expect"]), item["base_answer"], item.get("margin")
        )
        for item in cached["regression"]
    )
    return ProbeSet(
        regression=regression,
        replay=tuple((prompt, answer) for prompt, answer in cached["replay"] if answer),
        min_margin=min_margin,
    )


def _margins(
    engine: Any, items: list[dict[str, Any]], answers: list[str], max_seq_len: int
) -> list[float | None]:
    """The base's margin on each right answer, up to its first expected word (None for a
    wrong answer: it is not known, whatever the margin)."""
    cut: list[tuple[int, list[dict[str, str]]]] = []
    for index, (item, answer) in enumerate(zip(items, answers, strict=True)):
        ends = [end for e in item["expect"] if (end := mention_end(answer, e)) is not None]
        if ends:
            chat = [
                {"role": "user", "content": item["prompt"]},
                {"role": "assistant", "content": answer[: min(ends)]},
            ]
            cut.append((index, chat))
    found: list[float | None] = [None] * len(items)
    if not cut:
        return found
    template, tokenizer = engine.default_template, engine.tokenizer
    examples = [tokenize_chat(tokenizer, chat, template, max_seq_len) for _, chat in cut]
    for (index, _), margin in zip(cut, engine.answer_margins(examples, None), strict=True):
        found[index] = round(margin, 4)
    return found
