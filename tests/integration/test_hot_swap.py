"""Hot-swap under load: promotions and rollbacks while clients stream, on the llama.cpp engine.

A real server (uvicorn on a loopback port) serves the tiny model as an f32 GGUF with the
llama.cpp engine; two versions are random LoRAs exported to GGUF. Client threads stream chat
completions without pause while the serving alias moves base -> v1 -> v2 -> v1 -> base. Every
request must succeed, and its answer must be exactly the greedy answer of the version its
response names (the header, the chunks' system_fingerprint, and the recorded interaction).
"""

from __future__ import annotations

import contextlib
import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import select

from bench.scenario import free_port
from selftune.api.app import create_app
from selftune.engines.base import AdapterRef, GenerationParams
from selftune.engines.llamacpp_engine import LlamaCppEngine
from selftune.models.base import default_gguf_path
from selftune.store.db import Database
from selftune.store.schema import Interaction, Version
from tests.gguf_base import write_llama_base_gguf
from tests.integration.conftest import tiny_settings
from tests.integration.lora_versions import add_version, save_random_lora

QUESTION = "Tell me something about the sea."
MAX_TOKENS = 12


@contextlib.contextmanager
def _server(app: Any) -> Iterator[httpx.Client]:
    import uvicorn

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    client = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=60)
    deadline = time.monotonic() + 60
    while not _healthy(client):
        assert time.monotonic() < deadline, "the server did not start"
        time.sleep(0.05)
    try:
        yield client
    finally:
        client.close()
        server.should_exit = True
        thread.join(timeout=30)


def _healthy(client: httpx.Client) -> bool:
    with contextlib.suppress(httpx.TransportError):
        return client.get("/health").status_code == 200
    return False


def _stream_one(client: httpx.Client) -> dict[str, Any]:
    body = {
        "model": "selftune",
        "messages": [{"role": "user", "content": QUESTION}],
        "max_tokens": MAX_TOKENS,
        "temperature": 0,
        "stream": True,
    }
    text, fingerprints, interaction = "", set(), ""
    with client.stream("POST", "/v1/chat/completions", json=body) as response:
        assert response.status_code == 200, response.read()
        header = response.headers["X-Selftune-Version"]
        for line in response.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            event = json.loads(line[len("data: ") :])
            assert "error" not in event, event
            fingerprints.add(event["system_fingerprint"])
            interaction = event["id"]
            for choice in event["choices"]:
                text += choice["delta"].get("content", "")
    assert fingerprints == {header}
    return {"version": header, "text": text, "id": interaction}


def test_promotions_and_rollbacks_under_streaming_load(
    settings_env: Path, tiny_model_dir: Path, tmp_path: Path
) -> None:
    gguf = write_llama_base_gguf(tiny_model_dir, tmp_path / "tiny.gguf", default_gguf_path())
    engine = LlamaCppEngine(gguf, tiny_model_dir, context_length=256, threads=1)
    settings = tiny_settings(tiny_model_dir, serve={"adapter_poll_seconds": 30})
    db = Database(settings.resolved_database_url)
    db.migrate()
    ids = {
        name: add_version(
            settings, db, save_random_lora(tiny_model_dir, tmp_path / name, seed=seed), name
        )
        for name, seed in (("v1", 11), ("v2", 22))
    }
    prompt = engine.render_chat([{"role": "user", "content": QUESTION}])
    params = GenerationParams(max_tokens=MAX_TOKENS, temperature=0.0)
    expected = {
        name: "".join(
            c.text
            for c in engine.stream(
                prompt, params, AdapterRef(ids[name], name, settings.versions_dir / name)
            )
        )
        for name in ids
    }
    expected["base"] = "".join(c.text for c in engine.stream(prompt, params, None))
    assert len(set(expected.values())) == 3, "the versions must answer differently"

    results: list[dict[str, Any]] = []
    failures: list[BaseException] = []
    stop = threading.Event()

    def client_loop(client: httpx.Client) -> None:
        while not stop.is_set():
            try:
                results.append(_stream_one(client))
            except BaseException as exc:  # reported below: a failed request fails the test
                failures.append(exc)
                return

    with _server(create_app(settings, engine=engine)) as client:
        clients = [threading.Thread(target=client_loop, args=(client,)) for _ in range(3)]
        for thread in clients:
            thread.start()
        moves = [("promote", "v1"), ("promote", "v2"), ("rollback", "v1"), ("rollback", "base")]
        for action, target in moves:
            served_before = len(results)
            while len(results) < served_before + 3 and not failures:
                time.sleep(0.02)  # a few answers under the current version first
            if action == "promote":
                response = client.post(f"/api/versions/{target}/promote", json={})
            else:
                response = client.post("/api/rollback", json={})
            assert response.status_code == 200, response.text
            assert response.json()["serving"] == target
        served_before = len(results)
        while len(results) < served_before + 3 and not failures:
            time.sleep(0.02)
        stop.set()
        for thread in clients:
            thread.join(timeout=60)

    assert not failures, failures
    seen = {r["version"] for r in results}
    assert seen == {"base", "v1", "v2"}
    for result in results:
        assert result["text"] == expected[result["version"]], result
    with db.read() as session:
        recorded = {
            row.id: (row.version_id, row.response)
            for row in session.scalars(select(Interaction).where(Interaction.kind == "chat"))
        }
        names = {v.id: v.name for v in session.scalars(select(Version))}
    for result in results:
        version_id, response = recorded[result["id"]]
        assert names.get(version_id, "base") == result["version"]
        assert response == result["text"]
    engine.close()
    db.dispose()


@pytest.mark.parametrize("scale", [0.0, 0.5])
def test_adapter_scale_is_applied(tiny_model_dir: Path, tmp_path: Path, scale: float) -> None:
    """llama.cpp's per-request ``lora`` scale: 0 is the base, other scales change answers."""
    gguf = write_llama_base_gguf(tiny_model_dir, tmp_path / "tiny.gguf", default_gguf_path())
    engine = LlamaCppEngine(gguf, tiny_model_dir, context_length=256, threads=1)
    peft = save_random_lora(tiny_model_dir, tmp_path / "v1", seed=11)
    from transformers import AutoConfig

    from selftune.export.gguf_adapter import export_gguf_adapter

    export_gguf_adapter(peft, AutoConfig.from_pretrained(tiny_model_dir), peft / "adapter.gguf")
    prompt = engine.render_chat([{"role": "user", "content": QUESTION}])
    params = GenerationParams(max_tokens=MAX_TOKENS, temperature=0.0)

    def answer(adapter: AdapterRef | None) -> str:
        return "".join(c.text for c in engine.stream(prompt, params, adapter))

    full, base = answer(AdapterRef(1, "v1", peft)), answer(None)
    scaled = answer(AdapterRef(1, "v1", peft, scale=scale))
    if scale == 0.0:
        assert scaled == base
    else:
        assert scaled not in (base, full)
    engine.close()
