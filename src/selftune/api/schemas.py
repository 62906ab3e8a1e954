"""Request bodies. Unknown OpenAI fields are accepted and ignored, as clients send many."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from selftune.store.schema import MAX_ID

__all__ = [
    "ApplyTemplateRequest",
    "ChatMemory",
    "ChatMessage",
    "ChatRequest",
    "CompletionRequest",
    "DetokenizeRequest",
    "EmbeddingRequest",
    "FeedbackRequest",
    "LlamaCompletionRequest",
    "LlamaEmbeddingRequest",
    "LoadLoraRequest",
    "LoraScale",
    "PromoteRequest",
    "RequestModel",
    "RollbackRequest",
    "TokenizeRequest",
    "TrainRequest",
    "UnloadLoraRequest",
    "refuse_unpaired_surrogates",
]

TokenId = Annotated[int, Field(ge=0)]
# Seeds fit 64 bits, signed or not (torch's range; llama.cpp keeps the low 32 bits).
SEED_MIN, SEED_MAX = -(2**63), 2**64 - 1


def _unpaired_surrogate(value: Any, path: str = "") -> str | None:
    """Where in ``value`` (parsed JSON) a string holds an unpaired surrogate, or None."""
    if isinstance(value, str):
        if value.isascii():
            return None
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return path or "the body"
        return None
    if isinstance(value, dict):
        for key, item in value.items():
            where = f"{path}.{key}" if path else str(key)
            if isinstance(key, str) and _unpaired_surrogate(key) is not None:
                return f"{path or 'the body'}: a key"
            if (found := _unpaired_surrogate(item, where)) is not None:
                return found
    elif isinstance(value, list):
        for index, item in enumerate(value):
            if found := _unpaired_surrogate(item, f"{path}.{index}" if path else str(index)):
                return found
    return None


def refuse_unpaired_surrogates(value: Any) -> Any:
    """A ``model_validator(mode="before")``: JSON's ``\\ud800`` escapes (an unpaired UTF-16
    surrogate) parse into a Python string that is not Unicode text and that no tokenizer,
    database or encoder takes: such a body is refused with a 400 that names the field."""
    where = _unpaired_surrogate(value)
    if where is not None:
        raise ValueError(
            f"the text at '{where}' is not valid Unicode (an unpaired surrogate such as \\ud800)"
        )
    return value


class RequestModel(BaseModel):
    """The base of every request body: JSON's non-standard ``Infinity`` and ``NaN`` (which
    Python's parser reads) and numbers too large for a float are refused with a 400 that names
    the field, never passed on to the sampler; so are strings that are not Unicode text
    (:func:`refuse_unpaired_surrogates`)."""

    model_config = ConfigDict(allow_inf_nan=False)

    @model_validator(mode="before")
    @classmethod
    def _valid_text(cls, value: Any) -> Any:
        return refuse_unpaired_surrogates(value)


class LoraScale(RequestModel):
    """llama.cpp's ``lora`` entry: a version id (see ``GET /lora-adapters``) and its scale.

    Other fields are ignored: clients POST back the objects ``GET /lora-adapters`` gave them.
    """

    model_config = ConfigDict(extra="ignore")
    id: int = Field(ge=0, le=MAX_ID)
    scale: float


# --- structured output, tools, sampler options (api/options.py and api/tools.py use them) --
class JsonSchemaFormat(RequestModel):
    """OpenAI's ``response_format.json_schema``."""

    model_config = ConfigDict(extra="ignore", populate_by_name=True)
    name: str = Field("response", max_length=64)
    description: str | None = None
    schema_: dict[str, Any] | bool = Field(
        default_factory=dict, alias="schema", description="the JSON Schema the answer follows"
    )
    strict: bool | None = Field(None, description="answers always follow the schema anyway")


class ResponseFormat(RequestModel):
    model_config = ConfigDict(extra="ignore")
    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchemaFormat | None = None


class FunctionDefinition(RequestModel):
    model_config = ConfigDict(extra="ignore")
    name: str = Field(pattern=r"^[a-zA-Z0-9_-]{1,64}$")
    description: str | None = None
    parameters: dict[str, Any] | None = Field(
        None, description="a JSON Schema for the arguments (none: no arguments)"
    )
    strict: bool | None = Field(None, description="calls always follow the schema anyway")


class Tool(RequestModel):
    model_config = ConfigDict(extra="ignore")
    type: Literal["function"] = Field(description="only function tools are supported")
    function: FunctionDefinition


class FunctionName(RequestModel):
    model_config = ConfigDict(extra="ignore")
    name: str


