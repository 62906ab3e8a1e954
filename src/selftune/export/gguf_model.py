"""Write a Llama-architecture model, optionally with a PEFT LoRA merged in, as a GGUF for llama.cpp.

No llama.cpp ``convert_hf_to_gguf.py`` is installed (llama-cpp-python ships only the compiled
library), so this does the part of it a Llama needs: the llama hparams, every weight under its
llama.cpp name, and the q/k row permutation (Hugging Face's rotary layout to llama.cpp's; see
:func:`~selftune.export.gguf_adapter.permute_rows_for_rope`). Nothing else is permuted, as in the
converter. The tokenizer is copied verbatim from a GGUF (the base model's own), which gives
llama.cpp the exact vocabulary, merges, token types and pre-tokenizer; a base without a GGUF has no
tokenizer in llama.cpp's format, and is refused.

A LoRA is merged in float32 as ``W + (alpha / r) * B @ A``, exactly PEFT's merge for plain LoRA,
before the permutation (which commutes with it). Output types follow the converter: ``f16`` and
``q8_0`` keep 1-D tensors (norms) in f32, and ``q8_0`` falls back to f16 for a matrix whose rows
are not a multiple of its 32-value blocks. ``q4_k_m`` is llama.cpp's own quantizer run on an f32
file; it picks per-tensor types itself (and falls back to other types where a row is not a multiple
of the 256-value k-quant super-block).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import logging
import tempfile
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any, Literal, get_args

import gguf
import numpy as np

from selftune.atomic import atomic_file
from selftune.engines.base import EngineError
from selftune.engines.llamacpp_lib import llama_quantize
from selftune.export.gguf_adapter import (
    ADAPTER_CONFIG,
    _load_peft_tensors,
    _lora_alpha,
    permute_rows_for_rope,
)

__all__ = [
    "OUTPUT_TYPES",
    "ModelExportError",
    "OutputType",
    "Progress",
    "TokenizerInfo",
    "read_tokenizer_info",
    "write_llama_gguf",
]

OutputType = Literal["f32", "f16", "q8_0", "q4_k_m"]
OUTPUT_TYPES: tuple[OutputType, ...] = get_args(OutputType)
Progress = Callable[[float, str], None]  # (fraction done 0..1, what is happening)

_FILE_TYPES: dict[OutputType, gguf.LlamaFileType] = {
    "f32": gguf.LlamaFileType.ALL_F32,
    "f16": gguf.LlamaFileType.MOSTLY_F16,
    "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0,
    "q4_k_m": gguf.LlamaFileType.ALL_F32,  # the intermediate; llama.cpp sets its own on quantizing
}
log = logging.getLogger(__name__)

_Q = gguf.GGMLQuantizationType
_PEFT_PREFIX = "base_model.model."
_LORA_A, _LORA_B = ".lora_A.weight", ".lora_B.weight"
# Share of the progress bar for writing the f32 file that q4_k_m is quantized from.
_Q4_WRITE_SHARE = 0.7


class ModelExportError(ValueError):
    """The model cannot be written as a llama.cpp GGUF; the message says why and what to do."""


@dataclasses.dataclass(frozen=True)
class TokenizerInfo:
    """What a chat template needs to know about a GGUF's tokenizer."""

    bos_token: str
    eos_token: str
    add_bos: bool  # llama.cpp prepends BOS itself when tokenizing a prompt
    chat_template: str | None


@dataclasses.dataclass(frozen=True)
class _Tensor:
    """One tensor of the output: where it comes from and how it is stored."""

    gguf_name: str
    hf_name: str
    shape: tuple[int, ...]
    qtype: gguf.GGMLQuantizationType
    rope_heads: int | None  # permute rows by this many heads (attn_q, attn_k), else None

    @property
    def nbytes(self) -> int:
        if self.qtype in (_Q.F32, _Q.F16):
            return int(np.prod(self.shape)) * (4 if self.qtype == _Q.F32 else 2)
        return int(np.prod(gguf.quant_shape_to_byte_shape(self.shape, self.qtype)))


