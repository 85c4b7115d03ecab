"""The gate's statistics (feature distance, orientation net), their file, and the gate on real inputs.
The gate's own rules (reasons, their order, lung fields, DICOM tags, ages) are in tests/test_gate.py."""
from __future__ import annotations

import csv
import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.conftest import REPO, shared_data
from covidxr.card import CardError, ModelCard
from covidxr.films import read_film
from covidxr.classifier import segment
from covidxr.ood import OODDetector, ledoit_wolf
from covidxr.orientation import ORIENTATIONS


def synthetic(n: int, d: int = 48, seed: int = 0) -> np.ndarray:
    """Correlated Gaussian features with a few strong directions, like pooled CNN features."""
    rng = np.random.default_rng(seed)
    mix = np.random.default_rng(99).normal(size=(d, d)) * np.geomspace(3.0, 0.05, d)
    return rng.normal(size=(n, d)) @ mix.T + 2.0


def card_with(ood: dict) -> ModelCard:
    return ModelCard(name="t", architecture="t", input_size=8, lung_input_size=8, mean=[0.5] * 3,
                     std=[0.5] * 3, class_names=["covid", "normal"], positive_class="covid",
                     threshold=0.5, threshold_rule="t", temperature=1.0, weights_file="model.pt",
                     weights_sha256="0", ood=ood)


def test_ledoit_wolf_matches_scikit_learn():
    from sklearn.covariance import ledoit_wolf as sk_ledoit_wolf

    x = synthetic(60)
    cov, shrink = ledoit_wolf(x - x.mean(0))
    sk_cov, sk_shrink = sk_ledoit_wolf(x)
    assert shrink == pytest.approx(sk_shrink, rel=1e-9)
    np.testing.assert_allclose(cov, sk_cov, rtol=1e-9, atol=1e-12)


def test_distance_is_mahalanobis_when_every_component_is_kept():
    x = synthetic(400)
    det = OODDetector.fit(x, components=x.shape[1])
    cov, _ = ledoit_wolf(x - x.mean(0))
    z = x[:5] - x.mean(0)
    want = np.sqrt(np.einsum("ij,jk,ik->i", z, np.linalg.inv(cov), z) / x.shape[1])
    np.testing.assert_allclose(det.distance(x[:5]), want, rtol=1e-4)


def test_calibrated_threshold_flags_the_far_and_spares_the_near():
    det = OODDetector.fit(synthetic(500, seed=1), components=16).calibrate(synthetic(500, seed=2), 0.99)
    fresh = det.distance(synthetic(2000, seed=3))
    assert 0.0 < np.mean(fresh > det.threshold) < 0.03  # about 1% of new in-distribution rows
    far = synthetic(20, seed=4) + 25.0 * np.random.default_rng(5).normal(size=(20, 48))
    assert (det.distance(far) > det.threshold).all()
    assert np.median(fresh) == pytest.approx(1.0, abs=0.3)  # scaled so that a typical row is about 1


def test_save_load_round_trip(tmp_path: Path):
    det = OODDetector.fit(synthetic(300), components=8).calibrate(synthetic(100, seed=7))
    name, sha = det.save(tmp_path)
    entry = det.card_entry(name, sha)
    assert set(entry) == {"file", "sha256", "threshold", "rule", "gate"} and "Ledoit-Wolf" in entry["rule"]
    with np.load(tmp_path / name, allow_pickle=False) as z:  # plain arrays only
        assert z["basis"].shape == (8, 48)
    back = OODDetector.load(tmp_path, card_with(entry))
    probe = synthetic(10, seed=8)
    np.testing.assert_allclose(back.distance(probe), det.distance(probe), rtol=1e-6)
    assert back.threshold == det.threshold and back.n_fit == 300 and back.n_calibration == 100


