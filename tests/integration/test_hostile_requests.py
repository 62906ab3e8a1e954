"""Hostile input gets a 4xx with an error body, never a 500, and nothing of it is recorded:
ids beyond the store's integers, digits that are not ASCII, non-finite numbers, a chat template
that renders nothing."""

from __future__ import annotations

import typing
from typing import Any

import pytest
from fastapi.routing import APIRoute
from fastapi.testclient import TestClient
from pydantic import BaseModel
from sqlalchemy import func, select

from selftune.store.schema import Feedback, Interaction, Job

HUGE = "99999999999999999999"  # beyond 64 bits
SUPERSCRIPT_TWO = "%C2%B2"  # "²": a digit to str.isdigit, not to int


def _recorded(client: TestClient) -> tuple[int, int, int]:
    db = client.app.state.selftune.db  # type: ignore[attr-defined]
    with db.read() as session:
        return tuple(  # type: ignore[return-value]
            session.scalar(select(func.count()).select_from(table))
            for table in (Interaction, Feedback, Job)
        )


def _refused(client: TestClient, response: Any, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    error: dict[str, Any] = response.json()["error"]
    assert error["message"] and error["type"] == "invalid_request_error"
    return error


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", f"/api/jobs/{HUGE}"),
        ("GET", f"/api/jobs/-{HUGE}"),
        ("POST", f"/api/jobs/{HUGE}/retry"),
        ("POST", f"/api/jobs/{HUGE}/cancel"),
        ("GET", f"/api/versions/{HUGE}/download"),
        ("GET", f"/api/versions/{SUPERSCRIPT_TWO}/download"),
        ("POST", f"/api/versions/{HUGE}/promote"),
        ("POST", f"/api/versions/{SUPERSCRIPT_TWO}/promote"),
        ("POST", f"/api/versions/{HUGE}/export"),
        ("POST", f"/api/versions/{SUPERSCRIPT_TWO}/export"),
    ],
)
def test_ids_that_name_nothing_are_404(client: TestClient, method: str, path: str) -> None:
    before = _recorded(client)
    _refused(client, client.request(method, path), 404)
    assert _recorded(client) == before


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/completion", {"prompt": "hi", "lora": [{"id": 2**63, "scale": 1}]}),
        ("/v1/completions", {"prompt": "hi", "lora": [{"id": 2**63, "scale": 1}]}),
        (
            "/v1/chat/completions",
            {
                "messages": [{"role": "user", "content": "hi"}],
                "lora": [{"id": -(2**70), "scale": 1}],
            },
        ),
        ("/lora-adapters", [{"id": 2**63, "scale": 1}]),
        ("/api/rollback", {"version_id": 2**63}),
        ("/completion", {"prompt": "hi", "seed": 2**70}),
        ("/v1/completions", {"prompt": "hi", "seed": -(2**70), "temperature": 1}),
    ],
)
def test_ids_in_a_body_beyond_the_store_are_400(client: TestClient, path: str, body: Any) -> None:
    before = _recorded(client)
    _refused(client, client.post(path, json=body), 400)
    assert _recorded(client) == before


def test_the_cli_finds_no_version_for_huge_or_non_ascii_ids(settings_env: Any) -> None:
    from typer.testing import CliRunner

    from selftune.cli import app

    for ref in (HUGE, "²"):
        result = CliRunner().invoke(app, ["promote", ref])
        assert result.exit_code != 0 and "no version" in result.output, result.output
        assert not isinstance(result.exception, (OverflowError, ValueError)), result.exception


CHAT = '{"messages": [{"role": "user", "content": "hi"}]'


@pytest.mark.parametrize(
    ("path", "body", "param"),
    [
        ("/completion", '{"prompt": "hi", "temperature": Infinity}', "temperature"),
        ("/completion", '{"prompt": "hi", "temperature": NaN}', "temperature"),
        ("/completion", '{"prompt": "hi", "temperature": -Infinity}', "temperature"),
        ("/completion", '{"prompt": "hi", "temperature": 1e999}', "temperature"),
        ("/completion", '{"prompt": "hi", "top_p": NaN}', "top_p"),
        ("/completion", '{"prompt": "hi", "min_p": NaN}', "min_p"),
        ("/completion", '{"prompt": "hi", "repeat_penalty": Infinity}', "repeat_penalty"),
        ("/completion", '{"prompt": "hi", "presence_penalty": NaN}', "presence_penalty"),
        ("/completion", '{"prompt": "hi", "typical_p": NaN}', "typical_p"),
        ("/completion", '{"prompt": "hi", "logit_bias": [[1, NaN]]}', "logit_bias"),
        ("/completion", '{"prompt": "hi", "lora": [{"id": 1, "scale": NaN}]}', "lora.0.scale"),
        ("/v1/completions", '{"prompt": "hi", "temperature": NaN}', "temperature"),
        ("/v1/completions", '{"prompt": "hi", "frequency_penalty": NaN}', "frequency_penalty"),
        ("/v1/completions", '{"prompt": "hi", "logit_bias": {"1": Infinity}}', "logit_bias"),
        ("/v1/chat/completions", CHAT + ', "temperature": Infinity}', "temperature"),
        ("/v1/chat/completions", CHAT + ', "top_p": NaN}', "top_p"),
        ("/v1/chat/completions", CHAT + ', "logit_bias": {"1": -Infinity}}', "logit_bias"),
        ("/lora-adapters", '[{"id": 1, "scale": NaN}]', "0.scale"),
    ],
)
def test_non_finite_numbers_are_400(client: TestClient, path: str, body: str, param: str) -> None:
    before = _recorded(client)
    response = client.post(path, content=body, headers={"Content-Type": "application/json"})
    error = _refused(client, response, 400)
    assert error["param"] is not None and error["param"].startswith(param), error
    assert _recorded(client) == before


def _models(annotation: Any) -> typing.Iterator[type[BaseModel]]:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        yield annotation
        for field in annotation.model_fields.values():
            yield from _models(field.annotation)
    for arg in typing.get_args(annotation):
        yield from _models(arg)


def _api_routes(routes: Any) -> typing.Iterator[APIRoute]:
    """Every APIRoute, in included routers too (some FastAPI versions wrap them)."""
    for route in routes:
        if isinstance(route, APIRoute):
            yield route
        else:
            inner = getattr(route, "original_router", route)
            yield from _api_routes(getattr(inner, "routes", ()))


def test_every_request_body_refuses_non_finite_numbers(client: TestClient) -> None:
    checked = 0
    for route in _api_routes(client.app.routes):  # type: ignore[attr-defined]
        for param in route.dependant.body_params:
            for model in _models(param.field_info.annotation):
                assert model.model_config.get("allow_inf_nan") is False, (route.path, model)
                checked += 1
    assert checked > 10


@pytest.mark.parametrize("template", ["{{ '' }}", "{% for m in messages %} {% endfor %}"])
def test_a_chat_template_that_renders_nothing_is_400(client: TestClient, template: str) -> None:
    before = _recorded(client)
    body = {"messages": [{"role": "user", "content": "hi"}], "chat_template": template}
    error = _refused(client, client.post("/v1/chat/completions", json=body), 400)
    assert error["param"] == "chat_template"
    assert _recorded(client) == before
    applied = _refused(client, client.post("/apply-template", json=body), 400)
    assert applied["param"] == "chat_template"