@dataclasses.dataclass
class _Lora:
    """A PEFT LoRA by the base weight each pair updates: ``{"model.layers.0...weight": (A, B)}``."""

    alpha: float
    pairs: dict[str, tuple[np.ndarray, np.ndarray]]

    def merge(self, hf_name: str, weight: np.ndarray) -> np.ndarray:
        if hf_name not in self.pairs:
            return weight
        lora_a, lora_b = self.pairs[hf_name]  # (r, in), (out, r)
        # r from A's rows, as PEFT (rank_pattern included) and llama.cpp take it; in float32.
        scale = np.float32(self.alpha / lora_a.shape[0])
        return weight + scale * (lora_b @ lora_a)


def write_llama_gguf(
    hf_dir: Path,
    out_path: Path,
    *,
    tokenizer_gguf: Path,
    adapter_dir: Path | None = None,
    out_type: OutputType = "f32",
    name: str | None = None,
    chat_template: str | None = None,
    threads: int = 0,
    progress: Progress | None = None,
) -> Path:
    """Write the Llama in ``hf_dir`` (with the PEFT LoRA in ``adapter_dir`` merged) to ``out_path``.

    ``tokenizer_gguf`` supplies the tokenizer, copied verbatim; ``chat_template`` (Jinja) replaces
    its chat template when given. ``name`` becomes ``general.name``. ``out_path`` is never
    overwritten (:class:`FileExistsError`) and appears only complete. ``threads`` is for llama.cpp's
    q4_k_m quantizer (0: every core). Returns ``out_path``.
    """
    hf_dir, out_path = Path(hf_dir), Path(out_path)
    if out_path.exists():
        raise FileExistsError(f"{out_path} already exists; exported models are never overwritten")
    if out_type not in OUTPUT_TYPES:
        raise ModelExportError(f"unknown output type {out_type!r}; use one of {OUTPUT_TYPES}")
    config = _llama_config(hf_dir)
    lora = _load_lora(Path(adapter_dir)) if adapter_dir is not None else None
    report = progress or _ignore_progress
    header = _Header(config, Path(tokenizer_gguf), name or hf_dir.name, chat_template)
    with atomic_file(out_path) as tmp:  # fsynced, then linked into place without replacing
        if out_type == "q4_k_m":
            # Beside the output, not in /tmp: an f32 copy of a large model may not fit there.
            with tempfile.TemporaryDirectory(prefix=f".{out_path.name}.", dir=out_path.parent) as d:
                f32 = Path(d) / "f32.gguf"
                _write_gguf(hf_dir, f32, header, lora, "f32", _scaled(report, _Q4_WRITE_SHARE))
                report(_Q4_WRITE_SHARE, "quantizing to q4_k_m with llama.cpp")
                _quantize_q4_k_m(f32, tmp, threads)
        else:
            _write_gguf(hf_dir, tmp, header, lora, out_type, report)
    report(1.0, "written")
    return out_path


def read_tokenizer_info(path: Path) -> TokenizerInfo:
    """BOS/EOS token text and the chat template of the GGUF at ``path``."""
    fields = {key: value for key, value, _, _ in _tokenizer_fields(*_file_key(Path(path)))}
    tokens = fields.get("tokenizer.ggml.tokens") or []

    def token(key: str) -> str:
        token_id = fields.get(key)
        return str(tokens[int(token_id)]) if token_id is not None else ""

    template = fields.get(gguf.Keys.Tokenizer.CHAT_TEMPLATE)
    return TokenizerInfo(
        bos_token=token("tokenizer.ggml.bos_token_id"),
        eos_token=token("tokenizer.ggml.eos_token_id"),
        add_bos=bool(fields.get("tokenizer.ggml.add_bos_token", False)),
        chat_template=str(template) if template is not None else None,
    )


# --- the source model ---------------------------------------------------------------------------


