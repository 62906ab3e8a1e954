"""Imports through the API and the worker: ``POST /api/import`` records and queues, the worker's
``import`` job parses and stores, ``GET /api/imports/{id}`` shows what it made, and a refused
input fails with its code and leaves nothing stored. The CLI's ``selftune import`` too."""

from __future__ import annotations

import io
import shutil
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from PIL import Image
from sqlalchemy import func, select
from typer.testing import CliRunner

from selftune.api.app import create_app
from selftune.api.auth import create_key
from selftune.cli import app as cli_app
from selftune.config import Settings
from selftune.data.documents import upload_path
from selftune.engines.transformers_engine import TransformersEngine
from selftune.store.schema import DocumentChunk, ImportedDocument, ImportRecord
from selftune.worker.loop import Worker
from tests.integration.conftest import run_jobs, tiny_settings
from tests.unit.test_imports_images import _with_size, typed_text_png
from tests.unit.test_imports_parsers import HTML, _pdf

needs_tesseract = pytest.mark.skipif(
    shutil.which("tesseract") is None, reason="Tesseract is not installed (make sysdeps)"
)


def _small_png() -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (8, 8), "white").save(out, format="PNG")
    return out.getvalue()


MARKDOWN = b"""# Compost

Compost turns kitchen scraps into soil.

## Greens and browns

Mix green scraps with brown leaves, about one part to three.

## Turning

Turn the heap every week so that air reaches its middle.
"""
OCTET = {"Content-Type": "application/octet-stream"}


def _settings(tiny_model_dir: Path, **imports: Any) -> Settings:
    return tiny_settings(tiny_model_dir, imports={"chunk_chars": 100, **imports})


@pytest.fixture
def served(
    settings_env: Path, tiny_model_dir: Path, tiny_engine: TransformersEngine
) -> Iterator[tuple[TestClient, Settings]]:
    settings = _settings(tiny_model_dir)
    with TestClient(create_app(settings, engine=tiny_engine)) as client:
        yield client, settings


def _imported(client: TestClient, settings: Settings, **request: Any) -> dict[str, Any]:
    queued = client.post("/api/import", **request)
    assert queued.status_code == 202, queued.text
    assert queued.json()["state"] == "queued"
    run_jobs(settings)
    view = client.get(f"/api/imports/{queued.json()['import_id']}")
    assert view.status_code == 200, view.text
    body: dict[str, Any] = view.json()
    return body


def _chunks(client: TestClient) -> list[dict[str, Any]]:
    db = client.app.state.selftune.db  # type: ignore[attr-defined]
    with db.read() as session:
        return [
            {"index": c.index, "text": c.text}
            for c in session.scalars(select(DocumentChunk).order_by(DocumentChunk.index))
        ]


def _stored(client: TestClient) -> tuple[int, int]:
    db = client.app.state.selftune.db  # type: ignore[attr-defined]
    with db.read() as session:
        documents = session.scalar(select(func.count()).select_from(ImportedDocument))
        chunks = session.scalar(select(func.count()).select_from(DocumentChunk))
    return documents or 0, chunks or 0


def test_a_markdown_file_becomes_a_document_with_chunks(
    served: tuple[TestClient, Settings],
) -> None:
    client, settings = served
    view = _imported(
        client,
        settings,
        content=MARKDOWN,
        headers={"Content-Type": "text/markdown"},
        params={"filename": "compost.md", "tags": "garden, soil"},
    )
    assert view["state"] == "succeeded" and view["progress"] == 1.0
    assert view["error"] is None and view["tags"] == ["garden", "soil"]
    assert view["provenance"]["importer"] == "selftune-text"
    assert view["provenance"]["source"] == "compost.md"
    assert view["provenance"]["size"] == len(MARKDOWN)
    [document] = view["documents"]
    assert (document["title"], document["format"]) == ("Compost", "markdown")
    assert document["chunks"] == view["chunks_made"] >= 3
    assert view["examples_made"] >= 3 and "training examples kept" in view["examples_note"]
    made = client.get("/api/examples", params={"source": "import"}).json()["data"]
    assert len(made) == view["examples_made"] + view["examples_not_kept"]
    kept = [e for e in made if e["state"] == "kept"]
    assert all(e["provenance"]["import_id"] == view["id"] for e in made)
    assert {e["provenance"]["kind"] for e in made} == {"qa"}  # imports.examples' default
    turning = next(e for e in kept if "air reaches" in e["messages"][-1]["content"])
    assert turning["messages"][-1]["content"] == (
        "Turn the heap every week so that air reaches its middle."
    )
    assert "“Compost”" in turning["messages"][0]["content"]
    assert turning["provenance"]["chunk"] == next(
        c["index"] for c in _chunks(client) if "air reaches" in c["text"]
    )
    db = client.app.state.selftune.db  # type: ignore[attr-defined]
    with db.read() as session:
        chunks = session.scalars(select(DocumentChunk).order_by(DocumentChunk.index)).all()
    assert ["Compost", "Turning"] in [c.headings for c in chunks]
    listed = client.get("/api/imports").json()
    assert [i["id"] for i in listed["data"]] == [view["id"]] and not listed["has_more"]


