"""What a file is, read from its bytes: PDF, an image, HTML, Markdown or plain text, or refused.

The bytes decide; the file name is only a hint. A ``.txt`` full of binary is refused as binary
whatever its name, and a ``.txt`` with headings, lists and links is read as Markdown. The name tips
the balance only where the bytes leave it open: an HTML fragment named ``.html``, or a text whose
Markdown score is near the threshold.

Text is decoded here, since telling HTML from Markdown from garbage needs the characters: a byte
order mark first, then strict UTF-8, then charset detection (charset-normalizer) for legacy
encodings, where ties between Western encodings go to Windows-1252, the most common of them.
"""

from __future__ import annotations

import codecs
import dataclasses
import itertools
import re
from pathlib import PurePath
from typing import Literal

import charset_normalizer

__all__ = [
    "Detected",
    "Format",
    "ImportRefused",
    "RefusalCode",
    "decode_text",
    "detect_format",
    "image_format",
    "markdown_score",
]

Format = Literal["text", "markdown", "html", "pdf", "image"]

RefusalCode = Literal[
    "too_large",  # more bytes, pages or characters than the limits allow
    "empty_document",  # nothing to import: no bytes, or no text once parsed
    "binary_content",  # not text (NUL bytes, undecodable, mostly control characters)
    "unsupported_format",  # a known format that no importer reads yet (images, archives, ...)
    "unparseable_pdf",  # a PDF that pypdf cannot read: broken, truncated or encrypted
    "no_extractable_text",  # a PDF or image that holds no text
    "unparseable_image",  # an image Pillow cannot read: broken or truncated
    "ocr_unavailable",  # Tesseract (or the language asked for) is not installed
]


class ImportRefused(Exception):
    """An input that cannot be imported. ``code`` is machine-readable (for an API's error body);
    the message says what went wrong and what to do about it. Nothing is kept of a refused
    input: parsing returns a whole result or raises this."""

    def __init__(self, code: RefusalCode, message: str) -> None:
        super().__init__(message)
        self.code: RefusalCode = code
        self.message = message

    def __repr__(self) -> str:
        return f"ImportRefused({self.code!r}, {self.message!r})"


@dataclasses.dataclass(frozen=True)
class Detected:
    """A detected format; for the text formats, the decoded text and the encoding it was in."""

    format: Format
    text: str | None = None
    encoding: str | None = None


