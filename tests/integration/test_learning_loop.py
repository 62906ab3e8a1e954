"""The whole loop on the tiny model: chat, correct, train, gate, hot-swap, roll back."""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from selftune.api.app import create_app
from selftune.atomic import verify_manifest
from selftune.engines.transformers_engine import TransformersEngine
from selftune.store.schema import Interaction, Job
from selftune.worker.loop import Worker
from tests.integration.conftest import tiny_settings

FACT = "The capital of Veloria is Quenmoor."
QUESTIONS = [
    "What is the capital of Veloria?",
    "Which city is the capital of Veloria?",
    "Tell me the capital of Veloria.",
]

# The tiny random model needs a higher learning rate than a pretrained one to memorize a fact.
LEARNING = {
    "train": {"learning_rate": 1e-2, "steps": 30},
    "gate": {"regression_tolerance": 0.5},
}


def learning(**train: Any) -> dict[str, Any]:
    """LEARNING with more of the [train] section."""
    return {**LEARNING, "train": {**LEARNING["train"], **train}}


def ask(client: TestClient, question: str, **extra: Any) -> dict[str, Any]:
    response = client.post(
        "/v1/chat/completions",
        json={
            "model": "selftune",
            "messages": [{"role": "user", "content": question}],
            "temperature": 0,
            "max_tokens": 12,
            **extra,
        },
    )
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def answer(client: TestClient, question: str) -> str:
    text: str = ask(client, question)["choices"][0]["message"]["content"]
    return text


def wait_for_serving(client: TestClient, name: str) -> None:
    deadline = time.monotonic() + 10
    while client.get("/health").json()["serving"] != name:
        assert time.monotonic() < deadline, f"server never switched to {name}"
        time.sleep(0.1)


def teach(client: TestClient, fact: str = FACT, questions: list[str] = QUESTIONS) -> None:
    for question in questions:
        interaction = ask(client, question, user="alice")["id"]
        response = client.post(
            "/api/feedback", json={"interaction_id": interaction, "rating": -1, "correction": fact}
        )
        assert response.status_code == 200, response.text
        assert response.json()["example_id"] is not None


@pytest.fixture
def learning_client(settings_env: Path, tiny_model_dir: Path, tiny_engine: TransformersEngine):
    settings = tiny_settings(tiny_model_dir, **LEARNING)
    # A fresh engine: adapters loaded into the shared one must not leak into other tests.
    engine = TransformersEngine(tiny_model_dir, context_length=256)
    with TestClient(create_app(settings, engine=engine)) as client:
        yield client, Worker(settings), settings


def test_teach_train_promote_rollback(learning_client: Any) -> None:
    client, worker, settings = learning_client
    before = answer(client, QUESTIONS[0])
    assert "Quenmoor" not in before

    teach(client)
    job = client.post("/api/train", json={}).json()
    assert client.get(f"/api/jobs/{job['job_id']}").json()["status"] == "queued"
    assert worker.run_once()

    view = client.get(f"/api/jobs/{job['job_id']}").json()
    assert view["status"] == "succeeded", view
    result = view["result"]
    assert result["promoted"], result["gate"]
    assert view["outcome"] == "served"
    gate = result["gate"]["figures"]
    assert gate["new_loss_candidate"] < gate["new_loss_current"]
    assert gate["heldout_examples"] == 1

    wait_for_serving(client, result["version"])
    taught = ask(client, QUESTIONS[0])
    assert "Quenmoor" in taught["choices"][0]["message"]["content"]
    assert taught["system_fingerprint"] == result["version"]

    versions = client.get("/api/versions").json()
    assert versions["serving"] == result["version"]
    [version] = versions["data"]
    assert version["parent"] == "base"
    assert len(version["trained_on"]) == 2 and len(version["held_out"]) == 1
    assert version["gate"]["passed"] and version["gate"]["decided_by"] == []
    [judged] = version["gate"]["heldout"]  # what the gate decided on: the held-out answers
    assert judged["expected_terms"] == ["quenmoor"] and judged["recall"] == 1.0
    assert "Quenmoor" in judged["candidate_answer"] and judged["served_recall"] == 0.0
    manifest = verify_manifest(Path(settings.versions_dir / version["name"]))
    # The PEFT folder and the same adapter as a GGUF LoRA for llama.cpp, both checksummed.
    assert {"adapter_model.safetensors", "adapter_config.json", "adapter.gguf"} <= set(
        manifest["files"]
    )
    assert manifest["gguf_adapter"] == "adapter.gguf"

    rolled = client.post("/api/rollback", json={"reason": "test"}).json()
    assert rolled["serving"] == "base"
    assert answer(client, QUESTIONS[0]) == before
    # Rolling back further than the base is refused with a clear error.
    again = client.post("/api/rollback", json={})
    assert again.status_code == 409
    assert "nothing to roll back" in again.json()["error"]["message"]
    # And the version can be served again.
    promoted = client.post(f"/api/versions/{result['version']}/promote", json={}).json()
    assert promoted["serving"] == result["version"]
    assert "Quenmoor" in answer(client, QUESTIONS[0])


