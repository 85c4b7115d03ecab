"""Bytes or path -> Film. The only module that knows about PNG, JPEG or DICOM.

(Minimal first version: PNG/JPEG via Pillow. DICOM and the hardening of every edge case follow.)
"""
from __future__ import annotations

import io
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

WORK_SIDE = 1024  # films are kept at most this size on the longest side; the model needs far less


class FilmError(ValueError):
    """The input cannot be read as a film; the message says why, for a clinician or an operator."""


@dataclass
class Film:
    pixels: np.ndarray              # float32, HxW, in [0, 1], 0 = dark; longest side <= WORK_SIDE
    width: int                      # the film's own size, before any reduction
    height: int
    format: str                     # "PNG", "JPEG", "DICOM", ...
    name: str = ""
    facts: dict[str, str] = field(default_factory=dict)  # modality, view, bits...; never patient identity


def read_film(source: bytes | str | Path, name: str | None = None) -> Film:
    if isinstance(source, (str, Path)):
        name = name or Path(source).name
        data = Path(source).read_bytes()
    else:
        data = bytes(source)
    if not data:
        raise FilmError("the file is empty")
    try:
        im = Image.open(io.BytesIO(data))
        im = ImageOps.exif_transpose(im)
        width, height = im.size
        fmt = im.format or "image"
        im.draft("L", (WORK_SIDE, WORK_SIDE))
        im = im.convert("L")
    except Exception as e:  # noqa: BLE001 - any decoder failure is an unreadable film
        raise FilmError(f"not a readable image: {e}") from None
    if max(im.size) > WORK_SIDE:
        im.thumbnail((WORK_SIDE, WORK_SIDE), Image.BILINEAR)
    pixels = np.asarray(im, dtype=np.float32) / 255.0
    return Film(pixels=pixels, width=width, height=height, format=fmt, name=name or "")
