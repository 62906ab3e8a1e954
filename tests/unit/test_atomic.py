"""Atomic artifact directories: all or nothing, never overwritten, verifiable."""

from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path

import pytest

from selftune.artifacts import MANIFEST
from selftune.atomic import (
    ArtifactError,
    atomic_directory,
    remove_incomplete,
    sha256_file,
    verify_manifest,
)


def _build(final: Path, metadata: dict[str, object] | None = None) -> None:
    with atomic_directory(final, metadata) as tmp:
        assert tmp != final
        assert tmp.parent == final.parent
        assert tmp.name.startswith(".tmp-")
        assert not final.exists()  # nothing at the final path while building
        (tmp / "weights.bin").write_bytes(b"\x00\x01\x02" * 1000)
        (tmp / "sub").mkdir()
        (tmp / "sub" / "config.json").write_text('{"r": 8}')


def _leftovers(parent: Path) -> list[str]:
    return sorted(p.name for p in parent.iterdir() if p.name.startswith(".tmp-"))


def test_creates_final_dir_with_matching_manifest(tmp_path: Path) -> None:
    final = tmp_path / "versions" / "v1"  # the parent is created too
    _build(final, {"version": "v1"})

    assert final.is_dir()
    manifest = json.loads((final / MANIFEST).read_text())
    assert manifest["version"] == "v1"
    assert set(manifest["files"]) == {"weights.bin", "sub/config.json"}
    for name, entry in manifest["files"].items():
        data = (final / name).read_bytes()
        assert entry["sha256"] == hashlib.sha256(data).hexdigest()
        assert entry["bytes"] == len(data)
    assert verify_manifest(final) == manifest
    assert _leftovers(final.parent) == []


def test_sha256_file_matches_hashlib(tmp_path: Path) -> None:
    path = tmp_path / "big.bin"
    data = bytes(range(256)) * 9000  # more than one read block
    path.write_bytes(data)
    assert sha256_file(path) == hashlib.sha256(data).hexdigest()


def test_empty_directory_gets_an_empty_manifest(tmp_path: Path) -> None:
    final = tmp_path / "empty"
    with atomic_directory(final):
        pass
    assert json.loads((final / MANIFEST).read_text()) == {"files": {}}


def test_refuses_to_overwrite_existing_final_dir(tmp_path: Path) -> None:
    final = tmp_path / "v1"
    final.mkdir()
    (final / "keep.txt").write_text("original")
    entered = False

    with pytest.raises(FileExistsError), atomic_directory(final):
        entered = True

    assert not entered
    assert sorted(p.name for p in final.iterdir()) == ["keep.txt"]
    assert (final / "keep.txt").read_text() == "original"
    assert _leftovers(tmp_path) == []


def test_refuses_a_second_build_of_the_same_version(tmp_path: Path) -> None:
    final = tmp_path / "v1"
    _build(final)
    before = {p.name: p.read_bytes() for p in final.rglob("*") if p.is_file()}
    with pytest.raises(FileExistsError):
        _build(final)
    assert {p.name: p.read_bytes() for p in final.rglob("*") if p.is_file()} == before


def test_final_dir_appearing_meanwhile_is_not_overwritten(tmp_path: Path) -> None:
    final = tmp_path / "v1"
    with pytest.raises(OSError), atomic_directory(final) as tmp:
        (tmp / "new.txt").write_text("new")
        final.mkdir()  # another writer got there first
        (final / "other.txt").write_text("other")

    assert sorted(p.name for p in final.iterdir()) == ["other.txt"]
    assert _leftovers(tmp_path) == []


def test_exception_inside_block_leaves_nothing(tmp_path: Path) -> None:
    final = tmp_path / "v1"
    with pytest.raises(RuntimeError, match="training crashed"), atomic_directory(final) as tmp:
        (tmp / "partial.bin").write_bytes(b"half")
        raise RuntimeError("training crashed")

    assert not final.exists()
    assert list(tmp_path.iterdir()) == []


def test_keyboard_interrupt_inside_block_leaves_nothing(tmp_path: Path) -> None:
    final = tmp_path / "v1"
    with pytest.raises(KeyboardInterrupt), atomic_directory(final) as tmp:
        (tmp / "partial.bin").write_bytes(b"half")
        raise KeyboardInterrupt

    assert list(tmp_path.iterdir()) == []