def test_load_refuses_a_tampered_or_missing_file(tmp_path: Path):
    det = OODDetector.fit(synthetic(100), components=4).calibrate(synthetic(50, seed=1))
    name, sha = det.save(tmp_path)
    entry = det.card_entry(name, sha)
    data = bytearray((tmp_path / name).read_bytes())
    data[-40] ^= 1
    (tmp_path / name).write_bytes(bytes(data))
    with pytest.raises(CardError, match="sha256"):
        OODDetector.load(tmp_path, card_with(entry))
    with pytest.raises(CardError, match="missing"):
        OODDetector.load(tmp_path, card_with({**entry, "file": "absent.npz"}))
    with pytest.raises(CardError, match="threshold"):
        OODDetector.load(tmp_path, card_with({"file": name, "sha256": sha}))


# ------------------------------------------------------------------ with the shipped model

def real_paths(n: int, offset: int) -> list[Path]:
    """n real films spread through the manifest; `offset` keeps fit, calibration and test apart."""
    with open(shared_data("cxr", "MANIFEST.csv")) as f:
        rows = list(csv.DictReader(f))
    step = len(rows) // n
    return [shared_data("cxr", r["path"]) for r in rows[offset::step][:n]]


@pytest.fixture(scope="module")
def detector(classifier) -> OODDetector:
    """The shipped detector; while the card has none, one fitted here on real films' features."""
    if classifier.ood is not None:
        return classifier.ood
    fit, _ = classifier.features([read_film(p) for p in real_paths(150, 1)])
    val, _ = classifier.features([read_film(p) for p in real_paths(60, 2)])
    return OODDetector.fit(fit, components=64).calibrate(val, 0.99)


def checked(classifier, detector, data: bytes, name: str):
    film = read_film(data, name=name)
    features, fractions = classifier.features([film])
    (inputs,) = classifier.prepare([film])
    (lung_prob,) = segment(classifier.lungs, [inputs.overview])
    result = detector.check(features[0], float(fractions[0]), film, inputs.overview, lung_prob, classifier.gate_rules,
                            kind_look=classifier.kind_look if classifier.ood is not None else None)
    if classifier.ood is not None:  # the app's path: predict() runs the same check
        assert classifier.predict([film])[0].ood.reasons == result.reasons
    return result


def png(a: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, format="PNG")
    return buf.getvalue()


def test_noise_is_not_a_chest_film(classifier, detector):
    noise = np.random.default_rng(0).integers(0, 256, size=(480, 512), dtype=np.uint8)
    r = checked(classifier, detector, png(noise), "noise.png")
    print("\nnoise:", r)
    assert not r.is_chest and r.reasons


def test_colour_photo_is_not_a_chest_film(classifier, detector):
    import sklearn.datasets

    photo = Path(sklearn.datasets.__file__).parent / "images" / "china.jpg"
    r = checked(classifier, detector, photo.read_bytes(), "china.jpg")
    print("\ncolour photo:", r)
    assert not r.is_chest and "it is a colour image, not a radiograph" in r.reasons


def test_mr_dicom_is_not_a_chest_film(classifier, detector):
    r = checked(classifier, detector, shared_data("dicom", "other", "pydicom_MR_small.dcm").read_bytes(), "mr.dcm")
    assert not r.is_chest and any("modality is MR" in s for s in r.reasons)


@pytest.mark.slow
def test_real_chest_films_pass(classifier, detector):
    paths = sorted((REPO / "samples").glob("*/*.jpg")) + real_paths(4, 3)
    results = {f"{p.parent.name}/{p.name}": checked(classifier, detector, p.read_bytes(), p.name) for p in paths}
    for name, r in results.items():
        print(f"\n{name}: {r.details} {r.reasons}", end="")
    assert all(r.is_chest for r in results.values())


