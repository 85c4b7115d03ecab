"""The web tier's cost per film (docs/performance-web.md): the result view's images are sent at display size
and encoded once per film and opacity in a session, however often the page reruns. Behaviour, not timings."""
from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image
from streamlit.testing.v1 import AppTest

from tests.conftest import REPO, shared_data
from webapp.views import images

FILM_1024 = shared_data("dicom", "cxr", "nih-cxr_DX_1024_8bit.dcm")  # a 1024 px chest film the gate accepts


def decoded(data: bytes) -> Image.Image:
    im = Image.open(io.BytesIO(data))
    im.load()
    return im


def test_jpeg_bytes_is_display_sized_and_never_enlarged():
    big = np.zeros((768, 1024, 3), np.uint8)
    big[:, :512] = 200
    out = decoded(images.jpeg_bytes(big, images.DISPLAY_SIDE))
    assert out.format == "JPEG" and out.size == (800, 600) and out.mode == "RGB"
    small = decoded(images.jpeg_bytes(np.full((300, 200), 128, np.uint8), images.DISPLAY_SIDE))
    assert small.size == (200, 300) and small.mode == "L"
    assert decoded(images.jpeg_bytes(big)).size == (1024, 768)  # no side: full size


def test_drawing_is_the_overlay_pixel_for_pixel_and_the_muted_map_within_one_level():
    from covidxr.explain import overlay

    rng = np.random.default_rng(0)
    pixels = rng.random((300, 260), dtype=np.float32) * 1.2 - 0.1   # out-of-range values are clipped alike
    heat = rng.random((300, 260), dtype=np.float32)
    drawing = images.Drawing(pixels, heat)
    for alpha in (0.0, 0.45, 1.0):
        assert np.array_equal(drawing.draw(alpha), overlay(pixels, heat, alpha))
        muted = drawing.draw(alpha, muted=True).astype(int) - images.muted_overlay(pixels, heat, alpha).astype(int)
        assert np.abs(muted).max() <= 1
    small = images.Drawing(pixels, heat, side=200)
    assert small.draw(0.45).shape == (200, 173, 3)
    assert np.array_equal(small.draw(0.45), overlay(images.shrink(pixels, 200), images.shrink(heat, 200), 0.45))
    with pytest.raises(ValueError):
        drawing.draw(1.5)


@pytest.mark.slow
def test_display_images_are_encoded_once_per_film_and_opacity(classifier, monkeypatch):
    from webapp.views import view

    encoded: list[tuple[int, int]] = []
    original = view.jpeg_bytes

    def recording(image, side=None, **kw):
        out = original(image, side, **kw)
        encoded.append(decoded(out).size)
        return out

    monkeypatch.setattr(view, "jpeg_bytes", recording)
    monkeypatch.setenv("COVIDXR_WEIGHTS", str(classifier.directory))
    monkeypatch.setenv("COVIDXR_THREADS", "1")
    monkeypatch.delenv("COVIDXR_DATA_ROOTS", raising=False)
    app = AppTest.from_file(str(REPO / "app.py"), default_timeout=300)
    app.run()
    app.file_uploader[0].set_value((FILM_1024.name, FILM_1024.read_bytes(), "application/dicom")).run()
    assert not app.exception
    assert any("COVID-19 pattern:" in e.value for e in [*app.success, *app.error, *app.warning])
    # the film, the overlay beside it (both at most the display size) and the larger view
    assert len(encoded) == 3
    sides = sorted(max(size) for size in encoded)
    assert sides[1] <= images.DISPLAY_SIDE < sides[2] <= images.LARGE_SIDE
    shown = [img.value for img in app.image]

    app.run()                                           # a rerun of the page draws and encodes nothing again
    assert not app.exception and len(encoded) == 3
    assert [img.value for img in app.image] == shown    # the very same media files

    app.slider[0].set_value(0.95).run()                 # the opacity slider
    assert not app.exception
    assert len(encoded) == 5                            # only the overlay, at its two sizes; not the film
    assert app.image[0].value == shown[0] and app.image[1].value != shown[1]
    app.slider[0].set_value(0.45).run()                 # back to an opacity already drawn: from the cache
    assert len(encoded) == 5 and app.image[1].value == shown[1]


@pytest.mark.slow
def test_the_downloaded_overlay_keeps_the_films_full_size(classifier):
    from covidxr.explain import explain
    from covidxr.films import read_film
    from webapp.views import view

    film = read_film(FILM_1024.read_bytes(), name=FILM_1024.name)
    ex = explain(classifier, film)
    for positive in (True, False):
        assert view.drawn(film, ex, positive, 0.45).shape == (*film.pixels.shape, 3)