def test_verify_detects_a_modified_file(tmp_path: Path) -> None:
    final = tmp_path / "v1"
    _build(final)
    (final / "weights.bin").write_bytes(b"tampered")
    with pytest.raises(ArtifactError, match=r"weights\.bin"):
        verify_manifest(final)


def test_verify_detects_a_same_size_change(tmp_path: Path) -> None:
    final = tmp_path / "v1"
    _build(final)
    path = final / "sub" / "config.json"
    path.write_text('{"r": 9}')  # same length, different content
    with pytest.raises(ArtifactError, match=r"config\.json"):
        verify_manifest(final)


def test_verify_detects_a_deleted_file(tmp_path: Path) -> None:
    final = tmp_path / "v1"
    _build(final)
    (final / "weights.bin").unlink()
    with pytest.raises(ArtifactError, match=r"weights\.bin"):
        verify_manifest(final)


def test_verify_detects_a_missing_manifest(tmp_path: Path) -> None:
    final = tmp_path / "v1"
    _build(final)
    (final / MANIFEST).unlink()
    with pytest.raises(ArtifactError, match="incomplete"):
        verify_manifest(final)


def test_verify_detects_a_missing_directory(tmp_path: Path) -> None:
    with pytest.raises(ArtifactError):
        verify_manifest(tmp_path / "nowhere")


def test_remove_incomplete_removes_only_tmp_dirs(tmp_path: Path) -> None:
    _build(tmp_path / "v1")
    (tmp_path / ".tmp-v2-deadbeef").mkdir()
    (tmp_path / ".tmp-v2-deadbeef" / "partial.bin").write_bytes(b"x")
    (tmp_path / ".tmp-v3-cafebabe").mkdir()
    (tmp_path / ".tmp-note").write_text("a file, not a directory")
    (tmp_path / "v4.tmp-").mkdir()
    (tmp_path / "tmp-v5").mkdir()

    removed = remove_incomplete(tmp_path)

    assert sorted(p.name for p in removed) == [".tmp-v2-deadbeef", ".tmp-v3-cafebabe"]
    assert sorted(p.name for p in tmp_path.iterdir()) == [".tmp-note", "tmp-v5", "v1", "v4.tmp-"]
    verify_manifest(tmp_path / "v1")


def test_remove_incomplete_on_a_missing_parent(tmp_path: Path) -> None:
    assert remove_incomplete(tmp_path / "nowhere") == []


def test_metadata_cannot_replace_the_checksums(tmp_path: Path) -> None:
    final = tmp_path / "v1"
    with atomic_directory(final, {"files": ["train.jsonl"]}) as tmp:
        (tmp / "weights.bin").write_bytes(b"weights")
    manifest = json.loads((final / MANIFEST).read_text())
    assert isinstance(manifest["files"], dict)
    assert "weights.bin" in manifest["files"]


def test_empty_final_dir_appearing_meanwhile_is_not_overwritten(tmp_path: Path) -> None:
    final = tmp_path / "v1"
    with pytest.raises(OSError), atomic_directory(final) as tmp:
        (tmp / "new.txt").write_text("new")
        final.mkdir()  # claimed by someone else, not yet filled
    assert list(final.iterdir()) == []


def test_remove_incomplete_spares_a_folder_being_written(tmp_path: Path) -> None:
    young = tmp_path / ".tmp-v2-cafe"
    young.mkdir()
    old = tmp_path / ".tmp-v1-beef"
    old.mkdir()
    past = time.time() - 120
    os.utime(old, (past, past))
    assert remove_incomplete(tmp_path, older_than=60) == [old]
    assert young.exists()


def test_remove_incomplete_spares_a_folder_whose_file_is_being_written(tmp_path: Path) -> None:
    """A merged GGUF export writes one large file for minutes: the folder's own mtime is old,
    the file's is not."""
    writing = tmp_path / ".tmp-f16-cafe"
    writing.mkdir()
    (writing / "model.gguf").write_bytes(b"GGUF")  # written to just now
    past = time.time() - 120
    os.utime(writing, (past, past))
    assert remove_incomplete(tmp_path, older_than=60) == []
    os.utime(writing / "model.gguf", (past, past))
    assert remove_incomplete(tmp_path, older_than=60) == [writing]
