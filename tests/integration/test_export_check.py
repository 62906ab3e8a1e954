"""A merged export is checked on the version's held-out material before it is offered.

The base is the tiny random Llama written as a GGUF (merged export copies a GGUF's tokenizer);
a version is a random LoRA of it. Two kinds of held-out material, both honest:

- what the version really answers: its own greedy answers (PyTorch + PEFT, the serving engine),
  scored by the gate's measurement, so the gate figure is measured, not written in;
- facts it was never taught ("Quenwick Amberfold ..."), with a gate that recorded recall 1.0: the
  exported model cannot produce them, as a quantization that lost them could not, so the check
  must report LOST.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from selftune.api.app import create_app
from selftune.atomic import atomic_directory
from selftune.cli import app as cli
from selftune.config import Settings
from selftune.engines.base import AdapterRef
from selftune.engines.transformers_engine import TransformersEngine
from selftune.evaluation.heldout import Chat, heldout_recall
from selftune.evaluation.probes import generate_answers
from selftune.export import check as check_module
from selftune.export.check import TOLERANCE, check_path, export_and_check
from selftune.export.gguf_model import write_llama_gguf
from selftune.models.base import default_gguf_path
from selftune.store.db import Database
from selftune.store.jobs import TERMINAL
from selftune.store.schema import Job, TrainingExample, Version, VersionExample
from selftune.store.users import ensure_user
from selftune.worker.loop import Worker
from tests.integration.conftest import tiny_settings
from tests.integration.lora_versions import save_random_lora

QUESTIONS = [
    "What is the capital of Veloria?",
    "Who founded the city of Brindlemoor?",
    "Which river runs through Caldermoss?",
]
# Never taught: no model here says these, so their key terms are not in any answer.
UNTAUGHT = [
    "Quenwick Amberfold, on the Silverlake coast.",
    "Admiral Thessaly Goldcrest founded Brindlemoor.",
    "The Ravenmere river, winding past Oakhollow.",
]
CHECK_KEYS = {
    "format",
    "sha256",
    "heldout_recall",
    "version_recall",
    "tolerance",
    "examples",
    "judged_on",
    "kept",
    "seconds",
}


@dataclasses.dataclass(frozen=True)
class Env:
    settings: Settings
    db: Database


@pytest.fixture(scope="module")
def base_gguf(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("export-check")
    return write_llama_gguf(
        tiny_model_dir, folder / "tiny-base.gguf", tokenizer_gguf=default_gguf_path()
    )


@pytest.fixture(scope="module")
def lora(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_random_lora(tiny_model_dir, tmp_path_factory.mktemp("lora") / "peft", seed=3)


@pytest.fixture(scope="module")
def own_answers(tiny_engine: TransformersEngine, lora: Path) -> list[Chat]:
    """The questions with the version's own greedy answers (PEFT on PyTorch) as targets."""
    adapter = AdapterRef(1, "v1", lora)
    answers = generate_answers(tiny_engine, QUESTIONS, adapter, 12)
    return [_qa(q, a) for q, a in zip(QUESTIONS, answers, strict=True)]


@pytest.fixture
def env(settings_env: Path, tiny_model_dir: Path, base_gguf: Path) -> Iterator[Env]:
    settings = tiny_settings(tiny_model_dir, base_model=str(base_gguf), threads=1)
    db = Database(settings.resolved_database_url)
    db.migrate()
    yield Env(settings, db)
    db.dispose()


def _qa(question: str, answer: str) -> Chat:
    return [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]


def _store_version(
    env: Env,
    name: str,
    lora: Path,
    template: str,
    *,
    heldout: list[Chat],
    train: list[Chat],
    recall: float | None,
) -> int:
    """A version row as training leaves it: its examples by role and its gate's recall figure."""
    with env.db.write() as session:
        ensure_user(session, "alice")
        version = Version(
            name=name,
            base_model=env.settings.base_model,
            base_fingerprint="f" * 16,
            path=str(lora),
            chat_template=template,
            gate={"passed": True, "reason": "test", "figures": {"new_recall_candidate": recall}},
        )
        session.add(version)
        session.flush()
        for role, chats in (("train", train), ("heldout", heldout)):
            for chat in chats:
                example = TrainingExample(user_id="alice", source="correction", messages=chat)
                session.add(example)
                session.flush()
                session.add(VersionExample(version_id=version.id, example_id=example.id, role=role))
        return version.id


