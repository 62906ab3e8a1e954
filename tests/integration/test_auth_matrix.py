"""Every route of ``/openapi.json`` against every kind of caller, where keys are required.

The matrix walks the app's own schema, so a route added tomorrow is in it: one that answers
without a key fails here unless it joins :data:`OPEN`, and one that needs an admin key fails
unless it joins :data:`ADMIN_ONLY`. The property test gives random users random histories and
checks that each user's key reaches only that user's records.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.routing import APIRoute
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from selftune.api.app import create_app
from selftune.api.auth import create_key
from selftune.engines.transformers_engine import TransformersEngine
from tests.conftest import isolate_settings
from tests.integration.conftest import tiny_settings

# Reachable without a key, each for a reason (docs/security.md says the same):
OPEN = {
    "GET /health",  # load balancers and llama.cpp's clients ask it before anything, keyless
    "GET /api/version",  # ollama's clients ask it first; a constant
    "GET /",  # ollama's "Ollama is running", or to a browser the dashboard's page; constants
}
# What changes what every user is served, or who may call: an admin key's.
ADMIN_ONLY = {
    "PATCH /api/settings/autopilot",
    "POST /api/versions/{ref}/promote",
    "POST /api/rollback",
    "POST /lora-adapters",
    "POST /v1/load_lora_adapter",
    "POST /v1/unload_lora_adapter",
    "GET /api/connectors/replies",
    "POST /api/connectors/replies/{reply_id}/approve",
    "POST /api/connectors/replies/{reply_id}/reject",
    "POST /api/keys",
    "POST /api/keys/{prefix}/rotate",
    "POST /api/examples/{example_id}/release",
    "DELETE /api/examples/{example_id}",
    "GET /api/settings",  # what the server runs with: addresses, paths, limits
}

# Plausible path parameters: none of them names anything the test would change.
PATH_VALUES = {
    "ref": "v1",
    "job_id": "1",
    "import_id": "1",
    "example_id": "1",
    "reply_id": "1",
    "model_id": "selftune",
    "prefix": "st-nosuchkey",
    "tag": "garden",
    "interaction_id": "chatcmpl-none",
}
CHAT = [{"role": "user", "content": "hi"}]
OLLAMA = {"model": "selftune", "stream": False, "options": {"num_predict": 2}}
# Bodies for the routes that do real work; any other gets {} (a 400 is fine: the point is who).
BODIES: dict[str, Any] = {
    "POST /v1/chat/completions": {"messages": CHAT, "max_tokens": 2},
    "POST /chat/completions": {"messages": CHAT, "max_tokens": 2},
    "POST /v1/completions": {"prompt": "Once", "max_tokens": 2},
    "POST /completion": {"prompt": "Once", "n_predict": 2},
    "POST /completions": {"prompt": "Once", "n_predict": 2},
    "POST /tokenize": {"content": "Hello"},
    "POST /detokenize": {"tokens": [1, 2]},
    "POST /apply-template": {"messages": CHAT},
    "POST /v1/embeddings": {"input": "hi"},
    "POST /embedding": {"content": "hi"},
    "POST /embeddings": {"content": "hi"},
    "POST /api/chat": {**OLLAMA, "messages": CHAT},
    "POST /api/generate": {**OLLAMA, "prompt": "Once"},
    "POST /api/embed": {"model": "selftune", "input": "hi"},
    "POST /api/embeddings": {"model": "selftune", "prompt": "hi"},
    "POST /api/show": {"model": "selftune"},
    "POST /lora-adapters": [],  # the base, already served
}
HTTP_METHODS = {"get", "put", "post", "delete", "patch"}


@pytest.fixture(scope="module")
def secured(
    tiny_model_dir: Path,
    tiny_engine: TransformersEngine,
    tmp_path_factory: pytest.TempPathFactory,
    shared_cache: Path,
) -> Iterator[TestClient]:
    """The tiny model with keys required, one per module (as ``settings_env`` isolates it).
    Failed keys are not limited here: the matrix sends many on purpose."""
    root = tmp_path_factory.mktemp("auth-matrix")
    with pytest.MonkeyPatch.context() as env:
        isolate_settings(env, root, shared_cache)
        settings_ = tiny_settings(
            tiny_model_dir,
            data_dir=str(root / "data"),
            serve={"auth_required": True, "auth_failures_per_minute": 0},
            train={"min_new_examples": 1},
        )
        with TestClient(create_app(settings_, engine=tiny_engine)) as client:
            yield client


def _operations(app: FastAPI) -> list[tuple[str, str]]:
    """(method, path) of every operation in the app's OpenAPI schema."""
    paths: dict[str, dict[str, Any]] = app.openapi()["paths"]
    return [(m.upper(), p) for p, item in paths.items() for m in item if m in HTTP_METHODS]