class NamedToolChoice(RequestModel):
    model_config = ConfigDict(extra="ignore")
    type: Literal["function"]
    function: FunctionName


class CalledFunction(RequestModel):
    model_config = ConfigDict(extra="ignore")
    name: str
    arguments: str = Field(description="the arguments, as a JSON text")


class ToolCall(RequestModel):
    """A call an assistant message made, as the client sends the conversation back."""

    model_config = ConfigDict(extra="ignore")
    id: str = ""
    type: Literal["function"] = "function"
    function: CalledFunction


# llama.cpp's logit_bias: {"<token id or text>": bias} (OpenAI's form) or [[id or text, bias]];
# a bias of false bans the token.
LogitBias = dict[str, float | bool] | list[tuple[int | str, float | bool]]


class _SamplerOptions(RequestModel):
    """Options llama.cpp's server takes on every generation route. selftune has some of them;
    of the others a request may send only the value that changes nothing (api/options.py
    answers any other with a 400 that names it)."""

    logit_bias: LogitBias | None = Field(
        None, description="{token id: bias} or llama.cpp's [[id or text, bias or false]]"
    )
    # Repetition penalties, on the last repeat_last_n tokens of the prompt and the answer.
    presence_penalty: float = Field(0.0, ge=-2, le=2)
    frequency_penalty: float = Field(0.0, ge=-2, le=2)
    repeat_penalty: float = Field(1.0, gt=0, description="llama.cpp: 1 is none")
    repeat_last_n: int = Field(64, ge=-1, description="llama.cpp: -1 the whole context, 0 none")
    top_k: int = Field(0, ge=0, description="llama.cpp: keep the k likeliest tokens (0: all)")
    min_p: float = Field(0.0, ge=0, le=1, description="llama.cpp: drop tokens below min_p x best")
    grammar: str | None = Field(None, description="llama.cpp: a GBNF grammar (root rule 'root')")
    json_schema: dict[str, Any] | bool | None = Field(
        None, description="llama.cpp: a JSON Schema the answer follows"
    )
    ignore_eos: bool = Field(False, description="llama.cpp: generate on past end-of-turn tokens")
    # Neutral values only (or any, where a greedy answer does not depend on it).
    typical_p: float = Field(1.0, description="1 only, or any value at temperature 0")
    top_n_sigma: float = Field(-1.0, description="-1 only, or any value at temperature 0")
    dynatemp_range: float = Field(0.0, description="0 only, or any value at temperature 0")
    samplers: list[str] | str | None = Field(None, description="any value at temperature 0 only")
    dry_multiplier: float = Field(0.0, description="0 only")
    xtc_probability: float = Field(0.0, description="0 only")
    mirostat: int = Field(0, description="0 only")
    post_sampling_probs: bool = Field(False, description="false only")
    n_cmpl: int = Field(1, description="1 only")


class ChatMessage(RequestModel):
    model_config = ConfigDict(extra="ignore")
    role: Literal["system", "user", "assistant", "developer", "tool"] = Field(
        description="developer (OpenAI's newer name for system instructions) is read as system"
    )
    content: str | list[dict[str, Any]] | None = Field(
        None, description="may be null only in an assistant message with tool_calls"
    )
    tool_calls: list[ToolCall] | None = Field(None, description="assistant messages: its calls")
    tool_call_id: str | None = Field(None, description="tool messages: the call answered")
    name: str | None = None

    @field_validator("role")
    @classmethod
    def _developer_is_system(cls, role: str) -> str:
        # Chat templates know system, not developer; OpenAI treats them alike for such models.
        return "system" if role == "developer" else role

    def text(self) -> str:
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        parts = []
        for part in self.content:
            if part.get("type") != "text" or not isinstance(part.get("text"), str):
                raise ValueError("only text content parts are supported")
            parts.append(part["text"])
        return "".join(parts)


def _checked_messages(messages: list[ChatMessage]) -> list[ChatMessage]:
    """Text parts only, and content in every message but an assistant's with tool_calls."""
    for message in messages:
        message.text()  # rejects non-text parts early
        if message.content is None and not (message.role == "assistant" and message.tool_calls):
            raise ValueError(
                "a message needs content (null only in an assistant message with tool_calls)"
            )
    return messages


