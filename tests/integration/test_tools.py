"""Tool calls on the chat route, on the llama.cpp engine, in OpenAI's shapes.

With ``tool_choice: "required"`` (or a named function) the answer is always a well-formed call:
the tiny model's noise at a high temperature is the test. Under ``"auto"`` a model writes
freely; llama.cpp's ``grammar`` field stands in for a model that does (or does not) call.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from fastapi.testclient import TestClient

from selftune.api import responses
from selftune.store.schema import Interaction
from tests.integration.tiny_llama import llama_client

WEATHER_PARAMETERS = {
    "type": "object",
    "properties": {
        "city": {"type": "string"},
        "unit": {"enum": ["celsius", "fahrenheit"]},
        "days": {"type": "integer", "minimum": 1, "maximum": 7},
    },
    "required": ["city", "unit"],
    "additionalProperties": False,
}
SEARCH_PARAMETERS = {
    "type": "object",
    "properties": {"query": {"type": "string"}, "limit": {"type": "integer", "minimum": 1}},
    "required": ["query"],
}
TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "The weather forecast for a city",
            "parameters": WEATHER_PARAMETERS,
        },
    },
    {"type": "function", "function": {"name": "search", "parameters": SEARCH_PARAMETERS}},
    {"type": "function", "function": {"name": "get_time"}},
]
SCHEMAS = {
    "get_weather": WEATHER_PARAMETERS,
    "search": SEARCH_PARAMETERS,
    "get_time": {"type": "object"},
}
ASK = [{"role": "user", "content": "What is the weather in Paris?"}]


def _exactly(text: str) -> str:
    """A grammar that admits ``text`` only: a model that writes just that."""
    return "root ::= " + json.dumps(text)


CALL = '{"name": "get_weather", "arguments": {"city": "Paris", "unit": "celsius"}}'


@pytest.fixture(scope="module")
def llama(
    tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory, shared_cache: Path
) -> Iterator[TestClient]:
    with llama_client(tiny_model_dir, tmp_path_factory.mktemp("tools"), shared_cache) as client:
        yield client


def _chat(client: TestClient, **body: Any) -> dict[str, Any]:
    response = client.post("/v1/chat/completions", json={"messages": ASK, **body})
    assert response.status_code == 200, response.text
    answer: dict[str, Any] = response.json()
    return answer


def _check_call(call: dict[str, Any], names: set[str]) -> dict[str, Any]:
    """A well-formed OpenAI tool call to one of ``names``; returns its arguments."""
    assert set(call) == {"id", "type", "function"}
    assert call["id"].startswith("call_") and call["type"] == "function"
    assert call["function"]["name"] in names
    arguments: dict[str, Any] = json.loads(call["function"]["arguments"])
    jsonschema.validate(arguments, SCHEMAS[call["function"]["name"]])
    return arguments


def _interaction(client: TestClient, interaction_id: str) -> Interaction:
    db = client.app.state.selftune.db  # type: ignore[attr-defined]
    with db.read() as session:
        row = session.get(Interaction, interaction_id)
    assert row is not None
    return row


def test_required_always_answers_a_well_formed_call(llama: TestClient) -> None:
    for seed in range(8):
        answer = _chat(llama, tools=TOOLS, tool_choice="required", temperature=1.5, seed=seed)
        choice = answer["choices"][0]
        assert choice["finish_reason"] == "tool_calls", choice
        message = choice["message"]
        assert message["content"] is None
        [call] = message["tool_calls"]
        _check_call(call, set(SCHEMAS))
        responses.ChatCompletion.model_validate(answer)  # as /openapi.json documents it


def test_a_named_function_is_the_one_called_and_the_call_is_recorded(llama: TestClient) -> None:
    choice = {"type": "function", "function": {"name": "get_weather"}}
    answer = _chat(llama, tools=TOOLS, tool_choice=choice, temperature=1.5, seed=4)
    [call] = answer["choices"][0]["message"]["tool_calls"]
    arguments = _check_call(call, {"get_weather"})
    row = _interaction(llama, answer["id"])
    assert row.finish_reason == "tool_calls"
    # The answer is recorded as the model wrote it: the call, as a JSON object.
    assert json.loads(row.response) == {"name": "get_weather", "arguments": arguments}
    # and the prompt as the model saw it: the function described in a system message.
    assert row.messages[0]["role"] == "system"
    assert "get_weather" in row.messages[0]["content"]
    assert "search" not in row.messages[0]["content"]  # only the one it may call
    assert row.messages[1:] == ASK


def test_a_streamed_call_arrives_in_tool_call_deltas(llama: TestClient) -> None:
    body = {"messages": ASK, "tools": TOOLS, "tool_choice": "required", "stream": True}
    for seed in range(3):
        with llama.stream(
            "POST", "/v1/chat/completions", json={**body, "seed": seed, "temperature": 1.5}
        ) as response:
            assert response.status_code == 200
            events = [
                json.loads(line[6:])
                for line in response.iter_lines()
                if line.startswith("data: ") and line != "data: [DONE]"
            ]
        deltas = [event["choices"][0]["delta"] for event in events]
        assert deltas[0] == {"role": "assistant", "content": None}
        parts = [part for delta in deltas for part in delta.get("tool_calls", [])]
        assert all(part["index"] == 0 for part in parts)
        assert not any(delta.get("content") for delta in deltas)
        call = {
            "id": parts[0]["id"],
            "type": parts[0]["type"],
            "function": {
                "name": parts[0]["function"]["name"],
                "arguments": "".join(p["function"]["arguments"] for p in parts),
            },
        }
        _check_call(call, set(SCHEMAS))
        assert events[-1]["choices"][0]["finish_reason"] == "tool_calls"


def test_auto_finds_a_call_the_model_wrote_and_leaves_other_answers_as_content(
    llama: TestClient,
) -> None:
    answer = _chat(llama, tools=TOOLS, grammar=_exactly(CALL), max_tokens=80)  # it calls
    choice = answer["choices"][0]
    assert choice["finish_reason"] == "tool_calls"
    [call] = choice["message"]["tool_calls"]
    assert json.loads(call["function"]["arguments"]) == {"city": "Paris", "unit": "celsius"}

    answer = _chat(llama, tools=TOOLS, grammar=_exactly("It is sunny."), max_tokens=80)
    choice = answer["choices"][0]
    assert choice["finish_reason"] == "stop"
    assert choice["message"] == {"role": "assistant", "content": "It is sunny."}

    # A call to a function that does not exist, or with arguments against the schema, is text.
    bad = '{"name": "get_weather", "arguments": {"city": 3}}'
    answer = _chat(llama, tools=TOOLS, grammar=_exactly(bad), max_tokens=80)
    assert answer["choices"][0]["message"]["content"].startswith('{"name"')
    assert "tool_calls" not in answer["choices"][0]["message"]

    with llama.stream(
        "POST",
        "/v1/chat/completions",
        json={
            "messages": ASK,
            "tools": TOOLS,
            "grammar": _exactly(CALL),
            "max_tokens": 80,
            "stream": True,
        },
    ) as response:
        deltas = [
            json.loads(line[6:])["choices"][0]["delta"]
            for line in response.iter_lines()
            if line.startswith("data: {")
        ]
    assert deltas[0] == {"role": "assistant", "content": ""}
    assert [d["tool_calls"][0]["function"].get("name") for d in deltas if "tool_calls" in d] == [
        "get_weather",
        None,
    ]


def test_auto_with_a_json_schema_answers_a_call_or_that_json(llama: TestClient) -> None:
    schema = {
        "type": "object",
        "properties": {"answer": {"type": "string"}},
        "required": ["answer"],
    }
    response_format = {"type": "json_schema", "json_schema": {"name": "a", "schema": schema}}
    kinds = set()
    for seed in range(8):
        answer = _chat(
            llama, tools=TOOLS, response_format=response_format, temperature=1.5, seed=seed
        )
        message = answer["choices"][0]["message"]
        if message.get("tool_calls"):
            _check_call(message["tool_calls"][0], set(SCHEMAS))
            kinds.add("call")
        else:
            jsonschema.validate(json.loads(message["content"]), schema)
            kinds.add("answer")
    assert kinds  # which of the two a noisy model picks is up to it


def test_a_tool_result_turn_is_answered_and_recorded_as_rendered(llama: TestClient) -> None:
    history = [
        *ASK,
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "call_abc",
                    "type": "function",
                    "function": {
                        "name": "get_weather",
                        "arguments": '{"city": "Paris", "unit": "celsius"}',
                    },
                }
            ],
        },
        {"role": "tool", "tool_call_id": "call_abc", "content": "18 degrees, sunny"},
    ]
    response = llama.post(
        "/v1/chat/completions",
        json={"messages": history, "tools": TOOLS, "max_tokens": 4, "temperature": 1.0, "seed": 1},
    )
    assert response.status_code == 200, response.text
    row = _interaction(llama, response.json()["id"])
    assert row.messages[2] == {
        "role": "assistant",
        "content": '{"name": "get_weather", "arguments": {"city": "Paris", "unit": "celsius"}}',
    }
    # SmolLM2's template writes any role as a turn of its own: the tool's turn is kept.
    assert row.messages[3] == {"role": "tool", "content": "18 degrees, sunny"}


def test_tool_errors_are_400s(llama: TestClient) -> None:
    response = llama.post("/v1/chat/completions", json={"messages": ASK, "tool_choice": "required"})
    assert response.status_code == 400 and response.json()["error"]["param"] == "tool_choice"
    response = llama.post(
        "/v1/chat/completions",
        json={"messages": ASK, "tools": [{"type": "custom", "custom": {"name": "x"}}]},
    )
    assert response.status_code == 400
    assert response.json()["error"]["param"].startswith("tools")
    response = llama.post(
        "/v1/chat/completions", json={"messages": [{"role": "user", "content": None}]}
    )
    assert response.status_code == 400
    assert "tool_calls" in response.json()["error"]["message"]