def _llama_config(hf_dir: Path) -> dict[str, Any]:
    """The Hugging Face config, after refusing what this writer cannot express for llama.cpp."""
    config_path = hf_dir / "config.json"
    if not config_path.is_file():
        raise ModelExportError(
            f"{hf_dir} has no config.json; it is not a Hugging Face model folder"
        )
    config: dict[str, Any] = json.loads(config_path.read_text())
    if config.get("model_type") != "llama":
        raise ModelExportError(
            f"merged GGUF export supports Llama-architecture models (model_type 'llama'), not "
            f"{config.get('model_type')!r}; export the GGUF LoRA (adapter.gguf) instead"
        )
    rope = config.get("rope_parameters") or config.get("rope_scaling") or {}
    if rope.get("rope_type", rope.get("type", "default")) != "default":
        raise ModelExportError(
            f"the model uses rope scaling {rope!r}, which this GGUF writer does not convert"
        )
    return config


@contextlib.contextmanager
def _open_weights(hf_dir: Path) -> Iterator[dict[str, Any]]:
    """Every tensor of the folder's safetensors files by name, opened lazily (one read each)."""
    from safetensors import safe_open

    files = sorted(hf_dir.glob("*.safetensors"))
    if not files:
        raise ModelExportError(f"{hf_dir} has no .safetensors weights")
    with contextlib.ExitStack() as stack:
        handles: dict[str, Any] = {}
        for path in files:
            handle = stack.enter_context(safe_open(str(path), framework="pt"))
            handles.update(dict.fromkeys(handle.keys(), handle))
        yield handles


def _load_lora(adapter_dir: Path) -> _Lora:
    """The LoRA pairs by the base weight they update; refuses what a plain merge cannot express."""
    config_path = adapter_dir / ADAPTER_CONFIG
    if not config_path.is_file():
        raise ModelExportError(f"{adapter_dir} has no {ADAPTER_CONFIG}; it is not a PEFT adapter")
    # The same refusals as the GGUF LoRA (DoRA, rsLoRA, trained biases, ...), same messages.
    alpha = _lora_alpha(json.loads(config_path.read_text()))
    factors: dict[str, dict[str, np.ndarray]] = {}
    for peft_name, tensor in _load_peft_tensors(adapter_dir).items():
        for suffix in (_LORA_A, _LORA_B):
            if peft_name.startswith(_PEFT_PREFIX) and peft_name.endswith(suffix):
                module = peft_name[len(_PEFT_PREFIX) : -len(suffix)]
                factors.setdefault(f"{module}.weight", {})[suffix] = tensor.float().numpy()
                break
        else:
            raise ModelExportError(f"unexpected tensor {peft_name!r} in the adapter (not LoRA A/B)")
    pairs = {}
    for weight, pair in factors.items():
        if set(pair) != {_LORA_A, _LORA_B}:
            raise ModelExportError(f"the adapter has only one LoRA factor for {weight}")
        pairs[weight] = (pair[_LORA_A], pair[_LORA_B])
    return _Lora(alpha, pairs)


def _plan(
    weights: Mapping[str, Any], config: Mapping[str, Any], out_type: OutputType
) -> list[_Tensor]:
    """Each output tensor's llama.cpp name, shape and storage type, in the source's order."""
    n_layers = int(config["num_hidden_layers"])
    name_map = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, n_layers)
    n_head = int(config["num_attention_heads"])
    rope_heads = {".attn_q.": n_head, ".attn_k.": int(config.get("num_key_value_heads") or n_head)}
    tied = bool(config.get("tie_word_embeddings", False))
    plan = []
    for hf_name, handle in weights.items():
        if hf_name.endswith("rotary_emb.inv_freq") or (tied and hf_name == "lm_head.weight"):
            continue  # recomputed by llama.cpp / the tied head reads token_embd (no output.weight)
        gguf_name = name_map.get_name(hf_name, try_suffixes=(".weight", ".bias"))
        if gguf_name is None:
            raise ModelExportError(f"no llama.cpp tensor for {hf_name!r}")
        shape = tuple(handle.get_slice(hf_name).get_shape())
        heads = next((h for part, h in rope_heads.items() if part in gguf_name), None)
        plan.append(_Tensor(gguf_name, hf_name, shape, _storage_type(shape, out_type), heads))
    return plan


