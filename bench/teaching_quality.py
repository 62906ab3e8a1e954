"""Teaching quality of a training recipe, on several seeds: what a speed-up may not cost.

Run with ``python -m bench.teaching_quality [--seeds 0,1,2] [setting=value ...]``, for example
``python -m bench.teaching_quality train.steps=20 train.lora_top_layers=0.33``. Not part of
``make bench``: three seeds take 5-10 minutes on 2 cores.

For each seed it trains the teaching scenario's three corrected chats (held out as a job holds
them out) with the worker's own configuration and the given settings, exports the adapter as a
job does, and judges it on the served (llama.cpp) model, as the gate and the end-to-end test
do: the probe answers the base knew and the candidate still gives, the regression loss against
the base's, the paraphrased questions answered with the fact, and the end-to-end test's known
questions. The recipe decisions in ``selftune.training.trainer``'s docstring were made with it.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import tempfile
import time
import types
from pathlib import Path
from typing import Any

from bench.scenario import FACT_WORD, KNOWN, PARAPHRASES, TEACHING
from selftune.config import load_settings
from selftune.engines.base import AdapterRef
from selftune.evaluation.probes import generate_answers
from selftune.training.pipeline import _export_gguf, _tokenize, split_heldout
from selftune.worker.loop import Worker


def _setting(text: str) -> tuple[str, Any]:
    name, _, value = text.partition("=")
    try:
        return name, json.loads(value)
    except json.JSONDecodeError:
        return name, value


def _knows(answer: str, words: tuple[str, ...]) -> bool:
    return any(word.lower() in answer.lower() for word in words)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", default="0,1,2", help="comma-separated training seeds")
    parser.add_argument("settings", nargs="*", help="setting=value overrides")
    args = parser.parse_args()
    overrides = dict(_setting(text) for text in args.settings)
    seeds = [int(seed) for seed in args.seeds.split(",")]

    with tempfile.TemporaryDirectory(prefix="selftune-quality-") as tmp:
        settings = load_settings(data_dir=str(Path(tmp) / "data"), **overrides)
        ctx = Worker(settings).context()
        ctx.warm_up()
        engine = ctx.engine
        base_regression = ctx.regression_loss(None)
        known_by_base = [
            _knows(answer, words)
            for (_, words), answer in zip(
                KNOWN, generate_answers(engine, [q for q, _ in KNOWN], None, 24), strict=True
            )
        ]
        chats = [
            [{"role": "user", "content": q}, {"role": "assistant", "content": a}]
            for q, a in TEACHING
        ]
        rows = [types.SimpleNamespace(id=i + 1, messages=chat) for i, chat in enumerate(chats)]
        train_rows, _ = split_heldout(rows, settings.train.heldout_fraction, settings.train.seed)  # type: ignore[arg-type]
        train_set = _tokenize(ctx, [row.messages for row in train_rows])
        print(f"recipe {overrides or 'defaults'}; seeds {seeds}", flush=True)
        for seed in seeds:
            config = dataclasses.replace(ctx.train_config(), seed=seed)
            started = time.perf_counter()
            model, result = ctx.train(train_set, config)
            seconds = time.perf_counter() - started
            path = Path(tmp) / f"seed{seed}"
            path.mkdir()
            model.save_pretrained(path)
            _export_gguf(path, ctx.base_dir)
            candidate = AdapterRef(1000 + seed, path.name, path)
            known = ctx.probes.known
            answers = generate_answers(
                engine,
                [item.prompt for item in known],
                candidate,
                24,
                until=[item.answered_by for item in known],
            )
            lost = [i.prompt for i, a in zip(known, answers, strict=True) if not i.answered_by(a)]
            regression = engine.answer_nll(ctx.regression_set, candidate)
            paraphrased = generate_answers(engine, PARAPHRASES, candidate, 24)
            e2e_known = generate_answers(engine, [q for q, _ in KNOWN], candidate, 24)
            still_known = sum(
                base and _knows(answer, words)
                for base, (_, words), answer in zip(known_by_base, KNOWN, e2e_known, strict=True)
            )
            print(
                f"seed {seed}: {len(result.losses)} steps in {seconds:.1f}s; probe answers kept "
                f"{len(known) - len(lost)}/{len(known)}{f' (lost {lost})' if lost else ''}; "
                f"regression loss {regression / base_regression - 1:+.1%} vs base; "
                f"paraphrases answered {sum(FACT_WORD in a for a in paraphrased)}/"
                f"{len(paraphrased)}; e2e known {still_known}/{sum(known_by_base)}",
                flush=True,
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
