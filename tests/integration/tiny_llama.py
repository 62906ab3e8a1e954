"""The tiny model served through llama.cpp, in-process: for tests of what only that engine does
(grammars), one app per test module.

The tiny model's weights are random, so at a high temperature it writes noise: under a grammar
that is a fuzzer of the grammar, every answer a different text the grammar admits.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from selftune.api.app import create_app
from selftune.engines.llamacpp_engine import LlamaCppEngine
from selftune.models.base import default_gguf_path
from tests.conftest import isolate_settings
from tests.gguf_base import write_llama_base_gguf
from tests.integration.conftest import tiny_settings

__all__ = ["llama_client"]


@contextlib.contextmanager
def llama_client(
    tiny_model_dir: Path, root: Path, shared_cache: Path, **serve: Any
) -> Iterator[TestClient]:
    """A TestClient of an app serving the tiny model as an f32 GGUF with llama.cpp; settings
    isolated as ``settings_env`` does, for as long as the block runs."""
    gguf = write_llama_base_gguf(tiny_model_dir, root / "tiny.gguf", default_gguf_path())
    engine = LlamaCppEngine(gguf, tiny_model_dir, context_length=512, threads=1)
    try:
        with pytest.MonkeyPatch.context() as env:
            isolate_settings(env, root, shared_cache)
            settings = tiny_settings(
                tiny_model_dir,
                data_dir=str(root / "data"),
                serve={"context_length": 512, **serve},
            )
            with TestClient(create_app(settings, engine=engine)) as client:
                yield client
    finally:
        engine.close()
