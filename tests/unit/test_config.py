from __future__ import annotations

from pathlib import Path

import pytest

from selftune.config import Settings, SettingsError, load_settings


def test_defaults_bind_locally_and_store_under_data_dir(settings_env: Path) -> None:
    settings = load_settings()
    assert settings.host == "127.0.0.1"
    assert settings.port == 8080
    assert settings.base_model == "default"
    assert settings.resolved_database_url.endswith("data/selftune.db")


def test_every_field_is_documented() -> None:
    undocumented = [name for name, f in Settings.model_fields.items() if not f.description]
    assert undocumented == []


def test_toml_file_and_environment(settings_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (settings_env / "selftune.toml").write_text("port = 9000\nlora_rank = 4\n")
    monkeypatch.setenv("SELFTUNE_LORA_RANK", "8")
    settings = load_settings()
    assert settings.port == 9000
    assert settings.lora_rank == 8  # the environment wins over the file


def test_invalid_value_says_which_field_and_where(settings_env: Path) -> None:
    (settings_env / "selftune.toml").write_text("port = 0\n")
    with pytest.raises(SettingsError, match=r"port: .*SELFTUNE_PORT"):
        load_settings()


def test_unknown_template_preset_is_refused(settings_env: Path) -> None:
    with pytest.raises(SettingsError, match="unknown chat template preset"):
        load_settings(chat_template="vicuna-ish")


def test_replay_must_leave_room_for_new_material(settings_env: Path) -> None:
    with pytest.raises(SettingsError, match="replay_per_step"):
        load_settings(train_batch_size=4, replay_per_step=4)


def test_unknown_setting_is_refused(settings_env: Path) -> None:
    (settings_env / "selftune.toml").write_text("prot = 1\n")
    with pytest.raises(SettingsError, match="prot"):
        load_settings()


def test_lora_goes_on_the_top_share_of_the_layers(tmp_path: Path) -> None:
    from selftune.training.pipeline import _top_layers

    (tmp_path / "config.json").write_text('{"num_hidden_layers": 30}')
    assert _top_layers(tmp_path, 0.5) == tuple(range(15, 30))
    assert _top_layers(tmp_path, 1.0) == ()  # all: PEFT's default
    assert _top_layers(tmp_path, 0.01) == (29,)  # never none
