"""Tool calls on the chat route, in OpenAI's protocol, for models that have no tool format.

A call is written as one JSON object, ``{"name": <function>, "arguments": {...}}``, the form
the functions are described in to the model (a system message) and the form an earlier call is
read back in. How an answer becomes a call depends on ``tool_choice``:

- ``"required"``, or a named function: the answer decodes under a grammar that admits exactly
  such a call, to one of the allowed functions, with arguments valid against its ``parameters``
  schema (engines/json_grammar.py), so the call is always well-formed.
- ``"auto"`` (the default with tools): the model answers freely; an answer that is one such
  JSON object (in a code fence or not), naming a function, with arguments valid against its
  schema, is a call; anything else is content. A small model often misses the form: then it is
  content, never a broken call.
- ``"none"``: the functions are not described at all.

A conversation sent back with its calls and their results is rendered for the model: an
assistant message's ``tool_calls`` as the JSON objects above, a ``tool`` message in the
template's own ``tool`` turn where the template renders one, else as a user turn that says which
function returned what. The recorded interaction keeps these rendered messages (the prompt the
model saw, so that training sees it too), and a call's answer is recorded as the JSON the model
wrote, with ``finish_reason: "tool_calls"``.
"""

from __future__ import annotations

import dataclasses
import json
import uuid
from collections.abc import Callable
from typing import Any

from selftune.api.errors import ApiError
from selftune.api.schemas import ChatMessage, ChatRequest, FunctionDefinition
from selftune.engines.base import InvalidRequest
from selftune.engines.json_grammar import schema_grammar, validate

__all__ = [
    "CallStream",
    "FoundCall",
    "ToolUse",
    "prompt_messages",
    "renders_tool_turns",
    "tool_use",
]

_NO_ARGUMENTS: dict[str, Any] = {"type": "object", "properties": {}}
_FORM = '{"name": <function name>, "arguments": <its arguments, a JSON object>}'


@dataclasses.dataclass(frozen=True)
class FoundCall:
    """A call the answer made."""

    name: str
    arguments: str  # a JSON text, as OpenAI sends it
    id: str = dataclasses.field(default_factory=lambda: f"call_{uuid.uuid4().hex[:24]}")

    def as_openai(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "type": "function",
            "function": {"name": self.name, "arguments": self.arguments},
        }


@dataclasses.dataclass(frozen=True)
class ToolUse:
    """What a request's ``tools`` and ``tool_choice`` ask of its answer."""

    choice: str  # "auto", "required" or "named"
    callable: dict[str, FunctionDefinition]  # what the answer may call, by name

    def calls_or(self, *answers: Any) -> dict[str, Any]:
        """The schema of the allowed calls (a required call's grammar), or any of ``answers``
        (schemas): under "auto", a structured answer is either a call or that answer."""
        schemas = [_call_schema(fn, f"#/anyOf/{i}") for i, fn in enumerate(self.callable.values())]
        n = len(schemas)
        schemas += [_moved_refs(answer, f"#/anyOf/{n + i}") for i, answer in enumerate(answers)]
        return {"anyOf": schemas}

    def instructions(self) -> str:
        described = "\n".join(
            json.dumps(
                {"name": fn.name, "description": fn.description, "parameters": _parameters(fn)},
                ensure_ascii=False,
            )
            for fn in self.callable.values()
        )
        if self.choice == "auto":
            return (
                f"You can call these functions:\n{described}\n\nTo call one, answer with this "
                f"JSON and nothing else:\n{_FORM}\nWhen no function helps, answer normally."
            )
        return (
            f"Answer by calling one of these functions:\n{described}\n\nAnswer with this JSON "
            f"and nothing else:\n{_FORM}"
        )

    def find_call(self, text: str) -> FoundCall | None:
        """The call ``text`` makes, if it is exactly one well-formed call of an allowed
        function (see the module's docstring); else None."""
        value = _json_in(text)
        if isinstance(value, list) and len(value) == 1:
            value = value[0]
        if not isinstance(value, dict) or not isinstance(value.get("name"), str):
            return None
        function = self.callable.get(value["name"])
        arguments = value.get("arguments", value.get("parameters", {}))
        if isinstance(arguments, str):
            arguments = _json_in(arguments)
        if function is None or not isinstance(arguments, dict):
            return None
        if not validate(arguments, _parameters(function)):
            return None
        return FoundCall(function.name, json.dumps(arguments, ensure_ascii=False))


def tool_use(body: ChatRequest) -> ToolUse | None:
    """What ``body`` asks of the answer about tools; None: nothing (no tools, or "none").
    Refuses, with a 400 naming the field, tools whose schemas cannot be enforced."""
    tools = body.tools or []
    choice = body.tool_choice or ("auto" if tools else "none")
    if choice == "none":
        return None
    if not tools:
        raise ApiError(400, "tool_choice needs tools to choose from", param="tool_choice")
    functions: dict[str, FunctionDefinition] = {}
    for i, tool in enumerate(tools):
        name = tool.function.name
        if name in functions:
            raise ApiError(400, f"two tools are named {name!r}", param=f"tools[{i}]")
        try:
            schema_grammar(_parameters(tool.function), budget=1)  # refuses what it cannot enforce
        except InvalidRequest as exc:
            param = f"tools[{i}].function.parameters"
            raise ApiError(400, f"{param}: the schema at {exc}", param=param) from exc
        functions[name] = tool.function
    if isinstance(choice, str):
        return ToolUse(choice, functions)
    named = choice.function.name
    if named not in functions:
        raise ApiError(
            400,
            f"tool_choice names {named!r}, which is not among the tools ({', '.join(functions)})",
            param="tool_choice",
        )
    return ToolUse("named", {named: functions[named]})