class _Sampling(RequestModel):
    model_config = ConfigDict(extra="ignore")
    model: str | None = Field(None, description="leave it out for the served model")
    max_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float = Field(1.0, gt=0, le=1)
    stop: str | list[str] | None = None
    seed: int | None = Field(default=None, ge=SEED_MIN, le=SEED_MAX)
    stream: bool = False
    stream_options: dict[str, Any] | None = None
    n: int = Field(1, ge=1, le=1, description="only n=1 is supported")
    user: str | None = Field(None, max_length=128)
    lora: list[LoraScale] | None = Field(
        None, description="llama.cpp extension: [{id, scale}] picks the version for this request"
    )

    def stops(self) -> tuple[str, ...]:
        if self.stop is None:
            return ()
        return (self.stop,) if isinstance(self.stop, str) else tuple(self.stop)


class ChatMemory(RequestModel):
    """selftune extension: which memory passages to add to the prompt."""

    model_config = ConfigDict(extra="forbid")
    k: int | None = Field(None, ge=1, le=50, description="passages (memory.retrieval_k)")
    tags: list[Annotated[str, Field(min_length=1, max_length=64)]] = Field(
        default_factory=list, max_length=32, description="only records with any of these tags"
    )


class ChatRequest(_Sampling, _SamplerOptions):
    messages: list[ChatMessage] = Field(min_length=1)
    memory: bool | ChatMemory | None = Field(
        None,
        description="selftune extension: add memory passages to the prompt (true, or which); "
        "false: none; left out: as memory.retrieval says",
    )
    tags: list[Annotated[str, Field(min_length=1, max_length=64)]] = Field(
        default_factory=list,
        max_length=32,
        description="selftune extension: channels the answered chat is remembered under",
    )
    max_completion_tokens: int | None = Field(None, ge=1)
    chat_template: str | None = Field(
        None, description="selftune extension: a preset name or Jinja template for this request"
    )
    response_format: ResponseFormat | None = None
    tools: list[Tool] | None = None
    tool_choice: Literal["none", "auto", "required"] | NamedToolChoice | None = Field(
        None, description="auto when tools are given, else none"
    )
    parallel_tool_calls: bool | None = Field(None, description="an answer makes at most one call")
    logprobs: bool | None = None
    top_logprobs: int | None = Field(None, ge=0, le=20)
    # OpenAI's, without an effect selftune has: refused unless left out (api/options.py).
    functions: list[Any] | None = Field(None, description="not supported: use tools")
    function_call: Any = Field(None, description="not supported: use tool_choice")
    audio: Any = Field(None, description="not supported")
    modalities: list[str] | None = Field(None, description='["text"] only')
    prediction: Any = Field(None, description="not supported")
    web_search_options: Any = Field(None, description="not supported")
    reasoning_effort: str | None = Field(None, description="not supported")
    verbosity: str | None = Field(None, description="medium only")

    @field_validator("messages")
    @classmethod
    def _last_is_not_empty(cls, messages: list[ChatMessage]) -> list[ChatMessage]:
        return _checked_messages(messages)


class CompletionRequest(_Sampling, _SamplerOptions):
    prompt: str | list[str]
    logprobs: int | None = Field(None, ge=0, le=20, description="how many alternatives per token")
    # OpenAI's, without an effect selftune has: refused unless left out (api/options.py).
    echo: bool = Field(False, description="false only")
    suffix: str | None = Field(None, description="not supported")
    best_of: int | None = Field(None, description="1 only")

    def prompt_text(self) -> str:
        if isinstance(self.prompt, str):
            return self.prompt
        if len(self.prompt) != 1:
            raise ValueError("send exactly one prompt")
        return self.prompt[0]


class FeedbackRequest(RequestModel):
    model_config = ConfigDict(extra="forbid")
    interaction_id: str = Field(min_length=1)
    rating: Literal[1, -1]
    correction: str | None = Field(None, min_length=1)
    comment: str | None = None
    user: str | None = Field(None, max_length=128)


class TrainRequest(RequestModel):
    model_config = ConfigDict(extra="forbid")
    reason: str = "requested through the API"


class PromoteRequest(RequestModel):
    model_config = ConfigDict(extra="forbid")
    reason: str = "promoted through the API"


class RollbackRequest(RequestModel):
    model_config = ConfigDict(extra="forbid")
    version_id: int | None = Field(default=None, ge=0, le=MAX_ID)
    reason: str = "rolled back through the API"


