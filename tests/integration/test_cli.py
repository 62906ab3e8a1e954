"""The command line: clear messages and non-zero exits on failure."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from selftune.cli import _verdict, app

runner = CliRunner()


def test_status_on_a_fresh_store(settings_env: Path) -> None:
    result = runner.invoke(app, ["status"])
    assert result.exit_code == 0, result.output
    assert "serving: base" in result.output


def test_status_tells_passed_failed_and_unevaluated_versions(settings_env: Path) -> None:
    from selftune.config import load_settings
    from selftune.store.db import Database
    from selftune.store.schema import Version

    db = Database(load_settings().resolved_database_url)
    db.migrate()
    gates = {
        "v1": {"passed": True, "reason": "better on new material"},
        "v2": {"passed": False, "reason": "no improvement"},
        "v3": {},  # its job was cancelled before the gate ran
    }
    with db.write() as session:
        for name, gate in gates.items():
            fields = {"base_model": "tiny", "base_fingerprint": "f" * 16, "chat_template": "t"}
            session.add(Version(name=name, path=name, gate=gate, **fields))
    db.dispose()

    result = runner.invoke(app, ["status"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    rows = {line.split()[1]: line for line in result.output.splitlines() if "│ v" in line}
    assert "passed" in rows["v1"] and "better on new material" in rows["v1"]
    assert "failed" in rows["v2"] and "no improvement" in rows["v2"]
    assert "failed" not in rows["v3"] and "not evaluated" in rows["v3"]


def test_status_tells_a_refused_candidate_from_a_served_one(settings_env: Path) -> None:
    from selftune.config import load_settings
    from selftune.store import jobs
    from selftune.store.db import Database

    db = Database(load_settings().resolved_database_url)
    db.migrate()
    gates = {
        "v1": {"passed": True, "reason": "better on new material, no regression"},
        "v2": {"passed": False, "reason": "new material: recall none", "decided_by": ["x"]},
    }
    for name, gate in gates.items():
        job_id = jobs.enqueue(db, "train", "cli")
        jobs.claim(db, "w")
        result = {"version": name, "promoted": gate["passed"], "not_promoted": None, "gate": gate}
        jobs.finish(db, job_id, "succeeded", result=result, worker_id="w")
    db.dispose()

    result = runner.invoke(app, ["status"], env={"COLUMNS": "250"})
    assert result.exit_code == 0, result.output
    rows = {line.split()[1]: line for line in result.output.splitlines() if "│ train" in line}
    assert "served" in rows["1"] and "not served" not in rows["1"]
    assert "learned, not served: new material: recall none" in rows["2"]


def test_train_without_material_fails_clearly(settings_env: Path) -> None:
    result = runner.invoke(app, ["train", "--no-wait"])
    assert result.exit_code == 1
    assert "nothing to learn yet" in result.output


def test_train_says_what_became_of_the_version() -> None:
    gate = {"reason": "better on new material, no regression"}
    assert _verdict({"promoted": True, "gate": gate}) == f"promoted ({gate['reason']})"
    moved = "the served version changed from v1 to base while v2 was being evaluated against it"
    assert _verdict({"promoted": False, "not_promoted": moved, "gate": gate}) == (
        f"passed its gate but not promoted: {moved}"
    )
    failed = {"reason": "regression: 50% of known answers kept, needs 100%"}
    assert _verdict({"promoted": False, "not_promoted": None, "gate": failed}) == (
        f"learned, not served: the gate refused it ({failed['reason']})"
    )


def test_promote_and_rollback_refuse_clearly(settings_env: Path) -> None:
    promote = runner.invoke(app, ["promote", "v9"])
    assert promote.exit_code == 1
    assert "no version 'v9'" in promote.output
    rollback = runner.invoke(app, ["rollback"])
    assert rollback.exit_code == 1
    assert "nothing to roll back" in rollback.output


def test_invalid_settings_exit_2_naming_the_field(
    settings_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SELFTUNE_SERVE__PORT", "99999")
    result = runner.invoke(app, ["status"])
    assert result.exit_code == 2
    assert "port" in result.output


@pytest.mark.parametrize("command", [["worker"], ["serve"]])
def test_training_on_a_gpu_that_is_not_there_exits_2_before_starting(
    settings_env: Path, monkeypatch: pytest.MonkeyPatch, command: list[str]
) -> None:
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setenv("SELFTUNE_TRAIN__DEVICE", "cuda")
    result = runner.invoke(app, command)
    assert result.exit_code == 2
    assert "train.device = 'cuda'" in result.output


def test_keys_create_prints_a_key_once(settings_env: Path) -> None:
    result = runner.invoke(app, ["keys", "create", "--user", "dana"])
    assert result.exit_code == 0
    assert result.output.strip().startswith("st-")
    revoked = runner.invoke(app, ["keys", "revoke", "--user", "dana"])
    assert "revoked 1 keys" in revoked.output


def test_keys_create_admin_makes_an_admin_key(settings_env: Path) -> None:
    from sqlalchemy import select

    from selftune.api.auth import hash_key
    from selftune.config import load_settings
    from selftune.store import Database
    from selftune.store.schema import ApiKey

    keys = {}
    for user, flags in (("erin", ["--admin"]), ("frank", [])):
        result = runner.invoke(app, ["keys", "create", "--user", user, *flags])
        assert result.exit_code == 0, result.output
        keys[user] = result.output.strip()
    db = Database(load_settings().resolved_database_url)
    with db.read() as session:
        admin_of = dict(session.execute(select(ApiKey.key_hash, ApiKey.admin)).tuples().all())
    db.dispose()
    assert admin_of[hash_key(keys["erin"])] is True
    assert admin_of[hash_key(keys["frank"])] is False


def test_keys_are_listed_rotated_and_revoked_by_prefix(settings_env: Path) -> None:
    wide = CliRunner(env={"COLUMNS": "200"})
    made = runner.invoke(app, ["keys", "create", "--user", "gail", "--expires-in", "30"])
    assert made.exit_code == 0, made.output
    key = made.output.strip()
    prefix = key[:12]
    listed = wide.invoke(app, ["keys", "list"])
    assert listed.exit_code == 0, listed.output
    assert prefix in listed.output and key not in listed.output and "gail" in listed.output

    rotated = runner.invoke(app, ["keys", "rotate", "--prefix", prefix, "--grace-minutes", "5"])
    assert rotated.exit_code == 0, rotated.output
    new_key = rotated.output.strip().splitlines()[-1]
    assert new_key.startswith("st-") and new_key != key
    assert "now expires at" in rotated.output

    revoked = runner.invoke(app, ["keys", "revoke", "--prefix", new_key[:12]])
    assert revoked.exit_code == 0 and "revoked" in revoked.output
    assert "revoked" in wide.invoke(app, ["keys", "list", "--user", "gail"]).output
    unknown = runner.invoke(app, ["keys", "revoke", "--prefix", "st-nosuchkey"])
    assert unknown.exit_code == 1 and "no API key" in unknown.output
    neither = runner.invoke(app, ["keys", "revoke"])
    assert neither.exit_code == 2
    past = runner.invoke(app, ["keys", "create", "--user", "gail", "--expires", "2001-01-01"])
    assert past.exit_code == 1 and "in the past" in past.output


def test_status_settings_lists_every_setting_with_its_section(settings_env: Path) -> None:
    result = CliRunner(env={"COLUMNS": "200"}).invoke(app, ["status", "--settings"])
    assert result.exit_code == 0, result.output
    for name in (
        "data_dir",
        "serve.port",
        "train.steps",
        "gate.min_improvement",
        "jobs.poll_seconds",
    ):
        assert name in result.output


def test_autopilot_on_off_and_status(settings_env: Path) -> None:
    on = runner.invoke(app, ["autopilot", "on", "--reason", "trying it"])
    assert on.exit_code == 0, on.output
    assert "autopilot: on" in on.output and "why:" in on.output
    off = runner.invoke(app, ["autopilot", "off"])
    assert off.exit_code == 0 and "autopilot: off" in off.output
    assert "why: the autopilot is off" in runner.invoke(app, ["autopilot"]).output
    wrong = runner.invoke(app, ["autopilot", "maybe"])
    assert wrong.exit_code != 0
