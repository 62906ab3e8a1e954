"""Downloading a version: ``GET /api/versions/{id or name}/download?format=...``.

Every download is a file whose SHA-256 is known before the first byte is sent (the
``X-Checksum-Sha256`` header), taken from a checksummed manifest, never computed on the fly:

- ``gguf``: the version's GGUF LoRA (``adapter.gguf``, for llama.cpp's ``--lora``), straight from
  the version folder, checked against the folder's manifest first;
- ``peft``: the PEFT files as a tar, built once, deterministically, into
  ``<data_dir>/exports/<version>/peft/`` as an atomic directory with its own manifest;
- ``merged-<type>`` (``merged-q8_0``, ...): the version merged into its base as one GGUF, and
  ``modelfile-<type>`` its ollama Modelfile, from the export folder written by
  ``POST /api/versions/{ref}/export``. They are offered only once the export was checked on the
  version's held-out material, and the check comes with them (``X-Selftune-Export-Check``).

A format is a function from a version to a :class:`Download`, in :data:`FORMATS`.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import tarfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Query
from fastapi.responses import FileResponse
from starlette.concurrency import run_in_threadpool

from selftune.api.deps import CurrentCaller, State
from selftune.api.errors import ApiError
from selftune.api.manage import resolve_version_id
from selftune.api.responses import ERRORS
from selftune.artifacts import GGUF_ADAPTER, MANIFEST, MODEL_FILE, MODELFILE
from selftune.atomic import ArtifactError, atomic_directory, verify_manifest
from selftune.config import Settings
from selftune.export.check import read_check
from selftune.export.gguf_model import OUTPUT_TYPES, OutputType
from selftune.store.schema import Version

__all__ = ["CHECK_HEADER", "FORMATS", "Download", "check_header", "router"]

router = APIRouter(prefix="/api", responses=ERRORS)

CHECK_HEADER = "X-Selftune-Export-Check"


@dataclasses.dataclass(frozen=True)
class Download:
    path: Path
    filename: str  # what the client saves it as
    sha256: str
    size: int
    media_type: str
    headers: Mapping[str, str] = dataclasses.field(default_factory=dict)  # sent with the file


def _verified(folder: Path, version: Version) -> dict[str, Any]:
    """The folder's manifest, after checking every file against it."""
    try:
        return verify_manifest(folder)
    except ArtifactError as exc:
        raise ApiError(
            500,
            f"the files of version {version.name} do not match their manifest ({exc}); "
            "they cannot be served until restored",
            type="server_error",
            code="artifact_corrupted",
        ) from exc


def _version_folder(version: Version) -> Path:
    folder = Path(version.path)
    if not folder.is_dir():
        raise ApiError(
            404, f"version {version.name} has no stored adapter at {folder}", code="no_artifact"
        )
    return folder


def gguf_download(version: Version, _settings: Settings) -> Download:
    folder = _version_folder(version)
    entry = _verified(folder, version)["files"].get(GGUF_ADAPTER)
    if entry is None:
        raise ApiError(
            404,
            f"version {version.name} has no GGUF adapter (its base model's architecture has no "
            "GGUF LoRA export); download format=peft instead",
            code="no_artifact",
            param="format",
        )
    return Download(
        folder / GGUF_ADAPTER,
        f"{version.name}-adapter.gguf",
        entry["sha256"],
        entry["bytes"],
        "application/octet-stream",
    )


def peft_download(version: Version, settings: Settings) -> Download:
    source = _version_folder(version)
    _verified(source, version)
    out = settings.exports_dir / version.name / "peft"
    name = f"{version.name}-peft.tar"
    if not out.is_dir():
        try:
            with atomic_directory(out, {"version": version.name, "format": "peft"}) as tmp:
                write_peft_tar(source, tmp / name, root=version.name)
        except FileExistsError:
            pass  # another request built it meanwhile; the build is deterministic
    entry = _verified(out, version)["files"][name]
    return Download(out / name, name, entry["sha256"], entry["bytes"], "application/x-tar")


def write_peft_tar(source: Path, target: Path, *, root: str) -> None:
    """Tar the PEFT files of ``source`` under ``root/``; the same files give the same bytes."""
    files = sorted(
        p for p in source.iterdir() if p.is_file() and p.name not in (GGUF_ADAPTER, MANIFEST)
    )
    with tarfile.open(target, "w", format=tarfile.PAX_FORMAT) as tar:
        for path in files:
            info = tarfile.TarInfo(f"{root}/{path.name}")
            info.size = path.stat().st_size
            info.mode, info.mtime = 0o644, 0
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            with path.open("rb") as fh:
                tar.addfile(info, fh)