def _url(path: str) -> str:
    def value(match: re.Match[str]) -> str:
        name = match[1].split(":")[0]
        assert name in PATH_VALUES, f"give the path parameter {name!r} a value in PATH_VALUES"
        return PATH_VALUES[name]

    return re.sub(r"\{([^}]+)\}", value, path)


def _call(client: TestClient, method: str, path: str, headers: dict[str, str]) -> Any:
    body = BODIES.get(f"{method} {path}", {}) if method in ("POST", "PUT", "PATCH") else None
    return client.request(method, _url(path), json=body, headers=headers)


def _routes(routes: list[Any]) -> Iterator[APIRoute]:
    """Every APIRoute, into included routers (FastAPI keeps those as one route each that
    holds its router: ``original_router`` in FastAPI 0.165)."""
    for route in routes:
        if isinstance(route, APIRoute):
            yield route
        else:
            inner = getattr(route, "original_router", route)
            yield from _routes(getattr(inner, "routes", []))


def _admin_routes(app: FastAPI) -> set[str]:
    """The routes whose dependencies include ``admin_caller``'s check."""

    def needs_admin(dependant: Any) -> bool:
        return any(
            getattr(d.call, "__qualname__", "").startswith("admin_caller.") or needs_admin(d)
            for d in dependant.dependencies
        )

    return {
        f"{method} {route.path}"
        for route in _routes(app.routes)
        if route.include_in_schema and needs_admin(route.dependant)
        for method in route.methods or ()
    }


