"""Test helper kept for the tests that import it; the writer is selftune.export.gguf_model's."""

from __future__ import annotations

from pathlib import Path

from selftune.export.gguf_model import write_llama_gguf

__all__ = ["write_llama_base_gguf"]


def write_llama_base_gguf(hf_dir: Path, out_path: Path, tokenizer_gguf: Path) -> Path:
    """Write the Llama in ``hf_dir`` to ``out_path`` (f32) with ``tokenizer_gguf``'s tokenizer."""
    return write_llama_gguf(hf_dir, out_path, tokenizer_gguf=tokenizer_gguf)
