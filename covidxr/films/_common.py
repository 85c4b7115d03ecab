"""What every film format shares: Film, FilmError, the limits, the size checks and the pixel arithmetic.

The format modules (_pillow, _dicom, _sniff) import from here, never from the package, so that
there is no import cycle. The decisions behind these numbers are listed in covidxr/films/__init__.py.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from ..safety import MAX_FILE_BYTES, read_regular

WORK_SIDE = 1024          # films are kept at most this size on the longest side; the model needs far less
MIN_SIDE = 32             # a film smaller than this on either side (before or after reduction) is refused
MAX_PIXELS = 8192 * 8192  # header width x height above this is refused before decoding (a bomb)
MAX_BYTES = MAX_FILE_BYTES  # files larger than this are refused before reading (covidxr.safety)
COLOUR_LEVEL = 16 / 255   # a pixel is coloured when its channels differ by more than this...
COLOUR_SHARE = 0.02       # ...and a film is colour when this share of its pixels is coloured
AUTO_WINDOW = (0.5, 99.5)  # percentiles used as black and white when nothing better is known


class FilmError(ValueError):
    """The input cannot be read as a film; the message says why, for a clinician or an operator."""


@dataclass
class Film:
    pixels: np.ndarray = field(repr=False)  # float32, HxW, in [0, 1], 0 = dark; longest side <= WORK_SIDE
    width: int                      # the film's own size, before any reduction (after EXIF rotation)
    height: int
    format: str                     # "PNG", "JPEG", "DICOM", ...
    name: str = ""
    facts: dict[str, str] = field(default_factory=dict)  # modality, view, bits...; never patient identity


# ---------------------------------------------------------------------------------------------
# shared checks and pixel arithmetic


def _read_path(path: Path) -> bytes:
    """The file's bytes through covidxr.safety's one bounded reader (regular files up to MAX_BYTES only)."""
    try:
        return read_regular(path, MAX_BYTES)
    except OSError as e:
        raise FilmError(f"cannot read the file: {e.strerror or e}") from None


def _check_bytes(size: int) -> None:
    if size > MAX_BYTES:
        raise FilmError(f"the file is too large ({size / 2**20:.0f} MB; the limit is {MAX_BYTES // 2**20} MB)")


def _check_size(width: int, height: int) -> None:
    """Refuse, from the header alone, films too small to be films or too large to decode safely."""
    if width * height > MAX_PIXELS:
        raise FilmError(f"the image has too many pixels ({width} x {height} = {width * height / 1e6:.0f} "
                        f"megapixels; the limit is {MAX_PIXELS / 1e6:.0f}): refused as a possible "
                        "decompression bomb")
    if min(width, height) < MIN_SIDE:
        raise FilmError(f"the image is too small to be a film ({width} x {height} px; "
                        f"at least {MIN_SIDE} px a side is needed)")


def _target(width: int, height: int) -> tuple[int, int]:
    """(width, height) after fitting the longest side into WORK_SIDE, aspect kept."""
    scale = min(1.0, WORK_SIDE / max(width, height))
    return max(1, round(width * scale)), max(1, round(height * scale))


def _fit(im: Image.Image) -> Image.Image:
    """Longest side into WORK_SIDE: an integer box reduction in C (means, fast), then one
    bilinear step for the remainder. Works on Pillow's L, La, RGB, RGBa, I and F images."""
    target = _target(*im.size)
    if im.size == target:
        return im
    k = max(im.size) // WORK_SIDE
    if k > 1:
        im = im.reduce(k)
    return im if im.size == target else im.resize(target, Image.BILINEAR)


def _fit_array(a: np.ndarray) -> np.ndarray:
    """_fit for an HxW or HxWxC array of numbers -> float32 (per band, as Pillow F images)."""
    bands = [a] if a.ndim == 2 else [a[..., c] for c in range(a.shape[2])]
    out = [np.asarray(_fit(Image.fromarray(np.ascontiguousarray(b, dtype=np.float32), mode="F")))
           for b in bands]
    return out[0] if a.ndim == 2 else np.stack(out, axis=-1)


def _gray(a: np.ndarray, facts: dict[str, str]) -> np.ndarray:
    """HxW or HxWx3 in [0, 1] -> HxW luma; records in facts whether the source was really colour."""
    if a.ndim == 2:
        facts["colour"] = "no"
        return a
    spread = a.max(axis=2) - a.min(axis=2)
    share = float(np.mean(spread > COLOUR_LEVEL))
    facts["colour"] = "yes" if share >= COLOUR_SHARE else "no"
    facts["colour_share"] = f"{share:.3f}"
    return (a[..., 0] * 0.299 + a[..., 1] * 0.587 + a[..., 2] * 0.114).astype(np.float32)


def _finish(pixels: np.ndarray, width: int, height: int, fmt: str, facts: dict[str, str]) -> Film:
    """Last checks shared by every format: finite, not blank, not degenerate after reduction."""
    if not np.isfinite(pixels).all():
        raise FilmError("the image holds invalid pixel values (NaN or infinity)")
    pixels = np.clip(pixels, 0.0, 1.0).astype(np.float32, copy=False)
    if float(pixels.max() - pixels.min()) < 1 / 255:
        raise FilmError("the image is blank: every pixel has (nearly) the same value")
    if min(pixels.shape) < MIN_SIDE:
        raise FilmError(f"the image is too narrow to be a film ({width} x {height} px)")
    return Film(pixels=np.ascontiguousarray(pixels), width=width, height=height, format=fmt, facts=facts)


def _percentile_window(values: np.ndarray, counts: np.ndarray | None) -> tuple[float, float]:
    """AUTO_WINDOW percentiles of `values`, each counted `counts` times (a histogram), or once."""
    if counts is None:
        lo, hi = np.percentile(values, AUTO_WINDOW)
        return float(lo), float(hi)
    order = np.argsort(values, kind="stable")
    cum = np.cumsum(counts[order])
    picks = np.searchsorted(cum, np.asarray(AUTO_WINDOW) / 100 * cum[-1])
    lo, hi = values[order][np.minimum(picks, len(values) - 1)]
    return float(lo), float(hi)


def _stretch(values: np.ndarray, lo: float, hi: float) -> np.ndarray:
    return np.clip((values - lo) / max(hi - lo, 1e-12), 0.0, 1.0)


def _reason(e: BaseException) -> str:
    return (str(e) or type(e).__name__).splitlines()[0][:200]