def _storage_type(shape: tuple[int, ...], out_type: OutputType) -> gguf.GGMLQuantizationType:
    """As convert_hf_to_gguf.py: 1-D tensors stay f32; q8_0 needs whole 32-value blocks per row."""
    if len(shape) <= 1 or out_type in ("f32", "q4_k_m"):
        return _Q.F32
    if out_type == "q8_0":
        block_size = gguf.GGML_QUANT_SIZES[_Q.Q8_0][0]
        return _Q.Q8_0 if shape[-1] % block_size == 0 else _Q.F16
    return _Q.F16


# --- writing ------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class _Header:
    config: dict[str, Any]
    tokenizer_gguf: Path
    name: str
    chat_template: str | None


def _write_gguf(
    hf_dir: Path,
    path: Path,
    header: _Header,
    lora: _Lora | None,
    out_type: OutputType,
    report: Progress,
) -> None:
    """Stream the tensors one at a time: merged, permuted, converted, written (bounded memory)."""
    with _open_weights(hf_dir) as weights:
        plan = _plan(weights, header.config, out_type)
        if lora is not None:
            _check_lora_targets(lora, plan)
        writer = gguf.GGUFWriter(path, gguf.MODEL_ARCH_NAMES[gguf.MODEL_ARCH.LLAMA])
        try:
            _add_metadata(writer, header, out_type)
            for tensor in plan:
                # The logical (rows, cols) shape with raw_dtype keeps quantized shapes as they are.
                writer.add_tensor_info(
                    tensor.gguf_name,
                    tensor.shape,
                    np.dtype(np.float32),
                    tensor.nbytes,
                    tensor.qtype,
                )
            writer.write_header_to_file()
            writer.write_kv_data_to_file()
            writer.write_ti_data_to_file()
            for done, tensor in enumerate(plan, start=1):
                data = weights[tensor.hf_name].get_tensor(tensor.hf_name).float().numpy()
                if lora is not None:
                    data = lora.merge(tensor.hf_name, data)
                if tensor.rope_heads is not None:
                    data = permute_rows_for_rope(data, tensor.rope_heads)
                writer.write_tensor_data(_encode(data, tensor.qtype))
                report(done / len(plan), f"writing {tensor.gguf_name}")
        finally:
            writer.close()


def _check_lora_targets(lora: _Lora, plan: list[_Tensor]) -> None:
    """Fail before writing if the adapter updates a weight the output does not hold."""
    missing = sorted(set(lora.pairs) - {t.hf_name for t in plan})
    if missing:
        raise ModelExportError(
            f"the adapter updates weights the base does not have (or shares): {missing[:3]}"
        )


def _encode(data: np.ndarray, qtype: gguf.GGMLQuantizationType) -> np.ndarray:
    if qtype == _Q.F32:
        return np.ascontiguousarray(data, dtype=np.float32)
    if qtype == _Q.F16:
        return np.ascontiguousarray(data, dtype=np.float16)
    return np.ascontiguousarray(gguf.quants.quantize(np.ascontiguousarray(data), qtype))


def _add_metadata(writer: gguf.GGUFWriter, header: _Header, out_type: OutputType) -> None:
    writer.add_type(gguf.GGUFType.MODEL)
    writer.add_name(header.name)
    writer.add_file_type(_FILE_TYPES[out_type])
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    _add_hparams(writer, header.config)
    skip = {gguf.Keys.Tokenizer.CHAT_TEMPLATE} if header.chat_template else set()
    n_tokens = _copy_tokenizer(writer, header.tokenizer_gguf, skip)
    if n_tokens != int(header.config["vocab_size"]):
        raise ModelExportError(
            f"the tokenizer in {header.tokenizer_gguf.name} has {n_tokens} tokens but the model "
            f"{header.config['vocab_size']}; the tokenizer GGUF must be the base model's own"
        )
    if header.chat_template:
        writer.add_chat_template(header.chat_template)


