"""Images through OCR (Debian's Tesseract): the text of a picture of typed text, its EXIF and
file metadata, and the refusals: a decompression bomb before decoding, a broken image, an image
without text, Tesseract missing."""

from __future__ import annotations

import io
import shutil
import struct
import zlib

import pytest
from PIL import Image, ImageDraw, ImageFont

from selftune.imports import ImportLimits, ImportRefused, parse_bytes

pytestmark = pytest.mark.skipif(
    shutil.which("tesseract") is None, reason="Tesseract is not installed (make sysdeps)"
)

LINES = ["The lighthouse on Tarn Island", "is kept by Mirelle Dastor", "since the spring of 1987."]


def typed_text_png(lines: list[str] = LINES, exif: dict[int, str] | None = None) -> bytes:
    """A white picture with ``lines`` typed on it in black, as a screenshot would be."""
    font = ImageFont.load_default(size=36)
    image = Image.new("RGB", (900, 70 * len(lines) + 40), "white")
    draw = ImageDraw.Draw(image)
    for i, line in enumerate(lines):
        draw.text((30, 20 + 70 * i), line, fill="black", font=font)
    out = io.BytesIO()
    saved = Image.Exif()
    for tag, value in (exif or {}).items():
        saved[tag] = value
    image.save(out, format="PNG", exif=saved)
    return out.getvalue()


def _with_size(png: bytes, width: int, height: int) -> bytes:
    """``png`` with its header declaring another size (its IHDR's CRC made right again)."""
    ihdr = png[12:29]  # type, then width, height and five one-byte fields
    patched = b"IHDR" + struct.pack(">II", width, height) + ihdr[12:]
    crc = struct.pack(">I", zlib.crc32(patched) & 0xFFFFFFFF)
    return png[:12] + patched + crc + png[33:]


def test_the_text_of_a_picture_of_typed_text_is_read() -> None:
    exif = {0x010E: "Notes from the island", 0x013B: "Ana", 0x0132: "2026:11:30 10:00:00"}
    parsed = parse_bytes(typed_text_png(exif=exif), "island.png")
    document = parsed.document
    assert parsed.importer == "tesseract" and parsed.importer_version[0].isdigit()
    assert document.format == "image"
    words = document.text.split()
    for expected in ("lighthouse", "Tarn", "Mirelle", "Dastor", "1987."):
        assert expected in words, document.text
    assert document.title == "Notes from the island"
    assert document.metadata["author"] == "Ana"
    assert document.metadata["date"] == "2026:11:30 10:00:00"
    assert document.metadata["width"] == 900 and document.metadata["image_format"] == "PNG"
    assert document.metadata["file_name"] == "island.png"


def test_a_decompression_bomb_is_refused_before_it_is_decoded() -> None:
    bomb = _with_size(typed_text_png(), 100_000, 100_000)  # 10 gigapixels declared, 20 kB sent
    assert len(bomb) < 100_000
    with pytest.raises(ImportRefused) as refused:
        parse_bytes(bomb, "bomb.png")
    assert refused.value.code == "too_large"
    assert "10,000,000,000 pixels" in refused.value.message
    assert "before decoding" in refused.value.message
    # the limit is a setting: a smaller one refuses an ordinary picture too
    with pytest.raises(ImportRefused) as small:
        parse_bytes(typed_text_png(), "small.png", ImportLimits(max_image_pixels=1000))
    assert small.value.code == "too_large" and "900 x 250 = 225,000 pixels" in small.value.message


def test_a_broken_image_and_an_image_without_text_are_refused() -> None:
    png = typed_text_png()
    with pytest.raises(ImportRefused) as broken:
        parse_bytes(png[: len(png) // 3], "cut.png")
    assert broken.value.code == "unparseable_image"
    blank = io.BytesIO()
    Image.new("RGB", (400, 300), "white").save(blank, format="PNG")
    with pytest.raises(ImportRefused) as empty:
        parse_bytes(blank.getvalue(), "blank.png")
    assert empty.value.code == "no_extractable_text"


def test_missing_tesseract_is_a_refusal_that_says_what_to_install(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import pytesseract

    monkeypatch.setattr(pytesseract.pytesseract, "tesseract_cmd", "/nonexistent/tesseract")
    with pytest.raises(ImportRefused) as refused:
        parse_bytes(typed_text_png(), "island.png")
    assert refused.value.code == "ocr_unavailable"
    assert "apt-get install tesseract-ocr" in refused.value.message


def test_a_missing_language_is_a_refusal_naming_it() -> None:
    with pytest.raises(ImportRefused) as refused:
        parse_bytes(typed_text_png(), "island.png", ImportLimits(ocr_languages="xyz"))
    assert refused.value.code == "ocr_unavailable"
    assert "tesseract-ocr-<lang>" in refused.value.message
