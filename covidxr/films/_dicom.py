"""DICOM through pydicom (+ pylibjpeg, openjpeg, JPEG-LS plugins for compressed syntaxes) -> Film.

pydicom is imported inside the functions: PNG/JPEG users do not pay for it.
"""
from __future__ import annotations

import io
import math
from collections.abc import MutableSequence
from datetime import date

import numpy as np
from scipy.special import expit

from ._common import (Film, FilmError, _check_size, _finish, _fit_array, _gray, _percentile_window, _reason,
                      _stretch)

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
    # The patient's age, for the gate's "not validated on children" warning; the dates it may come from
    # (birth date, study date) are identifying and are not kept.
    age = dicom_age_years(_clean(_tag(ds, "PatientAge")), _clean(_tag(ds, "PatientBirthDate")),
                          _clean(_tag(ds, "StudyDate")))
    facts["age_years"] = "" if age is None else f"{age:.1f}"
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
        return expit(4.0 * (x - c) / w)  # the logistic, without overflow far from the centre
    if function == "LINEAR_EXACT":
        return np.clip((x - c) / w + 0.5, 0.0, 1.0)
    return np.clip((x - (c - 0.5)) / (w - 1) + 0.5, 0.0, 1.0)


def dicom_age_years(patient_age: str | None = None, birth_date: str | None = None,
                    study_date: str | None = None) -> float | None:
    """A patient's age in years from DICOM PatientAge ("045Y", "006M", "010W", "003D"), else from
    PatientBirthDate and StudyDate (YYYYMMDD); None when neither says."""
    s = str(patient_age or "").strip().upper()
    if len(s) >= 2 and s[:-1].isdigit() and s[-1] in "YMWD":
        return int(s[:-1]) / {"Y": 1, "M": 12, "W": 52.1775, "D": 365.25}[s[-1]]
    if s.replace(".", "", 1).isdigit():  # a bare number: years, as some exporters write it
        return float(s)

    def day(v: str | None) -> date | None:
        v = str(v or "").strip()[:8]
        try:
            return date(int(v[:4]), int(v[4:6]), int(v[6:8])) if len(v) == 8 and v.isdigit() else None
        except ValueError:
            return None

    born, seen = day(birth_date), day(study_date)
    if born and seen and seen >= born:
        return (seen - born).days / 365.25
    return None
