"""The server answers only its own clients: requests for another host (DNS rebinding) and
bodies that are not JSON are refused before any route sees them, browsers of other origins get
no CORS headers unless configured, and a public bind needs API keys."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select
from typer.testing import CliRunner

from selftune.api.app import create_app
from selftune.api.guards import allowed_hosts, is_loopback
from selftune.config import ServeSettings
from selftune.engines.transformers_engine import TransformersEngine
from selftune.store.schema import Feedback, Interaction, Job
from tests.integration.conftest import tiny_settings

COMPLETION = {"prompt": "hi", "max_tokens": 2}


def _recorded(client: TestClient) -> tuple[int, ...]:
    db = client.app.state.selftune.db  # type: ignore[attr-defined]
    with db.read() as session:
        return tuple(
            session.scalar(select(func.count()).select_from(table)) or 0
            for table in (Interaction, Feedback, Job)
        )


@pytest.fixture
def app_with(
    settings_env: Path, tiny_model_dir: Path, tiny_engine: TransformersEngine
) -> Iterator[Any]:
    clients: list[TestClient] = []

    def make(**serve: Any) -> TestClient:
        settings = tiny_settings(tiny_model_dir, serve=serve)
        client = TestClient(create_app(settings, engine=tiny_engine))
        clients.append(client.__enter__())
        return client

    yield make
    for client in clients:
        client.__exit__(None, None, None)


def test_the_default_hosts_are_the_loopback_names() -> None:
    assert allowed_hosts(ServeSettings()) == {"localhost", "127.0.0.1", "[::1]"}
    assert allowed_hosts(ServeSettings(host="0.0.0.0")) == {"localhost", "127.0.0.1", "[::1]"}
    assert "[::1]" in allowed_hosts(ServeSettings(host="::1", allowed_hosts=[]))
    assert "box.lan" in allowed_hosts(ServeSettings(host="box.lan"))


@pytest.mark.parametrize("host", ["evil.example", "evil.example:8080", "127.0.0.1.evil.example"])
def test_a_foreign_host_is_refused_and_nothing_recorded(client: TestClient, host: str) -> None:
    before = _recorded(client)
    response = client.post("/v1/completions", json=COMPLETION, headers={"Host": host})
    assert response.status_code == 400, response.text
    assert response.json()["error"]["code"] == "host_not_allowed"
    assert client.get("/health", headers={"Host": host}).status_code == 400
    assert _recorded(client) == before


@pytest.mark.parametrize("host", ["localhost", "localhost:8080", "127.0.0.1:1", "[::1]:8080"])
def test_loopback_hosts_are_answered_on_any_port(client: TestClient, host: str) -> None:
    assert client.get("/health", headers={"Host": host}).status_code == 200


def test_the_product_default_refuses_test_clients_host(app_with: Any) -> None:
    client = app_with(allowed_hosts=["localhost", "127.0.0.1", "[::1]"])  # no "testserver"
    assert client.get("/health").status_code == 400
    assert client.get("/health", headers={"Host": "localhost:8080"}).status_code == 200
    assert app_with(allowed_hosts=["*"]).get("/health").status_code == 200


@pytest.mark.parametrize(
    "headers",
    [{}, {"Content-Type": "text/plain"}, {"Content-Type": "application/x-www-form-urlencoded"}],
)
def test_a_body_that_is_not_json_is_415(client: TestClient, headers: dict[str, str]) -> None:
    before = _recorded(client)
    body = b'{"prompt": "hi", "max_tokens": 2}'
    for path in ("/v1/completions", "/completion", "/api/train"):
        response = client.post(path, content=body, headers=headers)
        assert response.status_code == 415, response.text
        error = response.json()["error"]
        assert "application/json" in error["message"] and error["code"] == "unsupported_media_type"
    assert _recorded(client) == before


def test_json_with_a_charset_and_requests_without_a_body_pass(client: TestClient) -> None:
    body = b'{"prompt": "hi", "max_tokens": 2}'
    headers = {"Content-Type": "application/json; charset=utf-8"}
    assert client.post("/v1/completions", content=body, headers=headers).status_code == 200
    # No body: no content type needed (here: nothing to learn yet, a 400 of its own).
    response = client.post("/api/train")
    assert response.status_code == 400 and response.json()["error"]["code"] == "no_training_data"
    assert client.get("/v1/models").status_code == 200


def _preflight(client: TestClient, origin: str) -> Any:
    headers = {
        "Origin": origin,
        "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization, content-type",
    }
    return client.options("/v1/chat/completions", headers=headers)


def test_cors_is_closed_by_default(client: TestClient) -> None:
    assert "access-control-allow-origin" not in _preflight(client, "https://app.example").headers
    response = client.get("/v1/models", headers={"Origin": "https://app.example"})
    assert "access-control-allow-origin" not in response.headers


def test_cors_opens_to_configured_origins_only(app_with: Any) -> None:
    client = app_with(cors_origins=["https://app.example"])
    allowed = _preflight(client, "https://app.example")
    assert allowed.status_code == 200
    assert allowed.headers["access-control-allow-origin"] == "https://app.example"
    response = client.get("/v1/models", headers={"Origin": "https://app.example"})
    assert response.headers["access-control-allow-origin"] == "https://app.example"
    assert "access-control-allow-origin" not in _preflight(client, "https://evil.example").headers


def test_loopback_addresses() -> None:
    for host in ("127.0.0.1", "127.0.0.2", "localhost", "::1", "[::1]"):
        assert is_loopback(host), host
    for host in ("0.0.0.0", "::", "192.168.1.5", "box.lan", ""):
        assert not is_loopback(host), host


@pytest.mark.parametrize("host", ["0.0.0.0", "192.168.1.5", "::"])
def test_serving_beyond_loopback_needs_keys(settings_env: Path, host: str) -> None:
    from selftune.cli import app

    result = CliRunner().invoke(app, ["serve"], env={"SELFTUNE_SERVE__HOST": host})
    assert result.exit_code == 2, result.output
    output = " ".join(result.output.split())
    assert "serve.auth_required = true" in output and "serve.allow_open_public = true" in output


def test_serving_beyond_loopback_with_keys_or_consent_gets_past_the_check(
    settings_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import uvicorn

    from selftune.cli import app

    served: list[str] = []
    monkeypatch.setattr(uvicorn, "run", lambda _app, host, **_: served.append(host))
    for setting in ("SELFTUNE_SERVE__AUTH_REQUIRED", "SELFTUNE_SERVE__ALLOW_OPEN_PUBLIC"):
        env = {"SELFTUNE_SERVE__HOST": "0.0.0.0", setting: "true"}
        result = CliRunner().invoke(app, ["serve", "--no-worker"], env=env)
        assert result.exit_code == 0, result.output
    assert served == ["0.0.0.0", "0.0.0.0"]