def test_a_pdf_a_text_and_the_same_bytes_twice(served: tuple[TestClient, Settings]) -> None:
    client, settings = served
    pdf = _pdf("Bees dance to say where flowers are.", title="Bees")
    view = _imported(client, settings, content=pdf, headers=OCTET, params={"filename": "bees.pdf"})
    assert view["state"] == "succeeded", view
    assert view["documents"][0]["format"] == "pdf"
    assert view["provenance"]["importer"] == "pypdf"
    again = _imported(client, settings, content=pdf, headers=OCTET, params={"filename": "b.pdf"})
    assert again["state"] == "succeeded"
    assert (again["duplicates_dropped"], again["duplicate_of"]) == (1, view["id"])
    assert again["documents"] == []
    text = _imported(client, settings, json={"text": "Ants farm aphids.", "title": "Ants"})
    assert text["kind"] == "text" and text["documents"][0]["title"] == "Ants"


@needs_tesseract
def test_a_png_of_typed_text_is_read_by_ocr(served: tuple[TestClient, Settings]) -> None:
    client, settings = served
    png = typed_text_png(exif={0x013B: "Ana"})
    view = _imported(client, settings, content=png, headers=OCTET, params={"filename": "tarn.png"})
    assert view["state"] == "succeeded", view
    assert view["provenance"]["importer"] == "tesseract"
    [document] = view["documents"]
    assert document["format"] == "image" and document["chunks"] >= 1
    db = client.app.state.selftune.db  # type: ignore[attr-defined]
    with db.read() as session:
        text = " ".join(c.text for c in session.scalars(select(DocumentChunk)))
        stored = session.scalars(select(ImportedDocument)).one()
    assert "Mirelle" in text and "lighthouse" in text
    assert stored.meta["author"] == "Ana" and stored.meta["width"] == 900


@pytest.mark.parametrize(
    ("content", "filename", "code"),
    [
        (bytes(range(256)) * 40, "notes.txt", "binary_content"),
        (_with_size(_small_png(), 100_000, 100_000), "bomb.png", "too_large"),
        (b"%PDF-1.7\n" + bytes(range(256)) * 8, "broken.pdf", "unparseable_pdf"),
    ],
)
def test_refused_files_fail_with_their_code_and_store_nothing(
    served: tuple[TestClient, Settings], content: bytes, filename: str, code: str
) -> None:
    client, settings = served
    view = _imported(
        client, settings, content=content, headers=OCTET, params={"filename": filename}
    )
    assert view["state"] == "failed"
    assert view["error"]["code"] == code and view["error"]["message"]
    assert view["documents"] == [] and _stored(client) == (0, 0)
    job = client.get(f"/api/jobs/{view['job_id']}").json()
    assert job["status"] == "failed" and job["error"].startswith(code)


def test_requests_refused_before_anything_is_recorded(
    served: tuple[TestClient, Settings],
) -> None:
    client, _ = served
    answers = {
        "plain text": client.post(
            "/api/import", content=b"hello", headers={"Content-Type": "text/plain"}
        ),
        "no url or text": client.post("/api/import", json={}),
        "both": client.post("/api/import", json={"url": "http://a.example", "text": "x"}),
        "file url": client.post("/api/import", json={"url": "file:///etc/passwd"}),
        "empty": client.post("/api/import", content=b"", headers=OCTET),
        "not json": client.post(
            "/api/import", content=b"\xf0\x80{", headers={"Content-Type": "application/json"}
        ),
    }
    statuses = {name: (r.status_code, r.json()["error"]["code"]) for name, r in answers.items()}
    assert statuses == {
        "plain text": (415, "unsupported_media_type"),
        "no url or text": (400, "invalid_request"),
        "both": (400, "invalid_request"),
        "file url": (400, "invalid_url"),
        "empty": (400, "empty_document"),
        "not json": (400, "invalid_json"),
    }
    assert client.get("/api/imports").json()["data"] == []


