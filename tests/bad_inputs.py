"""A corpus of bad inputs, built in memory: each kind of file a clinician might drop by mistake.

`bad_inputs()` returns BadInput(kind, data, filename, expect) tuples: `read_film(data, filename)`
must raise FilmError whose message contains `expect`. The reader's tests and the CLI's tests both
run over it, so every kind gets the same specific message in the core, the CLI and the app.
Nothing here is a committed binary: Pillow, pydicom and numpy build every file.
"""
from __future__ import annotations

import gzip
import io
import struct
import zipfile
import zlib
from functools import lru_cache
from typing import NamedTuple

import numpy as np
from PIL import Image

from covidxr.films import MAX_PIXELS


class BadInput(NamedTuple):
    kind: str       # short id, also usable as a pytest id
    data: bytes
    filename: str   # the name it is uploaded under (often lying about the content)
    expect: str     # a substring of the FilmError message


def film_array(height: int = 320, width: int = 256, seed: int = 0) -> np.ndarray:
    """An 8-bit film-like image: a smooth gradient with noise, so that it compresses like a photo."""
    rng = np.random.default_rng(seed)
    ramp = np.linspace(30, 220, width)[None, :] + np.linspace(-20, 20, height)[:, None]
    return np.clip(ramp + rng.normal(0, 12, (height, width)), 0, 255).astype(np.uint8)


def encode(image: Image.Image | np.ndarray, fmt: str, **options) -> bytes:
    """Pillow-encode an image (or an array) to bytes."""
    if isinstance(image, np.ndarray):
        image = Image.fromarray(image)
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


def png_with_size(width: int, height: int) -> bytes:
    """A real small PNG whose header claims width x height: a decompression bomb as the header sees it."""
    png = bytearray(encode(film_array(40, 40), "PNG"))
    assert png[12:16] == b"IHDR"
    png[16:24] = struct.pack(">II", width, height)
    png[29:33] = struct.pack(">I", zlib.crc32(bytes(png[12:29])))
    return bytes(png)


def jpeg_with_size(width: int, height: int) -> bytes:
    """A real small JPEG whose SOF0 header claims width x height."""
    jpeg = bytearray(encode(film_array(40, 40), "JPEG"))
    sof = jpeg.index(b"\xff\xc0")
    jpeg[sof + 5:sof + 9] = struct.pack(">HH", height, width)
    return bytes(jpeg)


def dicom_bytes(pixels: np.ndarray | None = None, syntax: str = "1.2.840.10008.1.2.1",
                sop_class: str = "1.2.840.10008.5.1.4.1.1.1", pixel_data: bytes | None = None,
                encapsulated: bool = False, **tags) -> bytes:
    """A DICOM file in memory: CR image storage, MONOCHROME2, explicit VR little endian by default.

    `pixels` fills Rows/Columns/bits from an array; `pixel_data` overrides the raw element;
    keyword `tags` are set last (None deletes), so that any header can be made wrong.
    """
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.encaps import encapsulate
    from pydicom.uid import UID, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = UID(sop_class)
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = UID(syntax)
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.Modality, ds.PatientName, ds.PatientID = "CR", "Test^Corpus", "CORPUS-0001"
    if pixels is not None:
        ds.Rows, ds.Columns = pixels.shape[:2]
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated = ds.BitsStored = pixels.dtype.itemsize * 8
        ds.HighBit, ds.PixelRepresentation = ds.BitsStored - 1, 0
        pixel_data = pixels.tobytes() if pixel_data is None else pixel_data
    if pixel_data is not None:
        ds.PixelData = encapsulate([pixel_data]) if encapsulated else pixel_data
        ds["PixelData"].VR = "OB" if encapsulated or ds.get("BitsAllocated", 8) == 8 else "OW"
    for keyword, value in tags.items():
        if value is None:
            delattr(ds, keyword)
        else:
            setattr(ds, keyword, value)
    buffer = io.BytesIO()
    private = {} if meta.TransferSyntaxUID.is_transfer_syntax else {"implicit_vr": False, "little_endian": True}
    ds.save_as(buffer, enforce_file_format=True, **private)
    return buffer.getvalue()


def _animated(fmt: str, frames: int = 3, **options) -> bytes:
    images = [Image.fromarray(film_array(64, 64, seed=i)) for i in range(frames)]
    return encode(images[0], fmt, save_all=True, append_images=images[1:], **options)


def _zip_of(name: str, data: bytes) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as z:
        z.writestr(name, data)
    return buffer.getvalue()


def _flip_byte(data: bytes, at: int) -> bytes:
    return data[:at] + bytes([data[at] ^ 0xFF]) + data[at + 1:]


