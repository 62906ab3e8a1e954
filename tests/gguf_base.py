"""Test helper: write a Hugging Face Llama folder as an f32 GGUF that llama.cpp loads.

No llama.cpp ``convert_hf_to_gguf.py`` is installed (llama-cpp-python ships only the compiled
library), so this does the small part of it a tiny Llama needs: the llama hparams, every weight
as f32 under its llama.cpp name, and the q/k row permutation. The tokenizer is copied verbatim
from the GGUF it came from (the tiny test model uses the default model's tokenizer), which gives
llama.cpp the exact gpt2 BPE vocabulary, merges, token types and pre-tokenizer.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import gguf
import numpy as np
from safetensors.torch import load_file

from selftune.export.gguf_adapter import permute_rows_for_rope

__all__ = ["write_llama_base_gguf"]


def write_llama_base_gguf(hf_dir: Path, out_path: Path, tokenizer_gguf: Path) -> Path:
    """Write the Llama in ``hf_dir`` to ``out_path`` (f32) with ``tokenizer_gguf``'s tokenizer."""
    config: dict[str, Any] = json.loads((hf_dir / "config.json").read_text())
    writer = gguf.GGUFWriter(out_path, gguf.MODEL_ARCH_NAMES[gguf.MODEL_ARCH.LLAMA])
    writer.add_type(gguf.GGUFType.MODEL)
    writer.add_name(hf_dir.name)
    writer.add_file_type(gguf.LlamaFileType.ALL_F32)
    _add_hparams(writer, config)
    n_tokens = _copy_tokenizer(writer, tokenizer_gguf)
    if n_tokens != config["vocab_size"]:
        raise ValueError(f"tokenizer has {n_tokens} tokens, the model {config['vocab_size']}")
    for name, data in _llama_cpp_tensors(hf_dir, config).items():
        writer.add_tensor(name, data)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return out_path


def _add_hparams(writer: gguf.GGUFWriter, config: dict[str, Any]) -> None:
    n_head = config["num_attention_heads"]
    head_dim = config.get("head_dim") or config["hidden_size"] // n_head
    rope = config.get("rope_parameters") or {}
    writer.add_context_length(config["max_position_embeddings"])
    writer.add_embedding_length(config["hidden_size"])
    writer.add_block_count(config["num_hidden_layers"])
    writer.add_feed_forward_length(config["intermediate_size"])
    writer.add_head_count(n_head)
    writer.add_head_count_kv(config.get("num_key_value_heads") or n_head)
    writer.add_rope_dimension_count(head_dim)
    writer.add_rope_freq_base(float(rope.get("rope_theta", config.get("rope_theta", 10000.0))))
    writer.add_layer_norm_rms_eps(float(config["rms_norm_eps"]))
    writer.add_vocab_size(config["vocab_size"])


def _copy_tokenizer(writer: gguf.GGUFWriter, source: Path) -> int:
    """Copy every ``tokenizer.*`` key from ``source``; return the number of tokens."""
    reader = gguf.GGUFReader(source)
    for key, field in reader.fields.items():
        if key.startswith("tokenizer."):
            sub_type = field.types[-1] if field.types[0] == gguf.GGUFValueType.ARRAY else None
            writer.add_key_value(key, field.contents(), field.types[0], sub_type=sub_type)
    return len(reader.fields["tokenizer.ggml.tokens"].data)


def _llama_cpp_tensors(hf_dir: Path, config: dict[str, Any]) -> dict[str, np.ndarray]:
    """HF weights renamed for llama.cpp, q/k rows permuted as convert_hf_to_gguf.py does."""
    name_map = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, config["num_hidden_layers"])
    n_head = config["num_attention_heads"]
    n_kv_head = config.get("num_key_value_heads") or n_head
    tensors = {}
    for hf_name, tensor in load_file(str(hf_dir / "model.safetensors")).items():
        name = name_map.get_name(hf_name, try_suffixes=(".weight",))
        if name is None:
            raise ValueError(f"no llama.cpp name for {hf_name}")
        data = tensor.float().numpy()
        if name.endswith(".attn_q.weight"):
            data = permute_rows_for_rope(data, n_head)
        elif name.endswith(".attn_k.weight"):
            data = permute_rows_for_rope(data, n_kv_head)
        tensors[name] = np.ascontiguousarray(data)
    return tensors
