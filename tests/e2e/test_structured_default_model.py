"""Structured output and forced tool calls with the real default model (SmolLM2-135M on
llama.cpp): over many prompts, every json_schema answer is valid against its schema (judged by
``jsonschema``), and every ``tool_choice: "required"`` answer is a well-formed call.

The model is served in-process at the default context and answer length: a structured answer
may use the rest of the context, and its grammar is bounded to fit, so none is cut.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from fastapi.testclient import TestClient

from selftune.api.app import create_app
from selftune.engines.llamacpp_engine import LlamaCppEngine
from selftune.models.base import default_gguf_path
from tests.integration.conftest import tiny_settings

pytestmark = pytest.mark.e2e

PROMPTS = [
    "Describe a person who lives by the sea.",
    "Tell me about Marie Curie.",
    "Invent a character for a fantasy novel.",
    "Who is the best chef in your town?",
    "Describe your ideal weekend.",
    "Write about a cat named Tom.",
    "What do you know about Paris?",
    "Plan a small birthday party.",
    "Summarize the story of Romeo and Juliet.",
    "Give me a recipe for pancakes.",
]
SCHEMAS: dict[str, dict[str, Any]] = {
    "profile": {
        "type": "object",
        "properties": {
            "name": {"type": "string"},
            "age": {"type": "integer", "minimum": 0},
            "city": {"type": ["string", "null"]},
            "hobbies": {"type": "array", "items": {"type": "string"}, "maxItems": 4},
        },
        "required": ["name", "age", "hobbies"],
        "additionalProperties": False,
    },
    "recipe": {
        "type": "object",
        "properties": {
            "title": {"type": "string", "maxLength": 60},
            "servings": {"type": "integer", "minimum": 1, "maximum": 12},
            "ingredients": {
                "type": "array",
                "minItems": 1,
                "maxItems": 6,
                "items": {
                    "type": "object",
                    "properties": {
                        "item": {"type": "string"},
                        "grams": {"type": "number", "minimum": 0},
                    },
                    "required": ["item", "grams"],
                },
            },
        },
        "required": ["title", "servings", "ingredients"],
    },
    "verdict": {
        "type": "object",
        "properties": {
            "sentiment": {"enum": ["positive", "neutral", "negative"]},
            "confidence": {"type": "number", "minimum": 0},
            "reasons": {"type": "array", "items": {"type": "string", "maxLength": 80}},
            "flagged": {"type": "boolean"},
        },
        "required": ["sentiment", "confidence", "reasons", "flagged"],
    },
}
TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "The current weather in a city",
            "parameters": {
                "type": "object",
                "properties": {
                    "city": {"type": "string", "description": "the city's name"},
                    "unit": {"enum": ["celsius", "fahrenheit"]},
                },
                "required": ["city", "unit"],
            },
        },
    },
    {
        "type": "function",
        "function": {
            "name": "search_web",
            "description": "Search the web",
            "parameters": {
                "type": "object",
                "properties": {
                    "query": {"type": "string"},
                    "results": {"type": "integer", "minimum": 1, "maximum": 10},
                },
                "required": ["query"],
            },
        },
    },
]
TOOL_SCHEMAS = {tool["function"]["name"]: tool["function"]["parameters"] for tool in TOOLS}


@pytest.fixture(scope="module")
def served(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    """The default GGUF on llama.cpp (its tokenizer is the tiny model's: the same), with the
    default settings but for the store's folder."""
    root = tmp_path_factory.mktemp("structured-e2e")
    engine = LlamaCppEngine(default_gguf_path(), tiny_model_dir)
    with pytest.MonkeyPatch.context() as env:
        env.setenv("SELFTUNE_CONFIG", str(root / "selftune.toml"))
        settings = tiny_settings(
            tiny_model_dir,
            data_dir=str(root / "data"),
            serve={"context_length": 2048, "default_max_tokens": 256},
        )
        try:
            with TestClient(create_app(settings, engine=engine)) as client:
                yield client
        finally:
            engine.close()


def _chat(client: TestClient, prompt: str, seed: int, **body: Any) -> dict[str, Any]:
    response = client.post(
        "/v1/chat/completions",
        json={
            "messages": [{"role": "user", "content": prompt}],
            "temperature": 0.7,
            "seed": seed,
            **body,
        },
    )
    assert response.status_code == 200, response.text
    answer: dict[str, Any] = response.json()
    return answer


@pytest.mark.parametrize("name", list(SCHEMAS))
def test_json_schema_answers_are_always_valid(served: TestClient, name: str) -> None:
    schema = SCHEMAS[name]
    response_format = {"type": "json_schema", "json_schema": {"name": name, "schema": schema}}
    started, tokens = time.monotonic(), 0
    for seed, prompt in enumerate(PROMPTS):
        answer = _chat(served, prompt, seed, response_format=response_format)
        choice = answer["choices"][0]
        assert choice["finish_reason"] == "stop", (prompt, choice)
        jsonschema.validate(json.loads(choice["message"]["content"]), schema)
        tokens += answer["usage"]["completion_tokens"]
    print(f"{name}: {len(PROMPTS)} answers, {tokens} tokens, {time.monotonic() - started:.1f}s")


def test_required_tool_calls_are_always_well_formed(served: TestClient) -> None:
    asks = [f"{prompt} Use a tool." for prompt in PROMPTS]
    for seed, prompt in enumerate(asks):
        answer = _chat(served, prompt, seed, tools=TOOLS, tool_choice="required")
        choice = answer["choices"][0]
        assert choice["finish_reason"] == "tool_calls", (prompt, choice)
        assert choice["message"]["content"] is None
        [call] = choice["message"]["tool_calls"]
        assert call["type"] == "function" and call["id"].startswith("call_")
        arguments = json.loads(call["function"]["arguments"])
        jsonschema.validate(arguments, TOOL_SCHEMAS[call["function"]["name"]])
