"""Choosing the training device, precision and base quantization."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from selftune.training import device
from selftune.training.device import (
    TrainingDeviceError,
    resolve_device,
    resolve_quantization,
    use_bf16,
    use_compile,
)


def test_auto_trains_on_a_gpu_when_there_is_one(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert resolve_device("auto") == "cuda"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == "cpu"
    assert resolve_device("cpu") == "cpu"


def test_asking_for_cuda_without_a_gpu_says_what_to_do(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(TrainingDeviceError, match=r"CUDA build.*train.device = 'auto'"):
        resolve_device("cuda")


def test_bf16_where_the_device_has_it(monkeypatch: pytest.MonkeyPatch) -> None:
    assert use_bf16("bf16") and not use_bf16("float32")
    monkeypatch.setattr(device, "_cpu_has_native_bf16", lambda: False)
    assert not use_bf16("auto", "cpu")
    monkeypatch.setattr(device, "_cpu_has_native_bf16", lambda: True)
    assert use_bf16("auto", "cpu")
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: False)
    assert not use_bf16("auto", "cuda")
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: True)
    assert use_bf16("auto", "cuda")


def test_nf4_needs_a_gpu_and_bitsandbytes(
    monkeypatch: pytest.MonkeyPatch, tiny_model_dir: Path
) -> None:
    assert not resolve_quantization("none", "cuda", tiny_model_dir)
    with pytest.raises(TrainingDeviceError, match="needs a CUDA GPU"):
        resolve_quantization("nf4", "cpu", tiny_model_dir)
    monkeypatch.setattr(device, "_bitsandbytes_installed", lambda: False)
    with pytest.raises(TrainingDeviceError, match=r"pip install -e '\.\[gpu\]'"):
        resolve_quantization("nf4", "cuda", tiny_model_dir)
    monkeypatch.setattr(device, "_bitsandbytes_installed", lambda: True)
    assert resolve_quantization("nf4", "cuda", tiny_model_dir)


def test_auto_quantizes_only_a_base_too_large_for_the_gpu(
    monkeypatch: pytest.MonkeyPatch, tiny_model_dir: Path
) -> None:
    monkeypatch.setattr(device, "_bitsandbytes_installed", lambda: True)
    assert not resolve_quantization("auto", "cpu", tiny_model_dir)
    size = device._weights_bytes(tiny_model_dir) // 2  # in 16 bits

    class Properties:
        total_memory = 0

    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda _index: Properties)
    Properties.total_memory = 4 * size  # fits easily
    assert not resolve_quantization("auto", "cuda", tiny_model_dir)
    Properties.total_memory = size  # would fill the whole GPU
    assert resolve_quantization("auto", "cuda", tiny_model_dir)
    monkeypatch.setattr(device, "_bitsandbytes_installed", lambda: False)
    assert not resolve_quantization("auto", "cuda", tiny_model_dir)


def test_compile_where_a_cpu_can_build_kernels(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(device, "_cpp_compiler", lambda: "/usr/bin/g++")
    assert use_compile("auto", "cpu") and use_compile("on", "cpu")
    assert not use_compile("off", "cpu")
    assert not use_compile("auto", "cuda")  # not measured on a GPU yet: 'on' asks for it
    assert use_compile("on", "cuda")
    monkeypatch.setattr(device, "_cpp_compiler", lambda: None)
    assert not use_compile("auto", "cpu")
    with pytest.raises(TrainingDeviceError, match=r"apt-get install g\+\+.*train.compile = 'auto'"):
        use_compile("on", "cpu")


def test_no_compiling_with_a_torch_that_compiles_the_lora_layers_wrongly(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """torch 2.11's compiled layers learned almost nothing (measured on CPU and on an H200)."""
    monkeypatch.setattr(device, "_cpp_compiler", lambda: "/usr/bin/g++")
    monkeypatch.setattr(device, "_torch_version", lambda: "2.11.0+cu130")
    assert not use_compile("auto", "cpu")
    with pytest.raises(TrainingDeviceError, match=r"torch 2\.11\.0\+cu130.*torch>=2\.13"):
        use_compile("on", "cuda")
    monkeypatch.setattr(device, "_torch_version", lambda: "2.13.0+cpu")
    assert use_compile("auto", "cpu") and use_compile("on", "cuda")


def test_this_machine_has_a_compiler_for_compiled_training() -> None:
    # The test suite's compiled-training test needs one; so do users' defaults.
    assert device._cpp_compiler() is not None


def test_the_worker_log_says_how_bf16_products_are_kept(monkeypatch: pytest.MonkeyPatch) -> None:
    from selftune.training import onednn

    assert device.describe_precision("cpu", bf16=False) == "float32"
    assert device.describe_precision("cuda", bf16=True) == "bf16"
    assert device.describe_precision("cuda", True, onednn_products=True) == "bf16"
    monkeypatch.setattr(onednn, "_available", False)
    assert "rounded to bf16" in device.describe_precision("cpu", bf16=True, onednn_products=True)
    assert "libdnnl2" in device.describe_precision("cpu", bf16=True, onednn_products=True)
    monkeypatch.setattr(onednn, "_available", True)
    monkeypatch.setattr(onednn, "implementation", lambda: "brg:avx512_core_bf16")
    assert "float32 by oneDNN (brg:avx512_core_bf16)" in device.describe_precision(
        "cpu", True, onednn_products=True
    )
    # Without the opt-in, rounded, though the library is there; the log says how to opt in.
    assert "rounded to bf16" in device.describe_precision("cpu", bf16=True)
    assert "train.onednn_products = true" in device.describe_precision("cpu", bf16=True)


def test_the_onednn_opt_in_is_checked_at_start_where_it_applies(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from selftune.training import onednn

    monkeypatch.setattr(onednn, "_available", False)
    check = device.check_training_settings
    advice = r"train.onednn_products = true.*apt-get install libdnnl2.*onednn_products = false"
    with pytest.raises(TrainingDeviceError, match=advice):
        check("cpu", "auto", "off", precision_setting="bf16", onednn_products=True)
    # Where it would change nothing (float32, or off), there is nothing to check.
    check("cpu", "auto", "off", precision_setting="float32", onednn_products=True)
    check("cpu", "auto", "off", precision_setting="bf16", onednn_products=False)
    monkeypatch.setattr(onednn, "_available", True)
    check("cpu", "auto", "off", precision_setting="bf16", onednn_products=True)
    assert device.use_onednn_products(True, "cpu", True)
    assert not device.use_onednn_products(True, "cuda", True)
    assert not device.use_onednn_products(False, "cpu", True)
