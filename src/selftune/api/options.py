"""What a generation request asks of the sampler beyond its prompt, and what selftune refuses.

Structured output becomes a grammar: OpenAI's ``response_format`` (``json_object``: any JSON
object; ``json_schema``: that schema), llama.cpp's ``json_schema`` and ``grammar`` (GBNF), and
forced tool calls (api/tools.py). A schema is turned into a bounded grammar
(engines/json_grammar.py) whose longest answer fits the answer's token budget where it can, so
a structured answer is never cut: when the request does not set ``max_tokens`` the budget is
the rest of the context. Only the llama.cpp engine decodes with grammars; on the transformers
engine such a request is a 400.

llama.cpp's repetition penalties, ``top_k`` and ``min_p`` pass on to the engines (on the OpenAI
routes too, as llama.cpp's server takes them there). An option selftune does not have is refused
with a 400 that names it, never ignored, unless it has its neutral value (the one that changes
nothing) or, for options that only narrow the candidates a token is drawn from (``typical_p``,
...), the request is greedy (temperature 0), where they cannot change the answer.
docs/compatibility.md lists them.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from typing import Any

from selftune.api.errors import ApiError
from selftune.api.tools import ToolUse
from selftune.engines.base import Engine, GenerationParams, InvalidRequest
from selftune.engines.json_grammar import any_object_grammar, schema_grammar

__all__ = [
    "Structure",
    "check_params",
    "logit_bias",
    "refuse_unsupported",
    "sampler_options",
    "structure",
]


@dataclasses.dataclass(frozen=True)
class Structure:
    """The grammar an answer must match, and which request field asked for it."""

    grammar: str | None = None
    param: str | None = None  # "response_format", "json_schema", "grammar", "tool_choice"
    bounded: bool = False  # its longest answer fits the budget: it is never cut

    @property
    def from_schema(self) -> bool:
        """A grammar made from a schema (not a client's GBNF): it ends the answer in time."""
        return self.grammar is not None and self.param != "grammar"


def structure(body: Any, budget: int, tools: ToolUse | None = None) -> Structure:
    """The grammar ``body`` asks for, its longest answer fitted to ``budget`` tokens.

    With ``tools`` whose call is required (tool_choice "required" or a named function), the
    grammar of those calls, whatever else the body asks; under "auto", a JSON schema answer
    may be a call instead.
    """
    if tools is not None and tools.choice != "auto":
        return _from_schema(tools.calls_or(), budget, "tool_choice")
    asked = [
        name
        for name in ("grammar", "json_schema", "response_format")
        if getattr(body, name, None) is not None
        and not (name == "response_format" and body.response_format.type == "text")
    ]
    if len(asked) > 1:
        raise ApiError(
            400,
            f"send one of {' and '.join(asked)}: each sets the form of the whole answer",
            param=asked[-1],
        )
    if body.grammar is not None:
        if not body.grammar.strip():
            return Structure()
        return Structure(body.grammar, "grammar")
    if body.json_schema is not None:
        return _from_schema(body.json_schema, budget, "json_schema", tools)
    response_format = getattr(body, "response_format", None)
    if response_format is None or response_format.type == "text":
        return Structure()
    if response_format.type == "json_object":
        grammar = any_object_grammar(budget)
        return Structure(grammar.gbnf, "response_format", grammar.fits(budget))
    if response_format.json_schema is None:
        raise ApiError(
            400,
            'response_format of type "json_schema" needs "json_schema": {"name", "schema"}',
            param="response_format",
        )
    return _from_schema(response_format.json_schema.schema_, budget, "response_format", tools)


def _from_schema(schema: Any, budget: int, param: str, tools: ToolUse | None = None) -> Structure:
    """The bounded grammar of ``schema`` (or, with ``tools`` under "auto", of it or a call);
    a 400 naming ``param`` where it cannot be enforced."""
    try:
        grammar = schema_grammar(schema, budget)
        if tools is not None:  # checked alone first: an error then says where in the schema
            grammar = schema_grammar(tools.calls_or(schema), budget)
    except InvalidRequest as exc:
        raise ApiError(400, f"{param}: the schema at {exc}", param=param) from exc
    return Structure(grammar.gbnf, param, grammar.fits(budget))


def logit_bias(engine: Engine, raw: Any) -> tuple[tuple[int, float], ...]:
    """OpenAI's ``{"<token id>": bias}`` or llama.cpp's ``[[id or text, bias]]`` (and its
    ``{"<text>": bias}``) as (token id, bias) pairs; a bias of false bans the token."""
    if not raw:
        return ()
    pairs: list[tuple[int, float]] = []
    entries: Sequence[tuple[Any, Any]] = list(raw.items()) if isinstance(raw, dict) else raw
    for key, value in entries:
        if value is True:
            raise ApiError(
                400, "logit_bias: a bias is a number, or false to ban the token", param="logit_bias"
            )
        bias = -math.inf if value is False else float(value)
        if math.isfinite(bias) and not -100 <= bias <= 100:
            raise ApiError(
                400,
                f"logit_bias: {bias} is outside -100..100 (false bans a token)",
                param="logit_bias",
            )
        if isinstance(key, int) or (isinstance(key, str) and key.lstrip("-").isdigit()):
            pairs.append((int(key), bias))
        else:  # llama.cpp: a text biases each of its tokens
            pairs += [(token, bias) for token in engine.tokenize(str(key))]
    return tuple(pairs)


def sampler_options(body: Any) -> dict[str, Any]:
    """The :class:`GenerationParams` fields of llama.cpp's samplers that ``body`` sets."""
    return {
        "repeat_penalty": body.repeat_penalty,
        "presence_penalty": body.presence_penalty,
        "frequency_penalty": body.frequency_penalty,
        "penalty_last_n": body.repeat_last_n,
        "top_k": body.top_k,
        "min_p": body.min_p,
    }


def check_params(engine: Engine, params: GenerationParams, grammar_param: str | None) -> None:
    """Refuse, before any answer starts, what the engine would refuse half-way: a 400 naming
    the field (the engine checks again when it starts)."""
    if params.grammar is not None and params.ignore_eos:
        raise ApiError(
            400,
            "ignore_eos cannot go with a grammar or structured output: the answer ends where the "
            "grammar does",
            param="ignore_eos",
        )
    check: Callable[[GenerationParams], None] | None = getattr(engine, "check_params", None)
    if check is None:
        return
    try:
        check(dataclasses.replace(params, grammar=None))
    except InvalidRequest as exc:
        param = "logit_bias" if params.logit_bias else "logprobs"
        raise ApiError(400, str(exc), param=param) from exc
    if params.grammar is not None:
        try:
            check(GenerationParams(max_tokens=1, grammar=params.grammar))
        except InvalidRequest as exc:
            raise ApiError(400, f"{grammar_param}: {exc}", param=grammar_param) from exc


# --- what selftune refuses -----------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class _Option:
    name: str
    neutral: Callable[[Any], bool]  # the values that change nothing
    why: str  # what selftune lacks, or what to use instead
    greedy_safe: bool = False  # it only narrows the candidates: any value is fine when greedy


def _is(*values: Any) -> Callable[[Any], bool]:
    return lambda value: value in values


def _none(value: Any) -> bool:
    return value is None or value == [] or value == {}


_SAMPLER = [
    _Option("dry_multiplier", _is(0), "has no DRY sampler"),
    _Option("xtc_probability", _is(0), "has no XTC sampler"),
    _Option("mirostat", _is(0), "has no mirostat sampler"),
    _Option("post_sampling_probs", _is(False), "gives log-probabilities before sampling only"),
    _Option("n_cmpl", _is(1), "makes one answer per request"),
    # Any value at temperature 0, where they cannot change the answer.
    _Option("typical_p", _is(1), "has no typical sampler", True),
    _Option("top_n_sigma", lambda v: v <= 0, "has no top-n-sigma sampler", True),
    _Option("dynatemp_range", _is(0), "has no dynamic temperature", True),
    _Option(
        "samplers",
        _none,
        "samples in a fixed order: grammar, bias, penalties, top_k, top_p, min_p, temperature",
        True,
    ),
]
_CHAT = [
    _Option("functions", _none, "takes functions as tools: send tools"),
    _Option("function_call", _none, "takes function_call as tool_choice: send tool_choice"),
    _Option("audio", _is(None), "answers in text only"),
    _Option("modalities", lambda v: v in (None, ["text"]), "answers in text only"),
    _Option("prediction", _is(None), "has no predicted outputs"),
    _Option("web_search_options", _is(None), "cannot search the web"),
    _Option("reasoning_effort", _is(None), "serves no reasoning model"),
    _Option("verbosity", _is(None, "medium"), "has no verbosity control"),
]
_COMPLETION = [
    _Option("echo", _is(False), "does not echo the prompt; prepend it yourself"),
    _Option("suffix", lambda v: not v, "does not insert text between a prompt and a suffix"),
    _Option("best_of", _is(None, 1), "makes one answer per request"),
]
_LLAMA_COMPLETION = [
    _Option("n_indent", _is(0), "does not indent answers"),
    _Option("t_max_predict_ms", _is(0), "has no time limit per answer: use n_predict"),
    _Option("response_fields", _none, "returns every field"),
    _Option("grammar_lazy", _is(False), "applies a grammar from the first token"),
]
_OPTIONS = {
    "chat": _SAMPLER + _CHAT,
    "completion": _SAMPLER + _COMPLETION,
    "llama": _SAMPLER + _LLAMA_COMPLETION,
}


def refuse_unsupported(body: Any, route: str, *, greedy: bool) -> None:
    """A 400 naming the first option in ``body`` that would change the answer in a way
    selftune cannot. ``route``: "chat", "completion" (OpenAI's) or "llama" (/completion)."""
    for option in _OPTIONS[route]:
        value = getattr(body, option.name)
        if option.neutral(value) or (option.greedy_safe and greedy):
            continue
        raise ApiError(
            400,
            f"{option.name}={value!r} is not supported: selftune {option.why}. Leave it out"
            + (", or send temperature 0." if option.greedy_safe else "."),
            code="unsupported_parameter",
            param=option.name,
        )
    if route == "chat" and body.top_logprobs is not None and not body.logprobs:
        raise ApiError(
            400, "top_logprobs needs logprobs: true", code="invalid_value", param="top_logprobs"
        )
