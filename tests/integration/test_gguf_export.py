"""Merged-model GGUF export: llama.cpp running the merged file against PyTorch + PEFT.

The tiny Llama (4 query heads, 2 key/value heads, tied embeddings) gets a random LoRA on every
projection; the merged GGUF, loaded in a plain ``llama_cpp.Llama`` with no adapter, must give the
logits PEFT gives with the adapter applied. Agreement is counted at every position of 8 prompts
(~130 next-token predictions); logit differences are relative to the largest reference logit.
Run with ``pytest -s`` to see the measured figures.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING

import gguf
import numpy as np
import pytest
from typer.testing import CliRunner

from selftune.cli import app
from selftune.config import Settings, load_settings
from selftune.export.gguf_adapter import AdapterExportError
from selftune.export.gguf_model import (
    ModelExportError,
    OutputType,
    read_tokenizer_info,
    write_llama_gguf,
)
from selftune.export.merged import export_version
from selftune.models.base import default_gguf_path
from selftune.models.templates import PRESETS
from selftune.store.db import Database
from selftune.store.schema import Version
from tests.parity import (
    PROMPTS,
    Logits,
    llama_cpp_logits,
    random_lora,
    torch_logits,
)

if TYPE_CHECKING:
    pass

# Allowed max |llama.cpp - PyTorch| as a fraction of the largest reference logit, and the least
# top-1 agreement, per output type. f32: both sides compute in f32 (f32 KV cache too), only the
# order differs. f16 rounds the weights; q8_0 rounds them to 8 bits per 32-value block, and
# llama.cpp then also quantizes the activations to 8 bits for its q8_0 matrix products. The
# random tiny model's logits are nearly flat (largest ~0.85), so near-ties flip under rounding.
# Measured: f32 100% / 1.0e-6 (0.0001%), f16 99.3% / 0.24%, q8_0 98.7% / 3.0%.
TOLERANCES: dict[OutputType, tuple[float, float]] = {
    "f32": (1e-3, 0.99),
    "f16": (1e-2, 0.97),
    "q8_0": (8e-2, 0.95),
}
# Built by llama.cpp from the f32 file; on the tiny model's 64- and 128-wide rows (not multiples
# of 256) it cannot use q4_K/q6_K and falls back to q5_0/q8_0 (as it does for SmolLM2-135M's
# 576-wide rows), so this checks that it loads and stays near, not k-quant accuracy. Measured:
# 84% agreement, 22% of the largest logit.
Q4_K_M_TOLERANCE = (0.5, 0.6)


@dataclasses.dataclass(frozen=True)
class Setup:
    folder: Path
    peft_dir: Path
    prompt_ids: list[list[int]]
    torch_base: Logits
    torch_adapted: Logits
    exported: dict[str, Path]

    def merged(self, out_type: OutputType) -> Path:
        """The tiny model with the LoRA merged, as ``out_type`` (written once per module)."""
        if out_type not in self.exported:
            self.exported[out_type] = write_llama_gguf(
                self.folder / "tiny",
                self.folder / f"merged-{out_type}.gguf",
                tokenizer_gguf=default_gguf_path(),
                adapter_dir=self.peft_dir,
                out_type=out_type,
                name="tiny-merged",
                chat_template=PRESETS["chatml"],
            )
        return self.exported[out_type]


@pytest.fixture(scope="module")
def setup(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Setup:
    from transformers import AutoTokenizer

    folder = tmp_path_factory.mktemp("gguf-export")
    os.symlink(tiny_model_dir, folder / "tiny")  # general.name defaults to the folder's name
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    prompt_ids = [tokenizer(p, add_special_tokens=False)["input_ids"] for p in PROMPTS]
    model = random_lora(tiny_model_dir, folder / "peft", seed=11)
    torch_adapted = torch_logits(model, prompt_ids)
    with model.disable_adapter():
        torch_base = torch_logits(model, prompt_ids)
    return Setup(folder, folder / "peft", prompt_ids, torch_base, torch_adapted, {})


# --- parity -------------------------------------------------------------------------------------


@pytest.mark.parametrize("out_type", list(TOLERANCES))
def test_merged_export_matches_peft(setup: Setup, out_type: OutputType) -> None:
    relative, least_agreement = TOLERANCES[out_type]
    merged = llama_cpp_logits(setup.merged(out_type), setup.prompt_ids)
    agreement, diff = merged.compare(setup.torch_adapted)
    scale = setup.torch_adapted.scale()
    print(
        f"\nmerged {out_type}: top-1 agreement {agreement:.1%}, max |diff| {diff:.3g} "
        f"({diff / scale:.2%} of the largest logit {scale:.3g})"
    )
    assert agreement >= least_agreement
    assert diff <= relative * scale


def test_the_merge_changes_the_logits(setup: Setup) -> None:
    """So the parity above is the adapter's: without the merge the logits are far off."""
    merged = llama_cpp_logits(setup.merged("f32"), setup.prompt_ids)
    agreement, diff = merged.compare(setup.torch_base)
    assert agreement < 0.9
    assert diff > 10 * TOLERANCES["f32"][0] * setup.torch_adapted.scale()


