"""The dashboard with a big store: time to first render of each panel.

Run with ``python -m bench.dashboard``. It fills a fresh SQLite store with ``INTERACTIONS``
recorded chats (from ``USERS`` users, a fifth of them rated or corrected), ``VERSIONS`` trained
versions (a lineage, each with its training figures and a gate decision holding rules, changed
known answers and held-out answers), their jobs and the events they wrote, and ``IMPORTS``
finished imports; then serves it with the default model (llama.cpp) on a loopback port in this
process and opens each panel in headless Chromium (Debian's, through Playwright), ``ROUNDS``
times in a fresh browser context.

Time to first render is from the navigation's start (``performance.timeOrigin``) to the moment
the panel shows its data: the chat's first page of past chats, the learning panel's job and
timeline, the first page of versions (``VERSIONS_PAGE``), the imports. Memory is off here (its
panel needs an embedding model and is not timed). Printed per panel: the median and the
slowest of the rounds, and the API calls behind them (median of ``ROUNDS`` calls each, over
HTTP on loopback).
"""

from __future__ import annotations

import datetime as dt
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import insert

from bench.serving import served_in_process
from selftune.config import load_settings
from selftune.engines.factory import build_engine
from selftune.store.db import Database
from selftune.store.schema import (
    Conversation,
    Event,
    Feedback,
    ImportRecord,
    Interaction,
    Job,
    TrainingExample,
    User,
    Version,
    VersionExample,
)

INTERACTIONS = 10_000
VERSIONS = 100
USERS = 20
IMPORTS = 200
ROUNDS = 5
VERSIONS_PAGE = 20  # the versions panel's page (web/versions.js)
CHROMIUM = "/usr/bin/chromium"
# What each panel shows once its data is in: a JavaScript condition on the page.
PANELS = {
    "chat": "document.querySelectorAll('#history-list li').length >= 30",
    "learning": "document.querySelector('#job h3') && document.querySelectorAll('#timeline li')"
    ".length >= 30",
    "versions": "document.querySelectorAll('#version-list li.version').length === "
    f"{min(VERSIONS, VERSIONS_PAGE)}",
    "import": f"document.querySelectorAll('#import-list li.import').length === {min(IMPORTS, 100)}",
}
API_CALLS = {
    "chat": ["/api/me", "/api/interactions?kind=chat&limit=30"],
    # The shown job's version: the newest older than the next id, one.
    "learning": [
        "/api/jobs",
        "/api/events?limit=30",
        f"/api/versions?before={VERSIONS + 1}&limit=1",
    ],
    "versions": [f"/api/versions?limit={VERSIONS_PAGE}", "/api/versions"],
    "import": ["/api/imports?limit=100"],
}


def _gate(rng: random.Random, passed: bool) -> dict[str, Any]:
    """A gate decision shaped as evaluation.gate.decide writes it."""
    figures = {
        "new_recall_current": 0.0,
        "new_recall_candidate": 1.0 if passed else 0.5,
        "new_loss_current": round(rng.uniform(2, 3), 4),
        "new_loss_candidate": round(rng.uniform(0.1, 1), 4),
        "regression_loss_current": 1.2,
        "regression_loss_candidate": round(rng.uniform(1.1, 1.4), 4),
        "retention_candidate": 1.0 if passed else 0.9,
        "heldout_examples": 2,
        "regression_questions": 31,
    }
    rules = [
        {"rule": name, "passed": passed or name != "retention", "detail": f"{name}: figures"}
        for name in ("new material", "regression loss", "retention", "forgetting")
    ]
    changed = [
        {"question": f"Known question {i}?", "served_answer": "Paris.", "candidate_answer": "Lyon."}
        for i in range(0 if passed else 2)
    ]
    heldout = [
        {"question": f"Held-out question {i}?", "expected": "Quenmoor.", "recall": 1.0}
        for i in range(2)
    ]
    return {
        "passed": passed,
        "reason": "better on new material, no regression" if passed else "it lost known answers",
        "figures": figures,
        "policy": {"min_improvement": 0.05},
        "rules": rules,
        "decided_by": [] if passed else ["retention"],
        "changed_known_answers": changed,
        "heldout": heldout,
    }


