"""Where training runs and how the frozen base is held: CPU or CUDA, float32 or bf16, 4-bit.

One code path serves both devices; these functions pick its settings. On a CPU, bf16 pays only
where the CPU multiplies bf16 natively (AVX-512 BF16 or AMX): elsewhere torch emulates it, 20-30
times slower than float32. On a GPU, bf16 is the norm where the GPU supports it, and a base too
large for the GPU's memory can be loaded in 4 bits (NF4, as in QLoRA) through bitsandbytes.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import torch

from selftune.models.base import load_model

__all__ = [
    "TrainingDeviceError",
    "check_training_settings",
    "compute_dtype",
    "describe_precision",
    "load_training_base",
    "resolve_device",
    "resolve_quantization",
    "use_bf16",
    "use_compile",
    "use_onednn_products",
]


class TrainingDeviceError(ValueError):
    """The settings ask for a device or a precision this machine cannot give."""


def resolve_device(setting: str) -> str:
    """'auto' is CUDA when PyTorch sees a GPU, else the CPU; 'cuda' without one is an error."""
    if setting == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if setting == "cuda" and not torch.cuda.is_available():
        raise TrainingDeviceError(
            "train.device = 'cuda', but PyTorch sees no CUDA GPU: install PyTorch's CUDA build "
            "(docs/gpu.md) or set train.device = 'auto'"
        )
    return setting


def _cpu_has_native_bf16() -> bool:
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def use_bf16(precision: str, device: str = "cpu") -> bool:
    """Whether to autocast to bfloat16: asked for, or 'auto' where the device has it natively."""
    if precision != "auto":
        return precision == "bf16"
    if device == "cuda":
        return torch.cuda.is_bf16_supported()
    return _cpu_has_native_bf16()


def describe_precision(device: str, bf16: bool, onednn_products: bool = False) -> str:
    """How training multiplies on ``device``, for the worker's log; ``onednn_products`` is the
    opt-in ``train.onednn_products`` (only then is oneDNN looked for)."""
    if not bf16:
        return "float32"
    if device != "cpu":
        return "bf16"
    if onednn_products:
        from selftune.training import onednn

        kernel = onednn.implementation() if onednn.available() else None
        if kernel is not None:
            return f"bf16, the frozen products' results kept in float32 by oneDNN ({kernel})"
    return (
        "bf16, the frozen products' results rounded to bf16 (eval loss about 0.3% above "
        "float32 training's; train.onednn_products = true keeps them in float32 with the "
        "system's oneDNN 2.x: apt-get install libdnnl2)"
    )


def use_onednn_products(requested: bool, device: str, bf16: bool) -> bool:
    """Whether the LoRA layers take their frozen products' float32 results from the system's
    oneDNN: asked for (``train.onednn_products``) and training in bf16 on a CPU, the only case
    it changes. Raises :class:`TrainingDeviceError` if that is asked for and this machine has
    no oneDNN it can use. Only then is :mod:`training.onednn` imported and the library loaded.
    """
    if not (requested and bf16 and device == "cpu"):
        return False
    from selftune.training import onednn

    if not onednn.available():
        raise TrainingDeviceError(
            "train.onednn_products = true, but this machine has no oneDNN 2.x with a native bf16 "
            "product (libdnnl.so.2 built with OpenMP; selftune.training.onednn logs what it "
            "found): install it (Debian/Ubuntu: apt-get install libdnnl2) or set [train] "
            "onednn_products = false"
        )
    return True


def _cpp_compiler() -> str | None:
    """The C++ compiler torch.compile's CPU backend (inductor) would build its kernels with."""
    try:
        from torch._inductor.cpp_builder import get_cpp_compiler

        return get_cpp_compiler()
    except Exception:  # none found (it raises), or inductor's internals moved
        return None


# The oldest torch whose compiled decoder layers train as the eager ones do. On torch 2.11
# (CPU and CUDA alike) layers compiled with selftune's LoRA layer (training.lora_layer, a custom
# autograd.Function) learned almost nothing: the tiny run's loss went 11.437, 11.444, 11.441,
# 11.437 where eager went 11.437, 11.421, 11.348, 11.287; PEFT's own layer compiled correctly
# there. 2.13 trains to the same losses (tests/unit/test_trainer.py); 2.12 was not tried.
COMPILE_NEEDS_TORCH = "2.13"


