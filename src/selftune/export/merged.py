"""Export a version (or the bare base) as one self-contained GGUF with a Modelfile for ollama.

``<exports_dir>/<version>/<format>/`` holds ``model.gguf`` (the base with the version's LoRA merged
in), ``Modelfile`` and ``manifest.json`` with their checksums. The folder is written atomically
and never overwritten: exporting again returns the existing folder once it verifies.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from selftune.artifacts import MODEL_FILE, MODELFILE
from selftune.atomic import ArtifactError, atomic_directory, verify_manifest
from selftune.config import Settings
from selftune.export.gguf_model import (
    OUTPUT_TYPES,
    ModelExportError,
    OutputType,
    Progress,
    read_tokenizer_info,
    write_llama_gguf,
)
from selftune.export.modelfile import ollama_modelfile
from selftune.models.base import BaseModelSource, materialize, resolve_base_model
from selftune.models.templates import resolve_template

__all__ = ["BASE", "ExportResult", "export_version"]

BASE = "base"  # the version name that exports the base model alone


@dataclasses.dataclass(frozen=True)
class ExportResult:
    folder: Path
    model_path: Path
    modelfile_path: Path
    size_bytes: int  # of model.gguf
    sha256: str  # of model.gguf
    reused: bool  # an earlier, verified export was returned as it was


def export_version(
    settings: Settings,
    version_name: str,
    fmt: OutputType,
    progress: Progress | None = None,
    *,
    adapter_dir: Path | None = None,
    chat_template: str | None = None,
    trained_on: str | None = None,
) -> ExportResult:
    """Write (or find) the merged GGUF export of a version in ``fmt``.

    ``adapter_dir`` is the version's PEFT folder and ``chat_template`` the Jinja template it was
    trained with (both from its store row); for :data:`BASE` leave them out: the base is exported
    with its configured template. ``trained_on`` (the row's ``base_model``), when given, must be the
    configured base model: a LoRA merged into another base would be silently wrong.
    """
    if fmt not in OUTPUT_TYPES:
        raise ModelExportError(f"unknown export format {fmt!r}; use one of {OUTPUT_TYPES}")
    if (adapter_dir is None) != (version_name == BASE):
        raise ValueError(f"give adapter_dir for a trained version and only for it ({version_name})")
    final = settings.exports_dir / version_name / fmt
    if final.exists():
        return _existing(final, reused=True)
    source = _gguf_base(settings)
    if trained_on is not None and trained_on != source.location:
        raise ModelExportError(
            f"{version_name} was trained on {trained_on}, not on the configured base model "
            f"{source.location}; set base_model to the base it was trained on"
        )
    tokenizer = read_tokenizer_info(Path(source.location))
    template = chat_template or resolve_template(
        settings.serve.chat_template, tokenizer.chat_template
    )
    # Before the long write: an unsupported chat template fails here, having written nothing.
    modelfile = ollama_modelfile(
        MODEL_FILE, template, bos_token=tokenizer.bos_token, eos_token=tokenizer.eos_token
    )
    hf_dir = materialize(source, settings.cache_dir)
    metadata = {"version": version_name, "format": fmt, "base": source.location}
    try:
        with atomic_directory(final, metadata) as tmp:
            write_llama_gguf(
                hf_dir,
                tmp / MODEL_FILE,
                tokenizer_gguf=Path(source.location),
                adapter_dir=adapter_dir,
                out_type=fmt,
                name=f"{settings.serve.model_name}-{version_name}",
                chat_template=template,
                threads=settings.threads,
                progress=progress,
            )
            (tmp / MODELFILE).write_text(modelfile)
    except FileExistsError:
        if not final.exists():
            raise
        return _existing(final, reused=True)  # a concurrent export of the same finished first
    return _existing(final, reused=False)


def _gguf_base(settings: Settings) -> BaseModelSource:
    """The configured base, which must be a GGUF: its tokenizer is copied into the export."""
    source = resolve_base_model(settings.base_model)
    if source.kind != "gguf":
        raise ModelExportError(
            f"merged GGUF export needs a GGUF base model (its tokenizer is copied into the "
            f"export), but base_model is {source.location!r}, a Hugging Face "
            f"{'folder' if source.kind == 'hf_dir' else 'hub model'}. Convert it with llama.cpp's "
            "convert_hf_to_gguf.py and set base_model to the .gguf, or use the version's "
            "adapter.gguf with a GGUF of the base."
        )
    return source


def _existing(folder: Path, *, reused: bool) -> ExportResult:
    try:
        manifest = verify_manifest(folder)
    except ArtifactError as exc:
        raise ArtifactError(f"{exc}; delete {folder} and export again") from exc
    entry = manifest["files"][MODEL_FILE]
    return ExportResult(
        folder=folder,
        model_path=folder / MODEL_FILE,
        modelfile_path=folder / MODELFILE,
        size_bytes=int(entry["bytes"]),
        sha256=str(entry["sha256"]),
        reused=reused,
    )