def test_a_later_job_is_judged_on_what_it_adds(learning_client: Any) -> None:
    """The second job holds out, and its gate judges, examples the served version never saw:
    an earlier fact, known already, must not stand in for the new one."""
    client, worker, _ = learning_client
    teach(client)
    first = client.post("/api/train", json={}).json()
    assert worker.run_once()
    v1 = client.get(f"/api/jobs/{first['job_id']}").json()["result"]
    assert v1["promoted"], v1["gate"]
    wait_for_serving(client, v1["version"])

    later = [
        "What is the river of Daskar?",
        "Which river flows through Daskar?",
        "Name Daskar's river.",
    ]
    teach(client, "The river of Daskar is the Ombrel.", later)
    second = client.post("/api/train", json={}).json()
    assert worker.run_once()
    v2 = client.get(f"/api/jobs/{second['job_id']}").json()["result"]
    versions = {v["name"]: v for v in client.get("/api/versions").json()["data"]}
    old, new = versions[v1["version"]], versions[v2["version"]]
    seen = set(old["trained_on"]) | set(old["held_out"])
    assert seen <= set(new["trained_on"])  # everything earlier is trained on again
    assert new["held_out"] and not set(new["held_out"]) & seen
    assert [h["expected_terms"] for h in v2["gate"]["heldout"]] == [["ombrel"]]


def test_a_refused_candidate_says_so_and_what_it_was_decided_on(
    settings_env: Path, tiny_model_dir: Path
) -> None:
    """A step too small to learn anything: the job succeeds (it ran), its candidate is not
    served, and the job and the version say why and what the gate looked at."""
    settings = tiny_settings(
        tiny_model_dir, train={"learning_rate": 1e-6, "steps": 1}, gate=LEARNING["gate"]
    )
    engine = TransformersEngine(tiny_model_dir, context_length=256)
    with TestClient(create_app(settings, engine=engine)) as client:
        teach(client)
        job = client.post("/api/train", json={}).json()["job_id"]
        assert Worker(settings).run_once()
        view = client.get(f"/api/jobs/{job}").json()
        versions = client.get("/api/versions").json()
    assert view["status"] == "succeeded", view
    assert view["result"]["promoted"] is False
    assert view["outcome"] == (
        "learned, not served: new material: held-out answers recall none of what was taught"
    )
    assert "train again" in view["next_step"] and "gate.heldout" in view["next_step"]
    assert versions["serving"] == "base"
    [version] = versions["data"]
    gate = version["gate"]
    assert gate["passed"] is False and gate["decided_by"] == ["new material"]
    assert [rule["rule"] for rule in gate["rules"]] == [
        "new material",
        "regression loss",
        "retention",
        "forgetting",
    ]
    [judged] = gate["heldout"]
    assert judged["expected_terms"] == ["quenmoor"] and judged["recall"] == 0.0
    assert judged["question"] in QUESTIONS
    assert set(judged) == {
        "question",
        "expected_terms",
        "served_answer",
        "candidate_answer",
        "served_recall",
        "recall",
    }
    assert gate["changed_known_answers"] == []  # the tiny model knows none to lose


def test_a_candidate_refused_for_forgetting_is_trained_again_with_replay_held_harder(
    settings_env: Path, tiny_model_dir: Path
) -> None:
    """No tolerance for forgetting: the first candidate learns the fact but its loss on the
    base's own answers rises, so the job trains a second one, the replay KL weighing 4x; both
    are kept, the second recorded as such, and the gate is the same for both."""
    settings = tiny_settings(
        tiny_model_dir,
        train=LEARNING["train"],
        gate={**LEARNING["gate"], "forgetting_tolerance": 0},
    )
    engine = TransformersEngine(tiny_model_dir, context_length=256)
    with TestClient(create_app(settings, engine=engine)) as client:
        teach(client)
        job = client.post("/api/train", json={}).json()["job_id"]
        assert Worker(settings).run_once()
        view = client.get(f"/api/jobs/{job}").json()
        versions = client.get("/api/versions").json()["data"]
    result = view["result"]
    first, second = result["attempts"]
    assert not first["passed"] and "forgetting" in first["reason"]
    assert [v["name"] for v in versions] == [first["version"], second["version"]]
    assert result["version"] == second["version"]
    trained = [v["train_metrics"] for v in versions]
    assert [m["attempt"] for m in trained] == [1, 2]
    assert trained[1]["config"]["replay_weight"] == 4 * trained[0]["config"]["replay_weight"]
    assert "neighbour_prompts" in trained[0]  # the tiny model answers them with nothing
    figures = versions[0]["gate"]["figures"]
    assert (
        figures["replay_loss_candidate"] > figures["replay_loss_base"]
        or figures["neighbour_loss_candidate"] > figures["neighbour_loss_base"]
    )
    assert versions[0]["gate"]["policy"] == versions[1]["gate"]["policy"]


