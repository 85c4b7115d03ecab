"""Site profiles (covidxr.site): the format, the refusals, the cross-validation split, the fit; and the
command line's `site fit` and `--site` on evaluate and predict."""
from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from covidxr import site
from covidxr.site import SiteData, SiteError, SiteProfile, TooFewFilms, cv_folds, fit_profile

from .conftest import shared_data

pytestmark = pytest.mark.slow


@dataclass
class FakeCard:
    weights_sha256: str = "a" * 64
    temperature: float = 1.5
    positive_index: int = 0
    positive_class: str = "covid"
    threshold: float = 0.3
    class_names: tuple = ("covid", "normal", "pneumonia")
    threshold_rule: str = "maximise Youden's J among thresholds with validation sensitivity >= 0.97; ..."


def synthetic(n_pos: int, n_neg: int, shift: float = -3.0, seed: int = 0, d: int = 16, signal_in_features: bool = False,
              groups: bool = False) -> SiteData:
    """Films whose base log-odds separate the classes (or not) and sit `shift` off at this site."""
    rng = np.random.default_rng(seed)
    y = np.r_[np.ones(n_pos, bool), np.zeros(n_neg, bool)]
    if signal_in_features:
        z = rng.normal(0, 1, len(y))
    else:
        z = np.where(y, 1.5, -1.5) + rng.normal(0, 1, len(y)) + shift
    logits = np.zeros((len(y), 3))
    logits[:, 0] = z * FakeCard.temperature  # softmax(logits / T): log-odds of class 0 against the others...
    logits[:, 1] = 0.0
    logits[:, 2] = -50.0                     # ...is z (class 2 never matters)
    feats = rng.normal(0, 1, (len(y), d))
    if signal_in_features:
        feats[:, 0] += np.where(y, 2.0, -2.0)
    g = np.array([f"PATIENT-{i // 2}-{'p' if y[i] else 'n'}" for i in range(len(y))]) if groups else None
    return SiteData(logits, feats, y, g)


def test_base_logodds_matches_the_softmax():
    rng = np.random.default_rng(1)
    lg = rng.normal(0, 3, (50, 3))
    p = np.exp(lg / 1.7) / np.exp(lg / 1.7).sum(1, keepdims=True)
    z = site.base_logodds(lg, 1.7, 0)
    assert np.allclose(site.sigmoid(z), p[:, 0])


def test_identity_adapter_is_the_shipped_probability():
    data = synthetic(10, 10)
    prof = SiteProfile("x", "a" * 64, "temperature", 0.5, site.Adapter(), {"covid": 10, "non-covid": 10})
    probs = prof.class_probabilities(data.logits, data.features, 1.5, 0)
    ref = np.exp(data.logits / 1.5) / np.exp(data.logits / 1.5).sum(1, keepdims=True)
    assert np.allclose(probs, ref)


def test_cv_folds_keep_patients_together_and_cover_every_film_once():
    data = synthetic(20, 24, groups=True)
    folds = cv_folds(data.y, data.groups, 5)
    all_idx = np.concatenate(folds)
    assert sorted(all_idx) == list(range(len(data.y)))
    for f in folds:
        others = np.setdiff1d(np.arange(len(data.y)), f)
        assert not set(data.groups[f]) & set(data.groups[others])  # a patient's films are in one fold
        assert data.y[f].any() and (~data.y[f]).any()               # both classes in every fold


def test_cv_by_film_without_ids():
    folds = cv_folds(np.r_[np.ones(8, bool), np.zeros(8, bool)], None, 5)
    assert sorted(np.concatenate(folds)) == list(range(16))


def test_cross_validation_never_scores_films_it_was_fitted_on(monkeypatch):
    data = synthetic(12, 12, groups=True)
    z = site.base_logodds(data.logits, 1.5, 0)
    fitted_on: list[set] = []
    original = site.fit_adapter

    def spy(zz, f, y, penalty):
        fitted_on.append(set(np.round(zz, 12)))
        return original(zz, f, y, penalty)

    monkeypatch.setattr(site, "fit_adapter", spy)
    scored: list[set] = []
    for test in cv_folds(data.y, data.groups, 5):
        before = len(fitted_on)
        train = np.setdiff1d(np.arange(len(data.y)), test)
        site._fit_with_threshold(z[train], data.subset(train), None, 0.97)
        test_z = set(np.round(z[test], 12))
        assert all(not (s & test_z) for s in fitted_on[before:])
        scored.append(test_z)
    site.cross_validate(z, data, None, 0.97)  # the function itself runs the same folds
    assert len(fitted_on) > 5


