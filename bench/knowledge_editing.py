"""Knowledge-editing benchmark: does teaching work on facts nobody tuned the recipe for?

Run with ``python -m bench.knowledge_editing`` (a fixed sample, part of ``make bench``) or
``--full`` (every generated fact; about an hour on 2 cores). ``setting=value`` arguments set the
server's settings, e.g. ``train.steps=40``. Every fact goes the way a user's does: chats
corrected through ``POST /api/feedback``, ``POST /api/train``, the job's gate, and the answers
the server then gives. Metrics, after ROME/MEMIT/EasyEdit's (CounterFact, zsRE):

- promoted: the job served its version;
- efficacy: the taught question answered with the taught answer (whole words);
- generalization: both paraphrased questions, never taught, answered with it;
- specificity: neighbour prompts (the same shape, real subjects, answered right by the base)
  still answered right; retention: general known questions of other shapes still right;
- latency: from ``POST /api/train`` to the served answer with the fact.

Scenarios: one fact per job, from the base each time (the examples withdrawn and the base served
again between facts); 20 facts in one job; 10 jobs of 2 facts in sequence, every earlier fact
checked again after each version.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench.editing_facts import GENERAL, SHAPES, Fact, facts
from bench.scenario import Server, running_server
from selftune.evaluation.matching import mentions

# The fixed sample of ``make bench``: single facts (one of each shape), a 20-fact job, and the
# sequence of 10 two-fact jobs; ``--full`` takes every fact.
_SAMPLE_SINGLE = 10
_BATCH = 20
_SEQUENCE_JOBS, _PER_JOB = 10, 2
_USER = "bench"
_ANSWER_TOKENS = 32  # answers name what they know early; the taught sentences are shorter

TARGETS = {
    "single: promoted and both paraphrases": 0.95,
    "specificity (neighbours unchanged)": 0.95,
    "retention (general known answers)": 1.0,
    "20 facts in one job: both paraphrases": 0.90,
    "after 10 versions: earlier facts answered": 0.90,
}
_LATENCY_TARGET_S = 15.0


def knows(answer: str, words: Sequence[str]) -> bool:
    return any(mentions(answer, word) for word in words)


@dataclasses.dataclass
class Check:
    """What a served model answers to a fact: taught question, paraphrases."""

    taught: bool
    paraphrases: list[bool]

    @property
    def generalized(self) -> bool:
        return all(self.paraphrases)


class Bench:
    def __init__(self, server: Server) -> None:
        self.server = server
        self.base_neighbours: dict[str, bool] = {}
        self.base_general: dict[str, bool] = {}

    def ask(self, question: str) -> str:
        reply = self.server.chat(question, max_tokens=_ANSWER_TOKENS)
        return str(reply["choices"][0]["message"]["content"])

    def measure_base(self) -> None:
        for shape in SHAPES:
            for question, words in shape.neighbours:
                self.base_neighbours[question] = knows(self.ask(question), words)
        for question, words in GENERAL:
            self.base_general[question] = knows(self.ask(question), words)

    def check(self, fact: Fact) -> Check:
        return Check(
            taught=mentions(self.ask(fact.question), fact.answer),
            paraphrases=[mentions(self.ask(p), fact.answer) for p in fact.paraphrases],
        )

    def unchanged(self, shapes: set[str]) -> tuple[int, int, int, int]:
        """(neighbours still right, neighbours the base knew, general still right, known)."""
        neighbours = [
            (q, w) for shape in SHAPES if shape.name in shapes for q, w in shape.neighbours
        ]
        kept_n, known_n = self._still_right(neighbours, self.base_neighbours, "neighbour")
        kept_g, known_g = self._still_right(GENERAL, self.base_general, "general answer")
        return kept_n, known_n, kept_g, known_g

    def _still_right(
        self, questions: Sequence[tuple[str, Sequence[str]]], base: dict[str, bool], label: str
    ) -> tuple[int, int]:
        """(still answered right, answered right by the base) of ``questions``, printing each
        answer that changed."""
        kept = known = 0
        for question, words in questions:
            if base[question]:
                known += 1
                answer = self.ask(question)
                kept += knows(answer, words)
                if not knows(answer, words):
                    print(f"    {label} changed: {question!r} -> {answer!r}", flush=True)
        return kept, known

    def teach(self, fact: Fact) -> list[str]:
        ids = []
        for question, correction in fact.teaching:
            interaction = self.server.chat(question, user=_USER, max_tokens=_ANSWER_TOKENS)["id"]
            self._feedback({"interaction_id": interaction, "rating": -1, "correction": correction})
            ids.append(interaction)
        return ids

    def _feedback(self, body: dict[str, Any]) -> None:
        self.server.client.post("/api/feedback", json=body).raise_for_status()

    def train(self) -> tuple[dict[str, Any], float]:
        """Run a job to its end; (its view, seconds from the request to serving its version)."""
        started = time.monotonic()
        job = self.server.client.post("/api/train", json={"reason": "benchmark"}).json()
        view = self.server.wait_job(job["job_id"], timeout=1800)
        result = view.get("result") or {}
        if view["status"] == "succeeded" and result.get("promoted"):
            self.server.wait_serving(result["version"])
        return view, time.monotonic() - started

    def reset(self, interactions: list[str]) -> None:
        """Withdraw what was taught and serve the base again."""
        for interaction in interactions:
            self._feedback({"interaction_id": interaction, "rating": -1})
        self.server.client.post("/lora-adapters", json=[]).raise_for_status()
        self.server.wait_serving("base")


def _promoted(view: dict[str, Any]) -> bool:
    return view["status"] == "succeeded" and bool((view.get("result") or {}).get("promoted"))


def _refusal(view: dict[str, Any]) -> str:
    if view["status"] != "succeeded":
        return f"job {view['status']}: {view.get('error')}"
    return str(view["result"]["gate"]["reason"])


def _stages(view: dict[str, Any]) -> str:
    """The job's seconds by stage (where the latency goes), e.g. " (dataset 1.2, train 9.8)"."""
    laps = (view.get("result") or {}).get("seconds") or {}
    return f" ({', '.join(f'{k} {v:.1f}' for k, v in laps.items())})" if laps else ""


