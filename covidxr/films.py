"""Bytes or path -> Film. The only module that knows about PNG, JPEG, TIFF, BMP or DICOM.

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
"""
from __future__ import annotations

import io
import math
from collections.abc import MutableSequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

WORK_SIDE = 1024          # films are kept at most this size on the longest side; the model needs far less
MIN_SIDE = 32             # a film smaller than this on either side (before or after reduction) is refused
MAX_PIXELS = 8192 * 8192  # header width x height above this is refused before decoding (a bomb)
MAX_BYTES = 256 * 2**20   # files larger than this are refused before reading
COLOUR_LEVEL = 16 / 255   # a pixel is coloured when its channels differ by more than this...
COLOUR_SHARE = 0.02       # ...and a film is colour when this share of its pixels is coloured
AUTO_WINDOW = (0.5, 99.5)  # percentiles used as black and white when nothing better is known
PIL_FORMATS = ("PNG", "JPEG", "BMP", "TIFF", "GIF", "WEBP", "JPEG2000", "PPM")
# File names taken for films when a folder, a zip or an upload is scanned (content decides the format:
# see read_film). Extension-less files are taken too when they are DICOM (is_dicom).
FILM_SUFFIXES = (".png", ".jpg", ".jpeg", ".dcm", ".dicom", ".bmp", ".tif", ".tiff")  # in the order a person reads them
DICOM_MAGIC_AT, DICOM_MAGIC = 128, b"DICM"  # a DICOM Part 10 file: a 128-byte preamble, then "DICM"

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


_BOMB = (f"the image has too many pixels (its header claims more than the limit of {MAX_PIXELS / 1e6:.0f} "
         "megapixels): refused as a possible decompression bomb")


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


# ---------------------------------------------------------------------------------------------
# shared checks and pixel arithmetic


def _read_path(path: Path) -> bytes:
    try:
        _check_bytes(path.stat().st_size)
        return path.read_bytes()
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


# ---------------------------------------------------------------------------------------------
# PNG, JPEG, BMP, TIFF, GIF, WebP through Pillow


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
    """16/32-bit integer and float gray -> reduced HxW float32 in [0, 1] (see module notes)."""
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


def _reason(e: BaseException) -> str:
    return (str(e) or type(e).__name__).splitlines()[0][:200]


# ---------------------------------------------------------------------------------------------
# DICOM through pydicom (+ pylibjpeg, openjpeg, JPEG-LS plugins for compressed syntaxes)

# Tags that may be shown: none of them identifies a patient. Nothing else is ever read into facts.
_DICOM_FACTS = {
    "modality": "Modality", "view": "ViewPosition", "body_part": "BodyPartExamined",
    "photometric": "PhotometricInterpretation", "bits_stored": "BitsStored", "rows": "Rows",
    "columns": "Columns", "manufacturer": "Manufacturer",
}


def _read_dicom_without_header(data: bytes) -> Film | None:
    """A DICOM dataset without preamble or File Meta (old files, e.g. fo-dicom's CR chest).

    Only tried when the bytes start like a DICOM tag of group 0002 or 0008, so that random
    bytes are not parsed as a dataset; a parse that finds no image header is not DICOM.
    """
    if len(data) < 8 or data[:2] not in (b"\x02\x00", b"\x08\x00") or data[3] != 0:
        return None
    return _read_dicom(data, headerless=True)


def _read_dicom(data: bytes, headerless: bool = False) -> Film | None:
    import pydicom  # imported here: PNG/JPEG users do not pay for it

    try:
        ds = pydicom.dcmread(io.BytesIO(data), force=True)
    except Exception as e:  # noqa: BLE001 - pydicom raises many types for damaged files
        if headerless:
            return None
        raise FilmError(f"the DICOM file is truncated or corrupt ({_reason(e)})") from None
    if not any(k in ds for k in ("PixelData", "SOPClassUID", "Rows", "Modality")):
        if headerless:
            return None
        raise FilmError("the DICOM file is truncated or corrupt (no dataset follows its header)")
    if _ends_early(ds, len(data)):
        raise FilmError("the DICOM file is truncated (it ends inside a header element)")
    try:
        return _decode_dicom(ds)
    except FilmError:
        raise
    except Exception as e:  # noqa: BLE001 - a header value of the wrong type or shape
        raise FilmError(f"the DICOM file is corrupt ({_reason(e)})") from None