def _headers(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


@pytest.fixture(scope="module")
def keys(secured: TestClient) -> dict[str, dict[str, str]]:
    db = secured.app.state.selftune.db  # type: ignore[attr-defined]
    return {
        "user": _headers(create_key(db, "matrix-user")),
        "admin": _headers(create_key(db, "matrix-admin", admin=True)),
    }


def test_the_lists_are_the_apps(secured: TestClient) -> None:
    """ADMIN_ONLY is exactly the routes that check for an admin key, and every listed route
    exists: the lists cannot drift from the code."""
    app: FastAPI = secured.app  # type: ignore[assignment]
    operations = {f"{m} {p}" for m, p in _operations(app)}
    assert _admin_routes(app) == ADMIN_ONLY
    assert (OPEN | ADMIN_ONLY | set(BODIES)) <= operations


@pytest.mark.parametrize(
    "authorization", [None, "Bearer st-AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA", "Basic eDp5"]
)
def test_without_a_valid_key_only_the_open_routes_answer(
    secured: TestClient, authorization: str | None
) -> None:
    headers = {"Authorization": authorization} if authorization else {}
    problems = []
    for method, path in _operations(secured.app):  # type: ignore[arg-type]
        response = _call(secured, method, path, headers)
        if f"{method} {path}" in OPEN:
            if response.status_code >= 400:
                problems.append(f"{method} {path}: open, yet {response.status_code}")
        elif response.status_code != 401:
            problems.append(
                f"{method} {path}: {response.status_code} without a valid key (add it to OPEN, "
                "with its reason, only if anyone may call it)"
            )
    assert not problems, "\n".join(problems)
    assert secured.get("/metrics", headers=headers).status_code == 401  # scrapers send a key


def test_a_users_key_reaches_every_route_but_the_admins(
    secured: TestClient, keys: dict[str, dict[str, str]]
) -> None:
    problems = []
    for method, path in _operations(secured.app):  # type: ignore[arg-type]
        response = _call(secured, method, path, keys["user"])
        name = f"{method} {path}"
        if response.status_code >= 500:
            problems.append(f"{name}: {response.status_code} {response.text[:200]}")
        elif name in ADMIN_ONLY:
            code = response.json().get("error", {}).get("code")
            if (response.status_code, code) != (403, "admin_key_required"):
                problems.append(f"{name}: {response.status_code} {code} to a user's key")
        elif response.status_code in (401, 403):
            problems.append(f"{name}: {response.status_code} to a user's key")
    assert not problems, "\n".join(problems)


def test_an_admins_key_reaches_every_route(
    secured: TestClient, keys: dict[str, dict[str, str]]
) -> None:
    problems = []
    for method, path in _operations(secured.app):  # type: ignore[arg-type]
        response = _call(secured, method, path, keys["admin"])
        if response.status_code >= 500 or response.status_code in (401, 403):
            problems.append(f"{method} {path}: {response.status_code} {response.text[:200]}")
    assert not problems, "\n".join(problems)


# --- isolation ------------------------------------------------------------------------------
_names = itertools.count()

# A history: per user, some chats, each rated or not, and whether the user queues training.
HISTORY = st.lists(
    st.tuples(st.lists(st.booleans(), max_size=3), st.booleans()), min_size=2, max_size=4
)


@settings(
    max_examples=12,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(history=HISTORY)
def test_each_user_reaches_only_their_own_records(
    secured: TestClient, history: list[tuple[list[bool], bool]]
) -> None:
    db = secured.app.state.selftune.db  # type: ignore[attr-defined]
    run = next(_names)
    users: dict[str, dict[str, Any]] = {}
    for i, (ratings, trains) in enumerate(history):
        name = f"user-{run}-{i}"
        key = create_key(db, name)
        mine: dict[str, Any] = {"headers": _headers(key), "prefix": key[:12]}
        mine["interactions"] = [
            secured.post(
                "/v1/chat/completions",
                json={"messages": CHAT, "max_tokens": 1, "user": "someone-else"},
                headers=mine["headers"],
            ).json()["id"]
            for _ in ratings
        ]
        for interaction, rated in zip(mine["interactions"], ratings, strict=True):
            if rated:  # corrected: the tiny model's one-token answer is no example to keep
                feedback = {"interaction_id": interaction, "rating": -1, "correction": "Hi there!"}
                answer = secured.post("/api/feedback", json=feedback, headers=mine["headers"])
                assert answer.status_code == 200, answer.text
        mine["jobs"] = []
        if trains and any(ratings):
            queued = secured.post("/api/train", json={}, headers=mine["headers"])
            assert queued.status_code == 200, queued.text
            mine["jobs"].append(queued.json()["job_id"])
        users[name] = mine

    for name, mine in users.items():
        headers = mine["headers"]
        listed = secured.get("/api/jobs", headers=headers).json()["data"]
        assert sorted(j["job_id"] for j in listed) == sorted(mine["jobs"])
        own_keys = secured.get("/api/keys", headers=headers).json()["data"]
        assert [(k["user"], k["prefix"]) for k in own_keys] == [(name, mine["prefix"])]
        for other, theirs in users.items():
            if other == name:
                continue
            for job in theirs["jobs"]:
                assert secured.get(f"/api/jobs/{job}", headers=headers).status_code == 404
                assert secured.post(f"/api/jobs/{job}/cancel", headers=headers).status_code == 404
            for interaction in theirs["interactions"]:
                rating = {"interaction_id": interaction, "rating": -1}
                stolen = secured.post("/api/feedback", json=rating, headers=headers)
                assert stolen.status_code == 404
            peek = secured.get("/api/keys", params={"user": other}, headers=headers)
            assert peek.json()["data"] == []
            revoke = secured.delete(f"/api/keys/{theirs['prefix']}", headers=headers)
            assert revoke.status_code == 404
        for job in mine["jobs"]:
            assert secured.get(f"/api/jobs/{job}", headers=headers).status_code == 200
