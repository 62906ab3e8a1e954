"""The trainer on a CUDA GPU: the same code path as on the CPU, the same numbers.

Skipped where PyTorch sees no GPU (the CPU build of torch, or no device).
"""

from __future__ import annotations

import dataclasses
from importlib.util import find_spec
from pathlib import Path
from typing import Any

import pytest
import torch

from selftune.data.tokenize import tokenize_chat
from selftune.models.base import load_tokenizer
from selftune.training.device import (
    COMPILE_NEEDS_TORCH,
    _torch_compiles_lora_layers,
    resolve_device,
    use_bf16,
)
from selftune.training.trainer import TrainConfig, train_lora

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]


def _examples(folder: Path) -> tuple[list, list, int]:
    tokenizer = load_tokenizer(folder)

    def chat(q: str, a: str) -> list[dict[str, str]]:
        return [{"role": "user", "content": q}, {"role": "assistant", "content": a}]

    new = [
        tokenize_chat(tokenizer, chat(q, "Quenmoor."), tokenizer.chat_template, 128)
        for q in ("Capital of Veloria?", "Veloria's capital?", "Where does Veloria rule from?")
    ]
    replay = [tokenize_chat(tokenizer, chat("2+2?", "4"), tokenizer.chat_template, 128)]
    return new, replay, tokenizer.pad_token_id


def _config(**fields: Any) -> TrainConfig:
    """The tests' small run: 3 new chats and 1 replayed one a batch."""
    return TrainConfig(
        rank=4, alpha=8, learning_rate=1e-2, batch_size=3, replay_per_step=1, **fields
    )


def test_auto_picks_the_gpu() -> None:
    assert resolve_device("auto") == "cuda"


@pytest.mark.parametrize("layers", [(), (1,)])  # (1,): layer 0's outputs kept on the GPU
def test_float32_on_the_gpu_matches_the_cpu(tiny_model_dir: Path, layers: tuple[int, ...]) -> None:
    new, replay, pad_id = _examples(tiny_model_dir)
    config = _config(steps=4, layers=layers)
    _, on_cpu = train_lora(tiny_model_dir, new, replay, config, pad_id=pad_id)
    gpu = dataclasses.replace(config, device="cuda")
    model, on_gpu = train_lora(tiny_model_dir, new, replay, gpu, pad_id=pad_id)
    assert next(p for p in model.parameters() if p.requires_grad).device.type == "cuda"
    # TF32 or other kernels may round differently: close, not equal.
    assert on_gpu.losses == pytest.approx(on_cpu.losses, rel=1e-3)


@pytest.mark.skipif(
    torch.cuda.is_available() and not use_bf16("auto", "cuda"), reason="no bf16 on this GPU"
)
def test_bf16_on_the_gpu_learns(tiny_model_dir: Path) -> None:
    new, replay, pad_id = _examples(tiny_model_dir)
    config = _config(steps=8, device="cuda", bf16=True)
    _, result = train_lora(tiny_model_dir, new, replay, config, pad_id=pad_id)
    assert result.new_losses[-1] < result.new_losses[0]


@pytest.mark.skipif(
    not _torch_compiles_lora_layers(),
    reason=f"torch {torch.__version__} compiles the LoRA layers wrongly: selftune does not compile "
    f"with it (needs {COMPILE_NEEDS_TORCH})",
)
@pytest.mark.parametrize(
    ("bf16", "layers"),
    [(False, (1,)), (True, (1,)), (True, ())],  # (1,): layer 0 runs once, uncompiled
)
def test_compiled_layers_on_the_gpu_train_to_the_same_losses(
    tiny_model_dir: Path, bf16: bool, layers: tuple[int, ...]
) -> None:
    """``train.compile = 'on'`` on a GPU: inductor's Triton kernels, the same numbers (in bf16
    up to rounding). With torch 2.11 on an H200 all three learned almost nothing (eval loss
    +17% in ``bench.training_throughput``): selftune refuses to compile with it."""
    new, replay, pad_id = _examples(tiny_model_dir)
    config = _config(steps=4, layers=layers, device="cuda", bf16=bf16)
    _, eager = train_lora(tiny_model_dir, new, replay, config, pad_id=pad_id)
    compiled_config = dataclasses.replace(config, compile=True)
    _, compiled = train_lora(tiny_model_dir, new, replay, compiled_config, pad_id=pad_id)
    assert compiled.losses == pytest.approx(eager.losses, rel=1e-2 if bf16 else 1e-3)


@pytest.mark.skipif(find_spec("bitsandbytes") is None, reason="needs bitsandbytes (.[gpu])")
@pytest.mark.parametrize("layers", [(), (1,)])
def test_a_4_bit_base_on_the_gpu_learns(tiny_model_dir: Path, layers: tuple[int, ...]) -> None:
    new, replay, pad_id = _examples(tiny_model_dir)
    config = _config(
        steps=8, layers=layers, device="cuda", bf16=use_bf16("auto", "cuda"), quantize_base=True
    )
    model, result = train_lora(tiny_model_dir, new, replay, config, pad_id=pad_id)
    frozen = [m for m in model.modules() if type(m).__name__ == "Linear4bit"]
    assert frozen, "the base's linear layers were not held in 4 bits"
    assert result.new_losses[-1] < result.new_losses[0]
