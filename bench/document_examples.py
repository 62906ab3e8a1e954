"""Which training examples made from an imported text make the model answer questions about it.

Generated documents of made-up facts (bench.editing_facts, a seed nothing was tuned on) are
imported as text through ``POST /api/import`` with ``imports.examples`` set to each kind in
turn (``qa``, ``continuation``, ``both``), each on a fresh server with the default model. A
training job then learns the examples the import made, and the served version is asked each
fact's paraphrased questions, which no example contains. Answers are judged by the fact's value
as a whole word or number (selftune.evaluation.matching). The base model's answers are measured
first, on the same questions.

    python -m bench.document_examples            # 12 facts in 2 documents, 3 kinds
    python -m bench.document_examples --facts 24
    python -m bench.document_examples --kinds qa --seed 5   # other facts, same shapes
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.editing_facts import Fact, facts
from bench.scenario import Server, running_server
from selftune.evaluation.matching import mentions

SEED = 20261207  # the facts' seed; the knowledge-editing benchmark uses 0
KINDS = ("qa", "continuation", "both")
PER_DOCUMENT = 6
ANSWER_TOKENS = 32


def documents(chosen: list[Fact]) -> list[tuple[str, str]]:
    """(title, text) of documents of PER_DOCUMENT facts each: one statement per fact, in the
    varied wording the fact's teaching gives, as an encyclopaedia page would state them."""
    made = []
    for start in range(0, len(chosen), PER_DOCUMENT):
        group = chosen[start : start + PER_DOCUMENT]
        statements = [f.teaching[-1][1] for f in group]
        title = f"Notes on {group[0].subject.removeprefix('the ')}"
        made.append((title, " ".join(statements)))
    return made


def answered(server: Server, chosen: list[Fact]) -> tuple[int, int]:
    """(paraphrased questions answered with the fact's value, questions asked)."""
    right = total = 0
    for fact in chosen:
        for question in fact.paraphrases:
            reply = server.chat(question, max_tokens=ANSWER_TOKENS)
            right += mentions(str(reply["choices"][0]["message"]["content"]), fact.answer)
            total += 1
    return right, total


def run_kind(kind: str, chosen: list[Fact], root: Path) -> dict[str, Any]:
    env = {"SELFTUNE_IMPORTS__EXAMPLES": kind}
    with running_server(root / kind, env=env, timeout=1800) as server:
        base = answered(server, chosen)
        made = not_kept = 0
        for title, text in documents(chosen):
            queued = server.client.post("/api/import", json={"text": text, "title": title})
            queued.raise_for_status()
            view = server.wait_job(queued.json()["job_id"], timeout=600)
            assert view["status"] == "succeeded", view
            imported = server.client.get(f"/api/imports/{queued.json()['import_id']}").json()
            made += imported["examples_made"]
            not_kept += imported["examples_not_kept"]
        started = time.monotonic()
        job = server.client.post("/api/train", json={}).json()
        view = server.wait_job(job["job_id"], timeout=3600)
        result = view.get("result") or {}
        promoted = view["status"] == "succeeded" and bool(result.get("promoted"))
        if promoted:
            server.wait_serving(result["version"])
        seconds = time.monotonic() - started
        after = answered(server, chosen)
        for item in (result.get("gate") or {}).get("heldout", []):  # what the gate judged
            print(
                f"  held out: {item['question']!r} expects {item['expected_terms']}; "
                f"candidate: {item['candidate_answer']!r}",
                flush=True,
            )
    return {
        "kind": kind,
        "examples": made,
        "not_kept": not_kept,
        "promoted": promoted,
        "why": "" if promoted else str((result.get("gate") or {}).get("reason", view["status"])),
        "base": base,
        "after": after,
        "seconds": seconds,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--facts", type=int, default=12, help="facts, in documents of 6")
    parser.add_argument("--kinds", default=",".join(KINDS), help="comma-separated kinds")
    parser.add_argument("--seed", type=int, default=SEED, help="the facts' seed")
    args = parser.parse_args()
    chosen = facts(args.facts, seed=args.seed)
    rows = []
    with tempfile.TemporaryDirectory(prefix="selftune-document-examples-") as tmp:
        for kind in args.kinds.split(","):
            print(f"{kind}: importing, training, asking ...", flush=True)
            rows.append(run_kind(kind, chosen, Path(tmp)))
    print(f"\n{len(chosen)} facts in {len(documents(chosen))} documents; paraphrased questions:")
    print(f"{'kind':<13} {'examples':>8} {'promoted':>8} {'base':>9} {'after':>9} {'job s':>7}")
    for row in rows:
        base = f"{row['base'][0]}/{row['base'][1]}"
        after = f"{row['after'][0]}/{row['after'][1]}"
        print(
            f"{row['kind']:<13} {row['examples']:>8} {row['promoted']!s:>8} {base:>9} "
            f"{after:>9} {row['seconds']:>7.0f}" + (f"  ({row['why']})" if row["why"] else "")
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