def _share(part: int, whole: int) -> str:
    return f"{part}/{whole} ({part / whole:.0%})" if whole else "-"


def single_facts(bench: Bench, chosen: list[Fact]) -> dict[str, Any]:
    rows = []
    for fact in chosen:
        interactions = bench.teach(fact)
        view, seconds = bench.train()
        check = bench.check(fact)
        latency = seconds if _promoted(view) and check.taught else None
        kept_n, known_n, kept_g, known_g = bench.unchanged({fact.shape})
        rows.append((fact, view, check, latency, (kept_n, known_n, kept_g, known_g)))
        print(
            f"  fact {fact.id:3d} {fact.shape:<9} promoted {_promoted(view)!s:<5} taught "
            f"{check.taught!s:<5} paraphrases {sum(check.paraphrases)}/{len(check.paraphrases)} "
            f"neighbours {kept_n}/{known_n} general {kept_g}/{known_g} "
            f"{f'{seconds:.1f}s' if latency else ''}"
            f"{'' if _promoted(view) else ' refused: ' + _refusal(view)}"
            f"{_stages(view)}",
            flush=True,
        )
        bench.reset(interactions)
    latencies = [r[3] for r in rows if r[3] is not None]
    return {
        "facts": len(rows),
        "jobs": len(rows),
        "promoted": sum(_promoted(r[1]) for r in rows),
        "taught": sum(r[2].taught for r in rows),
        "generalized": sum(_promoted(r[1]) and r[2].generalized for r in rows),
        "neighbours": (sum(r[4][0] for r in rows), sum(r[4][1] for r in rows)),
        "general": (sum(r[4][2] for r in rows), sum(r[4][3] for r in rows)),
        "latency": latencies,
    }


