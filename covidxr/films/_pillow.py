"""PNG, JPEG, BMP, TIFF, GIF, WebP (and JPEG 2000, PPM) through Pillow -> Film."""
from __future__ import annotations

import io

import numpy as np
from PIL import Image, ImageOps

from ._common import (MAX_PIXELS, Film, FilmError, _check_size, _finish, _fit, _gray, _percentile_window,
                      _reason, _stretch, _target)
from ._sniff import _image_signature

PIL_FORMATS = ("PNG", "JPEG", "BMP", "TIFF", "GIF", "WEBP", "JPEG2000", "PPM")

_BOMB = (f"the image has too many pixels (its header claims more than the limit of {MAX_PIXELS / 1e6:.0f} "
         "megapixels): refused as a possible decompression bomb")


def _open_pillow(data: bytes) -> Image.Image | None:
    """Pillow's view of the bytes, or None when no allowed decoder claims them."""
    try:
        return Image.open(io.BytesIO(data), formats=PIL_FORMATS)
    except Image.DecompressionBombError:
        raise FilmError(_BOMB) from None
    except Image.UnidentifiedImageError:
        return None
    except Exception as e:  # noqa: BLE001 - a decoder choking on a header is a damaged file...
        fmt = _image_signature(data)
        if fmt is None:  # ...or no image at all, claimed by a lax check (text starting "BM")
            return None
        raise FilmError(f"the {fmt} file is truncated or corrupt ({_reason(e)})") from None


def _read_pillow(data: bytes) -> Film | None:
    im = _open_pillow(data)
    if im is None:
        return None
    fmt = "JPEG" if im.format == "MPO" else (im.format or "image")
    try:
        return _decode_pillow(im, fmt)
    except FilmError:
        raise
    except Image.DecompressionBombError:
        raise FilmError(_BOMB) from None
    except Exception as e:  # noqa: BLE001 - any decoder failure past the header is a damaged file
        raise FilmError(f"the {fmt} file is truncated or corrupt ({_reason(e)})") from None


def _decode_pillow(im: Image.Image, fmt: str) -> Film:
    width, height = im.size
    _check_size(width, height)
    frames = getattr(im, "n_frames", 1)
    if frames > 1 and im.format != "MPO":
        raise FilmError(f"the {fmt} holds {frames} frames (an animation or a multi-page file); "
                        "upload a single still film")
    orientation = im.getexif().get(0x0112, 1)
    facts = {"mode": im.mode}
    if orientation != 1:
        facts["exif_orientation"] = str(orientation)
        if orientation in (5, 6, 7, 8):
            width, height = height, width
    if fmt == "JPEG":  # decode at a reduced DCT scale: the fastest way to a small film
        im.draft(im.mode if im.mode in ("L", "RGB") else None, _target(*im.size))
    im.load()
    if orientation != 1:
        im = ImageOps.exif_transpose(im)
    if im.mode.startswith("I") or im.mode == "F":
        pixels = _deep_pixels(im, facts)
    else:
        pixels = _gray(_shallow_pixels(im, facts), facts)
    return _finish(pixels, width, height, fmt, facts)


def _shallow_pixels(im: Image.Image, facts: dict[str, str]) -> np.ndarray:
    """8-bit modes -> reduced HxW (gray) or HxWx3 (colour) float32 in [0, 1], alpha flattened on black."""
    if im.mode in ("P", "PA"):
        im = im.convert("RGBA" if im.mode == "PA" or "transparency" in im.info else "RGB")
    elif im.mode == "1":
        im = im.convert("L")
    elif im.mode not in ("L", "LA", "RGB", "RGBA"):
        im = im.convert("RGB")  # CMYK, YCbCr, LAB, HSV, RGBX...
    if im.mode in ("LA", "RGBA"):
        facts["alpha"] = "flattened on black"
        im = im.convert("La" if im.mode == "LA" else "RGBa")  # premultiplied = composited on black
    im = _fit(im)
    facts["bits"] = "8"
    a = np.asarray(im)
    a = a[..., 0] if im.mode == "La" else a[..., :3] if a.ndim == 3 else a
    return a.astype(np.float32) / 255.0


def _deep_pixels(im: Image.Image, facts: dict[str, str]) -> np.ndarray:
    """16/32-bit integer and float gray -> reduced HxW float32 in [0, 1] (see the package notes)."""
    small = np.asarray(_fit(im if im.mode in ("I", "F") else im.convert("I")), dtype=np.float32)
    if im.mode == "F":  # NaN survives the reduction; _finish refuses it
        facts["bits"] = "32 (float)"
        if small.min() >= 0 and small.max() <= 1:
            return small
        return _stretch(small, *_percentile_window(small, None))
    lo, hi = im.getextrema()
    if lo < 0 or hi > 65535:  # signed or wider than 16 bits: no natural range, window it
        facts["bits"] = "32"
        return _stretch(small, *_percentile_window(small, None))
    bits = max(8, hi.bit_length())
    facts["bits"] = f"{bits} (of 16)" if bits < 16 else "16"
    return small / float(2**bits - 1)
