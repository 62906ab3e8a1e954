from __future__ import annotations

import contextlib
import dataclasses
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from bench.scenario import free_port
from selftune.api.app import create_app
from selftune.config import Settings, load_settings
from selftune.engines.transformers_engine import TransformersEngine
from selftune.worker.loop import Worker
from tests.conftest import isolate_settings
from tests.integration.lora_versions import add_version, save_random_lora


@pytest.fixture(scope="session")
def tiny_engine(tiny_model_dir: Path) -> TransformersEngine:
    return TransformersEngine(tiny_model_dir, context_length=256)


def tiny_settings(tiny_model_dir: Path, **overrides: Any) -> Settings:
    """Settings for the tiny model; sections are dicts (``train={"steps": 4}``), merged with
    these small serving defaults (with TestClient's host, ``testserver``, allowed)."""
    serve = {
        "allowed_hosts": ["localhost", "127.0.0.1", "[::1]", "testserver"],
        "context_length": 256,
        "default_max_tokens": 8,
        "adapter_poll_seconds": 0.2,
        "start_worker": False,
        **overrides.pop("serve", {}),
    }
    values: dict[str, Any] = {"base_model": str(tiny_model_dir), **overrides, "serve": serve}
    return load_settings(**values)


def run_jobs(settings: Settings) -> None:
    """Run the queued jobs in this process, as a worker would, until none is left."""
    worker = Worker(settings)
    try:
        while worker.run_once():
            pass
    finally:
        worker.db.dispose()


@pytest.fixture
def client(
    settings_env: Path, tiny_model_dir: Path, tiny_engine: TransformersEngine
) -> Iterator[TestClient]:
    settings = tiny_settings(tiny_model_dir)
    with TestClient(create_app(settings, engine=tiny_engine)) as test_client:
        yield test_client


@pytest.fixture(scope="module")
def adapter_engine(tiny_model_dir: Path) -> TransformersEngine:
    """An engine per test module: adapters loaded in one module never leak into another."""
    return TransformersEngine(tiny_model_dir, context_length=256)


@pytest.fixture(scope="module")
def lora(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_random_lora(tiny_model_dir, tmp_path_factory.mktemp("lora") / "peft", seed=1)


@pytest.fixture
def versioned_client(
    settings_env: Path, tiny_model_dir: Path, adapter_engine: TransformersEngine, lora: Path
) -> Iterator[TestClient]:
    """The tiny model served with one stored version, v1 (a random LoRA), not promoted."""
    settings = tiny_settings(tiny_model_dir)
    app = create_app(settings, engine=adapter_engine)
    add_version(settings, app.state.selftune.db, lora, "v1")
    with TestClient(app) as client:
        yield client


@dataclasses.dataclass(frozen=True)
class LiveServer:
    """A server listening on a loopback port, for clients that speak HTTP themselves."""

    url: str  # http://127.0.0.1:<port>, without /v1
    app: FastAPI  # its state (app.state.selftune) holds the store


@contextlib.contextmanager
def serve_on_loopback(app: FastAPI) -> Iterator[str]:
    """Run ``app`` with uvicorn in a thread until the block ends; yields its base URL."""
    import uvicorn

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True, name="uvicorn")
    thread.start()
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        with contextlib.suppress(httpx.TransportError):
            if httpx.get(f"{url}/health", timeout=5).status_code == 200:
                break
        assert time.monotonic() < deadline, "the server did not start"
        time.sleep(0.05)
    try:
        yield url
    finally:
        server.should_exit = True
        thread.join(timeout=30)


@pytest.fixture(scope="module")
def openai_server(
    tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory, shared_cache: Path
) -> Iterator[LiveServer]:
    """The tiny model as an f32 GGUF on the llama.cpp engine (what `selftune serve` runs),
    behind a real uvicorn server, for the openai SDK and other HTTP clients. Open (no
    ``auth_required``), defaults from :func:`tiny_settings`; one per test module."""
    from selftune.engines.llamacpp_engine import LlamaCppEngine
    from selftune.models.base import default_gguf_path
    from tests.gguf_base import write_llama_base_gguf

    root = tmp_path_factory.mktemp("openai-server")
    gguf = write_llama_base_gguf(tiny_model_dir, root / "tiny.gguf", default_gguf_path())
    engine = LlamaCppEngine(gguf, tiny_model_dir, context_length=256, threads=1)
    with pytest.MonkeyPatch.context() as env:  # as settings_env does, for the whole module
        isolate_settings(env, root, shared_cache)
        settings = tiny_settings(tiny_model_dir, data_dir=str(root / "data"))
        app = create_app(settings, engine=engine)
        try:
            with serve_on_loopback(app) as url:
                yield LiveServer(url, app)
        finally:
            engine.close()