def fill_store(db: Database, versions_dir: Path) -> None:
    """The store a busy server would have: see the module's docstring."""
    rng = random.Random(7)
    start = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
    users = [f"user{i}" for i in range(USERS)]
    interactions: list[dict[str, Any]] = []
    conversations: list[dict[str, Any]] = []
    feedback: list[dict[str, Any]] = []
    examples: list[dict[str, Any]] = []
    for i in range(INTERACTIONS):
        user = users[i % USERS]
        moment = start + dt.timedelta(minutes=i)
        conversations.append({"id": f"conv-{i}", "user_id": user, "created_at": moment})
        question = f"Question {i}: what is the capital of place number {rng.randrange(1000)}?"
        interactions.append(
            {
                "id": f"chatcmpl-{i:06d}",
                "user_id": user,
                "conversation_id": f"conv-{i}",
                "kind": "chat",
                "model": "selftune",
                "version_id": None,
                "messages": [{"role": "user", "content": question}],
                "response": "An answer of a few sentences, as a small model writes them. " * 4,
                "finish_reason": "stop",
                "prompt_tokens": 20,
                "completion_tokens": 48,
                "latency_ms": 250.0,
                "created_at": moment,
            }
        )
        if i % 5 == 0:
            rating = -1 if i % 10 == 0 else 1
            feedback.append(
                {
                    "id": len(feedback) + 1,
                    "interaction_id": f"chatcmpl-{i:06d}",
                    "user_id": user,
                    "rating": rating,
                    "correction": "The right answer." if rating < 0 else None,
                    "created_at": moment,
                }
            )
            examples.append(
                {
                    "id": len(examples) + 1,
                    "user_id": user,
                    "source": "correction" if rating < 0 else "rating",
                    "interaction_id": f"chatcmpl-{i:06d}",
                    "feedback_id": len(feedback),
                    "messages": [
                        {"role": "user", "content": question},
                        {"role": "assistant", "content": "The right answer."},
                    ],
                    "active": True,
                    "state": "kept",
                    "created_at": moment,
                }
            )
    jobs: list[dict[str, Any]] = []
    versions: list[dict[str, Any]] = []
    roles: list[dict[str, Any]] = []
    events: list[dict[str, Any]] = []
    for v in range(1, VERSIONS + 1):
        moment = start + dt.timedelta(hours=v)
        passed = v % 4 != 0
        gate = _gate(rng, passed)
        result = {"version_id": v, "version": f"v{v}", "promoted": passed, "gate": gate}
        jobs.append(
            {
                "id": v,
                "kind": "train",
                "status": "succeeded",
                "user_id": users[v % USERS],
                "params": {"reason": "bench"},
                "progress": 1.0,
                "stage": "succeeded",
                "result": result,
                "attempts": 1,
                "cancel_requested": False,
                "created_at": moment,
                "started_at": moment,
                "finished_at": moment + dt.timedelta(minutes=2),
            }
        )
        losses = [round(3 * 0.9**step + rng.uniform(0, 0.05), 5) for step in range(30)]
        versions.append(
            {
                "id": v,
                "name": f"v{v}",
                "base_model": "default",
                "base_fingerprint": "f" * 16,
                "parent_id": v - 1 if v > 1 else None,
                "job_id": v,
                "path": str(versions_dir / f"v{v}"),
                "chat_template": "",
                "train_metrics": {
                    "losses": losses,
                    "steps": 30,
                    "config": {"learning_rate": 1e-3, "warmup_steps": 3},
                },
                "eval_metrics": {},
                "gate": gate,
                "created_at": moment,
            }
        )
        for e in range(10):
            example = (v * 10 + e) % len(examples) + 1
            roles.append(
                {"version_id": v, "example_id": example, "role": "heldout" if e < 2 else "train"}
            )
        for kind in ("job_queued", "job_started", "job_succeeded"):
            events.append(
                {"kind": kind, "payload": {"job_id": v, "kind": "train"}, "created_at": moment}
            )
        if passed:
            payload = {"version_id": v, "previous": v - 1, "actor": "ops"}
            events.append({"kind": "promote", "payload": payload, "created_at": moment})
    imports = [
        {
            "id": i,
            "user_id": users[i % USERS],
            "kind": "file",
            "source": f"notes-{i}.md",
            "tags": ["notes"],
            "shared": False,
            "state": "succeeded",
            "counts": {"documents": 1, "chunks": 3, "examples_made": 0, "duplicates_dropped": 0},
            "created_at": start + dt.timedelta(minutes=i),
            "finished_at": start + dt.timedelta(minutes=i, seconds=5),
        }
        for i in range(1, IMPORTS + 1)
    ]
    with db.write() as session:
        session.execute(insert(User), [{"id": u} for u in [*users, "anonymous"]])
        session.execute(insert(Conversation), conversations)
        session.execute(insert(Interaction), interactions)
        session.execute(insert(Feedback), feedback)
        session.execute(insert(TrainingExample), examples)
        session.execute(insert(Job), jobs)
        session.execute(insert(Version), versions)
        session.execute(insert(VersionExample), roles)
        session.execute(insert(Event), events)
        session.execute(insert(ImportRecord), imports)


