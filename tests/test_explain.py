"""Grad-CAM explanations: shape, range, placement, images, overlay, and where the attention falls."""
from __future__ import annotations

import csv
import io
from dataclasses import replace

import numpy as np
import pytest
from PIL import Image

from tests.conftest import REPO, shared_data
from covidxr.classifier import Classifier
from covidxr.explain import explain, heatmap_image, jet, lung_mass, overlay, place
from covidxr.films import read_film

SAMPLES = sorted((REPO / "samples").glob("*/*.jpg"))


@pytest.fixture(scope="module")
def films():
    return [read_film(p) for p in SAMPLES[:3]]


@pytest.fixture(scope="module")
def explained(classifier, films):
    return [explain(classifier, f) for f in films]


def test_heatmap_is_float_in_unit_range_at_film_resolution(films, explained):
    for film, ex in zip(films, explained):
        h = ex.heatmap
        assert h.shape == film.pixels.shape and h.dtype == np.float32
        assert h.min() >= 0.0 and h.max() <= 1.0
        assert h.max() in (0.0, 1.0)  # normalised by its max; all-zero stays zero


def test_prediction_is_predicts(classifier, films, explained):
    for film, ex in zip(films, explained):
        p = classifier.predict([film])[0]
        assert ex.prediction.probability == pytest.approx(p.probability, abs=1e-5)
        assert (ex.prediction.label, ex.prediction.positive, ex.prediction.box) == (p.label, p.positive, p.box)
        for c, q in p.class_probabilities.items():
            assert ex.prediction.class_probabilities[c] == pytest.approx(q, abs=1e-5)


def test_heatmap_is_zero_where_the_model_saw_nothing(classifier, films, explained):
    for film, ex in zip(films, explained):
        h, w = film.pixels.shape
        outside = np.ones((h, w), bool)
        for prep in classifier.prepare([film])[0].networks:  # what each network saw
            t, b, l, r = prep.box
            outside[int(t * h):int(round(b * h)), int(l * w):int(round(r * w))] = False
        assert not ex.heatmap[outside].any()


def with_input(classifier: Classifier, blank: bool) -> Classifier:
    """The first network alone, with its input blanked outside the lungs or not (the card says which)."""
    first = classifier.card.networks[0]
    network = replace(first, view=replace(first.view, blank_outside_lungs=blank))
    return Classifier(replace(classifier.card, networks=[network]), classifier.nets[:1], classifier.lungs,
                      classifier.directory)


def test_masked_map_is_zero_outside_the_lung_mask_the_model_saw(classifier, films):
    blanked, film = with_input(classifier, True), films[0]
    (prep,) = blanked.prepare([film])[0].networks
    assert not prep.image[prep.mask == 0].any()
    masked, raw = explain(blanked, film).heatmap, explain(blanked, film, masked=False).heatmap
    seen = place(prep.mask, prep.box, film.pixels.shape)
    assert not masked[seen == 0].any()
    assert ((masked > 0) <= (raw > 0)).all()  # masking only takes attention away


def test_a_map_over_an_input_that_was_not_blanked_is_never_masked(classifier, films):
    """Where the model saw the whole lung box, masking its map would hide where it looked."""
    shown, film = with_input(classifier, False), films[0]
    (prep,) = shown.prepare([film])[0].networks
    assert prep.image[prep.mask < 0.01].any()  # the surroundings of the lungs are in the input
    assert np.array_equal(explain(shown, film).heatmap, explain(shown, film, masked=False).heatmap)


def test_place_puts_the_crop_map_in_its_box():
    crop = np.zeros((8, 8), np.float32)
    crop[:, 4:] = 2.0  # right half of the crop
    out = place(crop, (0.25, 0.75, 0.5, 1.0), (40, 20))
    assert out.shape == (40, 20) and out.max() == pytest.approx(1.0)
    assert not out[:10].any() and not out[30:].any() and not out[:, :10].any()  # outside the box
    assert out[20, 19] == pytest.approx(1.0) and out[20, 10] == pytest.approx(0.0)
    assert not place(np.zeros((8, 8), np.float32), (0, 1, 0, 1), (5, 5)).any()


def test_heatmap_image_is_8bit_gray_at_the_films_own_size(classifier):
    big = Image.open(SAMPLES[0]).convert("L").resize((1500, 1300))  # larger than the working size
    buf = io.BytesIO()
    big.save(buf, format="PNG")
    film = read_film(buf.getvalue(), name="big.png")
    assert film.pixels.shape != (film.height, film.width)
    ex = explain(classifier, film)
    im = heatmap_image(ex.heatmap, film.width, film.height)
    assert im.mode == "L" and im.size == (1500, 1300)
    a = np.asarray(im)
    assert a.max() == (255 if ex.heatmap.max() > 0 else 0)


