"""Resolving and caching the base model."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from selftune.models import base
from selftune.models.base import BaseModelSource, materialize


def _twice_at_once(call: Callable[[], Path]) -> list[Path]:
    """``call``'s results from two threads started together, as a server and its worker."""
    results: list[Path] = []
    callers = [threading.Thread(target=lambda: results.append(call())) for _ in range(2)]
    for caller in callers:
        caller.start()
    for caller in callers:
        caller.join()
    return results


def test_a_gguf_base_is_converted_once_when_two_processes_start_together(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The server and its worker both materialize the base at start: one converts, the other
    waits for its copy (two conversions at once would each run at half speed)."""
    conversions: list[Path] = []

    def slow_conversion(gguf: Path, target: Path) -> None:
        conversions.append(gguf)
        time.sleep(0.3)  # long enough for the other caller to arrive meanwhile
        target.mkdir(parents=True)

    monkeypatch.setattr(base, "_convert_gguf", slow_conversion)
    source = BaseModelSource("gguf", str(tmp_path / "model.gguf"), "f" * 16)
    results = _twice_at_once(lambda: materialize(source, tmp_path / "cache"))

    assert len(conversions) == 1
    assert results[0] == results[1] and results[0].is_dir()


def test_the_served_f16_copy_is_made_once_when_two_processes_start_together(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from selftune.config import load_settings
    from selftune.engines import serving_gguf as serving
    from selftune.models.base import default_gguf_path, resolve_base_model

    conversions: list[Path] = []

    def slow_conversion(source: Path, out: Path, *_args: object, **_kwargs: object) -> None:
        conversions.append(source)
        time.sleep(0.3)
        out.write_bytes(b"f16")

    monkeypatch.setattr(serving, "llama_quantize", slow_conversion)
    settings = load_settings(data_dir=tmp_path / "data")
    source = resolve_base_model(str(default_gguf_path()))
    results = _twice_at_once(lambda: serving.serving_gguf(settings, source))

    assert len(conversions) == 1
    assert results[0] == results[1] and results[0].read_bytes() == b"f16"
