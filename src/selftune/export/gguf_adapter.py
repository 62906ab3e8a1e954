"""Export a PEFT LoRA adapter as a GGUF LoRA adapter that llama.cpp applies to a GGUF base.

llama.cpp computes ``W x + scale * B (A x)`` with ``scale = alpha / rank`` per tensor, exactly as
PEFT does for plain LoRA, so the ``lora_A`` and ``lora_B`` matrices are stored as they are. The
one exception is Llama-architecture bases: llama.cpp's ``convert_hf_to_gguf.py`` permutes the rows
of the base ``q_proj`` and ``k_proj`` weights (Hugging Face's rotary layout to llama.cpp's), so the
output rows of the LoRA update must be permuted the same way; the adapter still loads without it,
but the logits are wrong.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol

import gguf
import numpy as np

from selftune.atomic import atomic_file

if TYPE_CHECKING:
    import torch

__all__ = [
    "ADAPTER_CONFIG",
    "ADAPTER_WEIGHTS",
    "AdapterExportError",
    "export_gguf_adapter",
    "permute_rows_for_rope",
]

# The files of an adapter folder (a version, a runtime adapter): PEFT's two, and the GGUF copy.
ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"

# Hugging Face model_type -> (llama.cpp architecture, whether q/k rows are permuted). Mistral goes
# through convert_hf_to_gguf.py's LlamaModel, so it gets the llama arch and the permutation too.
_ARCHITECTURES: dict[str, tuple[gguf.MODEL_ARCH, bool]] = {
    "llama": (gguf.MODEL_ARCH.LLAMA, True),
    "mistral": (gguf.MODEL_ARCH.LLAMA, True),
    "qwen2": (gguf.MODEL_ARCH.QWEN2, False),
    "qwen3": (gguf.MODEL_ARCH.QWEN3, False),
}
_PEFT_PREFIX = "base_model.model."
_LORA_SUFFIXES = {".lora_A.weight": "lora_a", ".lora_B.weight": "lora_b"}


class AdapterExportError(ValueError):
    """The adapter uses something a GGUF LoRA cannot express; the message says what."""


class _HasToDict(Protocol):
    def to_dict(self) -> dict[str, Any]: ...


def export_gguf_adapter(
    peft_dir: Path,
    base_config: Mapping[str, Any] | _HasToDict,
    out_path: Path,
    *,
    dtype: Literal["f32", "f16"] = "f32",
) -> Path:
    """Write the PEFT adapter in ``peft_dir`` to ``out_path`` as a GGUF LoRA; return ``out_path``.

    ``base_config`` is the base model's Hugging Face config (a dict or a ``PretrainedConfig``): it
    names the architecture and the head counts the q/k permutation needs. ``out_path`` is never
    overwritten (:class:`FileExistsError`) and appears only complete.
    """
    peft_dir, out_path = Path(peft_dir), Path(out_path)
    if out_path.exists():
        raise FileExistsError(f"{out_path} already exists; exported adapters are never overwritten")
    hparams = _as_dict(base_config)
    arch, permute_qk = _architecture(hparams)
    alpha = _lora_alpha(json.loads((peft_dir / ADAPTER_CONFIG).read_text()))
    name_map = gguf.get_tensor_name_map(arch, int(hparams["num_hidden_layers"]))
    tensors: dict[str, np.ndarray] = {}
    for peft_name, tensor in _load_peft_tensors(peft_dir).items():
        name = _gguf_name(peft_name, name_map)
        data = tensor.float().numpy()
        if permute_qk and name.endswith(".lora_b"):
            data = _permute_for_attention(name, data, hparams)
        tensors[name] = data.astype(np.float16 if dtype == "f16" else np.float32)
    _write_atomically(out_path, gguf.MODEL_ARCH_NAMES[arch], alpha, tensors)
    return out_path


def permute_rows_for_rope(weights: np.ndarray, n_head: int) -> np.ndarray:
    """Reorder rows per head from HF's half-split rotary layout to llama.cpp's interleaved one.

    The same reshuffle as ``LlamaModel.permute`` in llama.cpp's ``convert_hf_to_gguf.py``.
    """
    rows = weights.shape[0]
    return (
        weights.reshape(n_head, 2, rows // n_head // 2, *weights.shape[1:])
        .swapaxes(1, 2)
        .reshape(weights.shape)
    )


def _as_dict(base_config: Mapping[str, Any] | _HasToDict) -> dict[str, Any]:
    if isinstance(base_config, Mapping):
        return dict(base_config)
    return base_config.to_dict()


def _architecture(hparams: Mapping[str, Any]) -> tuple[gguf.MODEL_ARCH, bool]:
    """The llama.cpp architecture: the adapter must name the same one as the base GGUF."""
    model_type = str(hparams.get("model_type", ""))
    if model_type not in _ARCHITECTURES:
        raise AdapterExportError(
            f"GGUF adapter export supports model types {sorted(_ARCHITECTURES)}, not {model_type!r}"
        )
    return _ARCHITECTURES[model_type]


def _lora_alpha(adapter_config: Mapping[str, Any]) -> float:
    """PEFT's ``lora_alpha``, after refusing what llama.cpp's ``alpha / rank`` cannot express."""
    unsupported = {
        "use_dora": "DoRA magnitude vectors",
        "use_rslora": "rsLoRA scaling (alpha / sqrt(rank))",
        "alpha_pattern": "per-module alpha (GGUF has one alpha)",
        "modules_to_save": "fully trained modules",
        "fan_in_fan_out": "transposed (Conv1D) weights",
    }
    for key, what in unsupported.items():
        if adapter_config.get(key):
            raise AdapterExportError(f"the adapter uses {what} ({key}); GGUF LoRA cannot hold it")
    if adapter_config.get("bias", "none") != "none":
        raise AdapterExportError("the adapter trains biases; GGUF LoRA cannot hold them")
    alpha = float(adapter_config["lora_alpha"])
    if alpha <= 0:
        # llama.cpp reads alpha 0 as "no scaling" (scale 1), which would not match PEFT.
        raise AdapterExportError(f"lora_alpha must be positive, got {alpha}")
    return alpha


def _load_peft_tensors(peft_dir: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    weights = peft_dir / ADAPTER_WEIGHTS
    if not weights.is_file():
        raise FileNotFoundError(f"{weights} not found; save the adapter with safetensors")
    return load_file(str(weights))


def _gguf_name(peft_name: str, name_map: gguf.TensorNameMap) -> str:
    """``base_model.model.model.layers.3.self_attn.q_proj.lora_A.weight`` -> ``blk.3.attn_q...``."""
    for suffix, kind in _LORA_SUFFIXES.items():
        if peft_name.startswith(_PEFT_PREFIX) and peft_name.endswith(suffix):
            module = peft_name[len(_PEFT_PREFIX) : -len(suffix)]
            base = name_map.get_name(module)
            if base is None:
                raise AdapterExportError(f"no llama.cpp tensor for the adapted module {module!r}")
            return f"{base}.weight.{kind}"
    raise AdapterExportError(f"unexpected tensor {peft_name!r} in the adapter (not a LoRA A/B)")


def _permute_for_attention(name: str, lora_b: np.ndarray, hparams: Mapping[str, Any]) -> np.ndarray:
    """Permute ``lora_b`` rows of q (by query heads) and k (by key/value heads) like the base."""
    n_head = int(hparams["num_attention_heads"])
    if name.endswith(".attn_q.weight.lora_b"):
        return permute_rows_for_rope(lora_b, n_head)
    if name.endswith(".attn_k.weight.lora_b"):
        return permute_rows_for_rope(lora_b, int(hparams.get("num_key_value_heads") or n_head))
    return lora_b


def _write_atomically(
    out_path: Path, arch_name: str, alpha: float, tensors: Mapping[str, np.ndarray]
) -> None:
    """Written beside ``out_path`` and linked into place: never clobbers a concurrent export."""
    with atomic_file(out_path) as tmp:
        _write_gguf(tmp, arch_name, alpha, tensors)


def _write_gguf(
    path: Path, arch_name: str, alpha: float, tensors: Mapping[str, np.ndarray]
) -> None:
    writer = gguf.GGUFWriter(path, arch_name)  # also writes general.architecture
    writer.add_type(gguf.GGUFType.ADAPTER)
    writer.add_string(gguf.Keys.Adapter.TYPE, "lora")
    writer.add_float32(gguf.Keys.Adapter.LORA_ALPHA, alpha)
    for name, data in sorted(tensors.items()):
        writer.add_tensor(name, np.ascontiguousarray(data))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
