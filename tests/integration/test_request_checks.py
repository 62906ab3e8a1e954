"""The order in which a request is refused: who is calling (401, then 403 for an admin's
action), then whether the model has loaded (503), then the body (400), then the route's own
checks (such as an unknown model, 404). A body that is not JSON at all is refused first."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from selftune.api.app import create_app
from selftune.api.auth import create_key
from tests.integration.conftest import tiny_settings

CHAT = {"model": "selftune", "messages": [{"role": "user", "content": "hi"}]}
NOT_A_CHAT = {"model": "selftune", "messages": []}


@pytest.fixture
def loading(
    settings_env: Path, tiny_model_dir: Path
) -> tuple[TestClient, dict[str, str], dict[str, str]]:
    """A server that requires keys and whose model never loads (no lifespan), with a user's
    and an admin's key."""
    app = create_app(tiny_settings(tiny_model_dir, serve={"auth_required": True}))
    db = app.state.selftune.db
    user = {"Authorization": f"Bearer {create_key(db, 'alice')}"}
    admin = {"Authorization": f"Bearer {create_key(db, 'operator', admin=True)}"}
    return TestClient(app), user, admin


def _code(response: Any) -> tuple[int, str]:
    return response.status_code, response.json()["error"]["code"]


def test_a_request_is_refused_in_order(
    loading: tuple[TestClient, dict[str, str], dict[str, str]],
) -> None:
    client, user, admin = loading
    chat = "/v1/chat/completions"
    not_json = client.post(chat, content=b"{", headers={"Content-Type": "application/json"})
    assert not_json.status_code == 400
    assert _code(client.post(chat, json=NOT_A_CHAT)) == (401, "invalid_api_key")
    assert _code(client.post(chat, json=NOT_A_CHAT, headers=user)) == (503, "model_loading")
    assert _code(client.post(chat, json={**CHAT, "model": "v9"}, headers=user)) == (
        503,
        "model_loading",
    )
    load = {"lora_name": "mine", "lora_path": "/nowhere"}
    refused = client.post("/v1/load_lora_adapter", json=load, headers=user)
    assert _code(refused) == (403, "admin_key_required")
    assert _code(client.post("/v1/load_lora_adapter", json=load, headers=admin)) == (
        503,
        "model_loading",
    )
    # Routes that need no model check the body after the caller.
    assert _code(client.post("/api/feedback", json={"rating": 5})) == (401, "invalid_api_key")
    assert _code(client.post("/api/feedback", json={"rating": 5}, headers=user)) == (
        400,
        "invalid_request",
    )
