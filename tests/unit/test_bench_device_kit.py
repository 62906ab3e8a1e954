"""The GPU-check kit: a default-shaped model built from the kit's config, and a safe prepare."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import AutoConfig, AutoTokenizer

from bench import device_kit
from selftune.models.base import load_model


def _kit_from(model_dir: Path, kit: Path) -> Path:
    """A kit holding ``model_dir``'s config and tokenizer, as ``prepare`` writes them."""
    AutoConfig.from_pretrained(model_dir).save_pretrained(kit / "config")
    AutoTokenizer.from_pretrained(model_dir).save_pretrained(kit / "tokenizer")
    return kit


def test_the_model_has_the_kit_s_shape_and_the_same_weights_each_time(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    kit = _kit_from(tiny_model_dir, tmp_path / "kit")
    device_kit.build_model(kit, tmp_path / "a")
    device_kit.build_model(kit, tmp_path / "b")
    a, b = load_model(tmp_path / "a"), load_model(tmp_path / "b")
    reference = load_model(tiny_model_dir)
    assert [p.shape for p in a.parameters()] == [p.shape for p in reference.parameters()]
    assert all(torch.equal(x, y) for x, y in zip(a.parameters(), b.parameters(), strict=True))
    assert AutoTokenizer.from_pretrained(tmp_path / "a").encode("Veloria") == (
        AutoTokenizer.from_pretrained(tiny_model_dir).encode("Veloria")
    )


def test_prepare_leaves_a_folder_that_is_not_a_kit_alone(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(SystemExit, match="not a device kit"):
        device_kit.prepare(tmp_path)
    assert (tmp_path / "notes.txt").read_text() == "mine"