@lru_cache(maxsize=1)
def bad_inputs() -> tuple[BadInput, ...]:
    """Every kind of bad input, each with the message substring it must produce."""
    film = film_array()
    png, jpeg, bmp = encode(film, "PNG"), encode(film, "JPEG", quality=90), encode(film, "BMP")
    small_film = film_array(64, 64)
    side = int(MAX_PIXELS ** 0.5) + 100  # just over the reader's own limit, under Pillow's bomb limit
    nan_film = film.astype(np.float32) / 255
    nan_film[10:20, 10:20] = np.nan
    native = film.astype(np.uint16) * 4
    cases = [
        ("empty", b"", "film.png", "empty"),
        ("png-truncated-half", png[:len(png) // 2], "film.png", "PNG file is truncated"),
        ("png-signature-only", png[:16], "film.png", "PNG file is truncated"),
        ("png-corrupt-data", _flip_byte(png, len(png) // 2), "film.png", "PNG file is truncated or corrupt"),
        ("jpeg-truncated-half", jpeg[:len(jpeg) // 2], "film.jpg", "JPEG file is truncated"),
        ("jpeg-header-only", jpeg[:100], "film.jpg", "JPEG file is truncated"),
        ("bmp-truncated", bmp[:len(bmp) // 2], "film.bmp", "BMP file is truncated"),
        ("text-renamed-png", b"Patient film attached.\nPlease review.\n" * 20, "film.png", "text, not an image"),
        ("text-starting-like-bmp", b"BMI 24.3, chest clear.\n" * 10, "film.bmp", "text, not an image"),
        ("html-renamed-jpg", b"<!DOCTYPE html><html><body><img src='film.png'></body></html>", "film.jpg",
         "HTML page"),
        ("svg-drawing", b'<?xml version="1.0"?><svg xmlns="http://www.w3.org/2000/svg"></svg>', "film.svg",
         "SVG drawing"),
        ("pdf-document", b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n1 0 obj\n<<>>\nendobj\n", "report.pdf", "PDF document"),
        ("zip-archive", _zip_of("film.png", png), "films.png", "zip archive"),
        ("gzip-file", gzip.compress(png), "film.png.gz", "gzip-compressed"),
        ("office-document", b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1" + bytes(504), "film.doc", "Office document"),
        ("random-bytes", np.random.default_rng(1).integers(1, 256, 4096, dtype=np.uint8).tobytes(), "film.png",
         "not a recognised image format"),
        ("png-1x1", encode(np.zeros((1, 1), np.uint8), "PNG"), "dot.png", "too small"),
        ("jpeg-16x16", encode(film_array(16, 16), "JPEG"), "tiny.jpg", "too small"),
        ("png-thin-strip", encode(film_array(40, 4000), "PNG"), "strip.png", "too narrow"),
        ("png-bomb-30000", png_with_size(30000, 30000), "bomb.png", "too many pixels"),
        ("jpeg-bomb-30000", jpeg_with_size(30000, 30000), "bomb.jpg", "too many pixels"),
        ("png-over-limit", png_with_size(side, side), "huge.png", "too many pixels"),
        ("gif-animated", _animated("GIF", duration=100, loop=0), "cine.gif", "frames"),
        ("png-animated", _animated("PNG", duration=100), "cine.png", "frames"),
        ("tiff-multipage", _animated("TIFF"), "pages.tif", "frames"),
        ("png-all-black", encode(np.zeros((256, 256), np.uint8), "PNG"), "black.png", "blank"),
        ("png16-constant", encode(Image.fromarray(np.full((256, 256), 3000, np.uint16)), "PNG"), "flat.png",
         "blank"),
        ("tiff-float-nan", encode(Image.fromarray(nan_film, mode="F"), "TIFF"), "nan.tif", "NaN"),
        ("dicom-no-pixel-data", dicom_bytes(), "nopixels.dcm", "holds no image"),
        ("dicom-structured-report", dicom_bytes(sop_class="1.2.840.10008.5.1.4.1.1.88.11", Modality="SR"),
         "report.dcm", "Basic Text SR"),
        ("dicom-mpeg2-syntax", dicom_bytes(small_film, syntax="1.2.840.10008.1.2.4.100", encapsulated=True,
                                           pixel_data=b"\x00\x00\x01\xb3" + bytes(60)),
         "video.dcm", "unsupported DICOM transfer syntax: MPEG2"),
        ("dicom-private-syntax", dicom_bytes(small_film, syntax="1.2.826.0.1.3680043.9.9999.42", encapsulated=True,
                                             pixel_data=bytes(64)), "private.dcm", "unsupported DICOM transfer syntax"),
        ("dicom-corrupt-jpeg", dicom_bytes(small_film, syntax="1.2.840.10008.1.2.4.50", encapsulated=True,
                                           pixel_data=b"\xff\xd8\xff\xe0" + bytes(200)),
         "corrupt.dcm", "pixel data could not be decoded"),
        ("dicom-short-pixel-data", dicom_bytes(native, pixel_data=native.tobytes()[:5000]), "short.dcm",
         "pixel data could not be decoded"),
        ("dicom-truncated-header", dicom_bytes(native)[:400], "cut.dcm", "DICOM file is truncated"),
        ("dicom-preamble-only", dicom_bytes(native)[:300], "cut.dcm", "no dataset follows its header"),
        ("dicom-multiframe", dicom_bytes(np.concatenate([native] * 3), NumberOfFrames=3, Rows=native.shape[0]),
         "cine.dcm", "frames"),
        ("dicom-1x1", dicom_bytes(np.ones((1, 1), np.uint16)), "dot.dcm", "too small"),
        ("dicom-bomb", dicom_bytes(native, Rows=30000, Columns=30000), "bomb.dcm", "too many pixels"),
        ("dicom-no-rows", dicom_bytes(native, Rows=None), "norows.dcm", "Rows or Columns missing"),
        ("dicom-blank", dicom_bytes(np.full((128, 128), 512, np.uint16)), "blank.dcm", "blank"),
    ]
    return tuple(BadInput(*case) for case in cases)
