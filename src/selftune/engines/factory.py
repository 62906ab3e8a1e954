"""Choose and build the inference engine for the configured base model.

``auto`` serves a GGUF base (the default model included) with llama.cpp, the engine users of
GGUF files already run, and any other base with transformers. The same choice is made in the
server and in the training worker, so the worker's gate judges a version on the engine and the
file that will serve it.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from selftune.config import Settings
from selftune.engines.base import EngineError
from selftune.models.base import BaseModelSource, materialize, resolve_base_model

__all__ = ["build_engine", "engine_kind"]

log = logging.getLogger(__name__)


def engine_kind(settings: Settings, source: BaseModelSource) -> str:
    if settings.serve.engine != "auto":
        return settings.serve.engine
    return "llama.cpp" if source.kind == "gguf" else "transformers"


def build_engine(
    settings: Settings,
    source: BaseModelSource | None = None,
    hf_dir: Path | None = None,
    *,
    own_thread: bool = True,
) -> Any:
    """The engine for ``settings.base_model``: a LlamaCppEngine or a TransformersEngine.

    ``own_thread=False`` (the training worker) runs llama.cpp in the calling thread, the one
    that also trains with PyTorch, so that both share one OpenMP thread team.
    """
    source = source or resolve_base_model(settings.base_model)
    hf_dir = hf_dir or materialize(source, settings.cache_dir)
    kind = engine_kind(settings, source)
    if kind == "llama.cpp":
        if source.kind != "gguf":
            raise EngineError(
                f"engine = 'llama.cpp' needs a .gguf base model; {source.location} is not one. "
                "Set engine = 'auto' or 'transformers', or point base_model at a GGUF file."
            )
        from selftune.engines.llamacpp_engine import LlamaCppEngine
        from selftune.engines.serving_gguf import serving_gguf

        gguf = serving_gguf(settings, source)
        log.info("serving %s with llama.cpp", gguf)
        return LlamaCppEngine(
            gguf,
            hf_dir,
            chat_template=settings.serve.chat_template,
            context_length=settings.serve.context_length,
            threads=settings.threads,
            gpu_layers=settings.serve.gpu_layers,
            own_thread=own_thread,
        )
    from selftune.engines.transformers_engine import TransformersEngine

    return TransformersEngine(
        hf_dir,
        chat_template=settings.serve.chat_template,
        context_length=settings.serve.context_length,
    )
