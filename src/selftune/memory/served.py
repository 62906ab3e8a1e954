"""The served chat model as the memory's embedding model (``memory.embedding_model = "served"``):
mean-pooled hidden states of the base model, through whichever engine serves it (llama.cpp by
default), without any adapter, so that promoting a version does not move the vectors.

Its vectors are named ``served:<base_model>``: changing the base model re-embeds the memory.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable

from selftune.engines.base import Engine
from selftune.memory.embedder import CallableEmbedder, TextEmbedder, embedder_name, load_embedder

__all__ = ["SERVED", "embedder_loaders", "served_embedder", "served_name"]

SERVED = "served"
_MAX_NAME = 255  # memory_vectors.model


def served_name(base_model: str) -> str:
    name = f"served:{base_model}"
    if len(name) <= _MAX_NAME:
        return name
    digest = hashlib.sha256(base_model.encode()).hexdigest()[:12]
    return f"{name[: _MAX_NAME - 13]}@{digest}"


def served_embedder(engine: Engine, base_model: str) -> TextEmbedder:
    """The served model's embeddings, texts cut to fit its context."""
    limit = engine.context_length

    def fit(text: str) -> str:
        while text and engine.count_tokens(text) > limit:
            text = text[: int(len(text) * 0.9)]
        return text

    def embed(texts: list[str]) -> list[list[float]]:
        return engine.embed([fit(text) or " " for text in texts], None)

    dim = len(embed(["dimension"])[0])
    return CallableEmbedder(served_name(base_model), dim, embed, engine.count_tokens, limit)


def embedder_loaders(
    base_model: str, device: str, engine: Callable[[], Engine]
) -> tuple[Callable[[str], TextEmbedder], Callable[[str], str]]:
    """(load a model by its spec, name it without loading it) for Memory and the worker;
    ``engine`` gives the serving engine (it may wait for it to load) when the spec is
    ``"served"``."""

    def load(spec: str) -> TextEmbedder:
        if spec == SERVED:
            return served_embedder(engine(), base_model)
        return load_embedder(spec, device=device)

    def name(spec: str) -> str:
        return served_name(base_model) if spec == SERVED else embedder_name(spec)

    return load, name
