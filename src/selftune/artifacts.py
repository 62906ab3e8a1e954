"""The file names inside artifact folders, in one place for every module that writes or reads them.

A version folder (``<data_dir>/versions/<name>/``) holds the PEFT adapter, its GGUF LoRA and a
manifest; a merged export folder (``<data_dir>/exports/<version>/<format>/``) holds the merged
model and its ollama Modelfile, with the export check beside the folder. Every folder is sealed
by its manifest (``selftune.atomic``), written last.
"""

from __future__ import annotations

__all__ = ["CHECK_SUFFIX", "GGUF_ADAPTER", "MANIFEST", "MODELFILE", "MODEL_FILE"]

MANIFEST = "manifest.json"  # every file's size and SHA-256; its presence marks a folder complete
GGUF_ADAPTER = "adapter.gguf"  # a version's LoRA for llama.cpp's --lora
MODEL_FILE = "model.gguf"  # a merged export's model
MODELFILE = "Modelfile"  # ollama's recipe for that model
CHECK_SUFFIX = ".check.json"  # exports/<version>/<format>.check.json: the export's check
