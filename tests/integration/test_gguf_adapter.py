"""Parity of an exported GGUF LoRA adapter: llama.cpp (base + adapter) against PyTorch + PEFT.

The tiny Llama has 4 query heads and 2 key/value heads, so both the q permutation (by query heads)
and the k permutation (by key/value heads) are exercised; the LoRA factors are random and
non-zero on every projection so each one changes the logits.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import gguf
import numpy as np
import pytest

from selftune.export import gguf_adapter
from selftune.export.gguf_adapter import AdapterExportError, export_gguf_adapter
from selftune.export.gguf_model import write_llama_gguf
from selftune.models.base import default_gguf_path
from tests.parity import (
    ALPHA,
    PROMPTS,
    RANK,
    Logits,
    llama_cpp_logits,
    random_lora,
    torch_logits,
)

if TYPE_CHECKING:
    pass

# Allowed |llama.cpp - torch| as a fraction of the largest reference logit. Both sides compute
# in f32 (f32 KV cache too), but in different orders; measured ~1e-6 of the scale.
RELATIVE_TOLERANCE = 1e-2


@dataclasses.dataclass(frozen=True)
class Setup:
    base_gguf: Path
    peft_dir: Path
    base_config: dict[str, Any]
    adapter_gguf: Path
    unpermuted_gguf: Path
    prompt_ids: list[list[int]]
    torch_base: Logits
    torch_adapted: Logits


@contextlib.contextmanager
def _without_qk_permutation() -> Iterator[None]:
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(gguf_adapter, "_permute_for_attention", lambda name, lora_b, hparams: lora_b)
        yield


@pytest.fixture(scope="module")
def setup(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Setup:
    from transformers import AutoConfig, AutoTokenizer

    folder = tmp_path_factory.mktemp("gguf-adapter")
    base_gguf = write_llama_gguf(
        tiny_model_dir, folder / "base.gguf", tokenizer_gguf=default_gguf_path()
    )
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    prompt_ids = [tokenizer(p, add_special_tokens=False)["input_ids"] for p in PROMPTS]
    model = random_lora(tiny_model_dir, folder / "peft", seed=7)
    torch_adapted = torch_logits(model, prompt_ids)
    with model.disable_adapter():
        torch_base = torch_logits(model, prompt_ids)
    base_config = AutoConfig.from_pretrained(tiny_model_dir)  # a PretrainedConfig here
    adapter = export_gguf_adapter(folder / "peft", base_config, folder / "adapter.gguf")
    with _without_qk_permutation():
        unpermuted = export_gguf_adapter(folder / "peft", base_config, folder / "unpermuted.gguf")
    return Setup(
        base_gguf=base_gguf,
        peft_dir=folder / "peft",
        base_config=base_config.to_dict(),  # the other tests pass a plain dict
        adapter_gguf=adapter,
        unpermuted_gguf=unpermuted,
        prompt_ids=prompt_ids,
        torch_base=torch_base,
        torch_adapted=torch_adapted,
    )


def _compare(actual: Logits, expected: Logits) -> tuple[float, float]:
    """(next-token top-1 agreement, max |difference| over all positions)."""
    agreement = float((actual.next_token_top1() == expected.next_token_top1()).mean())
    diff = max(
        float(np.abs(a - e).max())
        for a, e in zip(actual.per_prompt, expected.per_prompt, strict=True)
    )
    return agreement, diff


def test_adapter_metadata_and_tensor_names(setup: Setup) -> None:
    reader = gguf.GGUFReader(setup.adapter_gguf)
    assert reader.fields["general.type"].contents() == "adapter"
    assert reader.fields["adapter.type"].contents() == "lora"
    assert reader.fields["adapter.lora.alpha"].contents() == pytest.approx(ALPHA)
    assert reader.fields["general.architecture"].contents() == "llama"
    gguf_names = ["attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down"]
    expected = {
        f"blk.{layer}.{name}.weight.{kind}"
        for layer in range(2)
        for name in gguf_names
        for kind in ("lora_a", "lora_b")
    }
    tensors = {t.name: t for t in reader.tensors}
    assert set(tensors) == expected
    # ggml lists dimensions innermost first: lora_a is (in, r), lora_b is (r, out).
    assert list(tensors["blk.0.attn_k.weight.lora_a"].shape) == [64, RANK]
    assert list(tensors["blk.0.attn_k.weight.lora_b"].shape) == [RANK, 32]
    assert list(tensors["blk.1.ffn_down.weight.lora_a"].shape) == [128, RANK]


def test_base_gguf_matches_torch(setup: Setup) -> None:
    """The hand-written base GGUF is faithful, so adapter differences are the adapter's."""
    agreement, diff = _compare(
        llama_cpp_logits(setup.base_gguf, setup.prompt_ids), setup.torch_base
    )
    assert agreement == 1.0
    assert diff <= RELATIVE_TOLERANCE * setup.torch_base.scale()