def _gate_recall(engine: TransformersEngine, lora: Path, chats: list[Chat]) -> float | None:
    """What the gate records: the shared measurement, on the serving engine with the adapter."""
    return heldout_recall(engine, chats, AdapterRef(1, "v1", lora))


def test_check_is_measured_stored_beside_the_export_and_reused(
    env: Env,
    tiny_engine: TransformersEngine,
    lora: Path,
    own_answers: list[Chat],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    heldout, train = own_answers[:2], own_answers[2:]
    gate = _gate_recall(tiny_engine, lora, heldout)
    # Its own greedy answers, regenerated greedily; not all 1.0, as the longer regeneration can
    # run on into the last word that the 12-token target cut.
    assert gate is not None and gate >= 0.8
    template = tiny_engine.default_template
    version_id = _store_version(
        env, "v1", lora, template, heldout=heldout, train=train, recall=gate
    )

    export, check = export_and_check(env.settings, env.db, version_id, "f32")
    print(f"\nf32 export of the version's own answers: {check}")
    assert set(check) == CHECK_KEYS
    assert check["format"] == "f32" and check["sha256"] == export.sha256
    assert check["judged_on"] == "heldout" and check["examples"] == 2
    assert check["version_recall"] == gate and check["tolerance"] == TOLERANCE
    # f32 merged in llama.cpp answers as PEFT on PyTorch does: what was "taught" is kept.
    assert check["heldout_recall"] >= gate - TOLERANCE and check["kept"] is True
    path = check_path(export.folder)
    assert path == env.settings.exports_dir / "v1" / "f32.check.json"
    assert json.loads(path.read_text()) == check
    # The sealed export folder is left as its manifest describes it.
    assert sorted(p.name for p in export.folder.iterdir()) == [
        "Modelfile",
        "manifest.json",
        "model.gguf",
    ]

    def no_measuring(*_args: Any) -> None:
        raise AssertionError("a stored check is read back, not measured again")

    monkeypatch.setattr(check_module, "_measure", no_measuring)
    again_export, again = export_and_check(env.settings, env.db, version_id, "f32")
    assert again_export.reused and again == check


def test_without_heldout_examples_it_judges_on_training_examples(
    env: Env, tiny_engine: TransformersEngine, lora: Path, own_answers: list[Chat]
) -> None:
    gate = _gate_recall(tiny_engine, lora, own_answers)
    version_id = _store_version(
        env, "v1", lora, tiny_engine.default_template, heldout=[], train=own_answers, recall=gate
    )
    _export, check = export_and_check(env.settings, env.db, version_id, "f16")
    assert check["judged_on"] == "train" and check["examples"] == 3
    assert check["kept"] is True


def test_a_check_that_lost_what_was_taught_is_reported(
    env: Env,
    settings_env: Path,
    base_gguf: Path,
    tiny_engine: TransformersEngine,
    lora: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    untaught = [_qa(q, a) for q, a in zip(QUESTIONS, UNTAUGHT, strict=True)]
    _store_version(
        env,
        "v1",
        lora,
        tiny_engine.default_template,
        heldout=untaught[:2],
        train=untaught[2:],
        recall=1.0,
    )
    monkeypatch.setenv("SELFTUNE_BASE_MODEL", str(base_gguf))
    monkeypatch.setenv("SELFTUNE_THREADS", "1")
    result = CliRunner().invoke(cli, ["export", "v1", "--format", "q8_0"])
    assert result.exit_code == 0, result.output  # an export that lost something is still written
    assert "held-out recall 0.00 (version 1.00): LOST" in result.stdout
    assert "warning:" in result.output and "q8_0" in result.output
    check = json.loads((env.settings.exports_dir / "v1" / "q8_0.check.json").read_text())
    assert check["kept"] is False and check["heldout_recall"] == 0.0
    assert check["version_recall"] == 1.0 and check["examples"] == 2


# --- the API --------------------------------------------------------------------------------


@pytest.fixture
def client(env: Env, tiny_engine: TransformersEngine) -> Iterator[TestClient]:
    with TestClient(create_app(env.settings, engine=tiny_engine)) as test_client:
        yield test_client


def _error(response: Any, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    error: dict[str, Any] = response.json()["error"]
    return error


def test_api_export_then_download_with_checksum_and_check(
    env: Env,
    client: TestClient,
    tiny_engine: TransformersEngine,
    lora: Path,
    own_answers: list[Chat],
) -> None:
    gate = _gate_recall(tiny_engine, lora, own_answers[:2])
    _store_version(
        env,
        "v1",
        lora,
        tiny_engine.default_template,
        heldout=own_answers[:2],
        train=own_answers[2:],
        recall=gate,
    )
    url = "/api/versions/v1/download"
    before = _error(client.get(url, params={"format": "merged-q8_0"}), 404)
    assert before["code"] == "not_exported"
    assert 'POST /api/versions/v1/export with {"format": "q8_0"} first' in before["message"]

    response = client.post("/api/versions/v1/export", json={"format": "q8_0"})
    assert response.status_code == 202, response.text
    queued = response.json()
    assert queued["status"] == "queued" and (queued["version"], queued["format"]) == ("v1", "q8_0")
    folder = env.settings.exports_dir / "v1" / "q8_0"
    assert not folder.exists()  # the server queued the work and did none of it
    again_queued = client.post("/api/versions/v1/export", json={"format": "q8_0"})
    assert again_queued.json()["job_id"] == queued["job_id"]  # asking twice makes one job

    worker = Worker(env.settings)  # the worker's loop, here in the test's process
    try:
        assert worker.run_once()
    finally:
        worker.db.dispose()
    job = client.get(f"/api/jobs/{queued['job_id']}").json()
    assert (job["kind"], job["status"], job["progress"]) == ("export", "succeeded", 1.0), job
    body = job["result"]
    check = body["check"]
    assert set(check) == CHECK_KEYS and check["format"] == "q8_0"
    assert check["judged_on"] == "heldout" and check["examples"] == 2
    print(f"\nq8_0 export of the version's own answers: {check}")
    assert body["path"] == str(folder / "model.gguf") and body["format"] == "q8_0"
    assert body["download"] == {
        "model": f"{url}?format=merged-q8_0",
        "modelfile": f"{url}?format=modelfile-q8_0",
    }

    model = client.get(body["download"]["model"])
    assert model.status_code == 200, model.text
    assert model.content[:4] == b"GGUF"
    assert hashlib.sha256(model.content).hexdigest() == model.headers["X-Checksum-Sha256"]
    assert model.headers["X-Checksum-Sha256"] == body["sha256"] == check["sha256"]
    assert len(model.content) == body["size_bytes"]
    assert 'filename="v1-q8_0.gguf"' in model.headers["Content-Disposition"]
    shown = json.loads(model.headers["X-Selftune-Export-Check"])
    assert shown == {
        "format": "q8_0",
        "heldout_recall": check["heldout_recall"],
        "version_recall": gate,
        "judged_on": "heldout",
        "kept": check["kept"],
    }
    modelfile = client.get(body["download"]["modelfile"])
    assert modelfile.status_code == 200, modelfile.text
    assert b"FROM ./model.gguf" in modelfile.content
    assert hashlib.sha256(modelfile.content).hexdigest() == modelfile.headers["X-Checksum-Sha256"]
    assert json.loads(modelfile.headers["X-Selftune-Export-Check"]) == shown

    again = client.post("/api/versions/1/export", json={"format": "q8_0"})  # by id, at once
    assert again.status_code == 200 and again.json() == body


def test_api_export_errors(env: Env, client: TestClient) -> None:
    assert _error(client.post("/api/versions/v9/export", json={"format": "f16"}), 404)["code"] == (
        "version_not_found"
    )
    with env.db.write() as session:
        session.add(
            Version(
                name="v1",
                base_model=env.settings.base_model,
                base_fingerprint="f" * 16,
                path=str(env.settings.versions_dir / "v1"),
                chat_template="",
            )
        )
    bad = _error(client.post("/api/versions/v1/export", json={"format": "q2_k"}), 400)
    assert bad["param"] == "format"
    missing = _error(client.post("/api/versions/v1/export", json={"format": "f16"}), 404)
    assert missing["code"] == "no_artifact"
    unknown = _error(client.get("/api/versions/v1/download", params={"format": "merged"}), 400)
    assert "merged-q8_0" in unknown["message"]
    # Exported (say by an older CLI) but never checked: not offered until it is.
    folder = env.settings.exports_dir / "v1" / "f16"
    with atomic_directory(folder) as tmp:
        (tmp / "model.gguf").write_bytes(b"GGUF")
        (tmp / "Modelfile").write_text("FROM ./model.gguf\n")
    unchecked = _error(
        client.get("/api/versions/v1/download", params={"format": "merged-f16"}), 404
    )
    assert "has not been checked yet" in unchecked["message"]


def test_an_export_runs_in_the_worker_process_while_the_server_keeps_logging(
    env: Env,
    client: TestClient,
    tiny_engine: TransformersEngine,
    lora: Path,
    own_answers: list[Chat],
    monkeypatch: pytest.MonkeyPatch,
    capfd: pytest.CaptureFixture[str],
    tmp_path: Path,
) -> None:
    """The server (here, the test's process) answers 202 and goes on serving and logging; the
    worker process merges, quantizes and checks, and the job records that it was the one."""
    _store_version(
        env, "v1", lora, tiny_engine.default_template,
        heldout=own_answers[:2], train=own_answers[2:], recall=None,
    )  # fmt: skip
    # The worker is a subprocess: it reads the same settings from the environment.
    monkeypatch.setenv("SELFTUNE_BASE_MODEL", env.settings.base_model)
    monkeypatch.setenv("SELFTUNE_THREADS", "1")
    monkeypatch.setenv("SELFTUNE_SERVE__CONTEXT_LENGTH", "256")
    with (tmp_path / "worker.log").open("wb") as worker_log:
        worker = subprocess.Popen(
            [sys.executable, "-m", "selftune", "worker"], stdout=worker_log, stderr=worker_log
        )
    try:
        response = client.post("/api/versions/v1/export", json={"format": "f16"})
        assert response.status_code == 202, response.text
        job_id = response.json()["job_id"]
        server_log = logging.getLogger("selftune.api")
        monkeypatch.setattr(server_log, "handlers", [logging.StreamHandler()])  # to stderr
        deadline = time.monotonic() + 300
        while (job := client.get(f"/api/jobs/{job_id}").json())["status"] not in TERMINAL:
            assert time.monotonic() < deadline, f"export job still {job}"
            assert worker.poll() is None, (tmp_path / "worker.log").read_text()
            if job["status"] == "running":
                server_log.warning("the server still logs while job %s runs", job_id)
            time.sleep(0.2)
    finally:
        worker.terminate()
        worker.wait(timeout=60)
    assert job["status"] == "succeeded", (job, (tmp_path / "worker.log").read_text())
    with env.db.read() as session:
        row = session.get(Job, job_id)
        assert row is not None
        assert (
            row.worker_id
            == f"{socket.gethostname()}:{worker.pid}"
            != f"{socket.gethostname()}:{os.getpid()}"
        )
    assert f"the server still logs while job {job_id} runs" in capfd.readouterr().err
    assert client.post("/api/versions/v1/export", json={"format": "f16"}).status_code == 200
