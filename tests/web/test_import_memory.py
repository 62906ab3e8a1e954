"""Import and memory in a browser, memory turned on (the real embedding model): a file
chosen in the page is imported by the worker while the page follows it to what it made; a
note is found by a search with a tag filter; tags are listed with their counts; a user deletes
their own memory after a confirmation."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from selftune.engines.transformers_engine import TransformersEngine
from tests.integration.conftest import run_jobs
from tests.web.conftest import Dashboard, live_dashboard, screenshot

GARDEN = (
    "# Compost\n\nCompost heaps need turning every week so that air reaches the middle. Mix "
    "green kitchen scraps with brown leaves, one part to three.\n"
)


@pytest.fixture(scope="module")
def dashboard(
    tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory, shared_cache: Path
) -> Iterator[Dashboard]:
    engine = TransformersEngine(tiny_model_dir, context_length=1024)
    root = tmp_path_factory.mktemp("web-memory")
    with live_dashboard(
        tiny_model_dir,
        root,
        shared_cache,
        engine,
        memory={"enabled": True},
        serve={"context_length": 1024},
    ) as served:
        yield served


def _settle(dashboard: Dashboard) -> None:
    memory = dashboard.app.state.selftune.memory
    assert memory is not None and memory.settle(60), memory.error


def test_a_file_is_imported_and_its_results_shown(
    dashboard: Dashboard, page: Any, tmp_path: Path
) -> None:
    upload = tmp_path / "compost.md"
    upload.write_text(GARDEN)
    page.goto(dashboard.url + "/#import", wait_until="domcontentloaded")
    page.fill("#import-tags", "garden")
    page.set_input_files("#file-input", str(upload))
    card = page.locator("li.import").filter(has_text="compost.md")
    card.locator(".badge").filter(has_text="queued").wait_for()
    run_jobs(dashboard.settings)  # the worker, here; the page hears of it on the live stream
    card.locator(".badge").filter(has_text="succeeded").wait_for()
    made = card.locator(".made").inner_text()
    assert made.startswith("1 documents, 1 chunks"), made
    assert "tags: garden" in card.inner_text()
    screenshot(page, tmp_path, "import")
    page.troubles.check()


def test_memory_is_searched_with_tags_and_deleted(
    dashboard: Dashboard, page: Any, tmp_path: Path
) -> None:
    for text, tags in [
        ("The wifi password is lantern-42.", ["home"]),
        ("The garden shed key hangs by the back door.", ["garden"]),
    ]:
        assert httpx.post(
            dashboard.url + "/api/memory", json={"text": text, "tags": tags}
        ).is_success
    _settle(dashboard)
    page.goto(dashboard.url + "/#memory", wait_until="domcontentloaded")
    page.locator("#tag-list").get_by_role("button", name="home (1)").wait_for()
    page.fill("#memory-query", "where is the key")
    page.fill("#memory-tags", "garden")
    page.get_by_role("button", name="Search", exact=True).click()
    hits = page.locator("#memory-results li.hit")
    hits.first.wait_for()
    texts = hits.all_inner_texts()
    assert any("shed key" in t for t in texts), texts
    assert not any("wifi" in t for t in texts), texts  # filtered out by its tag
    page.locator("#tag-list").get_by_role("button", name="home (1)").click()
    page.locator("#tag-summary").filter(has_text="No summary yet").wait_for()
    screenshot(page, tmp_path, "memory-search")

    page.get_by_role("button", name="Delete my memory…").click()
    page.locator("#confirm-dialog").get_by_role("button", name="Delete").click()
    page.locator("#notice").filter(has_text="Deleted").wait_for()
    page.locator("#tag-list").get_by_role("button", name="home (1)").wait_for(state="detached")
    found = httpx.post(dashboard.url + "/api/memory/search", json={"query": "wifi password"})
    assert found.json()["data"] == []
    screenshot(page, tmp_path, "memory-deleted")
    page.troubles.check()
