from __future__ import annotations

from pathlib import Path

import pytest

from selftune.config import DeprecatedSetting, SettingsError, iter_settings, load_settings


def test_defaults_bind_locally_and_store_under_data_dir(settings_env: Path) -> None:
    settings = load_settings()
    assert settings.serve.host == "127.0.0.1"
    assert settings.serve.port == 8080
    assert settings.base_model == "default"
    assert settings.resolved_database_url.endswith("data/selftune.db")


def test_every_field_is_documented(settings_env: Path) -> None:
    undocumented = [name for name, _, doc in iter_settings(load_settings()) if not doc]
    assert undocumented == []


def test_toml_file_and_environment(settings_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (settings_env / "selftune.toml").write_text("[serve]\nport = 9000\n[train]\nlora_rank = 4\n")
    monkeypatch.setenv("SELFTUNE_TRAIN__LORA_RANK", "8")
    settings = load_settings()
    assert settings.serve.port == 9000
    assert settings.train.lora_rank == 8  # the environment wins over the file


def test_flat_names_of_earlier_releases_still_work_with_a_warning(
    settings_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (settings_env / "selftune.toml").write_text("port = 9000\nlora_rank = 4\n")
    monkeypatch.setenv("SELFTUNE_LORA_RANK", "8")
    with pytest.warns(DeprecatedSetting, match=r"SELFTUNE_TRAIN__LORA_RANK") as warned:
        settings = load_settings()
    assert settings.serve.port == 9000
    assert settings.train.lora_rank == 8  # the environment wins over the file
    assert any("[serve] port" in str(w.message) for w in warned)
    with pytest.warns(DeprecatedSetting, match="train_steps"):
        assert load_settings(train_steps=7).train.steps == 7


def test_invalid_value_says_which_field_and_where(settings_env: Path) -> None:
    (settings_env / "selftune.toml").write_text("[serve]\nport = 0\n")
    with pytest.raises(SettingsError, match=r"serve.port: .*SELFTUNE_SERVE__PORT"):
        load_settings()


def test_unknown_template_preset_is_refused(settings_env: Path) -> None:
    with pytest.raises(SettingsError, match="unknown chat template preset"):
        load_settings(serve={"chat_template": "vicuna-ish"})


def test_replay_must_leave_room_for_new_material(settings_env: Path) -> None:
    with pytest.raises(SettingsError, match="replay_per_step"):
        load_settings(train={"batch_size": 4, "replay_per_step": 4})


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


def test_the_trainers_defaults_are_the_settings_defaults(settings_env: Path) -> None:
    """Tests and benchmarks built on ``TrainConfig()`` run the recipe production runs: every
    field is the [train] setting's default, except those resolved for the machine at hand."""
    import dataclasses

    from selftune.training.trainer import TrainConfig

    settings = load_settings().train
    from_settings = {
        "rank": settings.lora_rank,
        "alpha": settings.lora_alpha,
        "target_modules": tuple(settings.lora_target_modules),
        "learning_rate": settings.learning_rate,
        "steps": settings.steps,
        "batch_size": settings.batch_size,
        "replay_per_step": settings.replay_per_step,
        "replay_weight": settings.replay_weight,
        "replay_top_k": settings.replay_top_k,
        "neighbours_per_step": settings.neighbours_per_step,
        "null_space_energy": settings.null_space_energy,
        "warmup_steps": settings.warmup_steps,
        "seed": settings.seed,
        "onednn_products": settings.onednn_products,
        "stop_loss": settings.stop_loss,
        "stop_replay_kl": settings.stop_replay_kl,
        "stop_patience": settings.stop_patience,
    }
    # Resolved by training.pipeline.train_config from the settings and the machine.
    machine = {"layers", "bf16", "device", "quantize_base", "compile"}
    defaults = TrainConfig()
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    assert fields == set(from_settings) | machine, "map each new TrainConfig field to a setting"
    differing = {
        name: (getattr(defaults, name), value)
        for name, value in from_settings.items()
        if getattr(defaults, name) != value
    }
    assert differing == {}
