"""Everything that is not a film: say what the file is, when it can be told (a PDF, a zip, a web page...).

Only reached when no image decoder claims the bytes; every path ends in a FilmError.
"""
from __future__ import annotations

from ._common import Film, FilmError

# Signatures of files people upload by mistake, checked when no image decoder claims the file.
_NOT_IMAGES = (
    (b"%PDF-", "a PDF document, not an image; export the film as DICOM, PNG or JPEG"),
    (b"PK\x03\x04", "a zip archive, not a single film; upload the films inside it"),
    (b"PK\x05\x06", "an empty zip archive, not a film"),
    (b"\x1f\x8b", "a gzip-compressed file, not a film; decompress it first"),
    (b"Rar!", "a RAR archive, not a film"),
    (b"7z\xbc\xaf\x27\x1c", "a 7-Zip archive, not a film"),
    (b"\xd0\xcf\x11\xe0", "a Microsoft Office document, not an image"),
)
# Signatures of image formats, so that a damaged one is called damaged rather than unknown.
_IMAGE_SIGNATURES = (
    (b"\x89PNG\r\n\x1a\n", "PNG"), (b"\xff\xd8\xff", "JPEG"), (b"GIF8", "GIF"), (b"BM", "BMP"),
    (b"II*\x00", "TIFF"), (b"MM\x00*", "TIFF"), (b"\x00\x00\x00\x0cjP  ", "JPEG 2000"),
)


def _not_an_image(data: bytes) -> Film:
    head = data[:1024]
    for signature, message in _NOT_IMAGES:
        if head.startswith(signature):
            raise FilmError(f"the file is {message}")
    fmt = _image_signature(head)
    if fmt:
        raise FilmError(f"the {fmt} file is truncated or corrupt (its header cannot be read)")
    text = _as_text(head)
    if text is not None:
        lowered = text.lstrip("\ufeff \t\r\n").lower()
        if lowered.startswith(("<!doctype html", "<html")) or "<html" in lowered[:200]:
            raise FilmError("the file is an HTML page, not an image (was a web page saved instead of the film?)")
        if lowered.startswith("<svg") or (lowered.startswith("<?xml") and "<svg" in lowered):
            raise FilmError("the file is an SVG drawing, not a film")
        raise FilmError("the file is text, not an image")
    raise FilmError("not a recognised image format: expected DICOM, PNG, JPEG, TIFF or BMP")


def _image_signature(data: bytes) -> str | None:
    """The image format the first bytes claim, if any ("BM" counts only with BMP's zero reserved bytes)."""
    fmt = next((fmt for signature, fmt in _IMAGE_SIGNATURES if data.startswith(signature)), None)
    return None if fmt == "BMP" and data[6:10] != bytes(4) else fmt


def _as_text(head: bytes) -> str | None:
    """The decoded start of a file that reads as text (UTF-8, no NUL), or None."""
    if b"\x00" in head:
        return None
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError as e:
        if e.start < len(head) - 3:  # a broken character only at the cut is still text
            return None
        text = head[:e.start].decode("utf-8")
    printable = sum(c.isprintable() or c in "\t\r\n" for c in text)
    return text if text and printable >= 0.95 * len(text) else None
