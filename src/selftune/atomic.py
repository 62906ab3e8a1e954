"""Atomic, never-overwritten artifact directories.

A directory is built under a temporary name beside its final place, every file is fsynced, a
``manifest.json`` with SHA-256 checksums is written last, and the directory is renamed into place.
A crash at any point leaves either nothing at the final path or a complete, verifiable directory;
leftover temporary directories are removed by :func:`remove_incomplete`. Processes that would
build the same artifact at the same time (a server and its worker, at first start) take turns
in :func:`build_once`, so that one builds it and the others find it built.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import functools
import hashlib
import json
import os
import shutil
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from selftune.artifacts import MANIFEST

__all__ = [
    "ArtifactError",
    "atomic_directory",
    "atomic_file",
    "build_once",
    "fsync_path",
    "remove_incomplete",
    "sha256_file",
    "verify_manifest",
]

_TMP_PREFIX = ".tmp-"


class ArtifactError(RuntimeError):
    """An artifact directory is missing, incomplete or corrupted."""


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def fsync_path(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_file(final: Path) -> Iterator[Path]:
    """Yield a temporary path beside ``final``; once the block wrote it, fsync and link it into
    place. ``os.link`` fails if ``final`` appeared meanwhile (``os.replace`` would silently
    clobber it), so a file is never overwritten and readers only ever see a complete one."""
    final.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        os.chmod(tmp, 0o644)  # mkstemp makes it private; artifacts are meant to be shared
        yield tmp
        fsync_path(tmp)
        _link_no_replace(tmp, final)
        fsync_path(final.parent)
    finally:
        tmp.unlink(missing_ok=True)


def _link_no_replace(source: Path, target: Path) -> None:
    try:
        os.link(source, target)
    except FileExistsError:
        raise FileExistsError(f"{target} appeared while it was being written") from None
    except OSError:  # a filesystem without hard links: a check right before replace must do
        if target.exists():
            raise FileExistsError(f"{target} appeared while it was being written") from None
        os.replace(source, target)


@contextlib.contextmanager
def atomic_directory(final: Path, metadata: dict[str, Any] | None = None) -> Iterator[Path]:
    """Yield a temporary directory; on success it becomes ``final`` with a manifest.

    Raises :class:`FileExistsError` if ``final`` exists: artifacts are never overwritten.
    """
    if final.exists():
        raise FileExistsError(f"artifact {final} already exists; versions are never overwritten")
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.parent / f"{_TMP_PREFIX}{final.name}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        yield tmp
        files = {}
        for path in sorted(p for p in tmp.rglob("*") if p.is_file()):
            fsync_path(path)
            files[str(path.relative_to(tmp))] = {
                "sha256": sha256_file(path),
                "bytes": path.stat().st_size,
            }
        manifest = {**(metadata or {}), "files": files}  # the checksums always win
        manifest_path = tmp / MANIFEST
        manifest_path.write_text(json.dumps(manifest, indent=2, sort_keys=True))
        fsync_path(manifest_path)
        fsync_path(tmp)
        _rename_no_replace(tmp, final)
        fsync_path(final.parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _rename_no_replace(source: Path, target: Path) -> None:
    """Rename, refusing to replace ``target`` even if it is an empty directory.

    Plain rename(2) silently replaces an empty directory; Linux's renameat2 with
    RENAME_NOREPLACE does not. Elsewhere, a check before the rename narrows the race.
    """
    libc = _libc()
    if libc is not None:
        at_fdcwd, rename_noreplace = -100, 1
        result = libc.renameat2(
            at_fdcwd, os.fsencode(source), at_fdcwd, os.fsencode(target), rename_noreplace
        )
        if result == 0:
            return
        errno = ctypes.get_errno()
        if errno not in (_ENOSYS, _EINVAL):
            raise OSError(errno, os.strerror(errno), str(target))
    if target.exists():
        raise FileExistsError(f"artifact {target} appeared while it was being written")
    os.rename(source, target)


_ENOSYS, _EINVAL = 38, 22


@functools.cache
def _libc() -> Any:
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        libc.renameat2  # noqa: B018  (glibc >= 2.28)
    except (OSError, AttributeError):
        return None
    return libc


def verify_manifest(directory: Path) -> dict[str, Any]:
    """Check every file against the manifest; return the manifest or raise ArtifactError."""
    manifest_path = directory / MANIFEST
    if not manifest_path.is_file():
        raise ArtifactError(f"{directory} has no {MANIFEST}; it is incomplete")
    manifest: dict[str, Any] = json.loads(manifest_path.read_text())
    for name, entry in manifest["files"].items():
        path = directory / name
        if not path.is_file() or sha256_file(path) != entry["sha256"]:
            raise ArtifactError(f"{path} is missing or does not match its checksum")
    return manifest


def remove_incomplete(parent: Path, older_than: float = 0.0) -> list[Path]:
    """Delete temporary directories left by a crash under ``parent``; return what was removed.

    Only those untouched for ``older_than`` seconds, the folder and every file in it: another
    process may be writing a young one (a merged GGUF export writes one file for minutes, which
    leaves the folder's own mtime old).
    """
    removed = []
    cutoff = time.time() - older_than
    if parent.is_dir():
        for path in parent.iterdir():
            if (
                path.name.startswith(_TMP_PREFIX)
                and path.is_dir()
                and _last_modified(path) <= cutoff
            ):
                shutil.rmtree(path, ignore_errors=True)
                removed.append(path)
    return removed


def _last_modified(folder: Path) -> float:
    """The newest mtime of ``folder`` and everything in it (0 for what vanished meanwhile)."""
    newest = 0.0
    with contextlib.suppress(OSError):  # a folder removed while it is walked
        for path in (folder, *folder.rglob("*")):
            with contextlib.suppress(OSError):
                newest = max(newest, path.lstat().st_mtime)
    return newest


def build_once(target: Path, build: Callable[[], None]) -> None:
    """Make ``target`` with ``build`` (which writes it with :func:`atomic_file` or
    :func:`atomic_directory`) unless it exists. Processes that would build it at the same time
    take turns on a lock file beside it: one builds, the others wait and find it built. One
    built meanwhile where the lock does not reach (another host sharing the folder) counts too.
    """
    if target.exists():
        return
    with _exclusive(target.with_name(f"{target.name}.lock")):
        if target.exists():
            return
        with contextlib.suppress(FileExistsError):  # the other builder's copy is the same
            build()


@contextlib.contextmanager
def _exclusive(lock_path: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``lock_path`` (created if need be) for the block, across
    processes; released however the holder ends, a crash included (the kernel drops it)."""
    import fcntl

    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with lock_path.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
