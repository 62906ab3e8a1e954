"""Shared fixtures: a tiny random Llama with the default model's tokenizer, built in seconds."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


# The tiny models' layer sizes (any decoder architecture); vocabulary and depth are each test's.
TINY_SHAPE = {
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "max_position_embeddings": 512,
    "tie_word_embeddings": True,
}


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 2-layer Llama (random weights, fixed seed) saved with SmolLM2's tokenizer."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from selftune.models.base import default_gguf_path

    # A saved copy of that tokenizer, where the 98 MB GGUF cannot go (a GPU machine that is
    # sent the working tree alone: see bench/device_kit.py).
    saved = os.environ.get("SELFTUNE_TEST_TOKENIZER")
    if saved:
        tokenizer = AutoTokenizer.from_pretrained(saved)
    else:
        gguf = default_gguf_path()
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        num_hidden_layers=2,
        **TINY_SHAPE,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(1234)
    model = LlamaForCausalLM(config)
    folder = tmp_path_factory.mktemp("tiny-llama")
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def shared_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One cache (converted models, probe answers) for the whole session: it is derived data."""
    return tmp_path_factory.mktemp("cache")


def isolate_settings(env: pytest.MonkeyPatch, root: Path, shared_cache: Path) -> None:
    """No selftune.toml from the working directory and no SELFTUNE_ variable from outside;
    the shared model cache. ``env``: a test's monkeypatch, or a module's own context."""
    env.setenv("SELFTUNE_CONFIG", str(root / "selftune.toml"))
    for key in list(os.environ):
        if key.startswith("SELFTUNE_") and key != "SELFTUNE_CONFIG":
            env.delenv(key)
    env.setenv("SELFTUNE_CACHE_PATH", str(shared_cache))
    # Memory loads an embedding model in every server that records a chat: the tests of memory
    # turn it on (tests/integration/test_memory*.py), the others run without it.
    env.setenv("SELFTUNE_MEMORY__ENABLED", "false")
    # The autopilot queues training jobs by itself: the tests of it turn it on
    # (tests/integration/test_autopilot*.py); the others queue the jobs they run.
    env.setenv("SELFTUNE_AUTOPILOT__ENABLED", "false")


@pytest.fixture
def settings_env(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, shared_cache: Path
) -> Iterator[Path]:
    """Isolate settings: no selftune.toml from the working directory, data under tmp_path."""
    isolate_settings(monkeypatch, tmp_path, shared_cache)
    monkeypatch.setenv("SELFTUNE_DATA_DIR", str(tmp_path / "data"))
    # Compiling the training step takes 30-60 s per process: tests train uncompiled, except
    # the ones about compiling and the end-to-end test of the defaults.
    monkeypatch.setenv("SELFTUNE_TRAIN__COMPILE", "off")
    yield tmp_path