def test_heatmap_image_values():
    h = np.array([[0.0, 0.5], [1.0, 0.25]], np.float32)
    assert np.asarray(heatmap_image(h, 2, 2)).tolist() == [[0, 128], [255, 64]]


def test_overlay_without_alpha_is_the_film_in_gray(films, explained):
    film, ex = films[0], explained[0]
    rgb = overlay(film.pixels, ex.heatmap, 0.0)
    assert rgb.dtype == np.uint8 and rgb.shape == film.pixels.shape + (3,)
    gray = (film.pixels * 255 + 0.5).astype(np.uint8)
    for c in range(3):
        np.testing.assert_array_equal(rgb[..., c], gray)


def test_overlay_colours_hot_red_and_leaves_cold_gray():
    pixels = np.full((2, 2), 0.5, np.float32)
    heat = np.array([[1.0, 0.0], [0.9, 0.1]], np.float32)
    rgb = overlay(pixels, heat, 1.0).astype(int)
    assert rgb[0, 0].tolist() == [128, 0, 0]           # jet's top is dark red, fully opaque at alpha 1
    assert rgb[0, 1].tolist() == [128, 128, 128]       # no attention: the film's own gray
    assert rgb[1, 0, 0] > rgb[1, 0, 2]                  # hot -> red over blue
    assert rgb[1, 1, 2] > rgb[1, 1, 0]                  # cool -> blue over red
    with pytest.raises(ValueError):
        overlay(pixels, heat, 1.5)


def test_jet_endpoints():
    np.testing.assert_allclose(jet(np.array([0.0, 0.5, 1.0])), [[0, 0, 0.5], [0.5, 1, 0.5], [0.5, 0, 0]])


def test_lung_mass():
    heat = np.zeros((4, 4), np.float32)
    heat[:, :2] = 1.0
    heat[0, 3] = 2.0
    mask = np.zeros((4, 4), np.uint8)
    mask[:, :2] = 255
    assert lung_mass(heat, mask) == pytest.approx(8 / 10)
    big_mask = np.kron(mask, np.ones((5, 5), np.uint8))  # a mask at another resolution
    assert lung_mass(heat, big_mask) == pytest.approx(8 / 10)
    assert np.isnan(lung_mass(np.zeros((4, 4), np.float32), mask))


def lung_cases(n: int) -> list[tuple[str, str]]:
    """n films with human lung masks, spread evenly over the manifest (both sources)."""
    with open(shared_data("lungs", "MANIFEST.csv")) as f:
        rows = list(csv.DictReader(f))
    step = max(1, len(rows) // n)
    return [(r["film"], r["mask"]) for r in rows[::step][:n]]


@pytest.mark.slow
def test_attention_falls_on_the_lungs(classifier):
    """On films with human lung masks, most of the heatmap mass lies inside the lungs."""
    masked, raw, uniform = [], [], []
    for film_path, mask_path in lung_cases(10):
        film = read_film(shared_data("cxr", film_path))
        mask = np.asarray(Image.open(shared_data("lungs", mask_path)).convert("L"))
        masked.append(lung_mass(explain(classifier, film).heatmap, mask))
        raw.append(lung_mass(explain(classifier, film, masked=False).heatmap, mask))
        uniform.append(float((mask > 0).mean()))
    print(f"\nlung mass over {len(masked)} films: masked {np.nanmean(masked):.3f}, "
          f"unmasked {np.nanmean(raw):.3f}, uniform map {np.mean(uniform):.3f}")
    assert np.nanmean(masked) > 0.4


def test_shared_network_is_never_hooked_nor_given_gradients(classifier, films, explained):
    """Grad-CAM runs on private copies: the network that predict() uses stays untouched, and a
    caller inside inference_mode or no_grad still gets the same map."""
    import torch

    with torch.inference_mode():
        in_inference = explain(classifier, films[0]).heatmap
    with torch.no_grad():
        in_no_grad = explain(classifier, films[0]).heatmap
    np.testing.assert_array_equal(in_inference, explained[0].heatmap)
    np.testing.assert_array_equal(in_no_grad, explained[0].heatmap)
    modules = [m for n in classifier.nets for m in n.modules()]
    assert not any(m._forward_hooks or m._backward_hooks for m in modules)
    assert all(p.grad is None for n in classifier.nets for p in n.parameters())