def batch_job(bench: Bench, chosen: list[Fact]) -> dict[str, Any]:
    interactions = [i for fact in chosen for i in bench.teach(fact)]
    view, seconds = bench.train()
    checks = [bench.check(fact) for fact in chosen]
    kept_n, known_n, kept_g, known_g = bench.unchanged({fact.shape for fact in chosen})
    print(
        f"  {len(chosen)} facts in one job: promoted {_promoted(view)}, {seconds:.0f}s"
        f"{'' if _promoted(view) else ', refused: ' + _refusal(view)}",
        flush=True,
    )
    bench.reset(interactions)
    return {
        "facts": len(chosen),
        "jobs": 1,
        "promoted": int(_promoted(view)),
        "taught": sum(c.taught for c in checks),
        "generalized": sum(c.generalized for c in checks),
        "neighbours": (kept_n, known_n),
        "general": (kept_g, known_g),
        "latency": [seconds] if _promoted(view) else [],
    }


def sequence(bench: Bench, chosen: list[Fact], per_job: int) -> dict[str, Any]:
    interactions: list[str] = []
    taught: list[Fact] = []
    promoted = 0
    last: list[Check] = []
    for start in range(0, len(chosen), per_job):
        group = chosen[start : start + per_job]
        interactions += [i for fact in group for i in bench.teach(fact)]
        taught += group
        view, _ = bench.train()
        promoted += _promoted(view)
        last = [bench.check(fact) for fact in taught]
        earlier = last[: len(taught) - len(group)]
        print(
            f"  version {start // per_job + 1}: promoted {_promoted(view)!s:<5} new facts "
            f"{sum(c.taught for c in last[-len(group) :])}/{len(group)} taught; earlier facts "
            f"{sum(c.taught for c in earlier)}/{len(earlier)} taught, "
            f"{sum(c.generalized for c in earlier)}/{len(earlier)} on both paraphrases"
            f"{'' if _promoted(view) else ' refused: ' + _refusal(view)}",
            flush=True,
        )
    kept_n, known_n, kept_g, known_g = bench.unchanged({fact.shape for fact in chosen})
    bench.reset(interactions)
    return {
        "facts": len(chosen),
        "jobs": -(-len(chosen) // per_job),
        "promoted": promoted,
        "taught": sum(c.taught for c in last),
        "generalized": sum(c.generalized for c in last),
        "neighbours": (kept_n, known_n),
        "general": (kept_g, known_g),
        "latency": [],
    }


def _table(results: dict[str, dict[str, Any]], base: dict[str, Any]) -> None:
    print()
    header = (
        f"{'scenario':<22}{'facts':>6}{'jobs':>6}{'promoted':>14}{'efficacy':>14}"
        f"{'paraphrases':>14}{'neighbours':>14}{'general':>12}{'latency s':>16}"
    )
    print(header)
    print(
        f"{'base model':<22}{base['facts']:>6}{'-':>6}{'-':>14}{_share(*base['taught']):>14}"
        f"{_share(*base['generalized']):>14}{_share(*base['neighbours']):>14}"
        f"{_share(*base['general']):>12}{'-':>16}"
    )
    for name, r in results.items():
        latency = (
            f"{statistics.median(r['latency']):.1f} / {max(r['latency']):.1f}"
            if r["latency"]
            else "-"
        )
        print(
            f"{name:<22}{r['facts']:>6}{r['jobs']:>6}{_share(r['promoted'], r['jobs']):>14}"
            f"{_share(r['taught'], r['facts']):>14}{_share(r['generalized'], r['facts']):>14}"
            f"{_share(*r['neighbours']):>14}{_share(*r['general']):>12}{latency:>16}"
        )
    print("(efficacy: taught question; paraphrases: both paraphrases answered; latency: median /")
    print(" max of train request to served answer; neighbours and general: still right, of those")
    print(" the base answered right)")


def _verdict(results: dict[str, dict[str, Any]]) -> bool:
    def ratio(pair: tuple[int, int]) -> float:
        return pair[0] / pair[1] if pair[1] else 1.0

    figures: dict[str, float] = {}
    if "single facts" in results:
        r = results["single facts"]
        figures["single: promoted and both paraphrases"] = r["generalized"] / r["facts"]
    neighbours = [sum(x) for x in zip(*(r["neighbours"] for r in results.values()), strict=True)]
    general = [sum(x) for x in zip(*(r["general"] for r in results.values()), strict=True)]
    figures["specificity (neighbours unchanged)"] = ratio((neighbours[0], neighbours[1]))
    figures["retention (general known answers)"] = ratio((general[0], general[1]))
    for name, r in results.items():
        if name.startswith("20 facts"):
            figures["20 facts in one job: both paraphrases"] = r["generalized"] / r["facts"]
        if name.startswith("sequence"):
            figures["after 10 versions: earlier facts answered"] = r["taught"] / r["facts"]
    ok = True
    print()
    for name, value in figures.items():
        met = value >= TARGETS[name] - 1e-9
        ok &= met
        print(f"{'PASS' if met else 'MISS'} {name}: {value:.0%} (target {TARGETS[name]:.0%})")
    single = results.get("single facts")
    if single and single["latency"]:
        slowest = max(single["latency"])
        met = slowest <= _LATENCY_TARGET_S
        ok &= met
        print(
            f"{'PASS' if met else 'MISS'} one fact's learning latency: max {slowest:.1f}s "
            f"(target {_LATENCY_TARGET_S:.0f}s)"
        )
    return ok


def _env(settings: list[str]) -> dict[str, str]:
    env = {}
    for text in settings:
        name, _, value = text.partition("=")
        section, _, field = name.partition(".")
        env[f"SELFTUNE_{section.upper()}__{field.upper()}"] = value
    return env


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--full", action="store_true", help="every generated fact")
    parser.add_argument(
        "--scenarios", default="single,batch,sequence", help="comma-separated scenarios to run"
    )
    parser.add_argument("--single", type=int, default=None, help="how many single facts")
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument("settings", nargs="*", help="server settings, section.name=value")
    args = parser.parse_args()
    scenarios = set(args.scenarios.split(","))
    every = facts()
    n_single = args.single or (len(every) if args.full else _SAMPLE_SINGLE)
    single = every[:n_single]
    # The batch and the sequence take facts the single scenario's sample does not.
    batch = every[_SAMPLE_SINGLE : _SAMPLE_SINGLE + _BATCH]
    seq = every[_SAMPLE_SINGLE + _BATCH : _SAMPLE_SINGLE + _BATCH + _SEQUENCE_JOBS * _PER_JOB]
    results: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory(prefix="selftune-editing-") as tmp:
        env = _env(args.settings)
        with running_server(Path(tmp) / "data", env=env, timeout=1800) as server:
            bench = Bench(server)
            bench.measure_base()
            chosen = {"single": single, "batch": batch, "sequence": seq}
            used = {f.id: f for name in scenarios for f in chosen[name]}.values()
            base_checks = [bench.check(f) for f in used]
            print(f"knowledge editing, settings {args.settings or 'defaults'}", flush=True)
            base = {
                "facts": len(base_checks),
                "taught": (sum(c.taught for c in base_checks), len(base_checks)),
                "generalized": (sum(c.generalized for c in base_checks), len(base_checks)),
                "neighbours": (sum(bench.base_neighbours.values()), len(bench.base_neighbours)),
                "general": (sum(bench.base_general.values()), len(bench.base_general)),
            }
            if "single" in scenarios:
                print(f"one fact per job ({len(single)} facts):", flush=True)
                results["single facts"] = single_facts(bench, single)
            if "batch" in scenarios:
                print(f"{len(batch)} facts in one job:", flush=True)
                results[f"{len(batch)} facts, one job"] = batch_job(bench, batch)
            if "sequence" in scenarios:
                print(f"{_SEQUENCE_JOBS} jobs of {_PER_JOB} facts in sequence:", flush=True)
                results["sequence of versions"] = sequence(bench, seq, _PER_JOB)
    _table(results, base)
    ok = _verdict(results)
    if args.json:
        args.json.write_text(json.dumps({"base": base, "results": results}, indent=1))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
