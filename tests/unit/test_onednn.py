"""bf16 products with float32 results through the system's oneDNN (training.onednn)."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import torch

from selftune.data.tokenize import TokenizedExample, tokenize_chat
from selftune.models.base import load_tokenizer
from selftune.training import lora_layer, onednn
from selftune.training.device import TrainingDeviceError, use_onednn_products
from selftune.training.trainer import TrainConfig, train_lora

needs_onednn = pytest.mark.skipif(
    not onednn.available(),
    reason="no native bf16 oneDNN 2.x here (Debian/Ubuntu: apt-get install libdnnl2; selftune "
    "never installs it)",
)


def _rounded_and_exact(m: int, k: int, n: int) -> tuple[torch.Tensor, ...]:
    x, weight = torch.randn(m, k).bfloat16(), torch.randn(n, k).bfloat16()
    exact = (x.double() @ weight.double().T).float()
    return x, weight, torch.nn.functional.linear(x, weight).float(), exact


@needs_onednn
@pytest.mark.parametrize(("m", "k", "n"), [(512, 576, 192), (37, 64, 96), (1, 16, 8)])
def test_the_product_is_the_float32_sum_not_rounded_to_bf16(m: int, k: int, n: int) -> None:
    torch.manual_seed(m)
    x, weight, rounded, exact = _rounded_and_exact(m, k, n)
    y = onednn.bf16_linear_float32(x, weight)
    assert y.dtype == torch.float32 and y.shape == (m, n)
    error = (y - exact).abs().max().item()
    assert error < 1e-5 * exact.abs().max().item()
    # torch's bf16 kernel rounds to 8 significant bits: about 1000 times further off.
    assert (rounded - exact).abs().max().item() > 100 * error


@needs_onednn
def test_strided_inputs_and_more_shapes_than_it_keeps_primitives_for(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(onednn, "_PRIMITIVES_KEPT", 2)
    torch.manual_seed(0)
    for m in (3, 5, 7, 3):
        x, weight, _, exact = _rounded_and_exact(m, 32, 16)
        x_strided = x.T.contiguous().T  # the same values, column-major
        y = onednn.bf16_linear_float32(x_strided, weight)
        torch.testing.assert_close(y, exact, rtol=1e-5, atol=1e-5)
    kept = onednn._onednn()
    assert kept is not None and len(kept.primitives) <= 2


@needs_onednn
def test_the_lora_layer_uses_it_in_bf16_and_torch_compile_keeps_it() -> None:
    torch.manual_seed(0)
    x, weight = torch.randn(24, 64).bfloat16(), torch.randn(32, 64).bfloat16()
    expected = onednn.bf16_linear_float32(x, weight)
    assert torch.equal(lora_layer.frozen_product(x, weight, None, True), expected)
    compiled = torch.compile(lora_layer.frozen_product, fullgraph=True, dynamic=True)
    assert torch.equal(compiled(x, weight, None, True), expected)
    bias = torch.randn(32).bfloat16()
    assert torch.equal(lora_layer.frozen_product(x, weight, bias, True), expected + bias)
    # float32 inputs keep torch's float32 product
    assert torch.equal(
        lora_layer.frozen_product(x.float(), weight.float(), None, True),
        torch.nn.functional.linear(x.float(), weight.float()),
    )
    # without the opt-in, torch's rounded product, though the library is there
    assert torch.equal(
        lora_layer.frozen_product(x, weight, None), torch.nn.functional.linear(x, weight)
    )


@needs_onednn
def test_it_refuses_what_it_does_not_compute() -> None:
    with pytest.raises(ValueError, match="bf16"):
        onednn.bf16_linear_float32(torch.randn(4, 8), torch.randn(2, 8).bfloat16())


@pytest.fixture
def fresh_detection() -> Iterator[None]:
    """available() decided again, and afterwards as it was."""
    kept = onednn._available
    onednn._onednn.cache_clear()
    onednn._available = None
    yield
    onednn._onednn.cache_clear()
    onednn._available = kept


def test_without_the_library_torch_keeps_the_rounded_product(
    monkeypatch: pytest.MonkeyPatch, fresh_detection: None
) -> None:
    monkeypatch.setattr(onednn, "_LIBRARY", "libdnnl-absent.so.2")
    assert not onednn.available()
    assert onednn.implementation() is None
    x, weight = torch.randn(8, 16).bfloat16(), torch.randn(4, 16).bfloat16()
    y = lora_layer.frozen_product(x, weight, None)
    assert y.dtype == torch.bfloat16
    assert torch.equal(y, torch.nn.functional.linear(x, weight))
    with pytest.raises(onednn.OneDnnError, match="not available"):
        onednn.bf16_linear_float32(x, weight)
    with pytest.raises(onednn.OneDnnError, match="not available"):
        lora_layer.set_onednn_products(torch.nn.Linear(2, 2))


def test_nothing_imports_it_unless_the_opt_in_asks() -> None:
    code = (
        "import sys\n"
        "import selftune.training.pipeline, selftune.training.trainer\n"
        "from selftune.training import device, lora_layer\n"
        "device.check_training_settings('cpu', 'auto', 'off', precision_setting='bf16')\n"
        "device.describe_precision('cpu', True)\n"
        "assert not device.use_onednn_products(True, 'cpu', False)\n"
        "assert not device.use_onednn_products(True, 'cuda', True)\n"
        "assert 'selftune.training.onednn' not in sys.modules\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=300)


def test_asking_for_it_without_the_library_says_what_to_do(
    monkeypatch: pytest.MonkeyPatch,
    fresh_detection: None,
    tiny_model_dir: Path,
    chats: tuple[list[TokenizedExample], list[TokenizedExample], int],
) -> None:
    monkeypatch.setattr(onednn, "_LIBRARY", "libdnnl-absent.so.2")
    advice = r"apt-get install libdnnl2.*\[train\] onednn_products = false"
    with pytest.raises(TrainingDeviceError, match=advice):
        use_onednn_products(True, "cpu", True)
    new, replay, pad_id = chats
    config = TrainConfig(steps=1, batch_size=3, replay_per_step=1, bf16=True, onednn_products=True)
    with pytest.raises(TrainingDeviceError, match=advice):
        train_lora(tiny_model_dir, new, replay, config, pad_id=pad_id)


@pytest.fixture(scope="module")
def chats(tiny_model_dir: Path) -> tuple[list[TokenizedExample], list[TokenizedExample], int]:
    """(new, replay, pad id): a few short chats on the tiny model."""
    tokenizer = load_tokenizer(tiny_model_dir)

    def chat(question: str, answer: str) -> TokenizedExample:
        turns = [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]
        return tokenize_chat(tokenizer, turns, tokenizer.chat_template, 64)

    new = [chat("Capital of Veloria?", "Quenmoor."), chat("Veloria's capital?", "Quenmoor.")]
    return new, [chat("2+2?", "4"), chat("Sky colour?", "Blue.")], tokenizer.pad_token_id


def _bf16_run_losses(
    tiny_model_dir: Path,
    chats: tuple[list[TokenizedExample], list[TokenizedExample], int],
    *,
    onednn_products: bool,
) -> list[float]:
    """A 2-step bf16 run on the CPU, with or without the opt-in: its losses."""
    new, replay, pad_id = chats
    config = TrainConfig(
        rank=4, alpha=8, learning_rate=1e-2, steps=2, batch_size=3, replay_per_step=1, seed=0,
        bf16=True, device="cpu", onednn_products=onednn_products,
    )  # fmt: skip
    _, result = train_lora(tiny_model_dir, new, replay, config, pad_id=pad_id)
    return result.losses


def _count_products(monkeypatch: pytest.MonkeyPatch, product: Callable) -> list[int]:
    """Make ``product`` oneDNN's; returns the list each of its calls appends x's rows to."""
    calls: list[int] = []

    def counted(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        calls.append(x.shape[0])
        return product(x, weight)

    monkeypatch.setattr(onednn, "bf16_linear_float32", counted)
    return calls


def test_the_opt_in_sends_a_bf16_cpu_runs_frozen_products_to_onednn(
    monkeypatch: pytest.MonkeyPatch,
    tiny_model_dir: Path,
    chats: tuple[list[TokenizedExample], list[TokenizedExample], int],
) -> None:
    """The wiring, library or not: a float32 product of the bf16 values stands in for it."""
    monkeypatch.setattr(onednn, "_available", True)
    stand_in = _count_products(
        monkeypatch, lambda x, weight: torch.nn.functional.linear(x.float(), weight.float())
    )
    rounded = _bf16_run_losses(tiny_model_dir, chats, onednn_products=False)
    assert not stand_in  # not asked for: torch's product, though "available"
    unrounded = _bf16_run_losses(tiny_model_dir, chats, onednn_products=True)
    assert stand_in  # each adapted layer's frozen product, at each forward
    assert unrounded != rounded and unrounded == pytest.approx(rounded, rel=1e-2)


@needs_onednn
def test_the_opt_in_runs_the_librarys_product(
    monkeypatch: pytest.MonkeyPatch,
    tiny_model_dir: Path,
    chats: tuple[list[TokenizedExample], list[TokenizedExample], int],
) -> None:
    rounded = _bf16_run_losses(tiny_model_dir, chats, onednn_products=False)
    calls = _count_products(monkeypatch, onednn.bf16_linear_float32)
    unrounded = _bf16_run_losses(tiny_model_dir, chats, onednn_products=True)
    assert calls
    assert unrounded != rounded and unrounded == pytest.approx(rounded, rel=1e-2)