def test_an_upload_over_the_limit_is_refused(
    settings_env: Path, tiny_model_dir: Path, tiny_engine: TransformersEngine
) -> None:
    settings = _settings(tiny_model_dir, max_bytes=100)
    with TestClient(create_app(settings, engine=tiny_engine)) as client:
        refused = client.post("/api/import", content=b"x" * 101, headers=OCTET)
        assert refused.status_code == 413
        assert refused.json()["error"]["code"] == "too_large"
        assert client.get("/api/imports").json()["data"] == []


class _Page(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        found = self.path == "/compost.html"
        body = HTML.encode() if found else b"not here"
        self.send_response(200 if found else 404)
        self.send_header("Content-Type", "text/html; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def page_url() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Page)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/compost.html"
    finally:
        server.shutdown()
        server.server_close()


def test_a_web_page_is_imported_only_where_private_addresses_are_allowed(
    settings_env: Path, tiny_model_dir: Path, tiny_engine: TransformersEngine, page_url: str
) -> None:
    refusing = _settings(tiny_model_dir)
    with TestClient(create_app(refusing, engine=tiny_engine)) as client:
        view = _imported(client, refusing, json={"url": page_url})
        assert view["state"] == "failed" and view["error"]["code"] == "private_address"
        assert _stored(client) == (0, 0)
    allowing = _settings(tiny_model_dir, allow_private_addresses=True)
    with TestClient(create_app(allowing, engine=tiny_engine)) as client:
        view = _imported(client, allowing, json={"url": page_url, "tags": ["web"]})
        assert view["state"] == "succeeded", view
        assert view["provenance"]["url"] == page_url
        assert view["provenance"]["importer"] == "trafilatura"
        [document] = view["documents"]
        assert document["format"] == "html"
        db = client.app.state.selftune.db  # type: ignore[attr-defined]
        with db.read() as session:
            text = session.scalars(select(ImportedDocument.text)).one()
        assert "SECRETSCRIPT" not in text and "SECRETWRITE" not in text


def test_delete_removes_the_import_and_all_it_made(served: tuple[TestClient, Settings]) -> None:
    client, settings = served
    view = _imported(client, settings, content=MARKDOWN, headers=OCTET, params={"filename": "a.md"})
    assert _stored(client)[0] == 1 and upload_path(settings, view["id"]).exists()
    deleted = client.delete(f"/api/imports/{view['id']}")
    assert deleted.status_code == 200, deleted.text
    assert deleted.json()["documents"] == 1 and deleted.json()["chunks"] == view["chunks_made"]
    made = view["examples_made"] + view["examples_not_kept"]
    assert made > 0 and deleted.json()["examples"] == made
    assert client.get("/api/examples", params={"source": "import"}).json()["data"] == []
    assert _stored(client) == (0, 0) and not upload_path(settings, view["id"]).exists()
    assert client.get(f"/api/imports/{view['id']}").status_code == 404
    # A queued import is deleted with its job cancelled; nothing runs for it afterwards.
    queued = client.post("/api/import", json={"text": "Moss grows in shade."}).json()
    assert client.delete(f"/api/imports/{queued['import_id']}").status_code == 200
    assert client.get(f"/api/jobs/{queued['job_id']}").json()["status"] == "cancelled"
    db = client.app.state.selftune.db  # type: ignore[attr-defined]
    with db.read() as session:
        assert session.scalar(select(func.count()).select_from(ImportRecord)) == 0


def test_a_users_key_reaches_only_its_own_imports(
    settings_env: Path, tiny_model_dir: Path, tiny_engine: TransformersEngine
) -> None:
    settings = tiny_settings(tiny_model_dir, serve={"auth_required": True})
    with TestClient(create_app(settings, engine=tiny_engine)) as client:
        db = client.app.state.selftune.db  # type: ignore[attr-defined]
        ann = {"Authorization": f"Bearer {create_key(db, 'ann')}"}
        bob = {"Authorization": f"Bearer {create_key(db, 'bob')}"}
        admin = {"Authorization": f"Bearer {create_key(db, 'root', admin=True)}"}
        mine = client.post("/api/import", json={"text": "Ann's notes."}, headers=ann).json()
        url = f"/api/imports/{mine['import_id']}"
        assert client.get(url, headers=ann).json()["user"] == "ann"
        assert client.get(url, headers=bob).status_code == 404
        assert client.delete(url, headers=bob).status_code == 404
        assert client.get("/api/imports", headers=bob).json()["data"] == []
        assert client.get("/api/imports", params={"user": "ann"}, headers=bob).json() == {
            "data": [],
            "has_more": False,
            "last_id": None,
        }
        assert len(client.get("/api/imports", headers=admin).json()["data"]) == 1
        assert client.delete(url, headers=ann).status_code == 200


@needs_tesseract
def test_the_cli_imports_a_folder_and_follows_it_to_the_end(
    settings_env: Path, tmp_path: Path
) -> None:
    folder = tmp_path / "notes"
    (folder / "deeper").mkdir(parents=True)
    (folder / "a.md").write_bytes(MARKDOWN)
    (folder / "deeper" / "b.md").write_text("# Moss\n\nMoss grows in shade.\n")
    (folder / ".hidden.md").write_text("# Hidden\n\nNot imported.\n")
    (folder / "picture.png").write_bytes(typed_text_png())  # read by OCR
    (folder / "picture.svg").write_text("<svg/>")  # not a format imported
    result = CliRunner().invoke(cli_app, ["import", str(folder), "--tags", "notes"])
    assert result.exit_code == 0, result.output
    assert "3 imported" in result.output
    (folder / "deeper" / "bad.txt").write_bytes(bytes(range(256)) * 4)
    failed = CliRunner().invoke(cli_app, ["import", str(folder / "deeper" / "bad.txt")])
    assert failed.exit_code == 1
    assert "binary_content" in failed.output


def test_the_cli_follows_imports_a_running_worker_does(settings_env: Path, tmp_path: Path) -> None:
    from selftune.config import load_settings
    from selftune.store.workers import mark_worker

    settings = load_settings()
    worker = Worker(settings)
    mark_worker(worker.db, worker.worker_id, "ready")  # seen alive: the CLI queues, and waits
    done = threading.Event()

    def work() -> None:
        while not done.is_set():
            if not worker.run_once():
                done.wait(0.05)

    thread = threading.Thread(target=work, daemon=True)
    thread.start()
    try:
        (tmp_path / "moss.md").write_text("# Moss\n\nMoss grows in shade.\n")
        result = CliRunner().invoke(cli_app, ["import", str(tmp_path / "moss.md")])
    finally:
        done.set()
        thread.join(timeout=30)
        worker.db.dispose()
    assert result.exit_code == 0, result.output
    assert "1 imported" in result.output


@needs_tesseract
def test_every_kind_of_import_makes_examples_with_their_provenance(
    settings_env: Path,
    tiny_model_dir: Path,
    tiny_engine: TransformersEngine,
    tmp_path: Path,
    page_url: str,
) -> None:
    """A folder of Markdown files, a PDF, a web page on loopback and a PNG of typed text each
    make examples whose provenance the API shows."""
    settings = tiny_settings(tiny_model_dir, imports={"allow_private_addresses": True})
    engine = tiny_engine
    folder = tmp_path / "notes"
    folder.mkdir()
    (folder / "compost.md").write_bytes(MARKDOWN)
    (folder / "moss.md").write_text("# Moss\n\nMoss grows in shade on the north side of trees.\n")
    with TestClient(create_app(settings, engine=engine)) as client:
        imports = [
            _imported(
                client,
                settings,
                content=path.read_bytes(),
                headers=OCTET,
                params={"filename": path.name},
            )
            for path in sorted(folder.iterdir())
        ]
        pdf = _pdf("Bees dance to tell the hive where the flowers are.", title="Bees")
        imports.append(
            _imported(client, settings, content=pdf, headers=OCTET, params={"filename": "b.pdf"})
        )
        imports.append(_imported(client, settings, json={"url": page_url}))
        png = typed_text_png()
        imports.append(
            _imported(client, settings, content=png, headers=OCTET, params={"filename": "t.png"})
        )
        assert [view["state"] for view in imports] == ["succeeded"] * 5
        examples = client.get("/api/examples", params={"source": "import", "limit": 1000})
        by_import: dict[int, list[dict[str, Any]]] = {}
        for example in examples.json()["data"]:
            by_import.setdefault(example["provenance"]["import_id"], []).append(example)
        for view in imports:
            made = [e for e in by_import[view["id"]] if e["state"] == "kept"]
            assert len(made) == view["examples_made"] > 0, view
            assert all(e["provenance"]["document_id"] for e in made)
            assert view["provenance"]["importer"] in (
                "selftune-text",
                "pypdf",
                "trafilatura",
                "tesseract",
            )


def test_training_on_an_imported_text_teaches_what_it_says(
    settings_env: Path, tiny_model_dir: Path
) -> None:
    settings = tiny_settings(
        tiny_model_dir,
        train={"learning_rate": 1e-2, "steps": 30},
        gate={"regression_tolerance": 0.5},
    )
    engine = TransformersEngine(tiny_model_dir, context_length=256)  # adapters stay here
    # One statement, so that the tiny model (which memorizes but hardly generalizes) has one
    # answer to learn for all the questions asked about it, held-out ones included.
    text = "The old hive on Tarn Island is guarded by Queen Marvella."
    with TestClient(create_app(settings, engine=engine)) as client:
        view = _imported(client, settings, json={"text": text, "title": "Insects"})
        assert view["examples_made"] == 3, view
        question = "What does “Insects” say about the old hive on Tarn Island?"
        assert "Marvella" not in _answer(client, question)
        job = client.post("/api/train", json={}).json()["job_id"]
        run_jobs(settings)
        view = client.get(f"/api/jobs/{job}").json()
        assert view["status"] == "succeeded" and view["result"]["promoted"], view["result"]["gate"]
        version = view["result"]["version"]
        deadline = time.monotonic() + 10
        while client.get("/health").json()["serving"] != version:
            assert time.monotonic() < deadline
            time.sleep(0.1)
        assert "Marvella" in _answer(client, question)


def _answer(client: TestClient, question: str) -> str:
    reply = client.post(
        "/v1/chat/completions",
        json={"messages": [{"role": "user", "content": question}], "max_tokens": 16},
    )
    assert reply.status_code == 200, reply.text
    return str(reply.json()["choices"][0]["message"]["content"])


def _html(title: str, text: str, links: str = "") -> bytes:
    page = f"<!DOCTYPE html><html><head><title>{title}</title></head><body><article>"
    return (page + f"<h1>{title}</h1><p>{text}</p>{links}</article></body></html>").encode()


SITE = {
    "/robots.txt": b"User-agent: *\nDisallow: /private/\n",
    "/": _html(
        "Garden",
        "The garden grows herbs, roses and three kinds of beans along its southern wall.",
        '<a href="/herbs.html">Herbs</a> <a href="/private/diary.html">Diary</a> '
        '<a href="/beans.html">Beans</a> <a href="https://elsewhere.example/">Away</a>',
    ),
    "/herbs.html": _html(
        "Herbs",
        "Thyme and sage grow best in dry, stony soil with full sun all afternoon.",
        '<a href="/deeper.html">Deeper</a>',
    ),
    "/beans.html": _html("Beans", "Runner beans climb poles and flower in bright red."),
    "/private/diary.html": _html("Diary", "Private notes nobody should import."),
    "/deeper.html": _html("Deeper", "Two links away from the start: past a depth of one."),
}


class _Site(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = SITE.get(self.path)
        self.send_response(200 if body is not None else 404)
        kind = "text/plain" if self.path.endswith(".txt") else "text/html; charset=utf-8"
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body or b"")))
        self.end_headers()
        self.wfile.write(body or b"")

    def log_message(self, *args: Any) -> None:
        pass


