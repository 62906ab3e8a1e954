"""Bytes to a :class:`Document`: one parser per format, chosen by :func:`detect_format`.

- text and Markdown are kept as written (line endings made ``\\n``); a Markdown title is its first
  heading;
- HTML goes through trafilatura, which keeps the main text (as Markdown, so that headings and
  lists survive) and drops scripts, styles, navigation and other boilerplate; its title, author
  and date are kept;
- PDF goes through pypdf, page by page; its title and author are kept;
- images go through Tesseract (OCR, ``selftune.imports.images``); their EXIF description,
  author, date and camera, and their size, are kept.

Each parser says which importer and version produced the document, for the provenance record.
Nothing here fetches anything: trafilatura is given the HTML, never a URL.
"""

from __future__ import annotations

import dataclasses
import io
import re
from collections.abc import Callable
from importlib.metadata import version
from pathlib import PurePath

from selftune.imports.formats import Detected, Format, ImportRefused, detect_format
from selftune.imports.markdown import headings

__all__ = [
    "DEFAULT_LIMITS",
    "PARSERS",
    "Document",
    "ImportLimits",
    "Parsed",
    "Parser",
    "parse_bytes",
]

TEXT_IMPORTER = "selftune-text"
TEXT_IMPORTER_VERSION = "1"  # raise when the text parser changes what it produces


@dataclasses.dataclass(frozen=True)
class ImportLimits:
    """What one import may hold; more is refused with ``too_large`` (bytes before anything is
    parsed, pages before any page is read)."""

    max_bytes: int = 20 * 1024 * 1024  # the upload's size: 20 MiB
    max_pdf_pages: int = 500  # pages of a PDF
    max_chars: int = 5_000_000  # characters of extracted text (a PDF's streams can inflate a lot)
    max_image_pixels: int = (
        40_000_000  # an image's declared width x height, checked before decoding
    )
    ocr_timeout_s: float = 120.0  # Tesseract's time on one image
    ocr_languages: str = "eng"  # Tesseract's languages, "eng+deu" for two

    def __post_init__(self) -> None:
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if isinstance(value, int | float) and value < 1:
                raise ValueError(f"ImportLimits.{field.name} must be at least 1, not {value}")


DEFAULT_LIMITS = ImportLimits()


@dataclasses.dataclass(frozen=True)
class Document:
    """A parsed document: its title, its text, the format it came in and what its source said
    about it (``author``, ``date``, ``encoding``, ``pages``, when known). The text of Markdown
    and HTML documents is Markdown; of text and PDF documents, plain text."""

    title: str
    text: str
    format: Format
    metadata: dict[str, str | int] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class Parsed:
    """A document and the importer that produced it (name and version)."""

    document: Document
    importer: str
    importer_version: str


_TITLE_LENGTH = 120


def _normalize(text: str) -> str:
    """Line endings made ``\\n``, the whole stripped of leading and trailing blank space."""
    return text.replace("\r\n", "\n").replace("\r", "\n").strip()


def _fallback_title(text: str, name: str | None) -> str:
    """A title when the document gives none: its file name without extension, else its first
    line (shortened)."""
    if name:
        stem = PurePath(name).stem
        if stem:
            return stem
    first_line = text.split("\n", 1)[0].strip()
    return first_line[:_TITLE_LENGTH]


def _check_text(text: str, limits: ImportLimits, why_empty: str) -> None:
    if not text:
        raise ImportRefused("empty_document", why_empty)
    if len(text) > limits.max_chars:
        raise ImportRefused(
            "too_large",
            f"the document holds {len(text):,} characters of text, more than the limit of "
            f"{limits.max_chars:,}. Split it into smaller files.",
        )


def _parse_text(raw: str, name: str | None, limits: ImportLimits, markdown: bool) -> Document:
    text = _normalize(raw)
    _check_text(text, limits, "the file holds only whitespace: there is nothing to import.")
    first_heading = next(headings(text), None) if markdown else None
    title = first_heading.title if first_heading is not None else None
    return Document(
        title=title or _fallback_title(text, name),
        text=text,
        format="markdown" if markdown else "text",
    )


def _parse_html(raw: str, name: str | None, limits: ImportLimits) -> Document:
    import trafilatura

    # An XML declaration naming an encoding makes lxml refuse an already decoded string.
    html = re.sub(r"^\s*<\?xml[^>]*>", "", raw)
    # favor_recall: short pages (a note, a single article) are kept rather than taken for
    # boilerplate. trafilatura drops <script>, <style> and the like before it looks for the main
    # text; <noscript> it keeps, and what it holds ("enable JavaScript") is not the page's text.
    text = trafilatura.extract(
        html,
        output_format="markdown",
        include_comments=False,
        include_tables=True,
        include_images=False,
        include_links=False,
        favor_recall=True,
        with_metadata=False,
        prune_xpath="//noscript",
    )
    text = _normalize(text or "")
    _check_text(
        text,
        limits,
        "no main text was found in this HTML page. Pages built by scripts, and pages that are "
        "all navigation, have none; save the page as it is shown (or copy its text) and import "
        "that.",
    )
    metadata: dict[str, str | int] = {}
    found = trafilatura.extract_metadata(html)
    if found is not None:
        for key in ("author", "date", "sitename", "description"):
            value = getattr(found, key, None)
            if isinstance(value, str) and value.strip():
                metadata[key] = value.strip()
    title = found.title if found is not None and found.title else None
    return Document(
        title=title or _fallback_title(text, name), text=text, format="html", metadata=metadata
    )


def _unparseable(reason: str) -> ImportRefused:
    return ImportRefused(
        "unparseable_pdf",
        f"this PDF cannot be read ({reason}). Check that the file is complete (re-download or "
        "re-export it), remove any password, or print it to a new PDF and import that.",
    )


