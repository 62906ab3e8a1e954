"""Format detection and decoding (selftune.imports.formats): the bytes decide, the name hints,
and binary content is refused whatever the name says."""

from __future__ import annotations

import codecs

import pytest

from selftune.imports import ImportRefused, decode_text, detect_format
from selftune.imports.formats import markdown_score

MARKDOWN = """# Release notes

Some text with a [link](https://example.com) and `code`.

- first item
- second item

```python
print("hi")
```
"""

PLAIN = """Dear Ann,

thank you for the letter - it came on Monday. We are all well here.
The garden is full of apples this year.

Best wishes,
Bob
"""

FRENCH = (
    "Le garçon a mangé une crème brûlée au café près de la gare. Où est la bibliothèque ? "
    "Ça va très bien, merci.\n"
)


def test_pdf_is_known_by_its_magic_whatever_the_name() -> None:
    assert detect_format(b"%PDF-1.7\n...", "notes.txt").format == "pdf"
    assert detect_format(b"\n  %PDF-1.4\n...", None).format == "pdf"


@pytest.mark.parametrize(
    "html",
    [
        "<!DOCTYPE html><html><body><p>hi</p></body></html>",
        "<html lang='en'><p>hi</p></html>",
        '<?xml version="1.0" encoding="utf-8"?>\n<!DOCTYPE html>\n<html><p>x</p></html>',
        "<!-- saved page -->\n<html><p>hi</p></html>",
        "<div>\n<head><title>t</title></head><body>x</body></div>",
    ],
)
def test_html_is_known_by_its_tags(html: str) -> None:
    assert detect_format(html.encode(), "page.txt").format == "html"


def test_an_html_fragment_is_html_only_when_named_so() -> None:
    fragment = b"<p>A paragraph.</p>\n<p>Another one.</p>"
    assert detect_format(fragment, "part.html").format == "html"
    assert detect_format(fragment, None).format == "text"


def test_markdown_is_told_from_plain_text_by_its_structure() -> None:
    assert detect_format(MARKDOWN.encode(), None).format == "markdown"
    assert detect_format(MARKDOWN.encode(), "notes.txt").format == "markdown"  # bytes decide
    assert detect_format(PLAIN.encode(), None).format == "text"
    assert detect_format(PLAIN.encode(), "letter.md").format == "text"  # no Markdown in it


def test_the_name_tips_a_close_call() -> None:
    text = "# Shopping\n\nbread, milk and eggs\n"
    assert markdown_score(text) == 2
    assert detect_format(text.encode(), "list.md").format == "markdown"
    assert detect_format(text.encode(), "list.txt").format == "text"


def test_a_long_dash_list_alone_is_not_markdown() -> None:
    text = "".join(f"- point {i}\n" for i in range(50))
    assert detect_format(text.encode(), None).format == "text"


@pytest.mark.parametrize(
    ("data", "encoding"),
    [
        (PLAIN.encode("utf-8"), "utf-8"),
        (codecs.BOM_UTF8 + PLAIN.encode("utf-8"), "utf-8"),
        (codecs.BOM_UTF16_LE + PLAIN.encode("utf-16-le"), "utf-16-le"),
        (codecs.BOM_UTF16_BE + PLAIN.encode("utf-16-be"), "utf-16-be"),
        (codecs.BOM_UTF32_LE + PLAIN.encode("utf-32-le"), "utf-32-le"),
    ],
)
def test_text_is_decoded_by_its_byte_order_mark_or_as_utf8(data: bytes, encoding: str) -> None:
    assert decode_text(data) == (PLAIN, encoding)


def test_utf16_with_a_bom_is_text_not_binary() -> None:
    detected = detect_format(codecs.BOM_UTF16_LE + FRENCH.encode("utf-16-le"), "a.txt")
    assert (detected.format, detected.text) == ("text", FRENCH)


def test_latin1_text_is_decoded_by_detection() -> None:
    text, encoding = decode_text(FRENCH.encode("latin-1"))
    assert text == FRENCH
    assert encoding == "cp1252"  # Latin-1's letters are where Windows-1252 has them


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (bytes(range(256)) * 8, "NUL bytes"),
        (b"ok\x00ok" * 100, "NUL bytes"),
        (b"\x01\x02\x03\x04\x05\x06\x07\x08\x0e\x0f\x10" * 100, "control characters"),
        (codecs.BOM_UTF8 + b"\xff\xfe\xfd" * 10, "utf-8 mark"),
    ],
)
def test_binary_named_txt_is_refused(data: bytes, reason: str) -> None:
    with pytest.raises(ImportRefused) as refused:
        detect_format(data, "notes.txt")
    assert refused.value.code == "binary_content"
    assert reason in str(refused.value)
    assert "whatever its name says" in str(refused.value)


@pytest.mark.parametrize(
    ("data", "what"),
    [
        (b"PK\x03\x04" + bytes(100), ".docx"),
        (b"\x1f\x8b" + bytes(100), "gzip"),
    ],
)
def test_known_unsupported_formats_are_named(data: bytes, what: str) -> None:
    with pytest.raises(ImportRefused) as refused:
        detect_format(data, "file.txt")
    assert refused.value.code == "unsupported_format"
    assert what in str(refused.value) and "Convert it" in str(refused.value)


@pytest.mark.parametrize("data", [b"", b"  \n\t \n"])
def test_empty_input_is_refused(data: bytes) -> None:
    with pytest.raises(ImportRefused) as refused:
        detect_format(data, "empty.txt")
    assert refused.value.code == "empty_document"


@pytest.mark.parametrize(
    "data",
    [
        b"\x89PNG\r\n\x1a\n" + bytes(100),
        b"\xff\xd8\xff\xe0" + bytes(100),
        b"GIF89a" + bytes(100),
        b"RIFF\x00\x00\x00\x00WEBPVP8 " + bytes(100),
        b"BM" + bytes(12) + (40).to_bytes(4, "little") + bytes(100),
    ],
)
def test_images_are_detected_by_their_bytes(data: bytes) -> None:
    assert detect_format(data, "notes.txt").format == "image"


def test_a_text_that_starts_like_a_bitmap_is_text() -> None:
    assert detect_format(b"BMW makes cars; this is a note about them.\n").format == "text"