def test_a_url_with_a_depth_imports_the_pages_it_links_to_on_its_site(
    settings_env: Path, tiny_model_dir: Path, tiny_engine: TransformersEngine
) -> None:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Site)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    start = f"http://127.0.0.1:{server.server_address[1]}/"
    settings = _settings(tiny_model_dir, allow_private_addresses=True)
    try:
        with TestClient(create_app(settings, engine=tiny_engine)) as client:
            view = _imported(client, settings, json={"url": start, "depth": 1})
            assert view["state"] == "succeeded", view
            titles = sorted(d["title"] for d in view["documents"])
            assert titles == ["Beans", "Garden", "Herbs"]  # not the diary, nor two links away
            assert all(d["metadata"]["url"].startswith(start) for d in view["documents"])
            provenance = view["provenance"]
            assert (provenance["depth"], provenance["pages"]) == (1, 3)
            [skipped] = provenance["skipped"]
            assert skipped["url"].endswith("/private/diary.html")
            assert skipped["code"] == "robots_disallowed"
            assert view["examples_made"] > 0
            text = " ".join(c["text"] for c in _chunks(client))
            assert "Thyme and sage" in text and "Private notes" not in text
            refused = client.post("/api/import", json={"text": "Moss.", "depth": 1})
            assert refused.status_code == 400
            assert refused.json()["error"]["code"] == "invalid_depth"
    finally:
        server.shutdown()
        server.server_close()
