"""ollama's ``options`` and ``format``, read into the engine's :class:`GenerationParams`.

``options`` holds a Modelfile's parameters. Those that shape an answer map onto the samplers
selftune has (temperature, top_p, top_k, min_p, the repetition penalties, seed, stop, and
num_predict for the answer's length); those that only say how to load or run the model
(num_ctx, num_gpu, num_thread, ...) are accepted and ignored, as the model is loaded once, by
the server's settings. A sampler selftune lacks is refused with a 400 that names it unless it
has its neutral value (or, for one that only narrows the candidates, the request is greedy);
an option ollama does not have either is refused, never ignored. docs/compatibility.md lists
them.

``format``: ``"json"`` is any JSON object, a JSON Schema that schema, through the same bounded
grammars as OpenAI's ``response_format`` (api/options.py).
"""

from __future__ import annotations

import dataclasses
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from selftune.api.errors import ApiError
from selftune.api.options import Structure
from selftune.engines.base import InvalidRequest
from selftune.engines.json_grammar import any_object_grammar, schema_grammar

__all__ = ["OllamaOptions", "format_structure", "read_options"]


class OllamaOptions(BaseModel):
    """The parameters ollama's ``options`` may hold; any other is a 400."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)
    # Mapped onto the engine's samplers.
    temperature: float | None = Field(None, ge=0)
    top_p: float = Field(1.0, gt=0, le=1)
    top_k: int = Field(0, ge=0, description="0: all tokens")
    min_p: float = Field(0.0, ge=0, le=1)
    num_predict: int | None = Field(None, description="-1 or -2: up to the end of the context")
    stop: list[str] | str | None = None
    seed: int | None = None
    repeat_penalty: float = Field(1.0, gt=0)
    repeat_last_n: int = Field(64, ge=-1)
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    # Neutral values only (any value for a greedy answer, where the first two change nothing).
    typical_p: float = 1.0
    tfs_z: float = 1.0
    mirostat: int = 0
    # How the model is loaded and run, or what only a refused sampler reads: ignored.
    num_ctx: int | None = None
    num_keep: int | None = None
    num_batch: int | None = None
    num_gpu: int | None = None
    main_gpu: int | None = None
    num_thread: int | None = None
    numa: bool | None = None
    low_vram: bool | None = None
    f16_kv: bool | None = None
    logits_all: bool | None = None
    vocab_only: bool | None = None
    use_mmap: bool | None = None
    use_mlock: bool | None = None
    embedding_only: bool | None = None
    penalize_newline: bool | None = None  # ollama ignores it too
    mirostat_tau: float | None = None
    mirostat_eta: float | None = None

    def stops(self) -> tuple[str, ...]:
        if self.stop is None:
            return ()
        return (self.stop,) if isinstance(self.stop, str) else tuple(self.stop)


@dataclasses.dataclass(frozen=True)
class _Neutral:
    name: str
    value: Any
    why: str
    greedy_safe: bool


_NEUTRAL = [
    _Neutral("typical_p", 1.0, "has no typical sampler", True),
    _Neutral("tfs_z", 1.0, "has no tail-free sampler", True),
    _Neutral("mirostat", 0, "has no mirostat sampler", False),
]


def read_options(raw: dict[str, Any] | None, default_temperature: float) -> OllamaOptions:
    """``options`` read and checked: a 400 naming the first option that is unknown, invalid,
    or a sampler selftune lacks."""
    try:
        options = OllamaOptions.model_validate(raw or {})
    except ValidationError as exc:
        first = exc.errors()[0]
        name = ".".join(str(part) for part in first.get("loc", ()))
        if first.get("type") == "extra_forbidden":
            raise ApiError(
                400,
                f"options.{name} is not an option selftune knows; see "
                "docs/compatibility.md#ollama for those it takes",
                param=f"options.{name}",
            ) from exc
        raise ApiError(
            400, f"options.{name}: {first.get('msg', 'invalid value')}", param=f"options.{name}"
        ) from exc
    temperature = default_temperature if options.temperature is None else options.temperature
    for option in _NEUTRAL:
        value = getattr(options, option.name)
        if value == option.value or (option.greedy_safe and temperature <= 0):
            continue
        raise ApiError(
            400,
            f"options.{option.name}={value!r} is not supported: selftune {option.why}. Leave "
            "it out" + (", or send temperature 0." if option.greedy_safe else "."),
            code="unsupported_parameter",
            param=f"options.{option.name}",
        )
    num_predict = options.num_predict
    if num_predict is not None and num_predict < 1 and num_predict not in (-1, -2):
        raise ApiError(
            400,
            "options.num_predict: at least 1, or -1 for as long as the context allows",
            param="options.num_predict",
        )
    return options


def format_structure(format: str | dict[str, Any] | None, budget: int) -> Structure:
    """The grammar ``format`` asks for, its longest answer fitted to ``budget`` tokens."""
    if not format:
        return Structure()
    if format == "json":
        grammar = any_object_grammar(budget)
        return Structure(grammar.gbnf, "format", grammar.fits(budget))
    try:
        grammar = schema_grammar(format, budget)
    except InvalidRequest as exc:
        raise ApiError(400, f"format: the schema at {exc}", param="format") from exc
    return Structure(grammar.gbnf, "format", grammar.fits(budget))
