"""Stored versions for API tests: random PEFT LoRAs of the tiny model, saved as training saves them.

A version folder holds the PEFT files and ``adapter.gguf`` under a checksummed manifest (written
by ``atomic_directory``), and a ``Version`` row points at it. Nothing is trained: the LoRA factors
are random and large enough to change the tiny model's greedy answers.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch

from selftune.atomic import atomic_directory
from selftune.config import Settings
from selftune.export.gguf_adapter import export_gguf_adapter
from selftune.store.db import Database
from selftune.store.schema import Version

PEFT_FILES = ("adapter_config.json", "adapter_model.safetensors")


def save_random_lora(model_dir: Path, out: Path, *, seed: int) -> Path:
    """A PEFT LoRA (rank 4, attention and MLP projections) with random non-zero factors."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    config = LoraConfig(
        r=4,
        lora_alpha=8,
        target_modules=["q_proj", "v_proj", "o_proj", "down_proj"],
        lora_dropout=0.0,
    )
    model = get_peft_model(base, config)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_A" in name or "lora_B" in name:
                param.copy_(torch.randn(param.shape, generator=generator) * 0.5)
    model.save_pretrained(str(out))
    return out


def add_version(
    settings: Settings,
    db: Database,
    peft_dir: Path,
    name: str,
    *,
    gated: bool = True,
    gguf: bool = True,
) -> int:
    """Store ``peft_dir`` as version ``name`` (with its GGUF copy) and return the version id.

    ``gguf=False`` stores it as training does for a base whose architecture has no GGUF export.
    """
    base_dir = Path(settings.base_model)
    path = settings.versions_dir / name
    gguf_name = "adapter.gguf" if gguf else None
    metadata = {"version": name, "base": str(base_dir), "gguf_adapter": gguf_name}
    with atomic_directory(path, metadata) as tmp:
        for file in PEFT_FILES:
            shutil.copyfile(peft_dir / file, tmp / file)
        if gguf:
            base_config = json.loads((base_dir / "config.json").read_text())
            export_gguf_adapter(tmp, base_config, tmp / "adapter.gguf")
    with db.write() as session:
        version = Version(
            name=name,
            base_model=str(base_dir),
            base_fingerprint="f" * 16,
            path=str(path.resolve()),
            chat_template="",
            gate={"passed": gated, "reason": "test fixture"},
        )
        session.add(version)
        session.flush()
        return version.id
