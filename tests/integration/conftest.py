from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from selftune.api.app import create_app
from selftune.config import Settings, load_settings
from selftune.engines.transformers_engine import TransformersEngine
from tests.integration.lora_versions import save_random_lora


@pytest.fixture(scope="session")
def tiny_engine(tiny_model_dir: Path) -> TransformersEngine:
    return TransformersEngine(tiny_model_dir, context_length=256)


def tiny_settings(tiny_model_dir: Path, **overrides: Any) -> Settings:
    """Settings for the tiny model; sections are dicts (``train={"steps": 4}``), merged with
    these small serving defaults."""
    serve = {
        "context_length": 256,
        "default_max_tokens": 8,
        "adapter_poll_seconds": 0.2,
        "start_worker": False,
        **overrides.pop("serve", {}),
    }
    values: dict[str, Any] = {"base_model": str(tiny_model_dir), **overrides, "serve": serve}
    return load_settings(**values)


@pytest.fixture
def client(
    settings_env: Path, tiny_model_dir: Path, tiny_engine: TransformersEngine
) -> Iterator[TestClient]:
    settings = tiny_settings(tiny_model_dir)
    with TestClient(create_app(settings, engine=tiny_engine)) as test_client:
        yield test_client


@pytest.fixture(scope="module")
def adapter_engine(tiny_model_dir: Path) -> TransformersEngine:
    """An engine per test module: adapters loaded in one module never leak into another."""
    return TransformersEngine(tiny_model_dir, context_length=256)


@pytest.fixture(scope="module")
def lora(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_random_lora(tiny_model_dir, tmp_path_factory.mktemp("lora") / "peft", seed=1)