def test_adapter_logits_match_peft(setup: Setup) -> None:
    adapted = llama_cpp_logits(setup.base_gguf, setup.prompt_ids, setup.adapter_gguf)
    agreement, diff = _compare(adapted, setup.torch_adapted)
    print(f"f32 adapter: top-1 agreement {agreement:.0%}, max |diff| {diff:.3g}")
    assert agreement == 1.0
    assert diff <= RELATIVE_TOLERANCE * setup.torch_adapted.scale()


def test_adapter_changes_the_logits(setup: Setup) -> None:
    base = llama_cpp_logits(setup.base_gguf, setup.prompt_ids)
    adapted = llama_cpp_logits(setup.base_gguf, setup.prompt_ids, setup.adapter_gguf)
    agreement, diff = _compare(adapted, base)
    assert agreement < 1.0
    assert diff > 10 * RELATIVE_TOLERANCE * setup.torch_adapted.scale()


def test_without_qk_permutation_logits_are_wrong(setup: Setup) -> None:
    """The file loads fine without the permutation, but llama.cpp then computes other logits."""
    wrong = llama_cpp_logits(setup.base_gguf, setup.prompt_ids, setup.unpermuted_gguf)
    agreement, diff = _compare(wrong, setup.torch_adapted)
    print(f"unpermuted adapter: top-1 agreement {agreement:.0%}, max |diff| {diff:.3g}")
    assert diff > 10 * RELATIVE_TOLERANCE * setup.torch_adapted.scale()


def test_f16_adapter_is_close(setup: Setup, tmp_path: Path) -> None:
    adapter = export_gguf_adapter(
        setup.peft_dir, setup.base_config, tmp_path / "adapter-f16.gguf", dtype="f16"
    )
    adapted = llama_cpp_logits(setup.base_gguf, setup.prompt_ids, adapter)
    agreement, diff = _compare(adapted, setup.torch_adapted)
    print(f"f16 adapter: top-1 agreement {agreement:.0%}, max |diff| {diff:.3g}")
    assert agreement == 1.0
    assert diff <= RELATIVE_TOLERANCE * setup.torch_adapted.scale()


@pytest.mark.parametrize(
    ("config_change", "base_config"),
    [
        ({"use_dora": True}, {"model_type": "llama"}),
        ({"lora_alpha": 0}, {"model_type": "llama"}),
        ({}, {"model_type": "gpt2"}),
    ],
)
def test_refuses_what_gguf_lora_cannot_hold(
    setup: Setup, tmp_path: Path, config_change: dict[str, object], base_config: dict[str, object]
) -> None:
    peft_dir = tmp_path / "peft"
    shutil.copytree(setup.peft_dir, peft_dir)
    config_path = peft_dir / "adapter_config.json"
    config_path.write_text(json.dumps({**json.loads(config_path.read_text()), **config_change}))
    with pytest.raises(AdapterExportError):
        export_gguf_adapter(peft_dir, {**setup.base_config, **base_config}, tmp_path / "a.gguf")
    assert not list(tmp_path.glob("*.gguf")) and not list(tmp_path.glob(".*.tmp"))


def test_never_overwrites(setup: Setup) -> None:
    before = setup.adapter_gguf.read_bytes()
    with pytest.raises(FileExistsError):
        export_gguf_adapter(setup.peft_dir, {"model_type": "llama"}, setup.adapter_gguf)
    assert setup.adapter_gguf.read_bytes() == before
    assert not list(setup.adapter_gguf.parent.glob(".*.tmp"))
