"""Parsing (selftune.imports.parsers) and the whole import (parse_document): text, Markdown, HTML
through trafilatura, PDF through pypdf; limits and refusals; provenance."""

from __future__ import annotations

import codecs
import hashlib
import io
from datetime import UTC, datetime, timedelta, timezone
from importlib.metadata import version

import pytest
from pypdf import PdfWriter
from pypdf.generic import DecodedStreamObject, DictionaryObject, NameObject

from selftune.imports import ImportLimits, ImportRefused, parse_bytes, parse_document


def _pdf(
    *pages: str, title: str | None = None, password: str | None = None, owner: str | None = None
) -> bytes:
    """A small PDF, written with pypdf, whose pages show ``pages`` (empty: a page without text,
    as a scanned image would be)."""
    writer = PdfWriter()
    font = DictionaryObject(
        {
            NameObject("/Type"): NameObject("/Font"),
            NameObject("/Subtype"): NameObject("/Type1"),
            NameObject("/BaseFont"): NameObject("/Helvetica"),
        }
    )
    for text in pages:
        page = writer.add_blank_page(612, 792)
        if not text:
            continue
        page[NameObject("/Resources")] = DictionaryObject(
            {NameObject("/Font"): DictionaryObject({NameObject("/F1"): font})}
        )
        stream = DecodedStreamObject()
        stream.set_data(f"BT /F1 12 Tf 72 720 Td ({text}) Tj ET".encode("latin-1"))
        page[NameObject("/Contents")] = writer._add_object(stream)
    if title:
        writer.add_metadata({"/Title": title, "/Author": "Ann Smith"})
    if password is not None:
        writer.encrypt(password, owner, algorithm="RC4-128")
    out = io.BytesIO()
    writer.write(out)
    return out.getvalue()


HTML = """<!DOCTYPE html>
<html><head>
<title>Compost at home | The Garden Site</title>
<meta name="author" content="Ann Smith">
<meta property="article:published_time" content="2024-03-01">
<style>body { color: red } .SECRETSTYLE { display: none }</style>
<script>var tracking = "SECRETSCRIPT"; document.write("SECRETWRITE");</script>
</head><body>
<nav><a href="/">Home</a> | <a href="/about">About us</a> | <a href="/shop">Shop</a></nav>
<article>
<h1>Compost at home</h1>
<p>Composting turns kitchen scraps and garden waste into a dark, crumbly soil that plants love.
It takes a few months and almost no work once the heap is started.</p>
<script>alert("SECRETINLINE")</script>
<h2>What to put in</h2>
<p>Mix green material such as vegetable peelings and grass cuttings with brown material such as
dry leaves, straw and cardboard, in about equal parts.</p>
<noscript>SECRETNOSCRIPT</noscript>
</article>
<footer>Copyright 2024 The Garden Site. All rights reserved.</footer>
</body></html>
"""


def test_plain_text_is_kept_as_written() -> None:
    data = b"Line one.\r\nLine two.\r\n\r\nA second paragraph.\r\n"
    parsed = parse_bytes(data, "letter.txt")
    assert parsed.document.format == "text"
    assert parsed.document.text == "Line one.\nLine two.\n\nA second paragraph."
    assert parsed.document.title == "letter"  # no heading: the file's name
    assert parsed.document.metadata == {"encoding": "utf-8"}
    assert (parsed.importer, parsed.importer_version) == ("selftune-text", "1")


def test_utf16_and_latin1_text_arrive_as_the_same_text() -> None:
    text = "Crème brûlée, façade, naïve: Ça va très bien, merci. Où est la gare ?"
    utf16 = parse_bytes(codecs.BOM_UTF16_LE + text.encode("utf-16-le"), "a.txt")
    latin1 = parse_bytes(text.encode("latin-1"), "a.txt")
    assert utf16.document.text == latin1.document.text == text


def test_markdown_title_is_its_first_heading() -> None:
    data = b"Intro line\n\n## Getting started ##\n\n- step [one](x.md)\n- step two\n\n# Later\n"
    document = parse_bytes(data, "guide.md").document
    assert document.format == "markdown"
    assert document.title == "Getting started"
    assert document.text.startswith("Intro line\n\n## Getting started")


def test_html_keeps_the_main_text_and_no_scripts_or_styles() -> None:
    parsed = parse_bytes(HTML.encode(), "compost.html")
    document = parsed.document
    assert document.format == "html"
    assert "kitchen scraps" in document.text and "dry leaves" in document.text
    assert "## What to put in" in document.text  # Markdown keeps the headings
    for secret in ("SECRET", "tracking", "color: red", "alert("):
        assert secret not in document.text
    assert "About us" not in document.text  # navigation is boilerplate
    assert document.title.startswith("Compost at home")
    assert document.metadata["author"] == "Ann Smith"
    assert document.metadata["date"] == "2024-03-01"
    assert (parsed.importer, parsed.importer_version) == ("trafilatura", version("trafilatura"))