def _median_ms(samples: list[float]) -> str:
    return f"{statistics.median(samples) * 1000:7.1f} ms"


def time_api(client: httpx.Client) -> dict[str, list[float]]:
    timings: dict[str, list[float]] = {}
    for calls in API_CALLS.values():
        for path in calls:
            for _ in range(ROUNDS):
                began = time.perf_counter()
                client.get(path).raise_for_status()
                timings.setdefault(path, []).append(time.perf_counter() - began)
    return timings


def time_panels(url: str) -> dict[str, list[float]]:
    """Milliseconds from navigation start to each panel showing its data, per round."""
    from playwright.sync_api import sync_playwright

    renders: dict[str, list[float]] = {name: [] for name in PANELS}
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True)
        try:
            for _ in range(ROUNDS):
                for name, shown in PANELS.items():
                    # The conditions are evaluated as strings, which the page's policy forbids.
                    context = browser.new_context(bypass_csp=True)
                    page = context.new_page()
                    page.goto(f"{url}/#{name}", wait_until="commit")
                    page.wait_for_function(shown, timeout=60_000, polling="raf")
                    renders[name].append(page.evaluate("performance.now()") / 1000)
                    context.close()
        finally:
            browser.close()
    return renders


def main() -> int:
    if not Path(CHROMIUM).exists():
        print(f"bench.dashboard: needs Debian's chromium at {CHROMIUM} (make sysdeps)")
        return 1
    with tempfile.TemporaryDirectory(prefix="bench-dashboard-") as folder:
        data_dir = Path(folder) / "data"
        settings = load_settings(data_dir=data_dir, memory={"enabled": False})
        db = Database(settings.resolved_database_url)
        db.migrate()
        began = time.perf_counter()
        fill_store(db, settings.versions_dir)
        db.dispose()
        print(
            f"store: {INTERACTIONS} interactions from {USERS} users, {VERSIONS} versions, "
            f"{IMPORTS} imports, filled in {time.perf_counter() - began:.1f} s"
        )
        from selftune.models.base import resolve_base_model

        engine = build_engine(settings, resolve_base_model(settings.base_model))
        try:
            with served_in_process(engine, data_dir, memory={"enabled": False}) as client:
                api = time_api(client)
                renders = time_panels(str(client.base_url).rstrip("/"))
        finally:
            close = getattr(engine, "close", None)
            if close is not None:
                close()
    print(f"time to first render, median and slowest of {ROUNDS} (headless Chromium):")
    for name, samples in renders.items():
        print(f"  {name:<9} {_median_ms(samples)}  (slowest {max(samples) * 1000:.1f} ms)")
        for path in API_CALLS[name]:
            print(f"    GET {path:<40} {_median_ms(api[path])}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