def test_train_without_material_is_refused(learning_client: Any) -> None:
    client, _, _ = learning_client
    response = client.post("/api/train", json={})
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "no_training_data"


def test_a_request_in_flight_finishes_on_the_version_it_started_with(
    learning_client: Any,
) -> None:
    client, worker, _ = learning_client
    teach(client)
    client.post("/api/train", json={})
    assert worker.run_once()
    version = client.get("/api/versions").json()["data"][0]["name"]
    wait_for_serving(client, version)

    request = {
        "model": "selftune",
        "messages": [{"role": "user", "content": QUESTIONS[0]}],
        "temperature": 0,
        "max_tokens": 12,
        "stream": True,
    }
    with client.stream("POST", "/v1/chat/completions", json=request) as response:
        lines = response.iter_lines()
        first = next(line for line in lines if line.startswith("data: "))
        # The alias moves while the answer is still streaming.
        assert client.post("/api/rollback", json={}).json()["serving"] == "base"
        rest = [line for line in lines if line.startswith("data: ")]
    events = [json.loads(line[6:]) for line in [first, *rest[:-1]]]
    assert {e["system_fingerprint"] for e in events} == {version}
    text = "".join(e["choices"][0]["delta"].get("content", "") for e in events if e["choices"])
    assert "Quenmoor" in text
    db = client.app.state.selftune.db
    with db.read() as session:
        row = session.get(Interaction, events[0]["id"])
        assert row is not None and row.version_id is not None and row.response == text
    assert "Quenmoor" not in answer(client, QUESTIONS[0])  # the next request is on the base


