"""Checking a merged export on the version's own held-out material before it is offered.

Quantizing a merged model can undo what a LoRA changed: a fact taught to the default model
survived q8_0, q6_k and q4_k_m exports but not q4_1. So every export of a version is loaded in
llama.cpp, as ollama or llama-server would run it, answers the version's held-out examples (its
training examples where it had none, as the gate does then), and the recall of the taught key
terms (:func:`selftune.evaluation.heldout.heldout_recall`, the gate's own measurement) is compared
with the figure the version's gate recorded.

The result is stored beside the export folder as ``<format>.check.json`` (the folder is sealed by
its manifest and stays as it is), written once atomically and never overwritten; it names the
SHA-256 of the model it checked, so a check is never shown for another file.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from selftune.artifacts import CHECK_SUFFIX, MODEL_FILE, MODELFILE
from selftune.atomic import ArtifactError, atomic_file, verify_manifest
from selftune.config import Settings
from selftune.engines.base import EngineError
from selftune.evaluation.heldout import Chat, heldout_recall
from selftune.export.gguf_adapter import AdapterExportError
from selftune.export.gguf_model import ModelExportError, OutputType, Progress
from selftune.export.merged import ExportResult, export_version
from selftune.export.modelfile import ModelfileError
from selftune.models.base import BaseModelError, materialize, resolve_base_model
from selftune.store.db import Database
from selftune.store.schema import TrainingExample, Version, VersionExample

__all__ = [
    "EXPORT_ERRORS",
    "TOLERANCE",
    "check_export",
    "check_path",
    "describe",
    "export_and_check",
    "export_summary",
    "find_checked_export",
    "is_kept",
    "read_check",
    "version_examples",
    "version_recall",
]

# How far an export's recall may fall below the version's gate figure and still count as kept.
# The gate measured the version on the serving engine (the base with the adapter beside it), so
# not even an f32 export gives bit-identical logits, and greedy decoding flips where two tokens
# nearly tie: a word here and there changes. Losing what was taught looks different: recall falls
# from near 1 to near 0 (the q4_1 export above). 0.1 lets one key term in ten differ and flags
# anything more.
TOLERANCE = 0.1
# What export_and_check raises when it cannot export or check; each message says what to do.
EXPORT_ERRORS: tuple[type[Exception], ...] = (
    AdapterExportError,
    ArtifactError,
    BaseModelError,
    EngineError,
    FileNotFoundError,
    ModelExportError,
    ModelfileError,
)

# Export and check one at a time: each uses every core, and two at once only slow each other down.
_ONE_AT_A_TIME = threading.Lock()


def check_path(export_folder: Path) -> Path:
    """``exports/<version>/<format>.check.json``, beside (not inside) the sealed export folder."""
    return export_folder.with_name(export_folder.name + CHECK_SUFFIX)


def read_check(export_folder: Path, sha256: str) -> dict[str, Any] | None:
    """The stored check of the export whose model.gguf has ``sha256``; None if not checked yet."""
    path = check_path(export_folder)
    if not path.is_file():
        return None
    check: dict[str, Any] = json.loads(path.read_text())
    if check.get("sha256") != sha256:
        raise ArtifactError(
            f"{path} checked another model.gguf than the one in {export_folder} (the export was "
            "replaced); delete the check file and export again to check this one"
        )
    return check


def version_examples(session: Session, version_id: int) -> dict[str, list[Chat]]:
    """The chats a version was trained on and held out from, by role ("train", "heldout")."""
    rows = session.execute(
        select(VersionExample.role, TrainingExample.messages)
        .join(TrainingExample, TrainingExample.id == VersionExample.example_id)
        .where(VersionExample.version_id == version_id)
        .order_by(TrainingExample.id)
    )
    examples: dict[str, list[Chat]] = {"train": [], "heldout": []}
    for role, messages in rows:
        examples.setdefault(role, []).append(messages)
    return examples


def version_recall(version: Version) -> float | None:
    """The held-out recall the version's gate recorded (None: not recorded, or no key terms)."""
    figures = (version.gate or {}).get("figures") or {}
    value = figures.get("new_recall_candidate")
    return None if value is None else float(value)


def is_kept(recall: float | None, reference: float | None) -> bool:
    """Whether an export kept what was taught; with either figure missing there is nothing to
    compare, and nothing measurable was lost."""
    if recall is None or reference is None:
        return True
    return recall >= reference - TOLERANCE


