"""Downloading a version's adapter: the bytes match the advertised checksum and the manifest."""

from __future__ import annotations

import hashlib
import io
import json
import shutil
import tarfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from selftune.api.app import create_app
from selftune.atomic import verify_manifest
from selftune.config import Settings
from selftune.engines.transformers_engine import TransformersEngine
from tests.integration.conftest import tiny_settings
from tests.integration.lora_versions import add_version, save_random_lora


@pytest.fixture(scope="module")
def lora(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_random_lora(tiny_model_dir, tmp_path_factory.mktemp("lora") / "peft", seed=3)


@pytest.fixture
def stored(
    settings_env: Path, tiny_model_dir: Path, tiny_engine: TransformersEngine, lora: Path
) -> Iterator[tuple[TestClient, Settings]]:
    """Version v1, stored; downloads never load it into the engine."""
    settings = tiny_settings(tiny_model_dir)
    app = create_app(settings, engine=tiny_engine)
    add_version(settings, app.state.selftune.db, lora, "v1")
    with TestClient(app) as client:
        yield client, settings


def _download(client: TestClient, ref: str, fmt: str) -> Any:
    response = client.get(f"/api/versions/{ref}/download", params={"format": fmt})
    assert response.status_code == 200, response.text
    assert hashlib.sha256(response.content).hexdigest() == response.headers["X-Checksum-Sha256"]
    assert int(response.headers["Content-Length"]) == len(response.content)
    return response


def test_gguf_download_is_the_manifested_file(stored: tuple[TestClient, Settings]) -> None:
    client, settings = stored
    response = _download(client, "v1", "gguf")
    folder = settings.versions_dir / "v1"
    entry = verify_manifest(folder)["files"]["adapter.gguf"]
    assert response.headers["X-Checksum-Sha256"] == entry["sha256"]
    assert response.content == (folder / "adapter.gguf").read_bytes()
    assert response.content[:4] == b"GGUF"
    assert 'filename="v1-adapter.gguf"' in response.headers["Content-Disposition"]
    assert _download(client, "1", "gguf").content == response.content  # by id too


def test_peft_download_is_a_deterministic_tar_built_once(
    stored: tuple[TestClient, Settings],
) -> None:
    client, settings = stored
    first = _download(client, "v1", "peft")
    with tarfile.open(fileobj=io.BytesIO(first.content)) as tar:
        names = tar.getnames()
        config = tar.extractfile("v1/adapter_config.json")
        assert config is not None and json.load(config)["peft_type"] == "LORA"
        weights = tar.extractfile("v1/adapter_model.safetensors")
        stored_weights = (settings.versions_dir / "v1" / "adapter_model.safetensors").read_bytes()
        assert weights is not None and weights.read() == stored_weights
    assert names == ["v1/adapter_config.json", "v1/adapter_model.safetensors"]
    export = settings.exports_dir / "v1" / "peft"
    manifest = verify_manifest(export)
    assert manifest["files"]["v1-peft.tar"]["sha256"] == first.headers["X-Checksum-Sha256"]
    # Served again from the export; rebuilt from scratch, byte for byte the same.
    assert _download(client, "v1", "peft").content == first.content
    shutil.rmtree(export)
    assert _download(client, "v1", "peft").content == first.content


def test_download_errors_say_what_to_do(stored: tuple[TestClient, Settings]) -> None:
    client, settings = stored

    def error(ref: str, fmt: str, status: int) -> str:
        response = client.get(f"/api/versions/{ref}/download", params={"format": fmt})
        assert response.status_code == status, response.text
        message: str = response.json()["error"]["message"]
        return message

    assert "gguf" in error("v1", "zip", 400) and "peft" in error("v1", "zip", 400)
    error("v9", "gguf", 404)
    db = client.app.state.selftune.db  # type: ignore[attr-defined]
    add_version(settings, db, settings.versions_dir / "v1", "v2", gguf=False)
    assert "format=peft" in error("v2", "gguf", 404)
    assert _download(client, "v2", "peft").content  # the PEFT files are always there
    folder = settings.versions_dir / "v1"
    (folder / "adapter_model.safetensors").write_bytes(b"torn")
    assert "do not match" in error("v1", "gguf", 500)
    assert "do not match" in error("v1", "peft", 500)
    shutil.rmtree(folder)
    assert "no stored adapter" in error("v1", "gguf", 404)
