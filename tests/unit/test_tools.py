"""Tool calls without a model: finding a call in free text, holding back a streamed call, and
writing a conversation's calls and results for a template that has no tool format."""

from __future__ import annotations

import json
from typing import Any

import pytest

from selftune.api.errors import ApiError
from selftune.api.schemas import ChatMessage, ChatRequest
from selftune.api.tools import CallStream, prompt_messages, renders_tool_turns, tool_use

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}, "days": {"type": "integer", "minimum": 1}},
            "required": ["city"],
        },
    },
}
TIME = {"type": "function", "function": {"name": "get_time"}}  # no parameters: none taken


def _request(**body: Any) -> ChatRequest:
    return ChatRequest.model_validate(
        {"messages": [{"role": "user", "content": "Weather in Paris?"}], **body}
    )


@pytest.mark.parametrize(
    ("text", "call"),
    [
        (
            '{"name": "get_weather", "arguments": {"city": "Paris"}}',
            ("get_weather", {"city": "Paris"}),
        ),
        (' ```json\n{"name": "get_time", "arguments": {}}\n``` ', ("get_time", {})),
        ('[{"name": "get_time"}]', ("get_time", {})),
        (
            '{"name": "get_weather", "parameters": {"city": "Oslo", "days": 2}}',
            ("get_weather", {"city": "Oslo", "days": 2}),
        ),
        (
            '{"name": "get_weather", "arguments": "{\\"city\\": \\"Rome\\"}"}',
            ("get_weather", {"city": "Rome"}),
        ),
        ('{"name": "get_weather", "arguments": {"days": 2}}', None),  # city is required
        ('{"name": "get_weather", "arguments": {"city": "Paris", "days": 0}}', None),
        ('{"name": "send_mail", "arguments": {}}', None),
        ('The weather is {"name": "get_time"}', None),
        ("It is sunny.", None),
    ],
)
def test_auto_finds_only_a_well_formed_call(text: str, call: tuple[str, Any] | None) -> None:
    use = tool_use(_request(tools=[WEATHER, TIME]))
    assert use is not None and use.choice == "auto"
    found = use.find_call(text)
    if call is None:
        assert found is None
    else:
        assert found is not None
        assert (found.name, json.loads(found.arguments)) == call
        assert found.id.startswith("call_")
        assert found.as_openai()["type"] == "function"


def test_tool_choice_picks_what_may_be_called() -> None:
    assert tool_use(_request(tools=[WEATHER])) is not None
    assert tool_use(_request(tools=[WEATHER], tool_choice="none")) is None
    assert tool_use(_request()) is None
    required = tool_use(_request(tools=[WEATHER, TIME], tool_choice="required"))
    assert required is not None and set(required.callable) == {"get_weather", "get_time"}
    named = tool_use(
        _request(
            tools=[WEATHER, TIME],
            tool_choice={"type": "function", "function": {"name": "get_time"}},
        )
    )
    assert named is not None and list(named.callable) == ["get_time"]
    schema = named.calls_or()
    assert schema["anyOf"][0]["properties"]["name"] == {"const": "get_time"}


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"tool_choice": "required"}, "tool_choice"),
        (
            {"tools": [WEATHER], "tool_choice": {"type": "function", "function": {"name": "x"}}},
            "tool_choice",
        ),
        ({"tools": [WEATHER, WEATHER]}, "tools[1]"),
        (
            {
                "tools": [
                    {
                        "type": "function",
                        "function": {"name": "f", "parameters": {"type": "string", "pattern": "a"}},
                    }
                ]
            },
            "tools[0].function.parameters",
        ),
    ],
)
def test_bad_tools_are_400s_naming_the_field(body: dict[str, Any], param: str) -> None:
    with pytest.raises(ApiError) as caught:
        tool_use(_request(**body))
    assert caught.value.status == 400 and caught.value.param == param


def test_refs_in_parameters_still_resolve_inside_the_call_schema() -> None:
    from selftune.engines.json_grammar import schema_grammar

    tool = {
        "type": "function",
        "function": {
            "name": "f",
            "parameters": {
                "$defs": {"unit": {"enum": ["C", "F"]}},
                "type": "object",
                "properties": {"unit": {"$ref": "#/$defs/unit"}},
                "required": ["unit"],
            },
        },
    }
    use = tool_use(_request(tools=[WEATHER, tool], tool_choice="required"))
    assert use is not None
    schema = use.calls_or()
    assert schema is not None
    assert schema["anyOf"][1]["properties"]["arguments"]["properties"]["unit"] == {
        "$ref": "#/anyOf/1/properties/arguments/$defs/unit"
    }
    assert '"\\"C\\""' in schema_grammar(schema, 1000).gbnf


def test_a_stream_holds_what_may_be_a_call() -> None:
    auto = tool_use(_request(tools=[WEATHER]))
    stream = CallStream(auto)
    assert stream.feed("  ") == ""
    assert stream.feed("Sunny") == "  Sunny"  # not JSON: content from here on
    assert stream.feed(" today") == " today"
    assert stream.finish() == ("", None)

    stream = CallStream(auto)
    for piece in ['{"name": "get_weather", ', '"arguments": {"city": "Paris"}}']:
        assert stream.feed(piece) == ""
    text, call = stream.finish()
    assert text == "" and call is not None and call.name == "get_weather"

    stream = CallStream(auto)
    stream.feed('{"not": "a call"}')
    assert stream.finish() == ('{"not": "a call"}', None)
    assert CallStream(None).feed("x") == "x"

    # A code fence is held only while it may still be a JSON one.
    for pieces, sent in [
        (["``", "`js", "on\n", '{"name"'], ""),
        (["```", "\n", "{"], ""),
        (["```py", "thon\nprint(1)"], "```python\nprint(1)"),
        (["```json\n", "Hello"], "```json\nHello"),
        (["`x`"], "`x`"),
    ]:
        stream = CallStream(auto)
        assert "".join(stream.feed(piece) for piece in pieces) == sent, pieces


def test_earlier_calls_and_results_are_written_for_the_model() -> None:
    history = [
        ChatMessage.model_validate(m)
        for m in [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Weather in Paris?"},
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {
                        "id": "call_1",
                        "type": "function",
                        "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
                    }
                ],
            },
            {"role": "tool", "tool_call_id": "call_1", "content": "18 C, sunny"},
        ]
    ]
    use = tool_use(_request(tools=[WEATHER]))
    without_tool_turns = prompt_messages(history, use, lambda: False)
    assert without_tool_turns[0]["role"] == "system"
    assert without_tool_turns[0]["content"].startswith("Be brief.\n\nYou can call these functions")
    assert '"name": "get_weather"' in without_tool_turns[0]["content"]
    assert without_tool_turns[2] == {
        "role": "assistant",
        "content": '{"name": "get_weather", "arguments": {"city": "Paris"}}',
    }
    assert without_tool_turns[3] == {"role": "user", "content": "get_weather returned: 18 C, sunny"}
    with_tool_turns = prompt_messages(history, None, lambda: True)
    assert with_tool_turns[0] == {"role": "system", "content": "Be brief."}  # tools: none
    assert with_tool_turns[3] == {"role": "tool", "content": "18 C, sunny"}


def test_a_template_that_drops_or_refuses_tool_turns_is_told_apart() -> None:
    assert renders_tool_turns(lambda ms: "".join(m["content"] for m in ms))
    assert not renders_tool_turns(
        lambda ms: "".join(m["content"] for m in ms if m["role"] != "tool")
    )

    def refuses(messages: list[dict[str, str]]) -> str:
        raise ValueError("roles must alternate user/assistant")

    assert not renders_tool_turns(refuses)