def check_export(
    settings: Settings,
    version: Version,
    export: ExportResult,
    examples: Mapping[str, Sequence[Chat]],
) -> dict[str, Any]:
    """Measure (or read back) the held-out recall of ``export``, a merged export of ``version``.

    ``examples`` are the version's chats by role (:func:`version_examples`). Returns and stores
    ``{"format", "sha256", "heldout_recall", "version_recall", "tolerance", "examples",
    "judged_on", "kept", "seconds"}``.
    """
    stored = read_check(export.folder, export.sha256)
    if stored is not None:
        return stored
    judged_on = "heldout" if examples.get("heldout") else "train"
    chats = list(examples.get(judged_on, ()))
    started = time.perf_counter()
    recall = _measure(settings, version, export.model_path, chats)
    reference = version_recall(version)
    check = {
        "format": export.folder.name,
        "sha256": export.sha256,
        "heldout_recall": recall,
        "version_recall": reference,
        "tolerance": TOLERANCE,
        "examples": len(chats),
        "judged_on": judged_on,
        "kept": is_kept(recall, reference),
        "seconds": round(time.perf_counter() - started, 2),
    }
    try:
        with atomic_file(check_path(export.folder)) as tmp:
            tmp.write_text(json.dumps(check, indent=2, sort_keys=True))
    except FileExistsError:  # a concurrent check of the same export finished first
        return read_check(export.folder, export.sha256) or check
    return check


def _measure(settings: Settings, version: Version, model: Path, chats: list[Chat]) -> float | None:
    """Held-out recall of the merged model alone, rendered with the version's chat template."""
    if not chats:
        return None
    from selftune.engines.llamacpp_engine import LlamaCppEngine  # loads llama.cpp

    # The base's Hugging Face folder renders chat templates for llama.cpp, as when serving.
    tokenizer_dir = materialize(resolve_base_model(settings.base_model), settings.cache_dir)
    engine = LlamaCppEngine(
        model,
        tokenizer_dir,
        chat_template=version.chat_template,
        context_length=settings.serve.context_length,
        threads=settings.threads,
        gpu_layers=settings.serve.gpu_layers,
    )
    try:
        return heldout_recall(engine, chats, None)
    finally:
        engine.close()


def export_and_check(
    settings: Settings,
    db: Database,
    version_id: int,
    fmt: OutputType,
    progress: Progress | None = None,
) -> tuple[ExportResult, dict[str, Any]]:
    """Export version ``version_id`` merged in ``fmt`` (or find its export) and check it."""
    with db.read() as session:
        version = session.get(Version, version_id)
        if version is None:
            raise LookupError(f"no version {version_id}")
        examples = version_examples(session, version_id)
    if not Path(version.path).is_dir():
        raise FileNotFoundError(f"version {version.name} has no stored adapter at {version.path}")
    folder = settings.exports_dir / version.name / fmt
    if folder.is_dir() and check_path(folder).is_file():
        return _export_and_check(settings, version, fmt, progress, examples)  # read back only
    with _ONE_AT_A_TIME:
        return _export_and_check(settings, version, fmt, progress, examples)


def _export_and_check(
    settings: Settings,
    version: Version,
    fmt: OutputType,
    progress: Progress | None,
    examples: Mapping[str, Sequence[Chat]],
) -> tuple[ExportResult, dict[str, Any]]:
    export = export_version(
        settings,
        version.name,
        fmt,
        progress,
        adapter_dir=Path(version.path),
        chat_template=version.chat_template,
        trained_on=version.base_model,
    )
    if progress is not None:
        progress(1.0, "checking held-out recall")
    return export, check_export(settings, version, export, examples)


def export_summary(export: ExportResult, check: Mapping[str, Any]) -> dict[str, Any]:
    """What the API answers about a checked export: where it is, its checksum, its check, and
    where to download the model and its Modelfile."""
    fmt, name = export.folder.name, export.folder.parent.name
    download = f"/api/versions/{name}/download?format="
    return {
        "format": fmt,
        "path": str(export.model_path),
        "size_bytes": export.size_bytes,
        "sha256": export.sha256,
        "check": dict(check),
        "download": {"model": f"{download}merged-{fmt}", "modelfile": f"{download}modelfile-{fmt}"},
    }


def find_checked_export(settings: Settings, version_name: str, fmt: str) -> dict[str, Any] | None:
    """The :func:`export_summary` of the version's export in ``fmt`` if it exists, matches its
    manifest and has been checked; None if there is work left to do (export, or check)."""
    folder = settings.exports_dir / version_name / fmt
    if not folder.is_dir() or not check_path(folder).is_file():
        return None
    entry = verify_manifest(folder)["files"][MODEL_FILE]
    check = read_check(folder, entry["sha256"])
    if check is None:
        return None
    export = ExportResult(
        folder, folder / MODEL_FILE, folder / MODELFILE, entry["bytes"], entry["sha256"], True
    )
    return export_summary(export, check)


def describe(check: Mapping[str, Any]) -> str:
    """One line for people: ``held-out recall 0.25 (version 1.00): LOST``."""

    def figure(value: float | None) -> str:
        return "n/a" if value is None else f"{value:.2f}"

    verdict = "kept" if check["kept"] else "LOST"
    where = "" if check["judged_on"] == "heldout" else ", judged on training examples"
    return (
        f"held-out recall {figure(check['heldout_recall'])} "
        f"(version {figure(check['version_recall'])}{where}): {verdict}"
    )
