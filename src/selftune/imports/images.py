"""Images to documents: the text in them through OCR (Tesseract), with their EXIF and file
metadata.

An image is refused before any pixel is decoded when its header claims more pixels than
``ImportLimits.max_image_pixels``: a small file can declare a 100,000 x 100,000 canvas (a
decompression bomb) that would take gigabytes to decode. Tesseract runs as its own process
(``pytesseract``) with a time limit, so a pathological image cannot hold the worker.
"""

from __future__ import annotations

import io
import re
import warnings
from pathlib import PurePath
from typing import Any

from selftune.imports.formats import ImportRefused

__all__ = ["image_metadata", "ocr_image", "tesseract_version"]

# EXIF tags kept as metadata, by their numbers (PIL.ExifTags.Base).
_EXIF_FIELDS = {
    0x010E: "description",  # ImageDescription
    0x013B: "author",  # Artist
    0x0132: "date",  # DateTime
    0x010F: "camera_make",  # Make
    0x0110: "camera_model",  # Model
    0x0131: "software",  # Software
    0x8298: "copyright",  # Copyright
}
_MAX_FIELD_CHARS = 500


def _open(data: bytes, max_pixels: int) -> Any:
    """The image, its header read and its size checked; no pixel decoded yet."""
    from PIL import Image, UnidentifiedImageError

    with warnings.catch_warnings():
        # Pillow's own bomb check warns (or raises) on open; ours below says more.
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            image = Image.open(io.BytesIO(data))
        except Image.DecompressionBombError as error:
            declared = re.search(r"\((\d+) pixels\)", str(error))
            size = f"{int(declared[1]):,}" if declared else "more"
            raise _too_many_pixels(size, max_pixels) from error
        except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as error:
            raise ImportRefused(
                "unparseable_image",
                f"this image cannot be read ({type(error).__name__}: {error}). Check that the "
                "file is complete, or save it again as PNG and import that.",
            ) from error
    width, height = image.size
    if width * height > max_pixels:
        raise _too_many_pixels(f"{width} x {height} = {width * height:,}", max_pixels)
    return image


def _too_many_pixels(size: str, max_pixels: int) -> ImportRefused:
    return ImportRefused(
        "too_large",
        f"this image declares {size} pixels, more than the limit of {max_pixels:,} pixels "
        "(imports.max_image_pixels); it is refused before decoding, as a small file can "
        "declare a huge image. Scale it down and import that.",
    )


def image_metadata(image: Any, name: str | None) -> dict[str, str | int]:
    """The file's format and size, and the EXIF fields that say what the picture is."""
    metadata: dict[str, str | int] = {
        "image_format": str(image.format or ""),
        "width": int(image.size[0]),
        "height": int(image.size[1]),
    }
    try:
        exif = image.getexif()
    except Exception:  # broken EXIF does not spoil a readable picture
        exif = {}
    for tag, key in _EXIF_FIELDS.items():
        value = exif.get(tag)
        if isinstance(value, bytes):
            value = value.decode("utf-8", "replace")
        if isinstance(value, str) and value.strip("\x00 \n"):
            metadata[key] = value.strip("\x00 \n")[:_MAX_FIELD_CHARS]
    if name:
        metadata["file_name"] = PurePath(name).name
    return metadata


def tesseract_version() -> str:
    """Tesseract's version; :class:`ImportRefused` when it is not installed."""
    import pytesseract

    try:
        return str(pytesseract.get_tesseract_version())
    except (pytesseract.TesseractNotFoundError, OSError) as error:
        raise _no_tesseract() from error


def _no_tesseract() -> ImportRefused:
    return ImportRefused(
        "ocr_unavailable",
        "reading text in images needs Tesseract, which is not installed on the machine running "
        "the worker: install it (Debian and Ubuntu: apt-get install tesseract-ocr) and import "
        "the image again.",
    )


def ocr_image(
    data: bytes, name: str | None, *, max_pixels: int, timeout_s: float, languages: str
) -> tuple[str, dict[str, str | int]]:
    """The text Tesseract reads in the image ``data`` (``languages`` such as ``"eng"`` or
    ``"eng+deu"``), and the image's metadata. Raises :class:`ImportRefused` for a bomb, an
    unreadable image, missing Tesseract or languages, or OCR past ``timeout_s``."""
    import pytesseract

    image = _open(data, max_pixels)
    metadata = image_metadata(image, name)
    try:
        image.load()
        if image.mode not in ("RGB", "L"):
            image = image.convert("RGB")
        text = pytesseract.image_to_string(image, lang=languages, timeout=timeout_s)
    except pytesseract.TesseractNotFoundError as error:
        raise _no_tesseract() from error
    except pytesseract.TesseractError as error:  # a RuntimeError: caught before the timeout's
        raise ImportRefused(
            "ocr_unavailable",
            f"Tesseract could not read this image ({error.message.strip()}); if it names a "
            f"missing language, install its data (apt-get install tesseract-ocr-<lang>) or "
            "change imports.ocr_languages.",
        ) from error
    except RuntimeError as error:  # pytesseract's timeout
        raise ImportRefused(
            "too_large",
            f"reading the text in this image took more than {timeout_s:g} s "
            "(imports.ocr_timeout_s). Crop or scale it down and import that.",
        ) from error
    except (OSError, ValueError) as error:
        raise ImportRefused(
            "unparseable_image",
            f"this image cannot be decoded ({type(error).__name__}: {error}). Save it again as "
            "PNG and import that.",
        ) from error
    return text, metadata
