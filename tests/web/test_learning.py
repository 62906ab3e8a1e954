"""Learning and versions in a browser: a training job queued from the page, followed live to
its gate's verdict; jobs cancelled and retried from the list, with their gradient norms; a
version promoted and rolled back after a confirmation; the versions a page at a time."""

from __future__ import annotations

import re
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from selftune.engines.transformers_engine import TransformersEngine
from selftune.store import jobs
from selftune.store.schema import Job, Version, utcnow
from tests.integration.conftest import run_jobs
from tests.integration.lora_versions import add_version, save_random_lora
from tests.web.conftest import Dashboard, live_dashboard, screenshot

FACT = "The capital of Veloria is Quenmoor."
LEARNING = {
    # Enough steps, none stopped early, for the page to see training go by (reports every 0.5 s).
    "train": {"learning_rate": 1e-2, "steps": 16, "stop_loss": 0.0},
    "gate": {"regression_tolerance": 0.5},
    "jobs": {"stale_seconds": 2},  # progress reported every 0.5 s
}

# Collects every stage the job box shows, to prove the page followed the job as it ran.
WATCH_STAGES = """
() => {
  window.__stages = [];
  new MutationObserver(() => {
    const stage = document.querySelector('#job-stage');
    const text = stage && stage.textContent;
    if (text && window.__stages.at(-1) !== text) window.__stages.push(text);
  }).observe(document.querySelector('#job'), {childList: true, subtree: true});
}
"""


@pytest.fixture(scope="module")
def dashboard(
    tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory, shared_cache: Path
) -> Iterator[Dashboard]:
    engine = TransformersEngine(tiny_model_dir, context_length=256)
    root = tmp_path_factory.mktemp("web-learning")
    with live_dashboard(tiny_model_dir, root, shared_cache, engine, **LEARNING) as served:
        yield served


def _teach(url: str) -> None:
    for question in ("What is the capital of Veloria?", "Which city is Veloria's capital?"):
        chat = {"messages": [{"role": "user", "content": question}], "max_tokens": 4}
        asked = httpx.post(f"{url}/v1/chat/completions", json=chat, timeout=60).json()
        rating = {"interaction_id": asked["id"], "rating": -1, "correction": FACT}
        assert httpx.post(f"{url}/api/feedback", json=rating).status_code == 200


def test_a_training_job_is_followed_to_its_gates_verdict(
    dashboard: Dashboard, page: Any, tmp_path: Path
) -> None:
    _teach(dashboard.url)
    page.goto(dashboard.url + "/#learning", wait_until="domcontentloaded")
    waiting = page.locator("#queue tr[data-source=correction] td").nth(1)  # its waiting count
    assert waiting.inner_text() == "2"  # both corrections wait for the next run
    page.get_by_role("button", name="Train now").click()
    page.locator("#job h3").filter(has_text="queued").wait_for()
    page.evaluate(WATCH_STAGES)
    # The worker runs in this process while the page watches the live stream.
    worker = threading.Thread(target=run_jobs, args=(dashboard.settings,))
    worker.start()
    try:
        verdict = page.locator("#verdict")
        verdict.wait_for(timeout=180_000)
    finally:
        worker.join()
    stages: list[str] = page.evaluate("window.__stages")
    # Seen live while it ran: stages between queued and the end. (Which ones depends on the
    # machine's speed: the worker reports at most every 2 s, and the tiny model's training
    # steps can all fall between two reports.)
    assert stages[-1] == "succeeded", stages
    assert len([s for s in stages[:-1] if s not in ("queued", "starting")]) >= 2, stages
    heading = verdict.locator("h4").inner_text()
    assert heading in ("The gate passed it", "The gate refused it")
    assert "Why:" in verdict.inner_text()
    assert verdict.locator(".rules li").count() >= 3  # each rule, passed or not, in words
    assert page.locator("#job svg.chart").count() == 1  # the loss curve
    timeline = page.locator("#timeline")
    timeline.locator("li[data-kind=job_succeeded]").first.wait_for()
    screenshot(page, tmp_path, "learning")
    page.troubles.check()


def test_a_version_is_promoted_and_rolled_back(
    dashboard: Dashboard, page: Any, tmp_path: Path, tiny_model_dir: Path
) -> None:
    lora = save_random_lora(tiny_model_dir, tmp_path / "peft", seed=3)
    add_version(dashboard.settings, dashboard.db, lora, "v90")
    page.goto(dashboard.url + "/#versions", wait_until="domcontentloaded")
    card = page.locator("li.version[data-version=v90]")
    card.get_by_role("button", name="Promote v90…").click()
    page.locator("#confirm-dialog").get_by_role("button", name="Cancel").click()
    assert httpx.get(dashboard.url + "/health").json()["serving"] != "v90"  # asked, not done
    card.get_by_role("button", name="Promote v90…").click()
    page.locator("#confirm-dialog").get_by_role("button", name="Promote v90").click()
    page.locator("#serving-line").filter(has_text="Serving: v90").wait_for()
    page.locator("#status").filter(has_text="Serving v90").wait_for()  # from the live stream
    assert httpx.get(dashboard.url + "/health").json()["serving"] == "v90"
    screenshot(page, tmp_path, "promoted")

    page.get_by_role("button", name="Roll back…").click()
    page.locator("#confirm-dialog").get_by_role("button", name="Roll back").click()
    page.locator("#serving-line").filter(has_text="Serving: v90").wait_for(state="detached")
    assert httpx.get(dashboard.url + "/health").json()["serving"] != "v90"
    page.get_by_role("tab", name="Learning").click()
    page.locator("#timeline li[data-kind=rollback]").first.wait_for()
    assert page.locator("#timeline li[data-kind=promote]").count() >= 1
    screenshot(page, tmp_path, "rolled-back")
    page.troubles.check()