def _ends_early(ds, size: int) -> bool:
    """Whether the file stops inside its last element (pydicom keeps what it could read, silently).

    Pixel data cut short is left to the decoder, whose message says so with the byte counts.
    """
    if not len(ds):
        return False
    last = ds.get_item(max(ds.keys()))  # the raw element: no value is decoded, nothing identifying read
    tell, length = getattr(last, "value_tell", None), getattr(last, "length", None)
    if tell is None or length is None or length == 0xFFFFFFFF or last.tag == 0x7FE00010:
        return False
    end = tell + length
    return end > size or 0 < size - end < 8


def _dicom_facts(ds, syntax) -> dict[str, str]:
    facts = {key: _clean(_tag(ds, keyword)) for key, keyword in _DICOM_FACTS.items()}
    facts["transfer_syntax"] = syntax.name
    sop_class = _tag(ds, "SOPClassUID")
    facts["sop_class"] = _clean(getattr(sop_class, "name", sop_class))
    return {key: value for key, value in facts.items() if value}


def _tag(ds, keyword: str):
    """The first value of a header element, or None when absent or malformed (facts are optional)."""
    try:
        value = ds.get(keyword)
    except Exception:  # noqa: BLE001 - a malformed optional value must not make the film unreadable
        return None
    return value[0] if isinstance(value, (MutableSequence, tuple)) and len(value) else value


def _clean(value) -> str:
    """A header value as short printable text (values can hold anything; the app prints these)."""
    text = "" if value is None else str(value)
    return "".join(c for c in text if c.isprintable()).strip()[:64]


def _transfer_syntax(ds):
    """The dataset's transfer syntax; for a file without File Meta, the encoding pydicom parsed."""
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import UID, ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian

    meta = getattr(ds, "file_meta", None)
    syntax = meta.get("TransferSyntaxUID") if meta is not None else None
    if syntax is None:
        implicit, little = ds.original_encoding
        syntax = ImplicitVRLittleEndian if implicit else ExplicitVRLittleEndian if little else ExplicitVRBigEndian
        ds.file_meta = meta if meta is not None else FileMetaDataset()
        ds.file_meta.TransferSyntaxUID = syntax
    return UID(str(syntax))


def _decode_dicom(ds) -> Film:
    from pydicom import pixels

    syntax = _transfer_syntax(ds)
    if "PixelData" not in ds:
        kind = ds.SOPClassUID.name if "SOPClassUID" in ds else "DICOM object"
        raise FilmError(f"the DICOM file holds no image (a {kind} without Pixel Data)")
    try:
        decoder = pixels.get_decoder(syntax)
    except NotImplementedError:
        raise FilmError(f"unsupported DICOM transfer syntax: {syntax.name} ({syntax})") from None
    if not decoder.is_available:
        raise FilmError(f"no decoder is installed for the DICOM transfer syntax {syntax.name} ({syntax})")
    rows, cols = int(ds.get("Rows") or 0), int(ds.get("Columns") or 0)
    if not rows or not cols:
        raise FilmError("the DICOM file is corrupt (Rows or Columns missing)")
    _check_size(cols, rows)
    frames = int(ds.get("NumberOfFrames") or 1)
    if frames > 1:
        raise FilmError(f"the DICOM holds {frames} frames (a multi-frame series); upload a single still film")
    facts = _dicom_facts(ds, syntax)
    try:
        raw = pixels.pixel_array(ds, index=0)
    except Exception as e:  # noqa: BLE001 - every plugin has its own error types
        raise FilmError(f"the DICOM pixel data could not be decoded ({syntax.name}: {_reason(e)})") from None
    photometric = str(_tag(ds, "PhotometricInterpretation") or "MONOCHROME2").upper()
    if raw.ndim == 2 and photometric == "PALETTE COLOR":
        raw = pixels.apply_color_lut(raw, ds)
    if raw.ndim == 3:  # RGB (pydicom has already turned YBR into RGB), or the palette's colours
        top = np.iinfo(raw.dtype).max if raw.dtype.kind in "iu" else 1.0
        return _finish(_gray(_fit_array(raw) / float(top), facts), cols, rows, "DICOM", facts)
    pixels_full = _dicom_display(raw, ds, facts)
    if photometric == "MONOCHROME1":  # bright = air: invert so that 0 = dark as in MONOCHROME2
        pixels_full = 1.0 - pixels_full
    return _finish(_gray(_fit_array(pixels_full), facts), cols, rows, "DICOM", facts)


