"""The memory's text embedders on a tiny sentence-transformers model, built here in a second:
a 2-layer BERT (hidden size 32) over a 30-word WordPiece vocabulary, mean-pooled."""

from __future__ import annotations

import re
import shutil
import socket
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from selftune.memory.embedder import (
    DEFAULT_EMBEDDING_MODEL,
    CallableEmbedder,
    EmbedderError,
    TextEmbedder,
    embedder_name,
    load_embedder,
)

DIM, MAX_TOKENS = 32, 24
WORDS = "the cat sat on a mat dog ran in park stock prices fell sharply hello world rug was"


def build_sentence_model(folder: Path, seed: int) -> Path:
    """A tiny random sentence-transformers model (BERT + mean pooling) saved in ``folder``."""
    import torch
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import Pooling, Transformer
    from transformers import BertConfig, BertModel, BertTokenizer

    special = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    vocab = {token: i for i, token in enumerate([*special, *WORDS.split(), "##s"])}
    config = BertConfig(
        vocab_size=len(vocab),
        hidden_size=DIM,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=64,
    )
    torch.manual_seed(seed)
    backbone = folder.parent / f"{folder.name}-bert"
    BertModel(config).save_pretrained(backbone)
    BertTokenizer(vocab=vocab).save_pretrained(backbone)
    transformer = Transformer(str(backbone), max_seq_length=MAX_TOKENS)
    SentenceTransformer(modules=[transformer, Pooling(DIM, "mean")], device="cpu").save(str(folder))
    shutil.rmtree(backbone)
    return folder


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """Two tiny models of different weights."""
    root = tmp_path_factory.mktemp("sentence-models")
    return build_sentence_model(root / "tiny-a", 1), build_sentence_model(root / "tiny-b", 2)