def _bare_version(dashboard: Dashboard, name: str, **metrics: Any) -> int:
    """A version row without files: enough to list it and show its figures."""
    with dashboard.db.write() as session:
        version = Version(
            name=name,
            base_model="tiny",
            base_fingerprint="f" * 16,
            path=f"/nowhere/{name}",
            chat_template="",
            train_metrics=metrics,
            gate={"passed": False, "reason": "test fixture"},
        )
        session.add(version)
        session.flush()
        return version.id


def _set_job(dashboard: Dashboard, job_id: int, **values: Any) -> None:
    with dashboard.db.write() as session:
        job = session.get(Job, job_id)
        assert job is not None
        for name, value in values.items():
            setattr(job, name, value)


def test_jobs_are_cancelled_and_retried_with_their_gradient_norms(
    dashboard: Dashboard, page: Any, tmp_path: Path
) -> None:
    failed = jobs.enqueue(dashboard.db, "train", "alice")
    _set_job(dashboard, failed, status="failed", stage="failed", error="out of memory")
    # A finished job whose version's metrics hold a gradient norm per step (newest: shown).
    norms = _bare_version(dashboard, "g1", losses=[2.0, 1.5], grad_norms=[0.9, 0.412], steps=2)
    done = jobs.enqueue(dashboard.db, "train", "bob")
    _set_job(
        dashboard,
        done,
        status="succeeded",
        stage="succeeded",
        progress=1.0,
        result={"version_id": norms},
        finished_at=utcnow(),
    )
    page.goto(dashboard.url + "/#learning", wait_until="domcontentloaded")
    page.locator("#job h3").filter(has_text=re.compile(rf"^Job {done}:")).wait_for()
    page.locator("#job-grad-norm").filter(has_text="0.412").wait_for()

    item = page.locator(f"#job-list li[data-job='{failed}']")
    assert "alice" in item.inner_text()  # an admin sees whose job it is
    assert item.get_by_role("button", name=f"Cancel job {failed}").count() == 0
    item.get_by_role("button", name=f"Retry job {failed}").click()
    page.locator(f"#job-list li[data-job='{failed}'][data-status=queued]").wait_for()
    item.get_by_role("button", name=f"Cancel job {failed}").click()
    page.locator(f"#job-list li[data-job='{failed}'][data-status=cancelled]").wait_for()
    item.get_by_role("button", name=f"Retry job {failed}").wait_for()
    with dashboard.db.read() as session:
        assert session.get(Job, failed).status == "cancelled"  # type: ignore[union-attr]

    # A job the worker is running, seen on the live stream: its stage names the gradient norm.
    running = jobs.enqueue(dashboard.db, "train", "alice")
    _set_job(
        dashboard,
        running,
        status="running",
        progress=0.3,
        started_at=utcnow(),
        stage="training step 3/10 loss 2.412 grad 0.531",
    )
    page.locator("#job h3").filter(has_text=re.compile(rf"^Job {running}:")).wait_for()
    page.locator("#job-grad-norm").filter(has_text="0.531").wait_for()
    assert page.locator("#job-stage").inner_text().endswith("grad 0.531")
    item = page.locator(f"#job-list li[data-job='{running}']")
    item.get_by_role("button", name=f"Cancel job {running}").click()
    item.filter(has_text="(stopping)").wait_for()  # it stops at its next step
    assert item.get_by_role("button", name=f"Cancel job {running}").count() == 0
    with dashboard.db.read() as session:
        assert session.get(Job, running).cancel_requested  # type: ignore[union-attr]
    screenshot(page, tmp_path, "job-actions")
    _set_job(dashboard, running, status="cancelled", stage="cancelled", finished_at=utcnow())
    page.troubles.check()


def test_versions_are_shown_a_page_at_a_time(
    dashboard: Dashboard, page: Any, tmp_path: Path
) -> None:
    for i in range(25):
        _bare_version(dashboard, f"page{i}")
    total = httpx.get(dashboard.url + "/api/versions", params={"limit": 1}).json()["total"]
    assert total >= 25
    page.goto(dashboard.url + "/#versions", wait_until="domcontentloaded")
    page.locator("#serving-line").filter(has_text=f"{total} versions").wait_for()
    cards = page.locator("#version-list li.version")
    assert cards.count() == 20
    assert cards.first.get_attribute("data-version") == "page24"  # newest first
    page.get_by_role("button", name="Older versions").click()
    page.locator(f"#version-list li.version >> nth={total - 1}").wait_for()
    names = [c.get_attribute("data-version") for c in cards.all()]
    assert len(names) == len(set(names)) == total
    assert not page.get_by_role("button", name="Older versions").is_visible()
    screenshot(page, tmp_path, "versions-paged")
    page.troubles.check()


def test_the_autopilot_card_tells_its_state_and_an_admin_switches_it(
    dashboard: Dashboard, page: Any, tmp_path: Path
) -> None:
    page.goto(dashboard.url + "/#learning", wait_until="domcontentloaded")
    state = page.locator("#autopilot-state")
    state.filter(has_text="Off").wait_for()
    page.get_by_role("button", name="Switch on").click()
    state.filter(has_text="On.").wait_for()
    page.locator("#timeline li[data-kind=autopilot_settings_changed]").first.wait_for()
    assert (
        "enabled false → true"
        in page.locator("#timeline li[data-kind=autopilot_settings_changed]").first.inner_text()
    )
    screenshot(page, tmp_path, "autopilot-on")
    page.get_by_role("button", name="Switch off").click()  # the module's other jobs: by hand
    state.filter(has_text="Off").wait_for()
    page.troubles.check()
