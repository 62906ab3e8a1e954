"""The engine Protocol: what the API needs from an inference backend, and nothing more."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

if TYPE_CHECKING:
    from selftune.data.tokenize import LabelledTokens

__all__ = [
    "STREAM_END",
    "AdapterRef",
    "Chunk",
    "Engine",
    "EngineError",
    "EvaluatingEngine",
    "GenerationParams",
    "InvalidRequest",
    "Prompt",
    "PushingEngine",
    "TokenLogprob",
]


class EngineError(RuntimeError):
    """Inference failed for a reason the client did not cause."""


class InvalidRequest(ValueError):
    """The request asks for what this engine cannot do (a grammar that does not parse, a token
    id outside the vocabulary, a feature only the other engine has): the client's to fix."""


@dataclasses.dataclass(frozen=True)
class AdapterRef:
    """A trained version to apply on top of the base; ``None`` in its place means the base."""

    version_id: int
    name: str
    path: Path  # a folder holding the PEFT files and, where the base allows, ``adapter.gguf``
    scale: float = 1.0  # llama.cpp's per-request ``lora`` scale; PEFT serves 1.0 only


# Text, or token ids (llama.cpp's /completion and /tokenize accept both).
Prompt = str | Sequence[int]


@dataclasses.dataclass(frozen=True)
class GenerationParams:
    max_tokens: int
    temperature: float = 1.0
    top_p: float = 1.0
    stop: tuple[str, ...] = ()
    seed: int | None = None
    # A GBNF grammar (root rule ``root``) every answer must match: structured output and tool
    # calls. llama.cpp only.
    grammar: str | None = None
    logit_bias: tuple[tuple[int, float], ...] = ()  # (token id, added to its logit)
    # None: no log-probabilities; n >= 0: each generated token's, with the n likeliest tokens.
    top_logprobs: int | None = None
    ignore_eos: bool = False  # go on past end-of-generation tokens, up to max_tokens
    # llama.cpp's other samplers, in its order (penalties, top_k, top_p, min_p); the defaults
    # change nothing. The penalties see the last penalty_last_n tokens, of the prompt too, as
    # llama.cpp's server has it (-1: the whole context).
    repeat_penalty: float = 1.0  # a repeated token's logit divided by it (multiplied if < 0)
    presence_penalty: float = 0.0  # subtracted from a repeated token's logit
    frequency_penalty: float = 0.0  # subtracted once per repetition
    penalty_last_n: int = 64
    top_k: int = 0  # keep the k likeliest tokens (0: all)
    min_p: float = 0.0  # drop tokens less likely than min_p times the likeliest

    @property
    def penalizes(self) -> bool:
        return (
            self.repeat_penalty != 1.0
            or self.presence_penalty != 0.0
            or self.frequency_penalty != 0.0
        ) and self.penalty_last_n != 0


@dataclasses.dataclass(frozen=True)
class TokenLogprob:
    """A generated token's log-probability under the model, and the likeliest alternatives."""

    token: int
    piece: bytes  # its text as generated (a token can hold part of a UTF-8 character)
    logprob: float
    top: tuple[tuple[int, bytes, float], ...] = ()  # (token, piece, logprob), likeliest first


@dataclasses.dataclass(frozen=True)
class Chunk:
    """A piece of generated text. The last chunk of a stream has ``finish_reason`` set."""

    text: str
    finish_reason: str | None = None  # "stop" | "length"
    completion_tokens: int = 0
    # When asked for (GenerationParams.top_logprobs): the tokens generated since the last chunk.
    logprobs: tuple[TokenLogprob, ...] = ()


class Engine(Protocol):
    name: str  # "llama.cpp" or "transformers", for /props and logs
    context_length: int

    def count_tokens(self, text: str) -> int: ...

    def tokenize(self, text: str, *, add_special: bool = False) -> list[int]:
        """Token ids of ``text``; special tokens written in it (``<|im_end|>``) are parsed."""
        ...

    def detokenize(self, tokens: Sequence[int]) -> str: ...

    def embed(self, texts: Sequence[str], adapter: AdapterRef | None = None) -> list[list[float]]:
        """Mean-pooled last hidden states of the served model, one vector per text, unnormalized."""
        ...

    def render_chat(self, messages: list[dict[str, str]], template: str | None = None) -> str: ...

    def stream(
        self, prompt: Prompt, params: GenerationParams, adapter: AdapterRef | None
    ) -> Iterator[Chunk]:
        """Generate from ``prompt``; the adapter is fixed for the whole request."""
        ...

    def preload_adapter(self, adapter: AdapterRef) -> None:
        """Load an adapter ahead of its first request so the swap costs no request time."""
        ...


class EvaluatingEngine(Engine, Protocol):
    """What the training worker needs besides serving: the tokenizer training uses, and cheap
    greedy answers and answer losses under a given adapter, for the gate."""

    tokenizer: Any  # the Hugging Face tokenizer of the base; training tokenizes with it
    default_template: str

    def greedy_batch(
        self,
        prompts: list[str],
        max_tokens: int,
        adapter: AdapterRef | None,
        batch: int = 16,
        until: Sequence[Callable[[str], bool]] | None = None,
    ) -> list[str]:
        """Greedy answers. With ``until`` (one test per prompt) an engine may end an answer as
        soon as its test holds, for checks whose verdict more text cannot change."""
        ...

    def answer_nll(self, examples: Sequence[LabelledTokens], adapter: AdapterRef | None) -> float:
        """Mean loss per answer token (nats) of ``examples`` under ``adapter`` (or the base)."""
        ...

    def answer_margins(
        self, examples: Sequence[LabelledTokens], adapter: AdapterRef | None
    ) -> list[float]:
        """Per example, the smallest gap between the likeliest and the second likeliest next
        token's logits over its answer positions: how close its greedy answer came to another
        (inf for an example without answer tokens)."""
        ...


# What a pushing engine emits after a stream's last chunk (or after the exception that ended it).
STREAM_END = object()


@runtime_checkable
class PushingEngine(Protocol):
    """An engine that generates on a thread of its own and can hand each chunk to a callback.

    The server uses it to pass chunks straight from the engine's thread to the event loop,
    without a thread of its own per request in between (one thread start and one hop per chunk
    fewer: about 2 ms of a request's fixed cost on 2 cores).
    """

    def pushes_from_own_thread(self) -> bool:
        """Whether :meth:`push_stream` returns at once (False: it runs in the caller's thread)."""
        ...

    def push_stream(
        self,
        prompt: Prompt,
        params: GenerationParams,
        adapter: AdapterRef | None,
        emit: Callable[[Any], None],
    ) -> Callable[[], None]:
        """Queue a generation; ``emit`` receives each :class:`Chunk`, then the exception that
        ended it if any, then :data:`STREAM_END`. Returns a function that stops the generation
        after its current token."""
        ...
