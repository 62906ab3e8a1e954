"""Logits of PyTorch and of llama.cpp on the same token ids, for the GGUF parity tests."""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pytest
import torch

if TYPE_CHECKING:
    from peft import PeftModel

__all__ = [
    "ALPHA",
    "PROMPTS",
    "RANK",
    "TARGETS",
    "Logits",
    "llama_cpp_logits",
    "llama_without_weight_repack",
    "random_lora",
    "torch_logits",
]

# Prompts and the random LoRA's shape shared by the adapter and the merged-export parity tests.
PROMPTS = [
    "The quick brown fox jumps over the lazy dog.",
    "def fibonacci(n):\n    return n if n < 2 else fibonacci(n - 1) + fibonacci(n - 2)",
    "Paris is the capital of France, and Berlin is the capital of",
    "<|im_start|>user\nWhat is two plus two?<|im_end|>\n<|im_start|>assistant\n",
    "1, 2, 3, 5, 8, 13, 21, 34,",
    "Once upon a time, in a land far away, there lived a",
    "SELECT name, email FROM users WHERE created_at > '2024-01-01'",
    "Ünïcödé, emoji 🙂 and tabs\tshould survive tokenization.",
]
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
RANK, ALPHA = 8, 16


@dataclasses.dataclass(frozen=True)
class Logits:
    """Per prompt, logits at every position: shape (tokens, vocab)."""

    per_prompt: list[np.ndarray]

    def next_token_top1(self) -> np.ndarray:
        return np.array([logits[-1].argmax() for logits in self.per_prompt])

    def scale(self) -> float:
        return max(float(np.abs(logits).max()) for logits in self.per_prompt)

    def compare(self, reference: Logits) -> tuple[float, float]:
        """(top-1 agreement over all positions, max |difference|) against ``reference``."""
        pairs = list(zip(self.per_prompt, reference.per_prompt, strict=True))
        agree = np.concatenate([a.argmax(-1) == r.argmax(-1) for a, r in pairs])
        return float(agree.mean()), max(float(np.abs(a - r).max()) for a, r in pairs)


@contextlib.contextmanager
def llama_without_weight_repack() -> Iterator[None]:
    """Load llama.cpp models with ``use_extra_bufts = False``.

    llama-cpp-python 0.3.36 segfaults when it evaluates a batch of two or more tokens on quantized
    weights (measured with q8_0 and q4 files) through the CPU weight-repack buffers; ``Llama`` has
    no argument for it but reads ``llama_model_default_params()`` when it is constructed.
    """
    import llama_cpp.llama_cpp as llama_cpp_lib

    default = llama_cpp_lib.llama_model_default_params

    def without_repack() -> Any:
        params = default()
        params.use_extra_bufts = False
        return params

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(llama_cpp_lib, "llama_model_default_params", without_repack)
        yield


def llama_cpp_logits(
    model: Path, prompt_ids: list[list[int]], adapter: Path | None = None
) -> Logits:
    """llama.cpp's logits at every position, computed in f32 (f32 KV cache, no flash attention)."""
    from llama_cpp import GGML_TYPE_F32, Llama

    with llama_without_weight_repack():
        llm = Llama(
            model_path=str(model),
            lora_path=str(adapter) if adapter else None,
            logits_all=True,
            n_ctx=128,
            n_threads=1,  # tiny model; a second thread only spins when the CPUs are shared
            n_threads_batch=1,
            type_k=GGML_TYPE_F32,  # the default f16 KV cache alone costs ~2e-4 of parity
            type_v=GGML_TYPE_F32,
            verbose=False,
        )
    try:
        per_prompt = []
        for ids in prompt_ids:
            llm.reset()
            llm.eval(ids)
            per_prompt.append(np.array(llm.scores[: len(ids)], dtype=np.float32))
        return Logits(per_prompt)
    finally:
        llm.close()


def torch_logits(model: torch.nn.Module, prompt_ids: list[list[int]]) -> Logits:
    with torch.no_grad():
        return Logits([model(torch.tensor([ids])).logits[0].numpy() for ids in prompt_ids])


def random_lora(model_dir: Path, peft_dir: Path, *, seed: int, std: float = 0.1) -> PeftModel:
    """A PEFT LoRA on every projection with random, clearly non-zero A and B (nothing trained),
    saved to ``peft_dir``; the tests' tolerances were measured with their seeds."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    config = LoraConfig(r=RANK, lora_alpha=ALPHA, target_modules=TARGETS, lora_dropout=0.0)
    model = get_peft_model(base, config)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_A" in name or "lora_B" in name:
                param.copy_(torch.randn(param.shape, generator=generator) * std)
    model.save_pretrained(str(peft_dir))
    return model.eval()
