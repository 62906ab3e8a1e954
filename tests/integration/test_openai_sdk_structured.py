"""The official openai client's structured output, tools and log-probabilities against a real
server (the ``openai_server`` fixture: the tiny model on llama.cpp, behind uvicorn).

The tiny model writes noise; the SDK's own parsing (``parse``, the stream accumulator, the
response types) is what is tested, and ``jsonschema`` checks what it parsed.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import jsonschema
import openai
import pydantic
import pytest
from openai import OpenAI
from openai.types.chat import ChatCompletionMessageParam, ChatCompletionToolParam

from tests.integration.conftest import LiveServer

ASK: list[ChatCompletionMessageParam] = [{"role": "user", "content": "Weather in Oslo?"}]
SAMPLED: dict[str, Any] = {"temperature": 1.5, "seed": 3}
FORECAST = {
    "type": "object",
    "properties": {"city": {"type": "string"}, "days": {"type": "integer", "minimum": 1}},
    "required": ["city"],
    "additionalProperties": False,
}
TOOLS: list[ChatCompletionToolParam] = [
    {
        "type": "function",
        "function": {"name": "forecast", "description": "A forecast", "parameters": FORECAST},
    },
    {"type": "function", "function": {"name": "now", "parameters": {"type": "object"}}},
]


class Weather(pydantic.BaseModel):
    city: str
    celsius: int
    windy: bool
    notes: list[str]
    source: str | None


@pytest.fixture(scope="module")
def client(openai_server: LiveServer) -> Iterator[OpenAI]:
    with OpenAI(
        base_url=f"{openai_server.url}/v1", api_key="sk-no-key-required", max_retries=0
    ) as sdk:
        yield sdk


def test_parse_with_a_pydantic_model(client: OpenAI) -> None:
    for seed in range(3):
        completion = client.chat.completions.parse(
            model="selftune", messages=ASK, response_format=Weather, temperature=1.5, seed=seed
        )
        choice = completion.choices[0]
        assert choice.finish_reason == "stop"
        assert isinstance(choice.message.parsed, Weather)


def test_a_json_schema_response_format(client: OpenAI) -> None:
    completion = client.chat.completions.create(
        model="selftune",
        messages=ASK,
        response_format={
            "type": "json_schema",
            "json_schema": {"name": "forecast", "schema": FORECAST, "strict": True},
        },
        **SAMPLED,
    )
    content = completion.choices[0].message.content
    assert content is not None
    jsonschema.validate(json.loads(content), FORECAST)
    completion = client.chat.completions.create(
        model="selftune", messages=ASK, response_format={"type": "json_object"}, **SAMPLED
    )
    assert isinstance(json.loads(completion.choices[0].message.content or ""), dict)


def test_a_required_tool_call(client: OpenAI) -> None:
    completion = client.chat.completions.create(
        model="selftune", messages=ASK, tools=TOOLS, tool_choice="required", **SAMPLED
    )
    choice = completion.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content is None
    [call] = choice.message.tool_calls or []
    assert call.type == "function" and call.id.startswith("call_")
    arguments = json.loads(call.function.arguments)
    if call.function.name == "forecast":
        jsonschema.validate(arguments, FORECAST)
    else:
        assert call.function.name == "now" and isinstance(arguments, dict)

    # The result goes back as the SDK sends it; the model answers the next turn.
    history: list[ChatCompletionMessageParam] = [
        *ASK,
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": call.id,
                    "type": "function",
                    "function": {"name": call.function.name, "arguments": call.function.arguments},
                }
            ],
        },
        {"role": "tool", "tool_call_id": call.id, "content": "Sunny, 21 C"},
    ]
    answer = client.chat.completions.create(
        model="selftune", messages=history, tools=TOOLS, tool_choice="none", max_tokens=4
    )
    assert answer.choices[0].message.tool_calls is None


def test_a_named_tool_call_streamed_through_the_sdks_accumulator(client: OpenAI) -> None:
    with client.chat.completions.stream(
        model="selftune",
        messages=ASK,
        tools=TOOLS,
        tool_choice={"type": "function", "function": {"name": "forecast"}},
        **SAMPLED,
    ) as stream:
        for _ in stream:
            pass
        completion = stream.get_final_completion()
    choice = completion.choices[0]
    assert choice.finish_reason == "tool_calls"
    [call] = choice.message.tool_calls or []
    assert call.function.name == "forecast"
    jsonschema.validate(json.loads(call.function.arguments), FORECAST)


def test_logprobs_in_the_sdks_types(client: OpenAI) -> None:
    completion = client.chat.completions.create(
        model="selftune", messages=ASK, max_tokens=4, logprobs=True, top_logprobs=2, **SAMPLED
    )
    logprobs = completion.choices[0].logprobs
    assert logprobs is not None and logprobs.content is not None
    assert len(logprobs.content) == (completion.usage.completion_tokens if completion.usage else 0)
    assert all(len(entry.top_logprobs) == 2 for entry in logprobs.content)
    text = client.completions.create(
        model="selftune", prompt="Once upon", max_tokens=4, logprobs=2, **SAMPLED
    )
    legacy = text.choices[0].logprobs
    assert legacy is not None and legacy.tokens is not None
    assert "".join(legacy.tokens) == text.choices[0].text


def test_an_unsupported_option_is_a_bad_request(client: OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(
            model="selftune", messages=ASK, max_tokens=2, extra_body={"mirostat": 2}
        )
    assert "mirostat" in str(caught.value)
