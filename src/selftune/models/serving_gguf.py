"""Which GGUF file llama.cpp serves for a GGUF base model.

Training runs on the base's weights dequantized to float32. llama.cpp's quantized matrix
kernels also quantize the activations to 8 bits; on the default 135M model that moves logits by
0.37 on average (up to 2.5) and flips answers the float model gives ("the capital of France"),
so a version would be trained and gated on one model and served on another. An f16 copy made by
llama.cpp's own converter serves the trained weights (top-1 agreement with PyTorch 100%,
largest logit difference 0.07). It costs memory (270 MB instead of 92 MB for the default) and
decode speed (about 35% slower on a 2-core CPU), so large bases keep their file.
"""

from __future__ import annotations

import ctypes
import logging
from pathlib import Path

import gguf

from selftune.atomic import atomic_file
from selftune.config import Settings
from selftune.models.base import BaseModelSource

__all__ = ["serving_gguf"]

log = logging.getLogger(__name__)

_AUTO_LIMIT_BYTES = 2 << 30
_FULL_PRECISION = {
    gguf.GGMLQuantizationType.F32,
    gguf.GGMLQuantizationType.F16,
    gguf.GGMLQuantizationType.BF16,
}


def serving_gguf(settings: Settings, source: BaseModelSource, hf_dir: Path) -> Path:
    """The file to serve: the base GGUF itself or its cached f16 copy (made here, once)."""
    path = Path(source.location)
    choice = settings.gguf_serving
    if choice == "file":
        return path
    quantized, f16_bytes = _weight_summary(path)
    if not quantized or (choice == "auto" and f16_bytes > _AUTO_LIMIT_BYTES):
        return path
    target = settings.cache_dir / "models" / f"{path.stem}-{source.fingerprint}.f16.gguf"
    if not target.is_file():
        log.info("converting %s to f16 for serving (once)", path.name)
        try:
            with atomic_file(target) as tmp:
                _convert_to_f16(path, tmp)
        except FileExistsError:
            pass  # another process converted it at the same time; its copy is the same
    return target


def _weight_summary(path: Path) -> tuple[bool, int]:
    """(whether any weight matrix is quantized, the size of an f16 copy in bytes)."""
    reader = gguf.GGUFReader(path)
    quantized = any(
        tensor.tensor_type not in _FULL_PRECISION and len(tensor.shape) > 1
        for tensor in reader.tensors
    )
    return quantized, sum(int(tensor.n_elements) * 2 for tensor in reader.tensors)


def _convert_to_f16(source: Path, out: Path) -> None:
    from selftune.engines.llamacpp_engine import llama_cpp_module

    llama_cpp = llama_cpp_module()
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = llama_cpp.LLAMA_FTYPE_MOSTLY_F16
    params.allow_requantize = True  # the source is already quantized: dequantize it
    status = llama_cpp.llama_model_quantize(
        str(source).encode(), str(out).encode(), ctypes.byref(params)
    )
    if status != 0:
        raise RuntimeError(f"llama.cpp could not convert {source} to f16 (status {status})")
