"""The fused LoRA layer computes PEFT's function and gradients, and saves PEFT's files."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from peft import LoraConfig, get_peft_model
from safetensors.torch import load_file

from selftune.models.base import load_model
from selftune.training.lora_layer import (
    FastLoraLinear,
    _LoraLinearFunction,
    fast_lora_config,
    frozen_product,
)

TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def _peft_model(folder: Path, fast: bool, **extra: object) -> torch.nn.Module:
    torch.manual_seed(0)
    make = fast_lora_config if fast else LoraConfig
    config = make(r=4, lora_alpha=8, target_modules=TARGETS, task_type="CAUSAL_LM", **extra)
    model = get_peft_model(load_model(folder), config)
    torch.manual_seed(1)  # PEFT starts B at zero: give the adapter an effect to compare
    for name, param in model.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(param, std=0.05)
    return model


def _loss_and_grads(
    model: torch.nn.Module, ids: torch.Tensor, autocast: bool = False
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    model.zero_grad()
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        logits = model(input_ids=ids).logits
    loss = torch.nn.functional.cross_entropy(logits[0, :-1].float(), ids[0, 1:])
    loss.backward()
    return loss.detach(), {
        n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None
    }


def test_the_fused_layer_replaces_peft_linear_layers(tiny_model_dir: Path) -> None:
    model = _peft_model(tiny_model_dir, fast=True)
    layers = [m for m in model.modules() if isinstance(m, FastLoraLinear)]
    assert len(layers) == 2 * len(TARGETS)  # every target of both layers


@pytest.mark.parametrize("autocast", [False, True])
def test_same_loss_and_gradients_as_peft(tiny_model_dir: Path, autocast: bool) -> None:
    ids = torch.randint(0, 1000, (1, 24), generator=torch.Generator().manual_seed(0))
    peft_loss, peft_grads = _loss_and_grads(_peft_model(tiny_model_dir, False), ids, autocast)
    fast_loss, fast_grads = _loss_and_grads(_peft_model(tiny_model_dir, True), ids, autocast)
    assert set(fast_grads) == set(peft_grads)
    assert all("lora_" in name for name in fast_grads)  # the base stays frozen
    assert all(g.dtype == torch.float32 for g in fast_grads.values())  # the adapter's dtype
    if not autocast:
        torch.testing.assert_close(fast_loss, peft_loss, rtol=1e-5, atol=0)
        for name, grad in peft_grads.items():
            torch.testing.assert_close(fast_grads[name], grad, rtol=1e-4, atol=1e-7)
        return
    # bf16 keeps 3 significant digits and the two round at different points: compare each
    # gradient as a whole.
    torch.testing.assert_close(fast_loss, peft_loss, rtol=1e-2, atol=0)
    for name, grad in peft_grads.items():
        assert (fast_grads[name] - grad).norm() <= 0.03 * grad.norm(), name


def test_under_autocast_the_adapter_adds_its_share_in_float32() -> None:
    """Under autocast to bf16 the adapter's share is added to the frozen product in float32:
    a share too small for bf16's 8 significant bits still reaches the output (rounded into a
    bf16 output it would be lost)."""
    generator = torch.Generator().manual_seed(0)
    x, weight = torch.randn(16, 64, generator=generator), torch.randn(32, 64, generator=generator)
    a = torch.randn(4, 64, generator=generator).requires_grad_()
    b = (1e-4 * torch.randn(32, 4, generator=generator)).requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = _LoraLinearFunction.apply(x, weight, None, a, b, 2.0)
        # the frozen product as the layer computes it (rounded to bf16, or float32 by oneDNN)
        frozen = frozen_product(x.bfloat16(), weight.bfloat16(), None)
    y.sum().backward()
    a_float, b_float = a.detach().clone().requires_grad_(), b.detach().clone().requires_grad_()
    share = 2.0 * (x @ a_float.T) @ b_float.T
    share.sum().backward()
    assert y.dtype == torch.float32
    # The share, computed from bf16 operands, is off by well under 1%; rounded into a bf16 y,
    # it would be off by about bf16's step at y's size (1/32 to 1/8 here), ten times the share.
    for got, expected in (
        (y - frozen.float(), share),
        (a.grad, a_float.grad),
        (b.grad, b_float.grad),
    ):
        assert (got - expected).norm() <= 0.01 * expected.norm()


def test_dropout_falls_back_to_peft_and_still_trains(tiny_model_dir: Path) -> None:
    ids = torch.randint(0, 1000, (1, 16), generator=torch.Generator().manual_seed(0))
    model = _peft_model(tiny_model_dir, fast=True, lora_dropout=0.5)
    model.eval()  # dropout off: the same function as the fused path
    eval_loss, _ = _loss_and_grads(model, ids)
    plain = _peft_model(tiny_model_dir, fast=False, lora_dropout=0.5)
    plain.eval()
    torch.testing.assert_close(eval_loss, _loss_and_grads(plain, ids)[0])
    model.train()
    _, grads = _loss_and_grads(model, ids)
    assert grads and all(g.abs().sum() > 0 for g in grads.values())


def test_saved_adapter_is_peft_format(tiny_model_dir: Path, tmp_path: Path) -> None:
    fast, plain = _peft_model(tiny_model_dir, True), _peft_model(tiny_model_dir, False)
    fast.save_pretrained(tmp_path / "fast")
    plain.save_pretrained(tmp_path / "plain")
    fast_weights = load_file(tmp_path / "fast" / "adapter_model.safetensors")
    plain_weights = load_file(tmp_path / "plain" / "adapter_model.safetensors")
    assert fast_weights.keys() == plain_weights.keys()
    for key, value in plain_weights.items():
        torch.testing.assert_close(fast_weights[key], value)