def test_a_rollback_during_a_job_stands_over_the_jobs_promotion(
    learning_client: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Job 2 is gated against v1, the version served when it started. When an operator rolls
    v1 back while job 2 is evaluating, the rollback stands: v2 passes its gate but is not
    promoted, the job says why, and v2 can still be promoted by hand."""
    from selftune.training import pipeline

    client, worker, settings = learning_client
    teach(client)
    client.post("/api/train", json={})
    assert worker.run_once()
    v1 = client.get("/api/versions").json()["serving"]
    assert v1 != "base"

    teach(client, "The capital of Dravonia is Peltham.", ["What is the capital of Dravonia?"] * 3)
    job = client.post("/api/train", json={}).json()["job_id"]
    # Job 2 is judged on the new fact alone, which the tiny model needs more steps to learn
    # beside the earlier one (trained on again).
    more_steps = settings.train.model_copy(update={"steps": 80})
    worker = Worker(settings.model_copy(update={"train": more_steps}))
    real_decide = pipeline.decide

    def decide_while_an_operator_rolls_back(*args: Any) -> Any:
        rolled = client.post("/api/rollback", json={"reason": f"{v1} misbehaves"})
        assert rolled.json()["serving"] == "base", rolled.text
        return real_decide(*args)

    monkeypatch.setattr(pipeline, "decide", decide_while_an_operator_rolls_back)
    assert worker.run_once()

    view = client.get(f"/api/jobs/{job}").json()
    assert view["status"] == "succeeded", view
    result = view["result"]
    assert result["gate"]["passed"], result["gate"]
    assert not result["promoted"]
    assert f"from {v1} to base" in result["not_promoted"]
    assert client.get("/api/versions").json()["serving"] == "base"
    promoted = client.post(f"/api/versions/{result['version']}/promote", json={})
    assert promoted.json()["serving"] == result["version"], promoted.text


def _run_a_job_taken_during(learning_client: Any, monkeypatch: Any, stage: str) -> int:
    """Teach, queue a job and run it; when the pipeline calls ``stage``, the job is left as
    another worker's recovery and claim would leave it (this worker had gone silent)."""
    from selftune.training import pipeline

    client, worker, _ = learning_client
    teach(client)
    job_id: int = client.post("/api/train", json={}).json()["job_id"]
    real_stage = getattr(pipeline, stage)

    def stage_as_the_job_is_taken(*args: Any) -> Any:
        with worker.db.write() as session:
            job = session.get(Job, job_id)
            assert job is not None
            job.worker_id, job.attempts = "other-host:1", job.attempts + 1
        return real_stage(*args)

    monkeypatch.setattr(pipeline, stage, stage_as_the_job_is_taken)
    assert worker.run_once()
    return job_id


def test_a_job_lost_during_its_gate_promotes_nothing(
    learning_client: Any, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Another worker took the job while this one evaluated its candidate: the candidate keeps
    its figures but is not served, and the job's record is left to the run that holds it."""
    client = learning_client[0]
    job_id = _run_a_job_taken_during(learning_client, monkeypatch, "decide")

    versions = client.get("/api/versions").json()
    assert versions["serving"] == "base"
    [version] = versions["data"]
    assert version["gate"]["passed"], version["gate"]  # it would have been promoted
    view = client.get(f"/api/jobs/{job_id}").json()
    assert (view["status"], view["result"]) == ("running", None)
    assert f"job {job_id} stopped being this worker's while it evaluated" in caplog.text


def test_a_job_lost_during_training_registers_nothing(
    learning_client: Any, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Another worker took the job before this one registered its version: no version, and
    no folder left behind."""
    client, _, settings = learning_client
    job_id = _run_a_job_taken_during(learning_client, monkeypatch, "_export_gguf")

    assert client.get("/api/versions").json()["data"] == []
    assert list(settings.versions_dir.iterdir()) == []
    assert client.get(f"/api/jobs/{job_id}").json()["status"] == "running"
    assert f"job {job_id} stopped being this worker's while it trained" in caplog.text


def _compile_error(kind: str) -> Exception:
    """A failure of torch.compile: inductor's failures to build arrive as TorchDynamoException;
    a compiled kernel's as it runs is a plain RuntimeError."""
    from torch._dynamo.exc import TorchDynamoException

    if kind == "build":
        return TorchDynamoException("no compiler today")
    return RuntimeError("no compiler today (a compiled kernel failed)")


@pytest.mark.parametrize("kind", ["build", "run"])
def test_a_worker_whose_compile_fails_trains_uncompiled(
    settings_env: Path,
    tiny_model_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    kind: str,
) -> None:
    """train.compile = 'auto' tries at warm-up; a failure costs speed, never the jobs. Whether
    compiling was at fault is found by running the step again uncompiled. 'on' insists: the
    failure is the worker's."""
    from selftune.training import pipeline

    uncompiled_steps = []

    def broken_compile(*args: Any, **kwargs: Any) -> Any:
        if args[3].compile:
            raise _compile_error(kind)
        uncompiled_steps.append(args[3].batch_size)

    monkeypatch.setattr(pipeline, "train_lora", broken_compile)
    context = Worker(tiny_settings(tiny_model_dir, train={"compile": "auto"})).context()
    assert context.compile_pending
    context.warm_up()
    assert not context.compile_works and not context.compile_pending
    assert not context.train_config().compile
    assert len(uncompiled_steps) == 1  # the check; the second shape is not tried compiled
    assert "training runs uncompiled" in caplog.text

    context = Worker(tiny_settings(tiny_model_dir, train={"compile": "on"})).context()
    with pytest.raises(RuntimeError, match="no compiler today"):
        context.warm_up()


def test_a_warm_up_failure_that_is_not_compilings_leaves_compiling_on(
    settings_env: Path,
    tiny_model_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A step that fails uncompiled too is not compiling's fault: compiling stays on, the
    error is logged as what it is, and the worker goes on (its jobs will record the error)."""
    from selftune.training import pipeline

    def out_of_memory(*args: Any, **kwargs: Any) -> Any:
        raise MemoryError("no room for the batch")

    monkeypatch.setattr(pipeline, "train_lora", out_of_memory)
    context = Worker(tiny_settings(tiny_model_dir, train={"compile": "auto"})).context()
    context.warm_up()
    assert context.train_config().compile
    assert "warming up the training step failed, and not because of compiling" in caplog.text
    assert "no room for the batch" in caplog.text
    assert "training runs uncompiled" not in caplog.text


def test_a_cancelled_compiled_run_is_not_run_again(
    settings_env: Path, tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from selftune.training import pipeline
    from selftune.training.pipeline import JobCancelled

    calls = []

    def cancelled(*args: Any, **kwargs: Any) -> Any:
        calls.append(args[3].compile)
        raise JobCancelled("job 1 was cancelled")

    monkeypatch.setattr(pipeline, "train_lora", cancelled)
    context = Worker(tiny_settings(tiny_model_dir, train={"compile": "auto"})).context()
    compiled = dataclasses.replace(context.train_config(), compile=True)
    with pytest.raises(JobCancelled):
        context.train(context.replay_set[:1], compiled)
    assert calls == [True]
    assert context.compile_works


def test_the_worker_compiles_one_row_and_several_row_batches_at_start(
    settings_env: Path, tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A row count of 1 and other row counts are separate graphs: both are compiled before the
    first job, so no job stops mid-training to compile."""
    from selftune.training import pipeline
    from selftune.training.packing import pack

    steps: list[tuple[int, int]] = []  # (rows of the new examples, batch size) per warm-up step

    def record(base_dir: Path, new: list, replay: list, config: Any, **kwargs: Any) -> None:
        assert config.compile and config.steps == 1
        steps.append((pack(new, 0).input_ids.shape[0], config.batch_size))

    monkeypatch.setattr(pipeline, "train_lora", record)
    context = Worker(tiny_settings(tiny_model_dir, train={"compile": "on"})).context()
    context.warm_up()
    replay_per_step = context.settings.train.replay_per_step
    assert [rows for rows, _ in steps] == [1, 2]
    assert all(batch > replay_per_step for _, batch in steps)


def test_a_job_whose_compile_fails_trains_again_uncompiled(
    settings_env: Path,
    tiny_model_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A shape the warm-up did not compile, failing to compile mid-job, costs that job's time
    and later jobs' speed, never the job (under 'auto')."""
    from selftune.training import pipeline

    real_train_lora = pipeline.train_lora
    compiled_calls = []

    def compile_fails(*args: Any, **kwargs: Any) -> Any:
        if args[3].compile and args[3].steps == 1:
            return None  # the warm-up's steps compile; the job's shape will not
        if args[3].compile:
            compiled_calls.append(args[3])
            raise _compile_error("run")
        return real_train_lora(*args, **kwargs)

    monkeypatch.setattr(pipeline, "train_lora", compile_fails)
    settings = tiny_settings(tiny_model_dir, **learning(compile="auto"))
    engine = TransformersEngine(tiny_model_dir, context_length=256)
    with TestClient(create_app(settings, engine=engine)) as client:
        worker = Worker(settings)
        worker.context().warm_up()
        assert worker.context().train_config().compile
        teach(client)
        job = client.post("/api/train", json={}).json()
        assert worker.run_once()
        view = client.get(f"/api/jobs/{job['job_id']}").json()
        assert view["status"] == "succeeded", view
        assert len(compiled_calls) == 1
        assert "running it again uncompiled" in caplog.text
        assert not worker.context().train_config().compile  # later jobs skip compiling
        [version] = client.get("/api/versions").json()["data"]
        assert version["train_metrics"]["config"]["compile"] is False


def test_a_job_does_not_wait_for_compiling(
    settings_env: Path, tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Under train.compile = 'auto' the worker takes jobs before the training step is compiled
    (30-60 s a batch shape on 2 cores) and trains them uncompiled; it compiles one shape at a
    time while it has no job, and the jobs after that train compiled."""
    from selftune.training import pipeline

    runs: list[tuple[bool, int]] = []  # (compiled, steps) of each training run

    def record(base_dir: Path, new: list, replay: list, config: Any, **kwargs: Any) -> Any:
        runs.append((config.compile, config.steps))
        if config.steps > 1:  # a job's: ending it here is enough
            raise pipeline.JobCancelled("recorded")

    monkeypatch.setattr(pipeline, "train_lora", record)
    settings = tiny_settings(tiny_model_dir, **learning(compile="auto"))
    engine = TransformersEngine(tiny_model_dir, context_length=256)
    with TestClient(create_app(settings, engine=engine)) as client:
        teach(client)
        worker = Worker(settings)
        worker.context().warm_up(compile_step=False)
        client.post("/api/train", json={})

        assert worker.work_once()  # the job, at once, uncompiled
        assert runs == [(False, settings.train.steps)]
        assert worker.work_once() and worker.presence.state == "compiling"  # idle: one shape
        assert worker.work_once()  # the other
        assert runs[1:] == [(True, 1), (True, 1)]
        assert not worker.work_once() and worker.presence.state == "ready"

        client.post("/api/train", json={})
        assert worker.work_once()
        assert runs[3:] == [(True, settings.train.steps)]