class LlamaCompletionRequest(_SamplerOptions):
    """llama.cpp's ``POST /completion``. Of the options selftune does not have, only the values
    that change nothing are accepted (api/options.py)."""

    model_config = ConfigDict(extra="ignore")
    prompt: str | list[TokenId]
    n_predict: int | None = Field(None, ge=-1, description="-1: until the context is full")
    temperature: float | None = None  # below 0 is greedy, as in llama.cpp
    top_p: float = Field(1.0, gt=0, le=1)
    stop: str | list[str] = Field(default_factory=list)
    seed: int = Field(-1, ge=SEED_MIN, le=SEED_MAX)  # -1: a random seed
    stream: bool = False
    lora: list[LoraScale] | None = None
    model: str | None = None  # selftune: the served name, a version name, or "base"
    user: str | None = Field(None, max_length=128)
    n_probs: int = Field(0, ge=0, description="each token's probability, and the n likeliest")
    return_tokens: bool = Field(False, description="the generated token ids in 'tokens'")
    # Refused unless left out (api/options.py).
    n_indent: int = Field(0, description="0 only")
    t_max_predict_ms: int = Field(0, description="0 only")
    response_fields: list[str] | None = Field(None, description="not supported")
    grammar_lazy: bool = Field(False, description="false only")

    @field_validator("prompt", mode="before")
    @classmethod
    def _one_prompt(cls, value: Any) -> Any:
        if isinstance(value, list) and not all(type(v) is int for v in value):
            raise ValueError(
                "send one prompt: a string, or a list of token ids (several prompts, or strings "
                "mixed with token ids, are not supported)"
            )
        return value

    def stops(self) -> tuple[str, ...]:
        return (self.stop,) if isinstance(self.stop, str) else tuple(self.stop)


class TokenizeRequest(RequestModel):
    model_config = ConfigDict(extra="ignore")
    content: str
    add_special: bool = False
    parse_special: bool = True
    with_pieces: bool = False


class DetokenizeRequest(RequestModel):
    model_config = ConfigDict(extra="ignore")
    tokens: list[TokenId]


class ApplyTemplateRequest(RequestModel):
    """llama.cpp's ``POST /apply-template``: the prompt a chat request would be answered from."""

    model_config = ConfigDict(extra="ignore")
    messages: list[ChatMessage] = Field(min_length=1)
    add_generation_prompt: bool = True
    model: str | None = Field(None, description="selftune: whose template (a version's own)")
    chat_template: str | None = Field(
        None, description="selftune extension: a preset name or Jinja template for this request"
    )

    @field_validator("messages")
    @classmethod
    def _text_messages(cls, messages: list[ChatMessage]) -> list[ChatMessage]:
        return _checked_messages(messages)  # as chat completions checks them


EmbeddingInput = str | list[TokenId]


def _embedding_inputs(value: Any) -> list[EmbeddingInput]:
    """One text, a list of texts, token ids, or a list of token-id lists: as a list of inputs."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, list) and value and all(type(v) is int for v in value):
        return [value]
    if isinstance(value, list) and value:
        if all(isinstance(v, str) for v in value):
            return value
        if all(isinstance(v, list) and all(type(t) is int for t in v) for v in value):
            return value
    raise ValueError(
        "send a non-empty string, a list of strings, a list of token ids, or a list of "
        "token-id lists"
    )


class EmbeddingRequest(RequestModel):
    """OpenAI's ``POST /v1/embeddings``."""

    model_config = ConfigDict(extra="ignore")
    input: list[EmbeddingInput]
    model: str | None = None  # None: the served model
    encoding_format: Literal["float", "base64"] = "float"
    user: str | None = Field(None, max_length=128)

    @field_validator("input", mode="before")
    @classmethod
    def _inputs(cls, value: Any) -> list[EmbeddingInput]:
        return _embedding_inputs(value)


class LlamaEmbeddingRequest(RequestModel):
    """llama.cpp's ``POST /embedding``: ``content`` (or ``input``) and a normalization."""

    model_config = ConfigDict(extra="ignore")
    content: list[EmbeddingInput] | None = None
    input: list[EmbeddingInput] | None = None
    model: str | None = None
    embd_normalize: int = Field(2, ge=-1, description="-1 none, 0 max-abs, 1 taxicab, 2 L2, >2 p")

    @field_validator("content", "input", mode="before")
    @classmethod
    def _inputs(cls, value: Any) -> list[EmbeddingInput] | None:
        return None if value is None else _embedding_inputs(value)

    def texts(self) -> list[EmbeddingInput]:
        inputs = self.content if self.content is not None else self.input
        if inputs is None:
            raise ValueError("send the text to embed in 'content'")
        return inputs


class LoadLoraRequest(RequestModel):
    """vLLM's ``POST /v1/load_lora_adapter``."""

    model_config = ConfigDict(extra="ignore")
    lora_name: str = Field(min_length=1)
    lora_path: str = Field(min_length=1)


class UnloadLoraRequest(RequestModel):
    """vLLM's ``POST /v1/unload_lora_adapter``."""

    model_config = ConfigDict(extra="ignore")
    lora_name: str = Field(min_length=1)
