"""Import throughput: documents and MB per second, per format, parsed and chunked
(``selftune.imports.parse_document``), and whole imports through the worker's job into a SQLite
store, with memory off and on (on, every chunk is embedded by all-MiniLM-L6-v2 first).

The corpus is generated from a seed: documents of several paragraphs of varied sentences about
invented subjects, written as plain text, Markdown (headings, lists, links), HTML (a page with
navigation, a header and a footer around the article, which the parser drops) and PDF (one page
of text per paragraph, written with pypdf). Sizes vary from a paragraph to a few pages.

Run with ``make bench`` or ``python -m bench.import_throughput [--documents N] [--seed S]``.
"""

from __future__ import annotations

import argparse
import io
import random
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from pypdf import PdfWriter
from pypdf.generic import DecodedStreamObject, DictionaryObject, NameObject

from selftune.config import Settings, load_settings
from selftune.data.documents import record_import, run_import
from selftune.imports import parse_document
from selftune.store.db import Database

SEED = 20261207
SUBJECTS = [
    "Korvath harbour",
    "the Lumen glider",
    "Pell's bakery",
    "the Ardent choir",
    "Vesta Mill",
]
VERBS = ["opened", "moved", "closed for repairs", "won a prize", "changed its name", "grew"]
WHEN = ["in 1998", "last spring", "after the flood", "every winter", "on market days"]
DETAILS = [
    "The committee wrote down every decision in a ledger kept at the town hall.",
    "Visitors are asked to book a week ahead, and groups of more than ten pay a reduced fee.",
    "Its oldest records are in the county archive, in boxes numbered from 14 to 22.",
    "A small museum beside it shows the tools the first workers used.",
    "The path along the river is closed in March while the banks are repaired.",
]


def _paragraph(rng: random.Random) -> str:
    sentences = [
        f"{rng.choice(SUBJECTS).capitalize()} {rng.choice(VERBS)} {rng.choice(WHEN)}."
        if rng.random() < 0.5
        else rng.choice(DETAILS)
        for _ in range(rng.randint(3, 7))
    ]
    return " ".join(sentences)


def _paragraphs(rng: random.Random) -> list[str]:
    return [_paragraph(rng) for _ in range(rng.choice((1, 3, 6, 12, 24)))]


def _text(rng: random.Random) -> bytes:
    return "\n\n".join(_paragraphs(rng)).encode()


def _markdown(rng: random.Random) -> bytes:
    parts = [f"# {rng.choice(SUBJECTS).title()}"]
    for n, paragraph in enumerate(_paragraphs(rng)):
        if n % 3 == 0:
            parts.append(f"## Part {n // 3 + 1}")
        parts.append(paragraph)
        if n % 4 == 1:
            parts.append("- one item\n- [a link](https://example.org/a)\n- another item")
    return "\n\n".join(parts).encode()


def _html(rng: random.Random) -> bytes:
    body = "".join(f"<p>{p}</p>" for p in _paragraphs(rng))
    title = rng.choice(SUBJECTS).title()
    return (
        f"<html><head><title>{title}</title></head><body>"
        "<nav><a href='/'>Home</a> <a href='/about'>About</a></nav>"
        f"<header>Site header</header><article><h1>{title}</h1>{body}</article>"
        "<footer>Copyright, contact, privacy</footer></body></html>"
    ).encode()


def _pdf(rng: random.Random) -> bytes:
    writer = PdfWriter()
    font = DictionaryObject(
        {
            NameObject("/Type"): NameObject("/Font"),
            NameObject("/Subtype"): NameObject("/Type1"),
            NameObject("/BaseFont"): NameObject("/Helvetica"),
        }
    )
    for paragraph in _paragraphs(rng):
        page = writer.add_blank_page(612, 792)
        page[NameObject("/Resources")] = DictionaryObject(
            {NameObject("/Font"): DictionaryObject({NameObject("/F1"): font})}
        )
        lines = [paragraph[i : i + 90] for i in range(0, len(paragraph), 90)]
        shown = " ".join(
            f"({line.replace('(', '').replace(')', '')}) Tj 0 -14 Td" for line in lines
        )
        stream = DecodedStreamObject()
        stream.set_data(f"BT /F1 10 Tf 72 720 Td {shown} ET".encode("latin-1"))
        page[NameObject("/Contents")] = writer._add_object(stream)
    out = io.BytesIO()
    writer.write(out)
    return out.getvalue()


FORMATS: dict[str, tuple[str, Callable[[random.Random], bytes]]] = {
    "text": ("notes.txt", _text),
    "markdown": ("notes.md", _markdown),
    "html": ("page.html", _html),
    "pdf": ("paper.pdf", _pdf),
}


def _corpus(documents: int, seed: int) -> dict[str, list[bytes]]:
    rng = random.Random(seed)
    return {fmt: [make(rng) for _ in range(documents)] for fmt, (_name, make) in FORMATS.items()}


def _rate(documents: int, size: int, seconds: float) -> str:
    return f"{documents / seconds:8.1f} docs/s  {size / seconds / 1e6:7.2f} MB/s"


def parsing(corpus: dict[str, list[bytes]]) -> None:
    print("parse and chunk (selftune.imports.parse_document, one core):", flush=True)
    for fmt, docs in corpus.items():
        name = FORMATS[fmt][0]
        start = time.perf_counter()
        chunks = sum(len(parse_document(doc, name).chunks) for doc in docs)
        seconds = time.perf_counter() - start
        size = sum(len(doc) for doc in docs)
        print(
            f"  {fmt:<9} {len(docs):>4} docs, {size / 1e6:6.2f} MB, {chunks:>5} chunks: "
            f"{_rate(len(docs), size, seconds)}",
            flush=True,
        )


def _settings(root: Path, memory: bool) -> Settings:
    return load_settings(data_dir=root, memory={"enabled": memory})


def through_the_job(corpus: dict[str, list[bytes]], memory: bool) -> None:
    """Every document recorded and run by the import job, as the worker runs it."""
    with tempfile.TemporaryDirectory() as folder:
        settings = _settings(Path(folder), memory)
        db = Database(settings.resolved_database_url)
        db.migrate()
        docs = [(FORMATS[fmt][0], doc) for fmt, items in corpus.items() for doc in items]
        size = sum(len(doc) for _name, doc in docs)
        if memory:  # the embedding model's load is not an import's cost
            from selftune.memory.embedder import load_embedder

            load_embedder(settings.memory.embedding_model)
        start = time.perf_counter()
        for name, doc in docs:
            import_id, job_id = record_import(
                settings, db, "bench", "file", name, data=doc, worker_id="bench"
            )
            run_import(settings, db, job_id, import_id, lambda *_: None, worker_id="bench")
        seconds = time.perf_counter() - start
        db.dispose()
    label = "memory on (chunks embedded)" if memory else "memory off"
    rate = _rate(len(docs), size, seconds)
    print(f"  {label:<28} {len(docs):>4} docs, {size / 1e6:6.2f} MB: {rate}", flush=True)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.import_throughput", description=__doc__)
    parser.add_argument("--documents", type=int, default=50, help="documents of each format")
    parser.add_argument("--seed", type=int, default=SEED)
    args = parser.parse_args(argv)
    corpus = _corpus(args.documents, args.seed)
    print(f"import throughput (seed {args.seed}, {args.documents} documents of each format)")
    parsing(corpus)
    print("whole imports through the worker's job, all formats, into SQLite:", flush=True)
    through_the_job(corpus, memory=False)
    through_the_job(corpus, memory=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
