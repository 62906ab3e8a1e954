"""vLLM's runtime adapter routes: load a PEFT folder, answer as model=<lora_name>, unload."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from selftune.api.app import create_app
from selftune.atomic import verify_manifest
from selftune.engines.transformers_engine import TransformersEngine
from selftune.store.schema import Interaction
from tests.integration.conftest import tiny_settings
from tests.integration.lora_versions import add_version

PROMPT = "Once upon a time"


@pytest.fixture(scope="module")
def foreign_lora(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A LoRA of another (narrower) Llama: its matrices do not fit the tiny model's layers."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=100,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
    )
    model = get_peft_model(LlamaForCausalLM(config), LoraConfig(r=2, target_modules=["q_proj"]))
    out = tmp_path_factory.mktemp("foreign") / "peft"
    model.save_pretrained(str(out))
    return out


@pytest.fixture
def vllm_client(
    settings_env: Path, tiny_model_dir: Path, adapter_engine: TransformersEngine, lora: Path
) -> Iterator[TestClient]:
    settings = tiny_settings(tiny_model_dir)
    app = create_app(settings, engine=adapter_engine)
    add_version(settings, app.state.selftune.db, lora, "v1")  # the same weights, stored
    with TestClient(app) as client:
        yield client


def _load(client: TestClient, name: str, path: Path | str) -> Any:
    return client.post("/v1/load_lora_adapter", json={"lora_name": name, "lora_path": str(path)})


def _count(client: TestClient) -> int:
    with client.app.state.selftune.db.read() as session:  # type: ignore[attr-defined]
        return int(session.scalar(select(func.count(Interaction.id))) or 0)


def _error(response: Any, status: int) -> str:
    assert response.status_code == status, response.text
    message: str = response.json()["error"]["message"]
    return message


def _complete(client: TestClient, model: str) -> Any:
    body = {"model": model, "prompt": PROMPT, "max_tokens": 8, "temperature": 0}
    response = client.post("/v1/completions", json=body)
    assert response.status_code == 200, response.text
    return response


def test_a_loaded_adapter_answers_under_its_name_until_unloaded(
    vllm_client: TestClient, lora: Path
) -> None:
    client = vllm_client
    loaded = _load(client, "support-bot", lora)
    assert loaded.status_code == 200, loaded.text
    assert loaded.text == "Success: LoRA adapter 'support-bot' added successfully."
    cards = {m["id"]: m for m in client.get("/v1/models").json()["data"]}
    assert cards["support-bot"]["parent"] == "base"

    folder = client.app.state.selftune.settings.data_dir / "adapters" / "support-bot"  # type: ignore[attr-defined]
    files = set(verify_manifest(folder)["files"])
    assert files == {"adapter_config.json", "adapter_model.safetensors", "adapter.gguf"}

    answer = _complete(client, "support-bot")
    body = answer.json()
    assert (body["model"], body["system_fingerprint"]) == ("support-bot", "support-bot")
    assert answer.headers["X-Selftune-Version"] == "support-bot"
    # The same weights stored as version v1 answer the same; the base answers otherwise.
    text = body["choices"][0]["text"]
    assert text == _complete(client, "v1").json()["choices"][0]["text"]
    assert text != _complete(client, "base").json()["choices"][0]["text"]
    with client.app.state.selftune.db.read() as session:  # type: ignore[attr-defined]
        row = session.get(Interaction, body["id"])
    assert row is not None and (row.model, row.version_id) == ("support-bot", None)

    unloaded = client.post("/v1/unload_lora_adapter", json={"lora_name": "support-bot"})
    assert unloaded.status_code == 200
    assert unloaded.text == "Success: LoRA adapter 'support-bot' removed successfully."
    assert not folder.exists()
    assert (
        client.post("/v1/completions", json={"model": "support-bot", "prompt": "x"}).status_code
        == 404
    )
    again = client.post("/v1/unload_lora_adapter", json={"lora_name": "support-bot"})
    assert "cannot be found" in _error(again, 404)
    # Loading the name again works: the adapter is fresh, not the engine's old copy.
    assert _load(client, "support-bot", lora).status_code == 200


def test_bad_loads_are_refused_with_a_reason(
    vllm_client: TestClient, lora: Path, foreign_lora: Path, tmp_path: Path
) -> None:
    client = vllm_client
    assert _load(client, "helper", lora).status_code == 200
    assert "already been loaded" in _error(_load(client, "helper", lora), 400)
    assert "served model" in _error(_load(client, "selftune", lora), 400)
    assert "served model" in _error(_load(client, "base", lora), 400)
    assert "trained version" in _error(_load(client, "v1", lora), 400)
    assert "trained version" in _error(_load(client, "v7", lora), 400)
    assert "letters, digits" in _error(_load(client, "../escape", lora), 400)
    assert "not a folder" in _error(_load(client, "x", tmp_path / "missing"), 400)
    (tmp_path / "empty").mkdir()
    assert "PEFT LoRA folder" in _error(_load(client, "x", tmp_path / "empty"), 400)
    assert "another base model" in _error(_load(client, "x", foreign_lora), 400)
    assert not (tmp_path / "data" / "adapters" / "x").exists()
    _error(client.post("/v1/load_lora_adapter", json={"lora_name": "x"}), 400)
    assert [m["id"] for m in client.get("/v1/models").json()["data"]] == [
        "selftune", "base", "v1", "helper", "all-MiniLM-L6-v2"
    ]  # fmt: skip
    assert _count(client) == 0
