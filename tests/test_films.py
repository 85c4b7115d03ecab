"""The film reader: edge cases built here with Pillow and pydicom, then the real files in ../shared."""
from __future__ import annotations

import csv
import io
import re

import numpy as np
import pytest
from PIL import Image

from covidxr import films
from covidxr.films import WORK_SIDE, Film, FilmError, _common, _dicom, film_summary, read_film
from tests.bad_inputs import dicom_bytes, encode, film_array
from tests.conftest import shared_data

DICOM_DIR = shared_data("dicom")


def block_mean(a: np.ndarray, k: int) -> np.ndarray:
    h, w = a.shape[0] // k * k, a.shape[1] // k * k
    return a[:h, :w].astype(np.float64).reshape(h // k, k, w // k, k).mean(axis=(1, 3))


def corr(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.corrcoef(a.ravel(), b.ravel())[0, 1])


# --------------------------------------------------------------------------------------------
# Pillow formats


def test_gray_png_is_read_exactly_and_film_contract_holds():
    a = film_array(300, 200)
    film = read_film(encode(a, "PNG"), name="a.png")
    assert isinstance(film, Film) and film.pixels.dtype == np.float32 and film.pixels.shape == (300, 200)
    assert (film.width, film.height, film.format, film.name) == (200, 300, "PNG", "a.png")
    np.testing.assert_allclose(film.pixels, a / 255.0, atol=1e-6)
    assert film.facts["colour"] == "no" and film.facts["bits"] == "8"


def test_16bit_png_full_range_scales_by_65535():
    a = (np.linspace(0, 65535, 256)[None, :] + np.zeros((64, 1))).astype(np.uint16)
    film = read_film(encode(Image.fromarray(a), "PNG"))
    np.testing.assert_allclose(film.pixels, a / 65535.0, atol=1e-6)
    assert film.facts["bits"] == "16"


def test_16bit_png_that_uses_12_bits_is_scaled_by_4095_not_65535():
    a = (np.linspace(0, 4095, 256)[None, :] + np.zeros((64, 1))).astype(np.uint16)
    film = read_film(encode(Image.fromarray(a), "PNG"))
    np.testing.assert_allclose(film.pixels, a / 4095.0, atol=1e-6)
    assert film.pixels.max() == pytest.approx(1.0) and film.facts["bits"] == "12 (of 16)"


def test_large_16bit_png_is_reduced_by_exact_box_means():
    rng = np.random.default_rng(3)
    a = rng.integers(0, 65536, (2048, 2048), dtype=np.uint16)
    film = read_film(encode(Image.fromarray(a), "PNG"))
    assert film.pixels.shape == (WORK_SIDE, WORK_SIDE) and (film.width, film.height) == (2048, 2048)
    np.testing.assert_allclose(film.pixels, block_mean(a, 2) / 65535.0, atol=1e-5)


def test_16bit_tiff_reads_like_16bit_png():
    a = (film_array(128, 96).astype(np.uint16) * 64)  # 14 bits used
    from_tiff = read_film(encode(Image.fromarray(a), "TIFF"))
    from_png = read_film(encode(Image.fromarray(a), "PNG"))
    assert from_tiff.format == "TIFF" and from_tiff.facts["bits"] == "14 (of 16)"
    np.testing.assert_allclose(from_tiff.pixels, from_png.pixels, atol=1e-6)
    np.testing.assert_allclose(from_tiff.pixels, a / 16383.0, atol=1e-6)


def test_float_tiff_in_unit_range_is_kept_and_otherwise_windowed():
    a = film_array(64, 64).astype(np.float32) / 255
    np.testing.assert_allclose(read_film(encode(Image.fromarray(a, mode="F"), "TIFF")).pixels, a, atol=1e-6)
    scaled = read_film(encode(Image.fromarray(a * 3000 - 500, mode="F"), "TIFF")).pixels
    assert scaled.min() == 0 and scaled.max() == 1 and corr(scaled, a) > 0.99


@pytest.mark.parametrize("size, expected", [((3000, 1500), (512, 1024)), ((1500, 3000), (1024, 512)),
                                            ((1100, 700), (652, 1024))])
@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_reduction_keeps_aspect_and_records_the_original_size(size, expected, fmt):
    w, h = size
    a = np.asarray(Image.fromarray(film_array(64, 64)).resize((w, h), Image.BILINEAR))
    film = read_film(encode(a, fmt))
    assert film.pixels.shape == expected and (film.width, film.height) == (w, h)
    assert max(film.pixels.shape) == WORK_SIDE
    assert abs(film.pixels.mean() - a.mean() / 255) < 0.01


def test_wrong_extension_is_read_by_content():
    film = read_film(encode(film_array(), "JPEG"), name="really_a_jpeg.png")
    assert film.format == "JPEG" and film.name == "really_a_jpeg.png"


def test_exif_orientation_rotates_the_film():
    a = np.full((120, 200), 40, np.uint8)
    a[:60, :100] = 230  # a bright top-left quadrant on a wide image
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    film = read_film(encode(a, "JPEG", exif=exif.tobytes(), quality=95))
    assert (film.width, film.height) == (120, 200) and film.pixels.shape == (200, 120)
    assert film.facts["exif_orientation"] == "6"
    rotated = np.rot90(a, k=-1) / 255.0  # clockwise: the bright quadrant moves to the top right
    assert np.abs(film.pixels - rotated).mean() < 0.02
    assert film.pixels[:100, 60:].mean() > 0.8 and film.pixels[:100, :60].mean() < 0.3


def test_rgb_gray_content_is_not_colour_and_photo_is():
    gray = film_array()
    film = read_film(encode(np.stack([gray] * 3, axis=-1), "JPEG", quality=90))
    assert film.facts["colour"] == "no"
    assert np.abs(film.pixels - gray / 255.0).mean() < 0.02
    photo = np.stack([gray, np.roll(gray, 40, axis=1), 255 - gray], axis=-1)
    assert read_film(encode(photo, "PNG")).facts["colour"] == "yes"


def test_colour_becomes_luma():
    rgb = np.zeros((64, 64, 3), np.uint8)
    rgb[..., 0], rgb[..., 1], rgb[..., 2] = 200, 100, 50
    rgb[:32] = 0  # some contrast, so that the film is not blank
    film = read_film(encode(rgb, "PNG"))
    assert film.pixels[40, 40] == pytest.approx((0.299 * 200 + 0.587 * 100 + 0.114 * 50) / 255, abs=1e-4)


def test_rgba_and_la_are_flattened_on_black():
    rgba = np.zeros((64, 64, 4), np.uint8)
    rgba[..., :3] = 200
    rgba[:, :16, 3], rgba[:, 16:32, 3], rgba[:, 32:, 3] = 0, 128, 255
    film = read_film(encode(rgba, "PNG"))
    assert film.facts["alpha"] == "flattened on black"
    assert film.pixels[:, :16].max() == 0
    assert film.pixels[:, 20:28].mean() == pytest.approx(200 / 255 * 128 / 255, abs=0.01)
    assert film.pixels[:, 40:].mean() == pytest.approx(200 / 255, abs=1e-3)
    la = Image.fromarray(rgba[..., [0, 3]], mode="LA")
    np.testing.assert_allclose(read_film(encode(la, "PNG")).pixels, film.pixels, atol=0.01)


def test_palette_png_and_gif_read_their_palette_values():
    gray = film_array(80, 80)
    pal = Image.fromarray(gray).convert("P")
    expected = np.asarray(pal.convert("L")) / 255.0
    for fmt in ("PNG", "GIF"):
        film = read_film(encode(pal, fmt))
        assert film.format == fmt and film.facts["mode"] == "P" and film.facts["colour"] == "no"
        np.testing.assert_allclose(film.pixels, expected, atol=1 / 255)


def test_palette_with_transparency_is_flattened():
    pal = Image.fromarray(film_array(64, 64)).convert("P")
    pal.info["transparency"] = int(np.asarray(pal)[0, 0])
    film = read_film(encode(pal, "PNG", transparency=pal.info["transparency"]))
    assert film.facts["alpha"] == "flattened on black" and film.pixels[0, 0] == 0


def test_cmyk_jpeg_reads_as_gray():
    k = film_array(96, 96)
    cmyk = np.zeros((96, 96, 4), np.uint8)
    cmyk[..., 3] = 255 - k  # gray printed with black ink only
    film = read_film(encode(Image.fromarray(cmyk, mode="CMYK"), "JPEG", quality=95))
    assert film.format == "JPEG" and film.facts["mode"] == "CMYK" and film.facts["colour"] == "no"
    assert corr(film.pixels, k) > 0.98 and np.abs(film.pixels - k / 255.0).mean() < 0.03


def test_bmp_and_single_frame_gif_and_webp_read():
    a = film_array(64, 80)
    for fmt in ("BMP", "GIF", "WEBP"):
        film = read_film(encode(a, fmt, **({"lossless": True} if fmt == "WEBP" else {})))
        assert film.format == fmt and film.pixels.shape == (64, 80)
        assert corr(film.pixels, a) > 0.95


def test_path_input_names_the_film_and_missing_path_is_a_film_error(tmp_path):
    path = tmp_path / "chest.png"
    path.write_bytes(encode(film_array(), "PNG"))
    assert read_film(path).name == "chest.png" and read_film(str(path), name="x").name == "x"
    with pytest.raises(FilmError, match="cannot read the file"):
        read_film(tmp_path / "missing.png")
    with pytest.raises(FilmError, match="cannot read the file"):
        read_film(tmp_path)


def test_file_size_limit_is_checked_before_reading(tmp_path, monkeypatch):
    data = encode(film_array(), "PNG")
    (tmp_path / "a.png").write_bytes(data)
    monkeypatch.setattr(_common, "MAX_BYTES", len(data) - 1)  # the limit lives with the check that reads it
    for source in (data, tmp_path / "a.png"):
        with pytest.raises(FilmError, match="too large"):
            read_film(source)


def test_repr_omits_pixels_and_summary_is_small():
    film = read_film(encode(film_array(), "PNG"), name="a.png")
    assert "pixels" not in repr(film) and "array" not in repr(film)
    assert film_summary(film) == {"size": "256 x 320 px", "format": "PNG"}


# --------------------------------------------------------------------------------------------
# DICOM built here


def ramp16(bits: int = 12, shape=(96, 128)) -> np.ndarray:
    top = 2**bits - 1
    return (np.linspace(0, top, shape[1])[None, :] * np.linspace(0.5, 1, shape[0])[:, None]).astype(np.uint16)


def test_dicom_without_voi_uses_percentile_window():
    a = ramp16()
    film = read_film(dicom_bytes(a, BitsStored=12, HighBit=11))
    lo, hi = np.percentile(a, films.AUTO_WINDOW)
    np.testing.assert_allclose(film.pixels, np.clip((a - lo) / (hi - lo), 0, 1), atol=2e-3)
    assert film.facts["display"].startswith("auto window")


def test_dicom_age_reaches_the_facts_but_no_date_does():
    """The gate warns on children; the age comes from PatientAge, else birth and study dates, and the
    dates themselves (identifying) are not kept."""
    a = ramp16()
    aged = read_film(dicom_bytes(a, BitsStored=12, HighBit=11, PatientAge="007Y"))
    dated = read_film(dicom_bytes(a, BitsStored=12, HighBit=11, PatientBirthDate="20100301", StudyDate="20200301"))
    unknown = read_film(dicom_bytes(a, BitsStored=12, HighBit=11))
    assert aged.facts["age_years"] == "7.0" and dated.facts["age_years"] == "10.0"
    assert "age_years" not in unknown.facts
    assert not any("2010" in v or "2020" in v for v in dated.facts.values())


def test_dicom_rescale_then_window_are_applied():
    a = ramp16(bits=11)
    film = read_film(dicom_bytes(a, BitsStored=11, HighBit=10, RescaleSlope=2, RescaleIntercept=-1000,
                                 WindowCenter=500, WindowWidth=2001))
    hu = a * 2.0 - 1000
    expected = np.clip((hu - 499.5) / 2000 + 0.5, 0, 1)
    np.testing.assert_allclose(film.pixels, expected, atol=1e-5)
    assert film.facts["display"] == "VOI window 500/2001"


def test_dicom_sigmoid_voi_function():
    a = ramp16()
    film = read_film(dicom_bytes(a, BitsStored=12, HighBit=11, WindowCenter=2048, WindowWidth=1000,
                                 VOILUTFunction="SIGMOID"))
    np.testing.assert_allclose(film.pixels, 1 / (1 + np.exp(-4 * (a - 2048.0) / 1000)), atol=1e-5)


def test_dicom_voi_lut_sequence_is_applied_when_there_is_no_window():
    from pydicom.dataset import Dataset

    a = ramp16()
    item = Dataset()
    item.LUTDescriptor = [4096, 0, 16]
    item.LUTData = (np.sqrt(np.arange(4096) / 4095) * 65535).astype(np.uint16).tolist()
    item["LUTData"].VR = "US"
    film = read_film(dicom_bytes(a, BitsStored=12, HighBit=11, VOILUTSequence=[item]))
    assert film.facts["display"] == "VOI LUT"
    np.testing.assert_allclose(film.pixels, np.sqrt(a / 4095), atol=1e-4)


def test_monochrome1_is_the_inverse_of_monochrome2():
    a = ramp16()
    mono2 = read_film(dicom_bytes(a, BitsStored=12, HighBit=11))
    mono1 = read_film(dicom_bytes(a, BitsStored=12, HighBit=11, PhotometricInterpretation="MONOCHROME1"))
    np.testing.assert_allclose(mono1.pixels, 1 - mono2.pixels, atol=1e-6)


def test_large_dicom_is_reduced_and_keeps_its_size():
    a = ramp16(shape=(2100, 1400))
    film = read_film(dicom_bytes(a, BitsStored=12, HighBit=11))
    assert film.pixels.shape == (1024, 683) and (film.width, film.height) == (1400, 2100)


@pytest.mark.parametrize("syntax", ["1.2.840.10008.1.2.5", "1.2.840.10008.1.2.4.80", "1.2.840.10008.1.2.4.90"])
def test_compressed_dicom_decodes_like_native(syntax):
    from pydicom import dcmread

    native = dicom_bytes(ramp16(), BitsStored=12, HighBit=11)
    ds = dcmread(io.BytesIO(native))
    ds.compress(syntax)
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    film = read_film(buffer.getvalue())
    assert film.facts["transfer_syntax"] == ds.file_meta.TransferSyntaxUID.name
    np.testing.assert_allclose(film.pixels, read_film(native).pixels, atol=1e-6)


def test_jpeg_baseline_dicom_built_from_a_pillow_jpeg():
    a = film_array(128, 128)
    data = dicom_bytes(a, syntax="1.2.840.10008.1.2.4.50", encapsulated=True, pixel_data=encode(a, "JPEG"))
    film = read_film(data)
    assert film.format == "DICOM" and corr(film.pixels, a) > 0.98


def test_rgb_dicom_becomes_gray_and_says_colour():
    gray = film_array(64, 64)
    rgb = np.stack([gray, 255 - gray, gray // 2], axis=-1)
    data = dicom_bytes(gray, pixel_data=rgb.tobytes(), SamplesPerPixel=3, PhotometricInterpretation="RGB",
                       PlanarConfiguration=0)
    film = read_film(data)
    assert film.facts["colour"] == "yes" and film.pixels.shape == (64, 64)


def test_headerless_implicit_dicom_is_found_by_content():
    from pydicom import dcmread
    from pydicom.filebase import DicomBytesIO
    from pydicom.filewriter import write_dataset

    native = dicom_bytes(ramp16(), BitsStored=12, HighBit=11)
    buffer = DicomBytesIO()
    buffer.is_implicit_VR, buffer.is_little_endian = True, True
    write_dataset(buffer, dcmread(io.BytesIO(native)))  # the dataset alone: no preamble, no File Meta
    raw = buffer.getvalue()
    assert raw[128:132] != b"DICM" and raw[:2] == b"\x08\x00"
    np.testing.assert_allclose(read_film(raw).pixels, read_film(native).pixels, atol=1e-6)


def test_dicom_facts_are_an_allow_list_without_identity():
    data = dicom_bytes(ramp16(), BitsStored=12, HighBit=11, ViewPosition="PA", BodyPartExamined="CHEST",
                       PatientBirthDate="19400305", InstitutionName="Saint Nowhere", AccessionNumber="ACC777")
    film = read_film(data)
    allowed = set(_dicom._DICOM_FACTS) | {"transfer_syntax", "sop_class", "display", "colour", "colour_share"}
    assert set(film.facts) <= allowed
    text = repr(film) + repr(film_summary(film))
    for secret in ("Test^Corpus", "CORPUS-0001", "19400305", "Saint Nowhere", "ACC777"):
        assert secret not in text
    assert film_summary(film) == {"modality": "CR", "view": "PA", "size": "128 x 96 px", "format": "DICOM"}


# --------------------------------------------------------------------------------------------
# real files from ../shared


def dicom_manifest() -> list[dict[str, str]]:
    with open(DICOM_DIR / "MANIFEST.csv", newline="") as f:
        return list(csv.DictReader(f))


DICOM_ROWS = dicom_manifest()


@pytest.mark.parametrize("row", DICOM_ROWS, ids=[r["file"] for r in DICOM_ROWS])
def test_every_shared_dicom_reads_with_its_header_facts(row):
    film = read_film(DICOM_DIR / row["file"])
    assert film.format == "DICOM" and film.pixels.dtype == np.float32
    assert (film.height, film.width) == (int(row["Rows"]), int(row["Columns"]))
    assert max(film.pixels.shape) <= WORK_SIDE and 0 <= film.pixels.min() < film.pixels.max() <= 1
    expected_shape = _common._target(film.width, film.height)[::-1]
    assert film.pixels.shape == expected_shape
    assert film.facts["modality"] == row["Modality"]
    assert film.facts["photometric"] == row["PhotometricInterpretation"]
    assert film.facts["bits_stored"] == row["BitsStored"]
    assert film.facts.get("view", "") == row["ViewPosition"]
    assert film.facts.get("body_part", "") == row["BodyPartExamined"]
    assert film.facts["transfer_syntax"] == row["TransferSyntaxName"]


@pytest.mark.parametrize("row", DICOM_ROWS, ids=[r["file"] for r in DICOM_ROWS])
def test_no_patient_identifier_reaches_facts_or_repr(row):
    ids = [v for v in re.findall(r"'([^']*)'", row["patient_ids"]) if v]
    assert ids  # the manifest does name them
    film = read_film((DICOM_DIR / row["file"]).read_bytes(), name="upload.dcm")  # file names are not headers
    shown = repr(film) + repr(film_summary(film)) + " ".join(film.facts.values())
    for value in ids:
        for part in {value, *value.split("^")}:
            assert part not in shown


def test_fake_monochrome1_is_the_inverse_of_its_monochrome2_twin():
    twin = read_film(DICOM_DIR / "cxr/siim-acr_CR_PA_jpeg-baseline.dcm").pixels
    fake = read_film(DICOM_DIR / "cxr/siim-acr_CR_PA_jpeg-baseline_FAKE-MONOCHROME1.dcm").pixels
    assert corr(twin, fake) < -0.99


def test_real_monochrome1_chest_shows_dark_lungs():
    """After inversion the lungs (either side of the middle) are darker than the mediastinum."""
    for name in ("cxr/fo-dicom_CR-MONO1-10-chest.dcm", "cxr/nema-wg04_RG1_J2KI.dcm"):
        p = read_film(DICOM_DIR / name).pixels
        h, w = p.shape
        lungs = (p[h // 3:h * 2 // 3, w // 5:w * 2 // 5].mean() + p[h // 3:h * 2 // 3, w * 3 // 5:w * 4 // 5].mean()) / 2
        mediastinum = p[h // 3:h * 2 // 3, w * 9 // 20:w * 11 // 20].mean()
        assert lungs < mediastinum


def test_transcoded_and_headerless_twins_decode_alike():
    original = read_film(DICOM_DIR / "cxr/fo-dicom_CR-MONO1-10-chest.dcm").pixels
    for derived in sorted((DICOM_DIR / "cxr/derived").glob("fo-dicom_CR-MONO1-10-chest__*.dcm")):
        np.testing.assert_allclose(read_film(derived).pixels, original, atol=1e-6)
    j2k = read_film(DICOM_DIR / "cxr/nema-wg04_RG1_J2KI.dcm").pixels
    jls = read_film(DICOM_DIR / "cxr/nema-wg04_RG1_JLSN.dcm").pixels
    assert corr(j2k, jls) > 0.99


def cxr_rows(per_source: int = 2) -> list[dict[str, str]]:
    with open(shared_data("cxr", "MANIFEST.csv"), newline="") as f:
        rows = list(csv.DictReader(f))
    picked: dict[str, list[dict[str, str]]] = {}
    for row in rows:
        picked.setdefault(row["source"], [])
        if len(picked[row["source"]]) < per_source:
            picked[row["source"]].append(row)
    return [row for chosen in picked.values() for row in chosen]


@pytest.mark.parametrize("row", cxr_rows(), ids=lambda r: r["path"])
def test_shared_jpegs_read_at_their_manifest_size(row):
    film = read_film(shared_data("cxr", row["path"]))
    assert film.format == "JPEG" and (film.width, film.height) == (int(row["width"]), int(row["height"]))
    assert film.facts["colour"] == "no" and film.pixels.std() > 0.05


@pytest.mark.slow
def test_concurrent_reads_equal_single_reads():
    from concurrent.futures import ThreadPoolExecutor

    sources = [encode(Image.fromarray(ramp16(shape=(1500, 1200))), "PNG"), encode(film_array(), "JPEG"),
               (DICOM_DIR / "cxr/nema-wg04_RG1_J2KI.dcm").read_bytes(), dicom_bytes(ramp16(), BitsStored=12, HighBit=11)]
    single = [read_film(s).pixels for s in sources]
    with ThreadPoolExecutor(8) as pool:
        films_read = list(pool.map(read_film, sources * 4))
    for i, film in enumerate(films_read):
        np.testing.assert_array_equal(film.pixels, single[i % len(sources)])
