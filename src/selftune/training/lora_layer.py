"""PEFT's LoRA linear layer with one autograd node per layer and CPU-friendly matrix layouts.

PEFT computes ``base(x) + lora_B(lora_A(x)) * scaling`` as four autograd operations, whose
backward multiplies the gradient by the rank-r factors in the layouts ``nn.Linear`` uses. With
r = 8, those products have 8 rows or columns, and on a CPU the layout decides their speed:
``g @ B`` ran at a third of the speed of ``(B.T @ g.T)``, ``g.T @ u`` at a quarter of
``(u.T @ g)``. This layer computes the same function and gradients in one
``torch.autograd.Function`` with the fast layouts (measured on a 2-core AVX2 CPU at the default
model's shapes: the adapter's share of a layer's forward and backward fell by 35-50%).

It is registered through PEFT's custom-module mapping (``LoraConfig._register_custom_module``),
so the adapter's parameters, names and saved files are PEFT's own. Anything the fast path does
not cover (dropout, several active adapters, merged weights, LoRA variants, fan-in-fan-out
weights) runs PEFT's own forward.
"""

from __future__ import annotations

from typing import Any

import torch
from peft import LoraConfig
from peft.tuners.lora.layer import Linear as PeftLoraLinear

from selftune.training.device import compute_dtype

__all__ = ["FastLoraLinear", "fast_lora_config", "frozen_product", "set_onednn_products"]


def frozen_product(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, use_onednn: bool = False
) -> torch.Tensor:
    """x W^T + b. In bf16 on a CPU, torch's kernels sum in float32 but round the result to bf16,
    and that rounding was all that was left of bf16's cost in eval loss. With ``use_onednn``
    (the opt-in ``train.onednn_products``, see :func:`set_onednn_products`), bf16 inputs on a
    CPU go to the system's oneDNN (:mod:`training.onednn`), whose bf16 kernel returns the
    float32 sum instead, at the same speed. Otherwise the result is in the inputs' dtype
    (CUDA's ``torch.mm`` can return float32 with ``out_dtype``; not yet measured on a GPU, so
    unused). ``bench.bf16_rounding`` measures the difference by swapping products in here."""
    if use_onednn and x.dtype == weight.dtype == torch.bfloat16 and x.device.type == "cpu":
        # Imported here, so that only the opt-in loads it; set_onednn_products loaded the
        # library already (torch.compile cannot trace its loading through ctypes).
        from selftune.training.onednn import bf16_linear_float32

        y = bf16_linear_float32(x, weight)
        return y if bias is None else y.add_(bias)
    return torch.nn.functional.linear(x, weight, bias)


def set_onednn_products(model: torch.nn.Module, enabled: bool = True) -> int:
    """Make ``model``'s :class:`FastLoraLinear` layers take their bf16 frozen products from
    oneDNN, with float32 results (``train.onednn_products``), or torch's again; returns how many
    layers. Raises :class:`~selftune.training.onednn.OneDnnError` where oneDNN is not available
    (``training.device.use_onednn_products`` says so first, and what to do)."""
    if enabled:
        from selftune.training import onednn

        if not onednn.available():  # loads the library now, before anything is compiled
            raise onednn.OneDnnError(
                "oneDNN is not available: check selftune.training.onednn.available()"
            )
    layers = [module for module in model.modules() if isinstance(module, FastLoraLinear)]
    for layer in layers:
        layer.onednn_products = enabled
    return len(layers)


