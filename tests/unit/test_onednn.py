"""bf16 products with float32 results through the system's oneDNN (training.onednn)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch

from selftune.training import lora_layer, onednn

needs_onednn = pytest.mark.skipif(
    not onednn.available(),
    reason="no native bf16 oneDNN 2.x here (Debian/Ubuntu: apt-get install libdnnl2; make does "
    "it where it runs as root)",
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
    assert torch.equal(lora_layer.frozen_product(x, weight, None), expected)
    compiled = torch.compile(lora_layer.frozen_product, fullgraph=True, dynamic=True)
    assert torch.equal(compiled(x, weight, None), expected)
    bias = torch.randn(32).bfloat16()
    assert torch.equal(lora_layer.frozen_product(x, weight, bias), expected + bias)
    # float32 inputs keep torch's float32 product
    assert torch.equal(
        lora_layer.frozen_product(x.float(), weight.float(), None),
        torch.nn.functional.linear(x.float(), weight.float()),
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