def _parse_pdf(data: bytes, name: str | None, limits: ImportLimits) -> Document:
    from pypdf import PdfReader

    # pypdf raises many kinds of errors on broken files (PdfReadError, but also ValueError,
    # KeyError, ...): any of them means the file cannot be read, so all become one refusal.
    try:
        reader = PdfReader(io.BytesIO(data), strict=False)
        if reader.is_encrypted and not reader.decrypt(""):
            raise _unparseable("it is encrypted with a password")
        page_count = len(reader.pages)
    except ImportRefused:
        raise
    except Exception as error:
        raise _unparseable(f"{type(error).__name__}: {error}") from error
    if page_count > limits.max_pdf_pages:
        raise ImportRefused(
            "too_large",
            f"this PDF has {page_count} pages, more than the limit of {limits.max_pdf_pages}. "
            "Split it into smaller files.",
        )
    pages: list[str] = []
    chars = 0
    for number, page in enumerate(reader.pages, start=1):
        try:
            page_text = _normalize(page.extract_text() or "")
        except Exception as error:
            raise _unparseable(f"page {number}: {type(error).__name__}: {error}") from error
        chars += len(page_text)
        if chars > limits.max_chars:  # stop reading early; _check_text says why
            pages.append(page_text)
            break
        if page_text:
            pages.append(page_text)
    text = "\n\n".join(pages)
    if not text and page_count:
        raise ImportRefused(
            "no_extractable_text",
            f"none of this PDF's {page_count} pages holds text: it is probably scanned images. "
            "Text recognition (OCR) is not available yet; run OCR on it first (many PDF tools "
            "can) and import the result.",
        )
    _check_text(text, limits, "this PDF has no pages: there is nothing to import.")
    metadata: dict[str, str | int] = {"pages": page_count}
    title = None
    try:
        info = reader.metadata
        if info is not None:
            title = (info.title or "").strip() or None
            if (info.author or "").strip():
                metadata["author"] = str(info.author).strip()
            created = info.creation_date
            if created is not None:
                metadata["date"] = created.date().isoformat()
    except Exception:  # broken metadata does not spoil readable pages
        pass
    return Document(
        title=title or _fallback_title(text, name), text=text, format="pdf", metadata=metadata
    )


def _read_text(data: bytes, detected: Detected, name: str | None, limits: ImportLimits) -> Parsed:
    document = _parse_text(detected.text or "", name, limits, markdown=False)
    return Parsed(document, TEXT_IMPORTER, TEXT_IMPORTER_VERSION)


def _read_markdown(
    data: bytes, detected: Detected, name: str | None, limits: ImportLimits
) -> Parsed:
    document = _parse_text(detected.text or "", name, limits, markdown=True)
    return Parsed(document, TEXT_IMPORTER, TEXT_IMPORTER_VERSION)


def _read_html(data: bytes, detected: Detected, name: str | None, limits: ImportLimits) -> Parsed:
    document = _parse_html(detected.text or "", name, limits)
    return Parsed(document, "trafilatura", version("trafilatura"))


def _read_pdf(data: bytes, detected: Detected, name: str | None, limits: ImportLimits) -> Parsed:
    return Parsed(_parse_pdf(data, name, limits), "pypdf", version("pypdf"))


def _read_image(data: bytes, detected: Detected, name: str | None, limits: ImportLimits) -> Parsed:
    from selftune.imports.images import ocr_image, tesseract_version

    engine = tesseract_version()  # refuses first, with what to install, when it is missing
    raw, metadata = ocr_image(
        data,
        name,
        max_pixels=limits.max_image_pixels,
        timeout_s=limits.ocr_timeout_s,
        languages=limits.ocr_languages,
    )
    text = _normalize(raw)
    if not text:
        raise ImportRefused(
            "no_extractable_text",
            "no text was found in this image (OCR read none). Only images of text (a scan, a "
            "screenshot, a photo of a page) can be imported.",
        )
    _check_text(text, limits, "")
    title = str(metadata.get("description") or "") or _fallback_title(text, name)
    document = Document(title=title[:_TITLE_LENGTH], text=text, format="image", metadata=metadata)
    return Parsed(document, "tesseract", engine)


Parser = Callable[[bytes, Detected, str | None, ImportLimits], Parsed]

# The importers, one per format that :func:`detect_format` can return. A new format is a new
# detection rule and a new entry here.
PARSERS: dict[Format, Parser] = {
    "text": _read_text,
    "markdown": _read_markdown,
    "html": _read_html,
    "pdf": _read_pdf,
    "image": _read_image,
}


def parse_bytes(
    data: bytes, name: str | None = None, limits: ImportLimits = DEFAULT_LIMITS
) -> Parsed:
    """``data`` parsed into a :class:`Document`, with the importer that read it. ``name`` (the
    file's name) is a hint for the format and the fallback title. Raises :class:`ImportRefused`
    for anything that cannot be imported whole: too large (checked before anything is parsed),
    empty, binary, unsupported, unreadable."""
    if len(data) > limits.max_bytes:
        raise ImportRefused(
            "too_large",
            f"the file is {len(data):,} bytes, more than the limit of {limits.max_bytes:,}. "
            "Split it into smaller files.",
        )
    detected = detect_format(data, name)
    parsed = PARSERS[detected.format](data, detected, name, limits)
    if detected.encoding is None:
        return parsed
    metadata = {**parsed.document.metadata, "encoding": detected.encoding}
    return dataclasses.replace(
        parsed, document=dataclasses.replace(parsed.document, metadata=metadata)
    )