def test_q4_k_m_loads_and_runs(setup: Setup) -> None:
    path = setup.merged("q4_k_m")
    reader = gguf.GGUFReader(path)
    assert reader.fields["general.file_type"].contents() == gguf.LlamaFileType.MOSTLY_Q4_K_M
    types = {t.name: t.tensor_type for t in reader.tensors}
    assert types["blk.0.attn_q.weight"] == gguf.GGMLQuantizationType.Q5_0  # the 256 fallback
    assert types["blk.0.attn_norm.weight"] == gguf.GGMLQuantizationType.F32
    merged = llama_cpp_logits(path, setup.prompt_ids)
    assert all(np.isfinite(logits).all() for logits in merged.per_prompt)
    agreement, diff = merged.compare(setup.torch_adapted)
    scale = setup.torch_adapted.scale()
    print(
        f"\nmerged q4_k_m: top-1 agreement {agreement:.1%}, max |diff| {diff / scale:.2%} of scale"
    )
    assert agreement >= Q4_K_M_TOLERANCE[1]
    assert diff <= Q4_K_M_TOLERANCE[0] * scale


# --- the file -----------------------------------------------------------------------------------


def test_metadata_tokenizer_and_tensor_types(setup: Setup) -> None:
    reader = gguf.GGUFReader(setup.merged("q8_0"))
    fields = reader.fields
    assert fields["general.architecture"].contents() == "llama"
    assert fields["general.name"].contents() == "tiny-merged"
    assert fields["general.file_type"].contents() == gguf.LlamaFileType.MOSTLY_Q8_0
    assert fields["tokenizer.chat_template"].contents() == PRESETS["chatml"]
    source = read_tokenizer_info(default_gguf_path())  # the tokenizer is copied verbatim
    tokens = fields["tokenizer.ggml.tokens"]
    assert len(tokens.data) == 49152
    assert tokens.contents(int(fields["tokenizer.ggml.eos_token_id"].contents())) == (
        source.eos_token
    )
    assert fields["tokenizer.ggml.pre"].contents() == "smollm"
    types = {t.name: t.tensor_type for t in reader.tensors}
    assert "output.weight" not in types  # tied: llama.cpp reads token_embd, as for SmolLM2
    assert types["token_embd.weight"] == gguf.GGMLQuantizationType.Q8_0
    assert types["blk.1.ffn_down.weight"] == gguf.GGMLQuantizationType.Q8_0
    assert types["blk.1.ffn_norm.weight"] == gguf.GGMLQuantizationType.F32
    f16 = {t.name: t.tensor_type for t in gguf.GGUFReader(setup.merged("f16")).tensors}
    assert f16["blk.0.attn_k.weight"] == gguf.GGMLQuantizationType.F16
    assert f16["output_norm.weight"] == gguf.GGMLQuantizationType.F32


def test_never_overwrites(setup: Setup) -> None:
    target = setup.folder / "taken.gguf"
    target.write_bytes(b"someone else's file")
    with pytest.raises(FileExistsError):
        write_llama_gguf(setup.folder / "tiny", target, tokenizer_gguf=default_gguf_path())
    assert target.read_bytes() == b"someone else's file"
    assert not list(setup.folder.glob(".taken.gguf.*"))