def test_fit_recovers_a_known_shift():
    data = synthetic(60, 60, shift=-3.0)
    prof = fit_profile(data, FakeCard(), "shifted", methods=["temperature"], n_boot=200)
    assert prof.adapter.bias == pytest.approx(3.0 * prof.adapter.scale, abs=0.8)
    f = prof.figures
    assert f["shipped"]["sensitivity"] < 0.4            # shipped threshold 0.3: most positives missed
    assert f["adapted"]["sensitivity"] > 0.85
    assert f["adapted"]["auc"] == pytest.approx(f["shipped"]["auc"], abs=0.03)  # a temperature keeps the ranking
    assert not prof.rough


def test_fit_chooses_the_head_when_the_features_carry_the_signal():
    data = synthetic(40, 40, signal_in_features=True)
    prof = fit_profile(data, FakeCard(), "head", n_boot=200)
    assert prof.method.startswith("head")
    assert prof.figures["adapted"]["auc"] > prof.figures["shipped"]["auc"] + 0.2
    assert set(prof.figures["candidates_auc"]) == set(site.METHODS)


def test_too_few_films_are_refused_and_few_are_rough():
    with pytest.raises(TooFewFilms, match="at least 8 films of each class"):
        fit_profile(synthetic(7, 20), FakeCard(), "few")
    prof = fit_profile(synthetic(8, 8), FakeCard(), "rough", methods=["temperature"], n_boot=100)
    assert prof.rough


def test_round_trip_hash_and_base_model_refusals_and_no_names(tmp_path):
    data = synthetic(12, 12, groups=True)
    prof = fit_profile(data, FakeCard(), "St Elsewhere", n_boot=100)
    prof.save(tmp_path / "p")
    back = SiteProfile.load(tmp_path / "p", FakeCard())
    assert back.name == "St Elsewhere" and back.method == prof.method and back.threshold == prof.threshold
    assert np.allclose(back.probability(data.logits, data.features, 1.5, 0),
                       prof.probability(data.logits, data.features, 1.5, 0))
    meta = json.loads((tmp_path / "p" / "site.json").read_text())
    for k in ("name", "created", "base_sha256", "films", "method", "cross_validated", "threshold", "temperature",
              "arrays_sha256"):
        assert k in meta
    assert meta["films"] == {"covid": 12, "non-covid": 12}
    raw = (tmp_path / "p" / "site.json").read_bytes() + (tmp_path / "p" / "site.npz").read_bytes()
    assert b"PATIENT" not in raw  # patient ids only grouped the folds
    with np.load(tmp_path / "p" / "site.npz", allow_pickle=False) as z:
        assert all(z[k].dtype.kind == "f" for k in z.files)
    with pytest.raises(SiteError, match="another base model"):
        SiteProfile.load(tmp_path / "p", FakeCard(weights_sha256="b" * 64))
    shutil.copytree(tmp_path / "p", tmp_path / "q")
    with np.load(tmp_path / "q" / "site.npz") as z:
        arrays = {k: z[k] for k in z.files}
    arrays["bias"] = arrays["bias"] + 1
    np.savez(tmp_path / "q" / "site.npz", **arrays)
    with pytest.raises(SiteError, match="sha256"):
        SiteProfile.load(tmp_path / "q", FakeCard())
    with pytest.raises(SiteError, match="no site profile"):
        SiteProfile.load(tmp_path / "nothing", FakeCard())


# --- the command line, on real films -----------------------------------------------------------------------


def _films(src: str, label: str, n: int) -> list[Path]:
    return sorted(shared_data("cxr", src, label).iterdir())[:n]