def _dicom_display(raw: np.ndarray, ds, facts: dict[str, str]) -> np.ndarray:
    """Stored values -> display values in [0, 1] (modality LUT, then VOI), full size, float32.

    The transform depends on the stored value only, so it is computed once per distinct level
    (a lookup table over min..max) and applied by indexing: fast, and exact.
    """
    lo, hi = int(raw.min()), int(raw.max())
    if raw.dtype.kind not in "iu" or hi - lo > 2**20:  # too many levels for a table: map every pixel
        return _display_levels(raw, None, ds, facts).astype(np.float32)
    index = raw.astype(np.intp) - lo if lo else raw.astype(np.intp, copy=False)
    counts = np.bincount(index.ravel(), minlength=hi - lo + 1)
    levels = np.arange(lo, hi + 1, dtype=np.int64)
    table = _display_levels(levels, counts, ds, facts).astype(np.float32)
    return table[index]


def _display_levels(stored: np.ndarray, counts: np.ndarray | None, ds, facts: dict[str, str]) -> np.ndarray:
    from pydicom import pixels

    values = np.asarray(pixels.apply_modality_lut(stored, ds), dtype=np.float64)
    window = _window(ds)
    if window is not None:
        facts["display"] = f"VOI window {window[0]:g}/{window[1]:g}"
        return _apply_window(values, *window, str(_tag(ds, "VOILUTFunction") or "LINEAR").upper())
    if ds.get("VOILUTSequence"):
        facts["display"] = "VOI LUT"
        lut_input = values.astype(np.int64) if np.array_equal(values, np.round(values)) else values
        out = np.asarray(pixels.apply_voi(lut_input, ds, index=0), dtype=np.float64)
        top = 2 ** int(ds.VOILUTSequence[0].LUTDescriptor[2]) - 1
        if out.max() > top:  # descriptors that overstate or understate the LUT's bits are common
            top = 2 ** int(out.max()).bit_length() - 1
        return np.clip(out / top, 0.0, 1.0)
    facts["display"] = "auto window (0.5-99.5 percentiles)"
    return _stretch(values, *_percentile_window(values, counts))


def _window(ds) -> tuple[float, float] | None:
    """The first VOI window (centre, width), when the file has a usable one."""
    try:
        c, w = float(_tag(ds, "WindowCenter")), float(_tag(ds, "WindowWidth"))
    except (TypeError, ValueError):  # absent (None) or not a number
        return None
    return (c, w) if w > 1 and math.isfinite(c) and math.isfinite(w) else None


def _apply_window(x: np.ndarray, c: float, w: float, function: str) -> np.ndarray:
    """DICOM PS3.3 C.11.2.1.2 windowing, normalised to [0, 1]."""
    if function == "SIGMOID":
        return 1.0 / (1.0 + np.exp(-4.0 * (x - c) / w))
    if function == "LINEAR_EXACT":
        return np.clip((x - c) / w + 0.5, 0.0, 1.0)
    return np.clip((x - (c - 0.5)) / (w - 1) + 0.5, 0.0, 1.0)


# ---------------------------------------------------------------------------------------------
# everything else: say what the file is, when it can be told


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