def toy_films(n: int, seed: int) -> list[np.ndarray]:
    """Films with an up and a down: a bright band at the top (shoulders), two dark lobes in the middle,
    a bright bottom (diaphragm), each framed and lit a little differently."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:96, 0:80] / np.array([95.0, 79.0])[:, None, None]
    films = []
    for _ in range(n):
        cx, cy, r = 0.5 + rng.normal(0, 0.03), 0.45 + rng.normal(0, 0.04), 0.18 + rng.normal(0, 0.02)
        lungs = np.exp(-(((x - cx + 0.2) ** 2 + (y - cy) ** 2) / r ** 2)) + np.exp(-(((x - cx - 0.2) ** 2 + (y - cy) ** 2) / r ** 2))
        a = 0.5 + 0.4 * (y < 0.12) + 0.3 * (y > 0.8) * y - 0.35 * lungs + rng.normal(0, 0.03, y.shape)
        films.append(np.clip(a, 0, 1).astype(np.float32))
    return films


@pytest.mark.slow
def test_orientation_net_learns_up_from_down_and_survives_save_load(tmp_path: Path):
    from covidxr import orientation
    from covidxr.training import orientation as training

    net = training.fit(*training.examples(toy_films(60, seed=1), size=32), epochs=40, batch=64, seed=0)
    x, y = training.examples(toy_films(20, seed=2), size=32)          # films it has not seen
    p = orientation.turned_probability(net, list(x))
    assert np.mean(p[y == 0] < 0.5) >= 0.9 and np.mean(p[y > 0] > 0.5) >= 0.9
    det = OODDetector.fit(synthetic(200, seed=11), components=8).calibrate(synthetic(50, seed=13))
    det.orient_net = net
    det.calibrate_orientation(list(x[y == 0]), 0.99)
    assert det.orient_threshold >= 0.5 and np.mean(p[y == 0] > det.orient_threshold) <= 0.01
    name, sha = det.save(tmp_path)
    back = OODDetector.load(tmp_path, card_with(det.card_entry(name, sha)))
    np.testing.assert_allclose(orientation.turned_probability(back.orient_net, list(x)), p, rtol=1e-5, atol=1e-6)
    assert back.orient_threshold == det.orient_threshold and back.orient_quantile == 0.99 and "turned" in back.rule


def test_orientation_threshold_is_never_below_even_odds():
    from covidxr.orientation import threshold_at

    assert threshold_at(np.array([0.01, 0.02, 0.1]), 0.99) == 0.5
    assert threshold_at(np.linspace(0, 0.9, 1001), 0.99) == pytest.approx(0.891)


@pytest.mark.parametrize("how", list(ORIENTATIONS))
def test_a_turned_or_inverted_real_film_is_flagged(classifier, detector, how):
    path = sorted((REPO / "samples").glob("*/*.jpg"))[0]
    pixels = np.asarray(Image.open(path).convert("L"))
    turned = (ORIENTATIONS[how](pixels.astype(np.float64) / 255.0) * 255).round().astype(np.uint8)
    r = checked(classifier, detector, png(np.ascontiguousarray(turned)), f"{how}.png")
    assert not r.is_chest, r
    if detector.orient_net is not None:  # the shipped detector: the net itself calls it turned, and says how sure
        assert r.turned is not None and r.turned > detector.orient_threshold, r


def test_the_orientation_check_reads_the_segmenters_input_as_if_it_squashed_the_film_itself(classifier, detector):
    from covidxr.orientation import orientation_input

    film = read_film(sorted((REPO / "samples").glob("*/*.jpg"))[0])
    (prepared,) = classifier.prepare([film])
    np.testing.assert_array_equal(prepared.overview, orientation_input(film.pixels))
    if detector.orient_net is not None:
        assert detector.turned_probability(film, prepared.overview) == detector.turned_probability(film)


def test_statistics_with_the_retired_orientation_logistic_are_refused_not_loaded_without_the_check(tmp_path: Path):
    det = OODDetector.fit(synthetic(200, seed=11), components=8).calibrate(synthetic(50, seed=13))
    name, _ = det.save(tmp_path)
    with np.load(tmp_path / name) as z:
        arrays = dict(z)
    np.savez(tmp_path / name, **arrays, orient_w=np.ones(48, np.float32), orient_b=np.float64(0.0))
    from covidxr.card import sha256_file

    with pytest.raises(CardError, match="retired orientation logistic; refit"):
        OODDetector.load(tmp_path, card_with(det.card_entry(name, sha256_file(tmp_path / name))))