def _add_hparams(writer: gguf.GGUFWriter, config: Mapping[str, Any]) -> None:
    n_head = int(config["num_attention_heads"])
    head_dim = int(config.get("head_dim") or config["hidden_size"] // n_head)
    rope = config.get("rope_parameters") or {}
    writer.add_context_length(int(config["max_position_embeddings"]))
    writer.add_embedding_length(int(config["hidden_size"]))
    writer.add_block_count(int(config["num_hidden_layers"]))
    writer.add_feed_forward_length(int(config["intermediate_size"]))
    writer.add_head_count(n_head)
    writer.add_head_count_kv(int(config.get("num_key_value_heads") or n_head))
    if head_dim != config["hidden_size"] // n_head:  # llama.cpp assumes hidden / heads otherwise
        writer.add_key_length(head_dim)
        writer.add_value_length(head_dim)
    writer.add_rope_dimension_count(head_dim)
    writer.add_rope_freq_base(float(rope.get("rope_theta", config.get("rope_theta", 10000.0))))
    writer.add_layer_norm_rms_eps(float(config["rms_norm_eps"]))
    writer.add_vocab_size(int(config["vocab_size"]))


def _copy_tokenizer(writer: gguf.GGUFWriter, source: Path, skip: set[str]) -> int:
    """Copy every ``tokenizer.*`` key of ``source`` but ``skip``; return the number of tokens."""
    fields = _tokenizer_fields(*_file_key(source))
    n_tokens = next((len(v) for k, v, _, _ in fields if k == "tokenizer.ggml.tokens"), None)
    if n_tokens is None:
        raise ModelExportError(f"{source} has no tokenizer to copy")
    for key, value, value_type, sub_type in fields:
        if key not in skip:
            writer.add_key_value(key, value, value_type, sub_type=sub_type)
    return n_tokens


_Field = tuple[str, Any, gguf.GGUFValueType, gguf.GGUFValueType | None]


def _file_key(path: Path) -> tuple[str, int, int]:
    stat = path.stat()
    return str(path.resolve()), stat.st_size, stat.st_mtime_ns


@functools.lru_cache(maxsize=2)
def _tokenizer_fields(path: str, size: int, mtime_ns: int) -> tuple[_Field, ...]:
    """The ``tokenizer.*`` keys of a GGUF, decoded. Cached by path, size and mtime: gguf-py
    takes ~2 s to parse the 100,000 strings of SmolLM2's vocabulary, and an export reads them
    twice (the Modelfile's tokens, then the copy)."""
    fields = []
    for key, field in gguf.GGUFReader(path).fields.items():
        if key.startswith("tokenizer."):
            is_array = field.types[0] == gguf.GGUFValueType.ARRAY
            sub_type = field.types[-1] if is_array else None
            fields.append((key, field.contents(), field.types[0], sub_type))
    return tuple(fields)


def _quantize_q4_k_m(source: Path, target: Path, threads: int) -> None:
    try:
        messages = llama_quantize(source, target, "MOSTLY_Q4_K_M", threads=threads)
    except EngineError as exc:
        raise ModelExportError(str(exc)) from exc
    # llama.cpp prints a line per tensor whose rows are not whole 256-value k-quant blocks (all
    # 576-wide rows of SmolLM2-135M); its summary line is the part worth passing on.
    for line in messages:
        if "required fallback quantization" in line:
            log.warning("q4_k_m: %s", line.split("WARNING:")[-1].strip())


def _scaled(report: Progress, share: float) -> Progress:
    return lambda fraction, stage: report(fraction * share, stage)


def _ignore_progress(fraction: float, stage: str) -> None:
    pass