def prompt_messages(
    messages: list[ChatMessage], use: ToolUse | None, renders_tool_turns: Callable[[], bool]
) -> list[dict[str, str]]:
    """The conversation as the template's plain ``{"role", "content"}`` messages: earlier calls
    and their results written out, the functions described in the system message.
    ``renders_tool_turns``: whether the chat template shows a ``tool`` message."""
    rendered: list[dict[str, str]] = []
    called: dict[str, str] = {}  # call id -> function name
    tool_turns: bool | None = None
    for message in messages:
        text = message.text()
        if message.role == "assistant" and message.tool_calls:
            lines = [text] if text else []
            for call in message.tool_calls:
                called[call.id] = call.function.name
                lines.append(_call_text(call.function.name, call.function.arguments))
            rendered.append({"role": "assistant", "content": "\n".join(lines)})
        elif message.role == "tool":
            tool_turns = renders_tool_turns() if tool_turns is None else tool_turns
            if tool_turns:
                rendered.append({"role": "tool", "content": text})
            else:
                name = called.get(message.tool_call_id or "") or message.name or "the function"
                rendered.append({"role": "user", "content": f"{name} returned: {text}"})
        else:
            rendered.append({"role": message.role, "content": text})
    if use is not None:
        if rendered[0]["role"] == "system":
            first = rendered[0]
            rendered[0] = {
                "role": "system",
                "content": f"{first['content']}\n\n{use.instructions()}",
            }
        else:
            rendered.insert(0, {"role": "system", "content": use.instructions()})
    return rendered


def renders_tool_turns(render: Callable[[list[dict[str, str]]], str]) -> bool:
    """Whether a chat template (``render``: messages to prompt) shows a ``tool`` message: some
    have a turn for it, some render any role, some drop what they do not know or refuse it."""
    marker = "selftune-tool-result-7f3a"
    try:
        return marker in render(
            [{"role": "user", "content": "?"}, {"role": "tool", "content": marker}]
        )
    except Exception:
        return False


class CallStream:
    """Splits a streamed answer into content to send at once and a call found at its end.

    Text that may still become a call (all of it, when a call is required; under "auto", as
    long as it starts like JSON) is held back until the answer ends.
    """

    def __init__(self, use: ToolUse | None) -> None:
        self.use = use
        self.held = ""
        self.holding = use is not None

    def feed(self, piece: str) -> str:
        """What of ``piece`` (and of the text held before it) can be sent now."""
        if not self.holding:
            return piece
        self.held += piece
        assert self.use is not None
        if self.use.choice == "auto" and not _may_start_a_call(self.held):
            self.holding = False
            text, self.held = self.held, ""
            return text
        return ""

    def finish(self) -> tuple[str, FoundCall | None]:
        """At the end: (the held text, if it is content; the call, if it is one)."""
        if not self.holding or self.use is None:
            return "", None
        call = self.use.find_call(self.held)
        return ("", call) if call else (self.held, None)


def _parameters(function: FunctionDefinition) -> dict[str, Any]:
    return function.parameters if function.parameters is not None else _NO_ARGUMENTS


def _call_schema(function: FunctionDefinition, at: str) -> dict[str, Any]:
    """The schema of a call of ``function``, placed at ``at`` (a JSON pointer) in the schema
    of all calls: the parameters' local ``$ref`` pointers are moved there with them."""
    arguments = _moved_refs(_parameters(function), f"{at}/properties/arguments")
    return {
        "type": "object",
        "properties": {"name": {"const": function.name}, "arguments": arguments},
        "required": ["name", "arguments"],
        "additionalProperties": False,
    }


def _moved_refs(node: Any, prefix: str) -> Any:
    if isinstance(node, list):
        return [_moved_refs(item, prefix) for item in node]
    if not isinstance(node, dict):
        return node
    moved = {key: _moved_refs(value, prefix) for key, value in node.items()}
    ref = node.get("$ref")
    if isinstance(ref, str) and ref.startswith("#"):
        moved["$ref"] = prefix + ref[1:]
    return moved


def _call_text(name: str, arguments: str) -> str:
    """An earlier call, written as the model is asked to write one."""
    parsed = _json_in(arguments)
    value = parsed if isinstance(parsed, dict) else arguments
    return json.dumps({"name": name, "arguments": value}, ensure_ascii=False)


def _json_in(text: str) -> Any:
    """``text`` parsed as JSON, inside a Markdown code fence or not; None if it is not JSON."""
    stripped = text.strip()
    if stripped.startswith("```"):
        stripped = stripped[3:].removeprefix("json").removesuffix("```").strip()
    try:
        return json.loads(stripped)
    except ValueError:
        return None


def _may_start_a_call(text: str) -> bool:
    """Whether ``text`` (an answer so far) may still turn out to be one call: JSON, or a JSON
    code fence (```` ```json ```` or a bare ```` ``` ````)."""
    stripped = text.lstrip()
    if not stripped.startswith("```"):
        return not stripped or stripped[0] in "{[" or "```".startswith(stripped)
    tag, newline, rest = stripped[3:].partition("\n")
    if not newline:
        return "json".startswith(tag.strip())
    rest = rest.lstrip()
    return tag.strip() in ("", "json") and (not rest or rest[0] in "{[")