def use_compile(setting: str, device: str) -> bool:
    """Whether to compile the decoder layers for training (``torch.compile``).

    'auto' compiles on a CPU with a C++ compiler, where it was measured: 1.15x a step on the
    default model, and only with a torch that compiles them correctly (COMPILE_NEEDS_TORCH).
    GPUs are left to 'on': on the one GPU tried (an H200, torch 2.11) the compiled layers
    trained wrongly, so what compiling buys there is still to be measured.
    """
    if setting == "off":
        return False
    if setting == "on":
        if not _torch_compiles_lora_layers():
            raise TrainingDeviceError(
                f"train.compile = 'on', but torch {_torch_version()} compiles selftune's LoRA "
                f"layers wrongly (training learns almost nothing): install torch>="
                f"{COMPILE_NEEDS_TORCH} or set train.compile = 'auto'"
            )
        if device == "cpu" and _cpp_compiler() is None:
            raise TrainingDeviceError(
                "train.compile = 'on', but torch.compile finds no C++ compiler to build CPU "
                "kernels with: install one (Debian/Ubuntu: apt-get install g++) or set "
                "train.compile = 'auto'"
            )
        return True
    return device == "cpu" and _torch_compiles_lora_layers() and _cpp_compiler() is not None


def _torch_version() -> str:
    return str(torch.__version__)


def _torch_compiles_lora_layers() -> bool:
    return torch.torch_version.TorchVersion(_torch_version()) >= COMPILE_NEEDS_TORCH


def _bitsandbytes_installed() -> bool:
    return importlib.util.find_spec("bitsandbytes") is not None


def _weights_bytes(base_dir: Path) -> int:
    return sum(path.stat().st_size for path in base_dir.glob("*.safetensors"))


def resolve_quantization(setting: str, device: str, base_dir: Path) -> bool:
    """Whether to load the frozen base in 4 bits (NF4).

    'auto' does so only where it is needed and possible: on a GPU, with bitsandbytes installed,
    when the base in 16 bits would take more than half of the GPU's memory. 'nf4' insists.
    """
    if setting == "none":
        return False
    if setting == "nf4":
        if device != "cuda":
            raise TrainingDeviceError(
                "train.quantization = 'nf4' needs a CUDA GPU (train.device 'cuda' or 'auto' on a "
                "machine with one); on a CPU set it to 'auto' or 'none'"
            )
        if not _bitsandbytes_installed():
            raise TrainingDeviceError(
                "train.quantization = 'nf4' needs bitsandbytes: pip install -e '.[gpu]'"
            )
        return True
    if device != "cuda" or not _bitsandbytes_installed():
        return False
    sixteen_bit = _weights_bytes(base_dir) * 2 // 4  # the cached base is float32
    return sixteen_bit > torch.cuda.get_device_properties(0).total_memory // 2


def check_training_settings(
    device_setting: str,
    quantization_setting: str,
    compile_setting: str,
    *,
    precision_setting: str = "auto",
    onednn_products: bool = False,
) -> None:
    """Raise :class:`TrainingDeviceError` now if the settings cannot be met on this machine."""
    device = resolve_device(device_setting)
    if quantization_setting == "nf4":
        resolve_quantization(quantization_setting, device, Path())
    use_compile(compile_setting, device)
    use_onednn_products(onednn_products, device, use_bf16(precision_setting, device))


def compute_dtype(device_type: str, tensor: torch.Tensor) -> torch.dtype:
    """The dtype a matrix product with ``tensor`` is computed in here: autocast's, if it is
    on, else the tensor's own."""
    if torch.is_autocast_enabled(device_type):
        return torch.get_autocast_dtype(device_type)
    return tensor.dtype


def load_training_base(base_dir: Path, *, device: str, bf16: bool, quantize: bool) -> Any:
    """The frozen base model, on ``device``, held the way training computes with it.

    With bf16 the frozen weights are stored in bf16: autocast would otherwise re-cast every
    weight at every step. On a CPU, bf16 attention runs eagerly (SDPA's bf16 backward is several
    times slower there). The trainable LoRA weights PEFT adds stay float32 in every case.
    """
    if quantize:
        return _load_nf4(base_dir, bf16)
    if not bf16:
        model = load_model(base_dir)
    elif device == "cpu":
        model = load_model(base_dir, dtype="bfloat16", attention="eager")
    else:
        model = load_model(base_dir, dtype="bfloat16")
    return model.to(device)


def _load_nf4(base_dir: Path, bf16: bool) -> Any:
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    compute = torch.bfloat16 if bf16 else torch.float32
    model = AutoModelForCausalLM.from_pretrained(
        base_dir,
        dtype=compute,
        device_map={"": 0},
        quantization_config=BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_compute_dtype=compute,
            bnb_4bit_use_double_quant=True,
        ),
    )
    model.eval()
    return model