# Formats that are recognisable by their first bytes but have no importer yet; each would otherwise
# be refused as binary, with a less helpful message.
_KNOWN_BINARY = [
    (b"PK\x03\x04", "a ZIP archive (or a .docx, .xlsx, .odt or .epub, which are ZIP archives)"),
    (b"\x1f\x8b", "a gzip-compressed file"),
    (b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1", "an old Microsoft Office file (.doc, .xls, .ppt)"),
    (b"{\\rtf", "an RTF document"),
]

# The image formats imported (their text read by OCR), by their first bytes.
_IMAGE_MAGIC = [
    (b"\x89PNG\r\n\x1a\n", "PNG"),
    (b"\xff\xd8\xff", "JPEG"),
    (b"GIF87a", "GIF"),
    (b"GIF89a", "GIF"),
    (b"II*\x00", "TIFF"),
    (b"MM\x00*", "TIFF"),
]
# A BMP starts "BM", as text can; its DIB header's size (bytes 14-17) is one of these.
_BMP_HEADER_SIZES = {12, 40, 52, 56, 64, 108, 124}


def image_format(data: bytes) -> str | None:
    """The image format ``data`` starts like (WebP: "RIFF", its size, "WEBP"), or None."""
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WEBP"
    if data[:2] == b"BM" and int.from_bytes(data[14:18], "little") in _BMP_HEADER_SIZES:
        return "BMP"
    return next((name for magic, name in _IMAGE_MAGIC if data.startswith(magic)), None)


# Byte order marks, longest first: UTF-32's LE mark begins with UTF-16's.
_BOMS = [
    (codecs.BOM_UTF32_LE, "utf-32-le"),
    (codecs.BOM_UTF32_BE, "utf-32-be"),
    (codecs.BOM_UTF8, "utf-8"),
    (codecs.BOM_UTF16_LE, "utf-16-le"),
    (codecs.BOM_UTF16_BE, "utf-16-be"),
]

# Share of control characters (other than tab, newline, carriage return and form feed) and
# replacement characters from which decoded "text" is taken for binary. Real text has next to none.
_MAX_CONTROL_SHARE = 0.02
# Unicode's control characters (category Cc) but tab, newline, form feed and carriage return;
# and the replacement character, which a decoder puts where bytes made no sense.
_CONTROLS = re.compile("[\x00-\x08\x0b\x0e-\x1f\x7f-\x9f\ufffd]")

_HTML_START = re.compile(
    r"\s*(<\?xml[^>]*>\s*)?(<!--.*?-->\s*)*<(!doctype\s+html|html[\s>])", re.I | re.S
)
_HTML_TAGS = re.compile(r"<(head|body)[\s>]", re.I)
_HTML_NAMES = {".html", ".htm", ".xhtml"}
_MARKDOWN_NAMES = {".md", ".markdown", ".mdown", ".mkd"}
_TEXT_NAMES = {".txt", ".text"}

# Markdown signals, each with its weight. A line can give several; headings, fences, links and
# tables are strong (plain text rarely has them), lists and emphasis weak (plain text has dashes).
# Spans are bounded ({1,200}) so that a long line of brackets or asterisks stays linear to scan.
_MARKDOWN_SIGNALS = [
    (re.compile(r"^#{1,6}[ \t]+\S", re.M), 2),  # ATX heading
    (re.compile(r"^(```|~~~)", re.M), 2),  # code fence
    (re.compile(r"\[[^\]\n]{1,200}\]\([^)\s]{1,500}\)"), 2),  # [link](target) or ![image](src)
    (re.compile(r"^\|?[ \t]*:?-{3,}:?[ \t]*\|", re.M), 2),  # table delimiter row
    (re.compile(r"^[ \t]*([-*+]|\d{1,3}[.)])[ \t]+\S", re.M), 1),  # list item
    (re.compile(r"(\*\*|__)\S[^\n]{0,200}?\S\1"), 1),  # strong emphasis
    (re.compile(r"^>[ \t]?\S", re.M), 1),  # block quote
    (re.compile(r"`[^`\n]{1,200}`"), 1),  # code span
]
_SIGNAL_CAP = 3  # how often one signal may count, so that a long list alone does not decide
MARKDOWN_THRESHOLD = 4  # from this score (name hint included) a text is Markdown
_NAME_HINT = 2  # what a .md name adds to the score, or a .txt name takes away
_SCORED_CHARS = 100_000  # the score reads the start of the text: enough to tell, and fast


def _suffix(name: str | None) -> str:
    return PurePath(name).suffix.lower() if name else ""


def markdown_score(text: str, name: str | None = None) -> int:
    """How much ``text`` looks like Markdown: weighted counts of headings, fences, links, tables,
    list items, emphasis, quotes and code spans (each counted at most a few times), plus or minus
    a little for a ``.md`` or ``.txt`` name. Only the first 100,000 characters are read."""
    sample = text[:_SCORED_CHARS]
    score = sum(
        weight * sum(1 for _ in itertools.islice(pattern.finditer(sample), _SIGNAL_CAP))
        for pattern, weight in _MARKDOWN_SIGNALS
    )
    suffix = _suffix(name)
    if suffix in _MARKDOWN_NAMES:
        score += _NAME_HINT
    elif suffix in _TEXT_NAMES:
        score -= _NAME_HINT
    return score


def _binary_refusal(reason: str) -> ImportRefused:
    return ImportRefused(
        "binary_content",
        f"this file is not text ({reason}), whatever its name says. Import text, Markdown, "
        "HTML, PDF or image files; if it is text in UTF-16 or UTF-32, save it with a byte order "
        "mark or as UTF-8.",
    )


def _legacy_decoding(data: bytes) -> tuple[str, str]:
    """``data`` decoded by charset detection, for text that is not UTF-8."""
    matches = list(charset_normalizer.from_bytes(data))
    if not matches:
        raise _binary_refusal("no character encoding decodes it")
    best = matches[0]
    # charset-normalizer ranks Central European cp1250 level with cp1252 on Western text (they
    # share most letters) and can put it first, turning "crème" into "crčme". Prefer cp1252 on
    # a tie.
    for match in matches:
        if (
            match.encoding == "cp1252"
            and match.chaos <= best.chaos
            and match.coherence >= best.coherence - 0.01
        ):
            best = match
            break
    return str(best), best.encoding


def decode_text(data: bytes) -> tuple[str, str]:
    """``data`` as text, with the encoding it was in; :class:`ImportRefused` with
    ``binary_content`` when it is not text. A byte order mark decides the encoding (and is
    dropped); else UTF-8 when it decodes, else charset detection. NUL bytes outside UTF-16/32
    and a text that is more than a sliver control characters are binary."""
    for bom, encoding in _BOMS:
        if data.startswith(bom):
            try:
                text = data[len(bom) :].decode(encoding)
            except UnicodeDecodeError as error:
                raise _binary_refusal(f"it starts with a {encoding} mark but is not") from error
            break
    else:
        if b"\x00" in data:
            raise _binary_refusal("it contains NUL bytes")
        try:
            text, encoding = data.decode("utf-8"), "utf-8"
        except UnicodeDecodeError:
            text, encoding = _legacy_decoding(data)
    controls = len(_CONTROLS.findall(text))
    if text and controls / len(text) > _MAX_CONTROL_SHARE:
        raise _binary_refusal(f"{controls} of its {len(text)} characters are control characters")
    return text, encoding


def _looks_like_html(text: str, name: str | None) -> bool:
    if _HTML_START.match(text):
        return True
    head = text[:4096]
    if _HTML_TAGS.search(head):
        return True
    return _suffix(name) in _HTML_NAMES and head.lstrip().startswith("<")


def detect_format(data: bytes, name: str | None = None) -> Detected:
    """The format of ``data``, read from its bytes (``name`` only tips close calls), with the
    decoded text for the text formats. Raises :class:`ImportRefused` for empty input,
    recognisable but unsupported formats (archives, Office files) and binary content."""
    if not data.strip():
        raise ImportRefused(
            "empty_document", "the file is empty (or only whitespace): there is nothing to import."
        )
    if data.lstrip()[:5] == b"%PDF-":
        return Detected("pdf")
    if image_format(data) is not None:
        return Detected("image")
    for magic, description in _KNOWN_BINARY:
        if data.startswith(magic):
            raise ImportRefused(
                "unsupported_format",
                f"this file looks like {description}, which cannot be imported yet. Convert it "
                "to PDF, HTML, Markdown or plain text and import that.",
            )
    text, encoding = decode_text(data)
    if _looks_like_html(text, name):
        return Detected("html", text, encoding)
    if markdown_score(text, name) >= MARKDOWN_THRESHOLD:
        return Detected("markdown", text, encoding)
    return Detected("text", text, encoding)
