"""Bytes or path -> Film. The only package that knows about PNG, JPEG, TIFF, BMP or DICOM.

Every film comes out the same way, so that nothing downstream cares where it came from:
grayscale float32 in [0, 1], 0 = dark (air as a radiologist sees it), longest side at most
WORK_SIDE. Anything that cannot be read that way raises FilmError with a message meant for the
person who uploaded the file; no other exception leaves `read_film`.

Decisions, each a line here so that they can be found:
- The format is told by content, never by the file name (a JPEG named .png is just read).
- 16-bit grayscale (PNG, TIFF) is scaled by the smallest bit depth that holds the film's maximum
  (12-bit data in a 16-bit container -> /4095), not by the container (/65535) nor a percentile
  window: the film keeps its own contrast and a film that uses 12 bits is not shown near-black.
- Colour input becomes luma (ITU-R 601); facts["colour"] records whether the source really was
  colour, for the out-of-distribution check. Alpha is flattened on black.
- Animations, multi-page TIFFs and multi-frame DICOMs are refused: nothing says which frame is the
  frontal film. (A phone JPEG's MPO preview frames are not an animation: its first image is read.)
- DICOM: modality LUT, then the first VOI window (or the VOI LUT), else a 0.5-99.5 percentile
  window; MONOCHROME1 inverted. Only an allow-list of non-identifying tags reaches Film.facts.
- Size limits are checked on the header, before any pixel is decoded. (Pillow's own bomb check
  refuses over 179 megapixels at open, with the same message; between 89 and 179 it only warns,
  and MAX_PIXELS refuses.)

Where things are: _common.py (Film, FilmError, limits, the checks and pixel arithmetic every format
shares), _pillow.py (PNG, JPEG, BMP, TIFF, GIF, WebP), _dicom.py (DICOM), _sniff.py (what a file
that is no image is). The format modules import _common, never this package.
"""
from __future__ import annotations

from pathlib import Path

from ._common import (AUTO_WINDOW, COLOUR_LEVEL, COLOUR_SHARE, MAX_BYTES, MAX_PIXELS, MIN_SIDE, WORK_SIDE,
                      Film, FilmError, _check_bytes, _read_path)
from ._dicom import _read_dicom, _read_dicom_without_header, dicom_age_years
from ._pillow import PIL_FORMATS, _read_pillow
from ._sniff import _not_an_image

# File names taken for films when a folder, a zip or an upload is scanned (content decides the format:
# see read_film). Extension-less files are taken too when they are DICOM (is_dicom).
FILM_SUFFIXES = (".png", ".jpg", ".jpeg", ".dcm", ".dicom", ".bmp", ".tif", ".tiff")  # in the order a person reads them
DICOM_MAGIC_AT, DICOM_MAGIC = 128, b"DICM"  # a DICOM Part 10 file: a 128-byte preamble, then "DICM"

__all__ = ["read_film", "Film", "FilmError", "film_summary", "is_dicom", "dicom_age_years", "FILM_SUFFIXES", "DICOM_MAGIC",
           "DICOM_MAGIC_AT", "WORK_SIDE", "MIN_SIDE", "MAX_PIXELS", "MAX_BYTES", "COLOUR_LEVEL", "COLOUR_SHARE",
           "AUTO_WINDOW", "PIL_FORMATS"]

# The public classes keep their public address (tracebacks, reprs of the class, pickles say covidxr.films).
Film.__module__ = FilmError.__module__ = __name__


def read_film(source: bytes | str | Path, name: str | None = None) -> Film:
    """Read one film from its bytes or a path; raise FilmError (only) when it cannot be read."""
    if isinstance(source, (str, Path)):
        name = name or Path(source).name
        data = _read_path(Path(source))
    else:
        data = bytes(source)
    if not data:
        raise FilmError("the file is empty (0 bytes)")
    _check_bytes(len(data))
    if is_dicom(data):
        film = _read_dicom(data)
    else:
        film = _read_pillow(data) or _read_dicom_without_header(data) or _not_an_image(data)
    film.name = name or ""
    return film


def is_dicom(head: bytes) -> bool:
    """Whether bytes (the whole file, or at least its first 132 bytes) open a DICOM Part 10 file."""
    return head[DICOM_MAGIC_AT:DICOM_MAGIC_AT + len(DICOM_MAGIC)] == DICOM_MAGIC


def film_summary(film: Film) -> dict[str, str]:
    """What the app may show about a film: modality, view, size and format; never identity.

    Built from named, non-identifying fields only, so it stays safe whatever facts may hold.
    """
    summary = {k: film.facts[k] for k in ("modality", "view") if film.facts.get(k)}
    summary["size"] = f"{film.width} x {film.height} px"
    summary["format"] = film.format
    return summary