def test_html_of_only_scripts_is_refused_as_empty() -> None:
    html = "<html><head><script>" + "var x = 1;\n" * 200 + "</script></head><body>"
    html += "<script>render()</script><noscript>Enable JavaScript</noscript></body></html>"
    with pytest.raises(ImportRefused) as refused:
        parse_bytes(html.encode(), "app.html")
    assert refused.value.code == "empty_document"
    assert "built by scripts" in str(refused.value)


def test_pdf_text_comes_page_by_page_with_its_metadata() -> None:
    data = _pdf("First page text.", "", "Third page text.", title="A Report")
    parsed = parse_bytes(data, "report.pdf")
    document = parsed.document
    assert document.format == "pdf"
    assert document.text == "First page text.\n\nThird page text."
    assert document.title == "A Report"
    assert document.metadata["author"] == "Ann Smith"
    assert document.metadata["pages"] == 3
    assert "encoding" not in document.metadata
    assert (parsed.importer, parsed.importer_version) == ("pypdf", version("pypdf"))


def test_a_pdf_without_text_says_it_may_be_scanned() -> None:
    with pytest.raises(ImportRefused) as refused:
        parse_bytes(_pdf("", ""), "scan.pdf")
    assert refused.value.code == "no_extractable_text"
    assert "scanned" in str(refused.value) and "OCR" in str(refused.value)


@pytest.mark.parametrize(
    "data",
    [
        _pdf("Some text on the page.")[:200],  # truncated
        b"%PDF-1.7\n" + bytes(range(1, 256)) * 20,  # garbage after the magic
        b"%PDF-1.4\n1 0 obj << /Type /Catalog >> endobj\n%%EOF\n",  # no pages at all
    ],
    ids=["truncated", "garbage", "no-pages"],
)
def test_a_broken_pdf_is_unparseable(data: bytes) -> None:
    with pytest.raises(ImportRefused) as refused:
        parse_bytes(data, "broken.pdf")
    assert refused.value.code == "unparseable_pdf"
    assert "cannot be read" in str(refused.value)


def test_a_password_protected_pdf_is_unparseable() -> None:
    with pytest.raises(ImportRefused) as refused:
        parse_bytes(_pdf("Secret text.", password="hunter2"), "locked.pdf")
    assert refused.value.code == "unparseable_pdf"
    assert "password" in str(refused.value)


def test_a_pdf_locked_only_against_editing_is_read() -> None:
    # An owner password alone (an empty user password) restricts editing, not reading.
    data = _pdf("Readable text.", password="", owner="owner-secret")
    assert parse_bytes(data, "locked.pdf").document.text == "Readable text."


def test_too_many_bytes_are_refused_before_parsing() -> None:
    garbage = b"%PDF-1.7\n" + b"\x00" * 2000  # would be unparseable_pdf if it were parsed
    with pytest.raises(ImportRefused) as refused:
        parse_bytes(garbage, "big.pdf", ImportLimits(max_bytes=1000))
    assert refused.value.code == "too_large"
    assert "2,009 bytes" in str(refused.value) and "1,000" in str(refused.value)


def test_too_many_pages_or_characters_are_refused() -> None:
    with pytest.raises(ImportRefused) as refused:
        parse_bytes(_pdf("a", "b", "c"), "long.pdf", ImportLimits(max_pdf_pages=2))
    assert refused.value.code == "too_large" and "3 pages" in str(refused.value)
    with pytest.raises(ImportRefused) as refused:
        parse_bytes(b"word " * 100, "long.txt", ImportLimits(max_chars=50))
    assert refused.value.code == "too_large" and "characters" in str(refused.value)


def test_limits_must_be_positive() -> None:
    with pytest.raises(ValueError, match="max_pdf_pages must be at least 1"):
        ImportLimits(max_pdf_pages=0)


def test_parse_document_records_provenance() -> None:
    data = b"# Notes\n\nSome notes about [things](x).\n"
    at = datetime(2026, 1, 2, 3, 4, 5, tzinfo=timezone(timedelta(hours=2)))
    result = parse_document(data, "notes.md", user="ann", at=at)
    provenance = result.provenance
    assert provenance.source == "notes.md"
    assert provenance.user == "ann"
    assert provenance.imported_at == datetime(2026, 1, 2, 1, 4, 5, tzinfo=UTC)
    assert provenance.sha256 == hashlib.sha256(data).hexdigest()
    assert provenance.size == len(data)
    assert provenance.importer_label == "selftune-text 1"
    assert [chunk.text for chunk in result.chunks] == [result.document.text]

    pdf = parse_document(_pdf("Hello."), None, source="https://example.com/a.pdf")
    assert pdf.provenance.source == "https://example.com/a.pdf"
    assert pdf.provenance.importer_label == f"pypdf {version('pypdf')}"
    assert pdf.provenance.imported_at.tzinfo is UTC
    assert parse_document(b"hello", None).provenance.source == "upload"


def test_a_refused_import_returns_nothing() -> None:
    with pytest.raises(ImportRefused):
        parse_document(b"\x00\x01\x02" * 100, "x.txt", user="ann")