@pytest.fixture(scope="module")
def site_set(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("site_set")
    for label, films in {"covid": _films("hannover-mhh", "covid", 5) + _films("kaggle-radiography-db-224px", "covid", 5),
                         "normal": _films("kaggle-radiography-db-224px", "normal", 7),
                         "pneumonia": _films("nih-cxr8-via-darkcovidnet", "pneumonia", 3)}.items():
        (d / label).mkdir()
        for f in films:
            shutil.copy(f, d / label / f.name)
    return d


@pytest.fixture
def shared_model(monkeypatch, classifier):
    """The CLI loads the session's model instead of reading the weights again (the same files)."""
    from covidxr.classifier import Classifier

    monkeypatch.setattr(Classifier, "from_dir", classmethod(lambda cls, *a, **k: classifier))
    return classifier


@pytest.fixture(scope="module")
def fitted(site_set, tmp_path_factory, classifier):
    from covidxr.classifier import Classifier
    from covidxr.cli import main

    out = tmp_path_factory.mktemp("profiles") / "ward7"
    mp = pytest.MonkeyPatch()
    mp.setattr(Classifier, "from_dir", classmethod(lambda cls, *a, **k: classifier))
    try:
        rc = main(["site", "fit", str(site_set), "--out", str(out), "--name", "Ward 7"])
    finally:
        mp.undo()
    return rc, out


def test_site_fit_writes_a_profile(fitted, site_set, classifier):
    rc, out = fitted
    assert rc == 0
    meta = json.loads((out / "site.json").read_text())
    assert meta["name"] == "Ward 7" and meta["base_sha256"] == classifier.card.weights_sha256
    assert meta["rough_estimate"] is True
    names = [f.name for f in site_set.rglob("*.jpg")] + [f.stem for f in site_set.rglob("*.jpg")]
    text = (out / "site.json").read_text()
    assert not any(n in text for n in names)


def test_evaluate_and_predict_with_site(fitted, site_set, shared_model, tmp_path, capsys):
    from covidxr.cli import main

    _, out = fitted
    assert main(["evaluate", str(site_set), "--site", str(out), "--json", str(tmp_path / "r.json")]) == 0
    r = json.loads((tmp_path / "r.json").read_text())
    assert r["site"] == "Ward 7"
    prof = SiteProfile.load(out)
    assert r["threshold"] == pytest.approx(prof.threshold)
    film = str(next((site_set / "covid").iterdir()))
    capsys.readouterr()
    assert main(["predict", film, "--site", str(out), "--json"]) == 0
    (row,) = json.loads(capsys.readouterr().out)
    assert row["site"] == "Ward 7" and row["threshold"] == pytest.approx(prof.threshold)
    assert main(["predict", film, "--json"]) == 0
    (plain,) = json.loads(capsys.readouterr().out)
    assert "site" not in plain and plain["threshold"] == pytest.approx(classifier_threshold(shared_model))


def classifier_threshold(clf) -> float:
    return clf.card.threshold


def test_site_for_another_model_is_one_line_exit_1(fitted, site_set, shared_model, tmp_path, capsys):
    from covidxr.cli import main

    _, out = fitted
    bad = tmp_path / "other"
    shutil.copytree(out, bad)
    meta = json.loads((bad / "site.json").read_text())
    meta["base_sha256"] = "0" * 64
    (bad / "site.json").write_text(json.dumps(meta))
    film = str(next((site_set / "covid").iterdir()))
    capsys.readouterr()
    assert main(["predict", film, "--site", str(bad), "--json"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "another base model" in err[0]


def test_site_fit_refuses_too_few_films_with_one_line(site_set, shared_model, tmp_path, capsys):
    from covidxr.cli import main

    few = tmp_path / "few"
    (few / "covid").mkdir(parents=True)
    (few / "normal").mkdir()
    for f in list((site_set / "covid").iterdir())[:8]:
        shutil.copy(f, few / "covid" / f.name)
    for f in list((site_set / "normal").iterdir())[:2]:
        shutil.copy(f, few / "normal" / f.name)
    capsys.readouterr()
    assert main(["site", "fit", str(few), "--out", str(tmp_path / "p")]) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip() and not line.startswith("\rread")]
    err = [line for line in err if "read " not in line]
    assert len(err) == 1 and "at least 8" in err[0] and "Traceback" not in err[0]
    assert not (tmp_path / "p" / "site.json").exists()