def test_refuses_what_it_cannot_merge(setup: Setup, tmp_path: Path) -> None:
    peft_dir = tmp_path / "peft"
    peft_dir.mkdir()
    for path in setup.peft_dir.iterdir():
        (peft_dir / path.name).write_bytes(path.read_bytes())
    config_path = peft_dir / "adapter_config.json"
    config_path.write_text(json.dumps({**json.loads(config_path.read_text()), "use_dora": True}))
    with pytest.raises(AdapterExportError, match="DoRA"):
        write_llama_gguf(
            setup.folder / "tiny",
            tmp_path / "dora.gguf",
            tokenizer_gguf=default_gguf_path(),
            adapter_dir=peft_dir,
        )
    qwen = tmp_path / "qwen"
    qwen.mkdir()
    (qwen / "config.json").write_text(json.dumps({"model_type": "qwen2"}))
    with pytest.raises(ModelExportError, match="Llama-architecture"):
        write_llama_gguf(qwen, tmp_path / "qwen.gguf", tokenizer_gguf=default_gguf_path())
    assert not list(tmp_path.glob("*.gguf")) and not list(tmp_path.glob(".*.tmp"))


# --- export_version and the CLI -----------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_gguf_base(setup: Setup) -> Path:
    """The tiny model as a GGUF base, so that export_version has a tokenizer to copy."""
    return write_llama_gguf(
        setup.folder / "tiny", setup.folder / "tiny-base.gguf", tokenizer_gguf=default_gguf_path()
    )


def test_a_gguf_base_converts_back_to_its_weights(
    setup: Setup, tiny_gguf_base: Path, tmp_path: Path
) -> None:
    """A float32 GGUF base, dequantized into the cache, holds the weights it was written from
    (the attention's row order restored); the speed-ups of that conversion end with it."""
    import gguf
    import safetensors.torch
    import torch

    from selftune.models.base import materialize, resolve_base_model

    reader_class, name_maps = gguf.GGUFReader, gguf.get_tensor_name_map
    folder = materialize(resolve_base_model(str(tiny_gguf_base)), tmp_path)
    assert (gguf.GGUFReader, gguf.get_tensor_name_map) == (reader_class, name_maps)

    converted = safetensors.torch.load_file(str(folder / "model.safetensors"))
    original = safetensors.torch.load_file(str(setup.folder / "tiny" / "model.safetensors"))
    assert converted.keys() == original.keys()
    for name, weight in original.items():
        assert torch.equal(converted[name], weight), name


def _settings(data_dir: Path, base_model: Path | str, cache: Path) -> Settings:
    return load_settings(data_dir=data_dir, base_model=str(base_model), cache_path=cache)


def test_export_version_writes_a_verified_folder_once(
    setup: Setup, tiny_gguf_base: Path, tmp_path: Path, shared_cache: Path
) -> None:
    settings = _settings(tmp_path, tiny_gguf_base, shared_cache)
    stages: list[str] = []
    result = export_version(
        settings,
        "v1",
        "f32",
        lambda fraction, stage: stages.append(stage),
        adapter_dir=setup.peft_dir,
        chat_template=PRESETS["chatml"],
    )
    assert result.folder == tmp_path / "exports" / "v1" / "f32"
    assert sorted(p.name for p in result.folder.iterdir()) == [
        "Modelfile",
        "manifest.json",
        "model.gguf",
    ]
    assert not result.reused and stages[-1] == "written"
    modelfile = result.modelfile_path.read_text()
    assert "FROM ./model.gguf" in modelfile and "SYSTEM" not in modelfile  # the plain preset
    # The base went GGUF -> transformers -> merged GGUF: the logits are still PEFT's.
    agreement, diff = llama_cpp_logits(result.model_path, setup.prompt_ids).compare(
        setup.torch_adapted
    )
    assert agreement >= 0.99 and diff <= TOLERANCES["f32"][0] * setup.torch_adapted.scale()

    mtime = result.model_path.stat().st_mtime_ns
    again = export_version(
        settings, "v1", "f32", adapter_dir=setup.peft_dir, chat_template=PRESETS["chatml"]
    )
    assert again.reused and again.sha256 == result.sha256
    assert result.model_path.stat().st_mtime_ns == mtime