class _LoraLinearFunction(torch.autograd.Function):
    """y = x W^T + b + s (x A^T) B^T, for x (M, in), W (out, in), A (r, in), B (out, r).

    Under autocast to bf16 the products are computed in bf16, as autocast would, but the sums
    of the frozen product and the adapter's share (y, and the gradient w.r.t. x) are taken in
    float32, and y stays float32. The adapter's share of y starts at zero and stays small:
    rounded into a bf16 y (8 significant bits) its effect was lost in the rounding of x W^T,
    and learned against a rounded forward pass that serving, in float32, does not compute.
    The share itself in bf16 is only 0.4% off, and so are the adapter's gradients. y in
    float32 also keeps the residual stream it is added to in float32, as mixed precision
    does. Measured on the throughput benchmark's chats (2-core AVX-512 BF16 CPU, 18 steps,
    eval loss on the float32 base): 1.2-2.2% above float32 training's with y in bf16 (4 seeds
    of 4 above), as with PEFT's own layer under torch's bf16 autocast (the benchmark's
    textbook loop: +1.28% and +1.88% over 24 and 29 seeds of the chats below); with the sums
    in float32 (the frozen products' results still rounded), over seeds 0-31, +0.11% on
    50-token chats on average (95% interval -0.03 to +0.26%) and +0.28% on 128-token ones
    (+0.18 to +0.38%).
    The adapter's products in float32 too changed it by 0.00% seed for seed (16 seeds of
    128-token chats) and cost a step 0.1 s; see the README for what else was tried. What was
    left is the rounding of the frozen products' results to bf16: kept in float32, production's
    eval loss on seeds 3-18 of the 128-token chats went from +0.34% to +0.03% of float32
    training's (``python -m bench.bf16_rounding --long``), and on seeds 0-15 of the 50-token
    ones from +0.19% to -0.06%. Rounding the inputs and weights, and the backward's products
    in bf16, cost nothing measurable. torch's CPU kernels offer no bf16 product with a float32
    result, so with ``use_onednn`` (the opt-in ``train.onednn_products``) :func:`frozen_product`
    takes oneDNN's, at bf16 speed; otherwise the rounding stays. Without autocast y is in the
    frozen weight's dtype.
    """

    @staticmethod
    def forward(
        ctx: Any,
        x: torch.Tensor,
        weight: torch.Tensor,
        bias: torch.Tensor | None,
        lora_a: torch.Tensor,
        lora_b: torch.Tensor,
        scaling: float,
        use_onednn: bool = False,
    ) -> torch.Tensor:
        low = compute_dtype(x.device.type, weight)
        full = torch.promote_types(lora_a.dtype, low)  # the adapter's float32, or wider
        with torch.autocast(x.device.type, enabled=False):
            x, weight, a, b = (t.to(low) for t in (x, weight, lora_a, lora_b))
            u_t = a @ x.T  # (r, M): the adapter's activations, transposed
            y = frozen_product(x, weight, None if bias is None else bias.to(low), use_onednn)
            y = y.to(full).addmm_(u_t.T.to(full), lora_b.to(full).T, alpha=scaling)
        ctx.save_for_backward(x, weight, a, b, u_t)
        ctx.scaling = scaling
        ctx.dtypes = (full, lora_a.dtype, lora_b.dtype)
        # Outside autocast (a bf16 model run as it is, e.g. to generate) y keeps the model's
        # dtype, which the layers after it compute in.
        return y if torch.is_autocast_enabled(x.device.type) else y.to(low)

    @staticmethod
    def backward(
        ctx: Any, grad: torch.Tensor
    ) -> tuple[
        torch.Tensor | None, None, torch.Tensor | None, torch.Tensor, torch.Tensor, None, None
    ]:
        x, weight, a, b, u_t = ctx.saved_tensors
        scaling = ctx.scaling
        full, dtype_a, dtype_b = ctx.dtypes
        with torch.autocast(x.device.type, enabled=False):
            grad_bias = grad.sum(0) if ctx.needs_input_grad[2] else None
            grad = grad.to(x.dtype)
            grad_u_t = b.T @ grad.T  # (r, M)
            grad_x = None
            if ctx.needs_input_grad[0]:
                grad_x = (grad @ weight).to(full)
                grad_x.addmm_(grad_u_t.T.to(full), a.to(full), alpha=scaling)
            grad_a = (grad_u_t @ x).mul_(scaling)
            grad_b = (u_t @ grad).T.mul(scaling)
        return grad_x, None, grad_bias, grad_a.to(dtype_a), grad_b.to(dtype_b), None, None


class FastLoraLinear(PeftLoraLinear):
    """PEFT's LoRA ``Linear`` whose plain-LoRA forward is :class:`_LoraLinearFunction`."""

    # Whether the frozen product's bf16 result comes from oneDNN in float32: set for a run by
    # set_onednn_products.
    onednn_products: bool = False

    def forward(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        adapter = self._single_plain_adapter(args, kwargs)
        if adapter is None:
            return super().forward(x, *args, **kwargs)
        base = self.get_base_layer()
        shape = x.shape
        y = _LoraLinearFunction.apply(
            x.reshape(-1, shape[-1]),
            base.weight,
            base.bias,
            self.lora_A[adapter].weight,
            self.lora_B[adapter].weight,
            float(self.scaling[adapter]),
            self.onednn_products,
        )
        return y.reshape(*shape[:-1], y.shape[-1])

    def _single_plain_adapter(self, args: tuple, kwargs: dict[str, Any]) -> str | None:
        """The one active adapter if it is plain LoRA without dropout, else None."""
        if args or kwargs or self.disable_adapters or self.merged or self.fan_in_fan_out:
            return None
        active = [name for name in self.active_adapters if name in self.lora_A]
        if len(active) != 1:
            return None
        name = active[0]
        if name in self.lora_variant or not isinstance(self.lora_dropout[name], torch.nn.Identity):
            return None
        if type(self.get_base_layer()) is not torch.nn.Linear:  # e.g. a 4-bit bitsandbytes layer
            return None
        return name


def fast_lora_config(**fields: Any) -> LoraConfig:
    """A ``LoraConfig`` whose ``nn.Linear`` targets become :class:`FastLoraLinear` layers."""
    config = LoraConfig(**fields)
    config._register_custom_module({torch.nn.Linear: FastLoraLinear})
    return config