def check_header(check: Mapping[str, Any]) -> str:
    """The export check as compact JSON for a header: what a downloader needs to judge it."""
    keys = ("format", "heldout_recall", "version_recall", "judged_on", "kept")
    return json.dumps({k: check[k] for k in keys}, separators=(",", ":"))


def merged_download(
    version: Version, settings: Settings, *, fmt: OutputType, file: str
) -> Download:
    """``file`` (the model or its Modelfile) of the version's checked merged export in ``fmt``."""
    folder = settings.exports_dir / version.name / fmt
    if not folder.is_dir():
        raise ApiError(
            404,
            f"version {version.name} has no merged {fmt} export yet; POST "
            f'/api/versions/{version.name}/export with {{"format": "{fmt}"}} first',
            code="not_exported",
            param="format",
        )
    files = _verified(folder, version)["files"]
    try:  # the check names the model it judged; the Modelfile goes with that model
        check = read_check(folder, files[MODEL_FILE]["sha256"])
    except ArtifactError as exc:
        raise ApiError(500, str(exc), type="server_error", code="artifact_corrupted") from exc
    if check is None:  # exported (by the CLI, or a check that crashed) but not checked yet
        raise ApiError(
            404,
            f"the {fmt} export of version {version.name} has not been checked yet; POST "
            f'/api/versions/{version.name}/export with {{"format": "{fmt}"}} first',
            code="not_exported",
            param="format",
        )
    is_model, entry = file == MODEL_FILE, files[file]
    return Download(
        folder / file,
        f"{version.name}-{fmt}.gguf" if is_model else MODELFILE,
        entry["sha256"],
        entry["bytes"],
        "application/octet-stream" if is_model else "text/plain",
        {CHECK_HEADER: check_header(check)},
    )


# Download formats by the name clients send as ?format=.
FORMATS: dict[str, Callable[[Version, Settings], Download]] = {
    "gguf": gguf_download,
    "peft": peft_download,
    **{
        f"merged-{t}": functools.partial(merged_download, fmt=t, file=MODEL_FILE)
        for t in OUTPUT_TYPES
    },
    **{
        f"modelfile-{t}": functools.partial(merged_download, fmt=t, file=MODELFILE)
        for t in OUTPUT_TYPES
    },
}


_BINARY = {"schema": {"type": "string", "format": "binary"}}
_FILE = {
    "description": "The file, as an attachment (Content-Disposition names it): gguf and "
    "merged-<type> as application/octet-stream, peft as application/x-tar, modelfile-<type> "
    "as text/plain",
    "headers": {
        "X-Checksum-Sha256": {
            "description": "the file's SHA-256, from its manifest",
            "schema": {"type": "string"},
        },
        CHECK_HEADER: {
            "description": "merged-<type> and modelfile-<type>: the export's check, as JSON "
            "(format, heldout_recall, version_recall, judged_on, kept)",
            "schema": {"type": "string"},
        },
    },
    "content": {
        "application/octet-stream": _BINARY,
        "application/x-tar": _BINARY,
        "text/plain": {"schema": {"type": "string"}},
    },
}


@router.get("/versions/{ref}/download", response_class=FileResponse, responses={200: _FILE})
async def download_version(
    ref: str,
    state: State,
    _caller: CurrentCaller,
    format: str = Query(
        "gguf",
        description="gguf: the GGUF LoRA; peft: a tar of the PEFT files; merged-<type>: the "
        "checked merged export (POST .../export first); modelfile-<type>: its ollama Modelfile",
    ),
) -> FileResponse:
    build = FORMATS.get(format)
    if build is None:
        raise ApiError(
            400, f"unknown format {format!r}; use one of {sorted(FORMATS)}", param="format"
        )
    version_id = await run_in_threadpool(resolve_version_id, state, ref)

    def prepare() -> Download:
        with state.db.read() as session:
            version = session.get(Version, version_id)
        assert version is not None  # resolve_version_id found it; versions are never deleted
        return build(version, state.settings)

    item = await run_in_threadpool(prepare)
    return FileResponse(
        item.path,
        media_type=item.media_type,
        filename=item.filename,
        # FileResponse sets Content-Length
        headers={"X-Checksum-Sha256": item.sha256, **item.headers},
    )