def test_export_of_the_base_carries_its_template_and_system_prompt(
    tiny_gguf_base: Path, tmp_path: Path, shared_cache: Path
) -> None:
    result = export_version(_settings(tmp_path, tiny_gguf_base, shared_cache), "base", "q8_0")
    modelfile = result.modelfile_path.read_text()
    assert 'SYSTEM """You are a helpful AI assistant named SmolLM' in modelfile
    assert 'PARAMETER stop "<|im_end|>"' in modelfile
    chat_template = gguf.GGUFReader(result.model_path).fields["tokenizer.chat_template"]
    assert "named SmolLM" in chat_template.contents()


def test_a_hugging_face_folder_base_is_refused(
    tiny_model_dir: Path, tmp_path: Path, shared_cache: Path
) -> None:
    with pytest.raises(ModelExportError, match="needs a GGUF base model"):
        export_version(_settings(tmp_path, tiny_model_dir, shared_cache), "base", "f16")
    assert not (tmp_path / "exports").exists()


def test_cli_export(
    setup: Setup,
    tiny_gguf_base: Path,
    settings_env: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    runner = CliRunner()
    monkeypatch.setenv("SELFTUNE_BASE_MODEL", str(tiny_gguf_base))
    db = Database(load_settings().resolved_database_url)
    db.migrate()
    with db.write() as session:
        session.add(
            Version(
                name="v1",
                base_model=str(tiny_gguf_base.resolve()),
                base_fingerprint="test",
                path=str(setup.peft_dir),
                chat_template=PRESETS["chatml"],
            )
        )
    db.dispose()

    result = runner.invoke(app, ["export", "v1", "--format", "q8_0"])
    assert result.exit_code == 0, result.output
    folder = settings_env / "data" / "exports" / "v1" / "q8_0"
    assert f"folder: {folder}" in result.stdout
    assert "sha256: " in result.stdout and "MB" in result.stdout

    unknown = runner.invoke(app, ["export", "v9"])
    assert unknown.exit_code == 1 and "no version 'v9'" in unknown.output
    bad_format = runner.invoke(app, ["export", "base", "--format", "q2_k"])
    assert bad_format.exit_code == 2

    monkeypatch.setenv("SELFTUNE_BASE_MODEL", str(setup.folder / "tiny"))
    folder_base = runner.invoke(app, ["export", "base"])
    assert folder_base.exit_code == 1 and "needs a GGUF base model" in folder_base.output


# --- the real default model ---------------------------------------------------------------------


@pytest.mark.e2e
def test_default_model_with_a_lora_exports_faithfully(settings_env: Path, tmp_path: Path) -> None:
    """SmolLM2-135M (its Q4_1 GGUF dequantized) plus a random LoRA, exported f16 for ollama.

    Measured on the 8 prompts (167 positions): f16 100% top-1, max |diff| 0.06; f32 exact. q8_0
    (95.8%, 5.9) and q4_k_m (82.6%, 7.6) are not checked here: they re-quantize, and llama.cpp
    also quantizes activations for them.
    """
    from selftune.models.base import load_tokenizer, materialize, resolve_base_model

    settings = load_settings()
    hf_dir = materialize(resolve_base_model(settings.base_model), settings.cache_dir)
    tokenizer = load_tokenizer(hf_dir)
    prompt_ids = [tokenizer(p, add_special_tokens=False)["input_ids"] for p in PROMPTS]
    reference = torch_logits(random_lora(hf_dir, tmp_path / "peft", seed=11, std=0.05), prompt_ids)

    result = export_version(settings, "v1", "f16", adapter_dir=tmp_path / "peft")
    agreement, diff = llama_cpp_logits(result.model_path, prompt_ids).compare(reference)
    print(f"\nSmolLM2-135M + LoRA, merged f16: top-1 {agreement:.1%}, max |diff| {diff:.3g}")
    assert agreement >= 0.99
    assert diff <= 0.25
    modelfile = result.modelfile_path.read_text()
    assert 'SYSTEM """You are a helpful AI assistant named SmolLM' in modelfile