@pytest.fixture
def no_network(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """Every attempt to open a connection fails, and is recorded."""
    attempts: list[Any] = []

    def refuse(*args: Any, **kwargs: Any) -> Any:
        attempts.append(args)
        raise OSError("this test allows no network")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    return attempts


def _norms(vectors: np.ndarray) -> np.ndarray:
    return np.linalg.norm(vectors, axis=1)


def test_a_folder_gives_normalized_vectors_of_its_dim(
    models: tuple[Path, Path], tmp_path: Path, no_network: list[Any]
) -> None:
    copy = shutil.copytree(models[0], tmp_path / "fresh")  # not loaded before: loads here
    embedder = load_embedder(str(copy))
    assert isinstance(embedder, TextEmbedder)
    assert (embedder.dim, embedder.max_tokens) == (DIM, MAX_TOKENS)
    texts = ["the cat sat on a mat", "stock prices fell sharply", "the cat sat on a mat"]
    vectors = embedder.embed(texts)
    assert vectors.shape == (3, DIM) and vectors.dtype == np.float32
    assert _norms(vectors) == pytest.approx(np.ones(3), abs=1e-5)
    assert vectors[2] == pytest.approx(vectors[0], abs=1e-6)  # same text, same vector
    assert not np.allclose(vectors[0], vectors[1], atol=1e-3)
    again = embedder.embed(["the cat sat on a mat"])
    assert again[0] == pytest.approx(vectors[0], abs=1e-6)  # alone as in a batch
    assert embedder.embed([]).shape == (0, DIM)
    assert no_network == []


def test_long_texts_are_cut_to_max_tokens(models: tuple[Path, Path]) -> None:
    embedder = load_embedder(str(models[0]))
    words = (WORDS.split() * 5)[:40]
    assert embedder.count_tokens("the cat sat") == 5  # [CLS] + 3 + [SEP]
    assert embedder.count_tokens(" ".join(words)) == 42
    kept = " ".join(words[: MAX_TOKENS - 2])  # what fits with [CLS] and [SEP]
    long, cut = embedder.embed([" ".join(words), kept])
    assert long == pytest.approx(cut, abs=1e-5)


def test_names_tell_models_apart(models: tuple[Path, Path], tmp_path: Path) -> None:
    a, b = models
    name_a = load_embedder(str(a)).name
    assert re.fullmatch(r"tiny-a@[0-9a-f]{12}", name_a)
    assert name_a == embedder_name(str(a))
    assert load_embedder(str(b)).name != name_a  # other weights
    # A copy under another folder name makes the same vectors: it keeps the hash.
    copy = shutil.copytree(a, tmp_path / "tiny-a")
    (copy / "README.md").write_text("notes that change no vector")
    assert embedder_name(str(copy)) == name_a
    # Same folder name, other weights: another name.
    (tmp_path / "other").mkdir()
    other = shutil.copytree(b, tmp_path / "other" / "tiny-a")
    assert embedder_name(str(other)).startswith("tiny-a@")
    assert embedder_name(str(other)) != name_a
    assert embedder_name(DEFAULT_EMBEDDING_MODEL) == DEFAULT_EMBEDDING_MODEL


def test_models_are_loaded_once(models: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    a = models[0]
    first = load_embedder(str(a))
    assert load_embedder(str(a)) is first
    monkeypatch.chdir(a.parent)
    assert load_embedder(f"./{a.name}", device="cpu") is first  # the same folder
    assert load_embedder(str(models[1])) is not first
    loaded: list[TextEmbedder] = []
    threads = [threading.Thread(target=lambda: loaded.append(load_embedder(str(a)))) for _ in "xy"]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert all(e is first for e in loaded)


def test_concurrent_calls_give_the_same_vectors(models: tuple[Path, Path]) -> None:
    embedder = load_embedder(str(models[0]))
    texts = [f"the {w} sat on a mat" for w in WORDS.split()]
    expected = embedder.embed(texts)
    results: list[np.ndarray] = []
    counts: list[int] = []

    def work() -> None:
        results.append(embedder.embed(texts))
        counts.append(embedder.count_tokens(texts[0]))

    threads = [threading.Thread(target=work) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(results) == 4 and counts == [8] * 4
    for result in results:
        assert result == pytest.approx(expected, abs=1e-5)


def test_what_is_not_a_model_is_refused_with_what_to_do(tmp_path: Path) -> None:
    for spec in ("no-such-model", "BAAI/bge-small-en-v1.5", str(tmp_path / "missing"), ""):
        with pytest.raises(EmbedderError) as unknown:
            load_embedder(spec)
        message = str(unknown.value)
        assert (
            DEFAULT_EMBEDDING_MODEL in message and "sentence-transformers model folder" in message
        )
        assert ".save(" in message  # how to make a folder of a hub model
    plain = tmp_path / "plain"
    plain.mkdir()
    (plain / "config.json").write_text("{}")
    with pytest.raises(EmbedderError, match=r"not a sentence-transformers model folder.*modules"):
        load_embedder(str(plain))
    with pytest.raises(EmbedderError, match="is a file"):
        load_embedder(str(plain / "config.json"))
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "modules.json").write_text('[{"idx": 0, "name": "0", "path": "", "type": "x.Y"}]')
    with pytest.raises(EmbedderError, match="could not be loaded"):
        load_embedder(str(broken))
    assert issubclass(EmbedderError, ValueError)


def test_devices(models: tuple[Path, Path]) -> None:
    import torch

    with pytest.raises(EmbedderError, match="unknown device"):
        load_embedder(str(models[0]), device="tpu")
    auto = load_embedder(str(models[0]), device="auto")
    if torch.cuda.is_available():
        assert auto.embed(["hello world"]).shape == (1, DIM)
    else:
        assert auto is load_embedder(str(models[0]))  # auto is the CPU here: one model
        with pytest.raises(EmbedderError, match="no CUDA GPU"):
            load_embedder(str(models[0]), device="cuda")


def test_a_callable_embedder_normalizes_and_checks_rows() -> None:
    calls: list[list[str]] = []

    def vectors(texts: list[str]) -> list[list[float]]:
        calls.append(texts)
        return [[3.0, 4.0] if t else [0.0, 0.0] for t in texts]

    embedder = CallableEmbedder("served@v1", 2, vectors, count_tokens=len, max_tokens=100)
    assert isinstance(embedder, TextEmbedder)
    rows = embedder.embed(("ab", ""))
    assert rows.dtype == np.float32
    assert rows == pytest.approx(np.array([[0.6, 0.8], [0.0, 0.0]]))
    assert calls == [["ab", ""]]
    assert embedder.count_tokens("abc") == 3
    assert embedder.embed([]).shape == (0, 2)
    wrong = CallableEmbedder("wrong", 3, vectors, count_tokens=len, max_tokens=100)
    with pytest.raises(EmbedderError, match=r"shape \(1, 2\).*expected \(1, 3\)"):
        wrong.embed(["x"])


def test_importing_the_server_loads_no_embedding_model() -> None:
    code = (
        "import sys, selftune.api.app, selftune.memory.embedder\n"
        "loaded = {'torch', 'sentence_transformers', 'transformers'} & set(sys.modules)\n"
        "assert not loaded, loaded\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)
