"""Structured output on the llama.cpp engine: every answer is JSON valid against the schema.

The tiny model's random weights at a high temperature write a different admissible text each
time, so each request below tries the grammar on another path through it; ``jsonschema`` (not
selftune's own checker) judges each answer.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from fastapi.testclient import TestClient

from selftune.store.schema import Interaction
from tests.integration.tiny_llama import llama_client

PERSON = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "description": "an annotation: ignored"},
        "age": {"type": "integer", "minimum": 0},
        "email": {"type": ["string", "null"], "format": "email"},
        "tags": {"type": "array", "items": {"type": "string", "maxLength": 12}, "maxItems": 5},
    },
    "required": ["name", "age"],
    "additionalProperties": False,
}
ORDER = {
    "$defs": {
        "item": {
            "type": "object",
            "properties": {
                "sku": {"enum": ["A-1", "B-2", "C-3"]},
                "quantity": {"type": "integer", "minimum": 1, "maximum": 9},
                "price": {"type": "number", "minimum": 0},
            },
            "required": ["sku", "quantity"],
        }
    },
    "type": "object",
    "properties": {
        "items": {"type": "array", "items": {"$ref": "#/$defs/item"}, "minItems": 1},
        "status": {"anyOf": [{"const": "open"}, {"type": "boolean"}]},
        "note": {"type": "string", "minLength": 2, "maxLength": 6},
    },
    "required": ["items", "status", "note"],
}
SHAPES = {
    "type": "array",
    "prefixItems": [{"type": "boolean"}, {"type": "null"}],
    "items": False,
}
MAP = {"type": "object", "additionalProperties": {"type": "array", "items": {"type": "integer"}}}
SCHEMAS = {"person": PERSON, "order": ORDER, "shapes": SHAPES, "map": MAP}


@pytest.fixture(scope="module")
def llama(
    tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory, shared_cache: Path
) -> Iterator[TestClient]:
    root = tmp_path_factory.mktemp("structured")
    with llama_client(tiny_model_dir, root, shared_cache) as client:
        yield client


def _chat(client: TestClient, **body: Any) -> dict[str, Any]:
    request = {"messages": [{"role": "user", "content": "Some JSON please."}], **body}
    response = client.post("/v1/chat/completions", json=request)
    assert response.status_code == 200, response.text
    answer: dict[str, Any] = response.json()
    return answer


def _json_schema(schema: Any) -> dict[str, Any]:
    return {"type": "json_schema", "json_schema": {"name": "answer", "schema": schema}}


@pytest.mark.parametrize("name", list(SCHEMAS))
def test_every_answer_is_valid_against_its_schema(llama: TestClient, name: str) -> None:
    schema = SCHEMAS[name]
    for seed in range(6):
        answer = _chat(
            llama, response_format=_json_schema(schema), temperature=1.5, top_p=1.0, seed=seed
        )
        choice = answer["choices"][0]
        assert choice["finish_reason"] == "stop", choice
        jsonschema.validate(json.loads(choice["message"]["content"]), schema)


def test_a_small_max_tokens_shrinks_the_answer_instead_of_cutting_it(llama: TestClient) -> None:
    for seed in range(4):
        answer = _chat(
            llama, response_format=_json_schema(PERSON), max_tokens=60, temperature=1.5, seed=seed
        )
        choice = answer["choices"][0]
        assert choice["finish_reason"] == "stop"
        assert answer["usage"]["completion_tokens"] <= 60
        jsonschema.validate(json.loads(choice["message"]["content"]), PERSON)


def test_json_object_mode_answers_a_json_object(llama: TestClient) -> None:
    for seed in range(4):
        answer = _chat(llama, response_format={"type": "json_object"}, temperature=1.5, seed=seed)
        assert isinstance(json.loads(answer["choices"][0]["message"]["content"]), dict)


def test_a_streamed_answer_is_valid_too_and_recorded_as_sent(llama: TestClient) -> None:
    request = {
        "messages": [{"role": "user", "content": "An order."}],
        "response_format": _json_schema(ORDER),
        "temperature": 1.5,
        "seed": 3,
        "stream": True,
    }
    with llama.stream("POST", "/v1/chat/completions", json=request) as response:
        assert response.status_code == 200
        events = [
            json.loads(line[6:])
            for line in response.iter_lines()
            if line.startswith("data: ") and line != "data: [DONE]"
        ]
    text = "".join(e["choices"][0]["delta"].get("content") or "" for e in events)
    jsonschema.validate(json.loads(text), ORDER)
    assert events[-1]["choices"][0]["finish_reason"] == "stop"
    db = llama.app.state.selftune.db  # type: ignore[attr-defined]
    with db.read() as session:
        row = session.get(Interaction, events[0]["id"])
        assert row is not None and row.response == text
        # The prompt is what the client sent: the schema is in the grammar, not the prompt.
        assert row.messages == [{"role": "user", "content": "An order."}]


def test_llamacpp_json_schema_and_grammar_on_completion(llama: TestClient) -> None:
    body = {"prompt": "JSON:", "json_schema": PERSON, "temperature": 1.5, "seed": 5}
    answer = llama.post("/completion", json=body).json()
    assert answer["stop_type"] == "eos"
    jsonschema.validate(json.loads(answer["content"]), PERSON)
    assert "root ::=" in answer["generation_settings"]["grammar"]

    grammar = 'root ::= ("yes" | "no") "!"'
    answer = llama.post("/completion", json={"prompt": "Well?", "grammar": grammar}).json()
    assert answer["content"] in ("yes!", "no!")
    # and on the OpenAI routes, as llama.cpp's server takes them there too
    answer = llama.post(
        "/v1/completions", json={"prompt": "Well?", "grammar": grammar, "temperature": 1.5}
    ).json()
    assert answer["choices"][0]["text"] in ("yes!", "no!")
    answer = _chat(llama, json_schema={"type": "boolean"}, temperature=1.5, seed=1)
    assert json.loads(answer["choices"][0]["message"]["content"]) in (True, False)


@pytest.mark.parametrize(
    ("body", "param", "words"),
    [
        (
            {"response_format": _json_schema({"type": "string", "pattern": "^a+$"})},
            "response_format",
            "'pattern' is not supported",
        ),
        (
            {"response_format": _json_schema({"type": "integer", "maximum": 10**9})},
            "response_format",
            "maximum",
        ),
        (
            {"response_format": _json_schema({"$ref": "https://example.com/s.json"})},
            "response_format",
            "only local $ref",
        ),
        ({"response_format": {"type": "json_schema"}}, "response_format", "needs"),
        ({"json_schema": {"oneOf": [{"type": "string"}, {"type": "string"}]}}, "json_schema", ""),
        ({"grammar": "root ::= (unclosed"}, "grammar", "GBNF"),
        (
            {"grammar": 'root ::= "a"', "response_format": {"type": "json_object"}},
            "response_format",
            "send one of",
        ),
        (
            {"response_format": {"type": "json_object"}, "ignore_eos": True},
            "ignore_eos",
            "grammar",
        ),
    ],
)
def test_what_cannot_be_enforced_is_a_400_naming_the_field(
    llama: TestClient, body: dict[str, Any], param: str, words: str
) -> None:
    request = {"messages": [{"role": "user", "content": "Hi"}], **body}
    for stream in (False, True):  # refused before a stream starts, too
        response = llama.post("/v1/chat/completions", json={**request, "stream": stream})
        assert response.status_code == 400, response.text
        error = response.json()["error"]
        assert error["param"] == param
        assert words in error["message"]


def test_the_transformers_engine_refuses_grammars_clearly(client: TestClient) -> None:
    response = client.post(
        "/v1/chat/completions",
        json={
            "messages": [{"role": "user", "content": "Hi"}],
            "response_format": {"type": "json_object"},
        },
    )
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["param"] == "response_format"
    assert "llama.cpp engine" in error["message"]
