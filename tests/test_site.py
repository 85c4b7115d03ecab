"""Site profiles (covidxr.site): the format, the refusals, the cross-validation split, the fit; and the
command line's `site fit` and `--site` on evaluate and predict."""
from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from scipy.special import expit

from covidxr import site, site_cv, site_maths
from covidxr.site import NotOffered, SiteData, SiteError, SiteProfile, TooFewFilms, cv_folds, fit_profile

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
    assert np.allclose(expit(z), p[:, 0])


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
    original = site_cv.fit_adapter

    def spy(zz, f, y, penalty):
        fitted_on.append(set(np.round(zz, 12)))
        return original(zz, f, y, penalty)

    monkeypatch.setattr(site_cv, "fit_adapter", spy)
    scored = set()
    original_probability = site_maths.Adapter.probability

    def scoring(self, zz, f):  # every outer fold's films are scored by an adapter fitted on the other films
        assert all(not (s & set(np.round(zz, 12))) for s in fitted_on[-4:-3])
        scored.update(np.round(zz, 12))
        return original_probability(self, zz, f)

    monkeypatch.setattr(site_maths.Adapter, "probability", scoring)
    run = site_cv.nested(z, data, None, ("binormal",), (0.9,), 0.3)
    assert scored == set(np.round(z, 12)) and run.n_folds == 5
    assert len(fitted_on) == 5 * (1 + 3)   # per outer fold: its adapter and three inner ones
    for test in cv_folds(data.y, data.groups, 5):
        outer = [s for s in fitted_on if not (s & set(np.round(z[test], 12)))]
        assert len(outer) >= 4              # the fold's adapter and its inner ones never saw its films


def test_fit_recovers_a_known_shift():
    data = synthetic(60, 60, shift=-3.0)
    prof = fit_profile(data, FakeCard(), "shifted", methods=["temperature"], n_boot=200, target=0.9)
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


# --- the operating point at a target sensitivity (issue 25) -----------------------------------------------


def binormal_site(n_pos: int, n_neg: int, seed: int, mu: float = 1.0, d: int = 4) -> SiteData:
    """A site whose base log-odds are N(+mu, 1) for COVID-19 films and N(-mu, 1) for the others, at the
    shipped calibration (FakeCard): the threshold for sensitivity S is known, mu - Phi^-1(S)."""
    rng = np.random.default_rng(seed)
    y = np.r_[np.ones(n_pos, bool), np.zeros(n_neg, bool)]
    z = np.where(y, mu, -mu) + rng.normal(0, 1, len(y))
    logits = np.zeros((len(y), 3))
    logits[:, 0], logits[:, 2] = z * FakeCard.temperature, -50.0
    return SiteData(logits, rng.normal(0, 1, (len(y), d)), y)


def test_the_binormal_point_recovers_the_known_threshold_steadier_than_the_empirical_one():
    """12 + 12 films, target 0.97: the empirical rule sits at or under the lowest COVID-19 film; the binormal
    reading uses every film. Over 200 sites the binormal point is unbiased and nearer the truth."""
    from scipy.stats import norm

    truth = 1.0 - norm.ppf(0.97)                      # sensitivity 0.97 on N(1, 1): log-odds -0.88
    binormal, empirical = [], []
    for seed in range(200):
        rng = np.random.default_rng(seed)
        y = np.r_[np.ones(12, bool), np.zeros(12, bool)]
        z = np.where(y, 1.0, -1.0) + rng.normal(0, 1, 24)
        binormal.append(site_maths.binormal_point(y, z, 0.97))
        t = site_maths.operating_point("empirical", y, z, 0.97, 0.0)
        empirical.append(float(np.log(t) - np.log1p(-t)))
        assert empirical[-1] <= z[y].min() + 1e-9     # 12 COVID-19 films: 0.97 means all of them
    binormal, empirical = np.array(binormal), np.array(empirical)
    assert abs(binormal.mean() - truth) < 0.15        # measured: -0.81 against -0.88
    rmse = lambda v: float(np.sqrt(((v - truth) ** 2).mean()))  # noqa: E731
    assert rmse(binormal) < rmse(empirical)           # measured: 0.50 against 0.57


def test_floor_keeps_the_shipped_point_and_shrinking_moves_toward_it():
    data = binormal_site(10, 10, 0)
    z = site.base_logodds(data.logits, 1.5, 0)
    shipped = -2.0
    assert site_maths.operating_point("floor", data.y, z, 0.9, shipped) == pytest.approx(expit(shipped))
    own = site_maths.operating_point("binormal", data.y, z, 0.9, shipped)
    shrunk = site_maths.operating_point("shrunk", data.y, z, 0.9, shipped)
    assert min(own, expit(shipped)) < shrunk < max(own, expit(shipped))
    big = binormal_site(60, 60, 0)
    zb = site.base_logodds(big.logits, 1.5, 0)
    assert site_maths.operating_point("floor", big.y, zb, 0.9, shipped) == pytest.approx(
        site_maths.operating_point("binormal", big.y, zb, 0.9, shipped))
    with pytest.raises(ValueError, match="unknown operating-point rule"):
        site_maths.operating_point("guess", data.y, z, 0.9, shipped)


def test_a_profile_holds_its_target_on_the_sites_next_films():
    """Fitted on 16 + 16 films for sensitivity 0.90, judged on 4,000 fresh films of the same site: what the
    profile expects is what the next films give, within the expectation's CI."""
    got = []
    for seed in range(3):
        prof = fit_profile(binormal_site(16, 16, seed), FakeCard(), "s", methods=["temperature"], n_boot=50,
                           target=0.9, rule="binormal")   # the default rule keeps the shipped point below 20 films
        fresh = binormal_site(2000, 2000, 100 + seed)
        p = prof.probability(fresh.logits, fresh.features, 1.5, 0)
        sens, spec = (p[fresh.y] >= prof.threshold).mean(), (p[~fresh.y] < prof.threshold).mean()
        got.append((sens, spec))
        lo, hi = prof.figures["adapted"]["ci"]["specificity"]
        assert lo - 0.1 <= spec <= hi + 0.1
    sens, spec = np.mean(got, 0)
    assert 0.8 <= sens <= 0.97 and spec >= 0.45          # truth at 0.90: specificity 0.61


def test_targets_order_thresholds_and_each_says_what_it_costs_per_100_films(tmp_path):
    prof = fit_profile(binormal_site(20, 20, 3), FakeCard(), "t", methods=["temperature"], n_boot=50, target=0.85)
    assert prof.target == 0.85 and prof.rule == site.RULE
    ops = prof.operating_points
    assert [op["target"] for op in ops] == sorted({*site.TARGETS, 0.85})
    assert all(a["threshold"] >= b["threshold"] for a, b in zip(ops, ops[1:]))   # more sensitivity, lower threshold
    for op in ops:
        assert op["flagged_per_100"] == round(100 * (1 - op["specificity"]))
        lo, hi = op["flagged_per_100_ci"]
        assert lo <= op["flagged_per_100"] <= hi
    high = prof.at_target(0.97)
    assert high.threshold < prof.threshold and high.figures["adapted"]["specificity"] <= prof.figures["adapted"]["specificity"]
    with pytest.raises(SiteError, match="no operating point at sensitivity 0.5"):
        prof.at_target(0.5)
    with pytest.raises(SiteError, match="between 0.5 and 0.995"):
        fit_profile(binormal_site(10, 10, 0), FakeCard(), "t", methods=["temperature"], target=1.0)
    prof.save(tmp_path / "p")
    meta = json.loads((tmp_path / "p" / "site.json").read_text())
    assert meta["target_sensitivity"] == 0.85 and meta["adoption"]["offered"] is True
    back = SiteProfile.load(tmp_path / "p")
    assert back.target == 0.85 and back.operating_points == ops and back.adoptable


def test_a_clearly_worse_operating_point_is_not_offered_without_a_recorded_override(tmp_path):
    y = np.r_[np.ones(40, bool), np.zeros(40, bool)]
    shipped = np.r_[np.ones(36, bool), np.zeros(4, bool), np.zeros(30, bool), np.ones(10, bool)]  # J 0.65
    everything = np.ones(80, bool)                                                               # J 0
    ok, why = site.offer(y, everything, shipped, None, None)
    assert not ok and "lower than the shipped model's" in why
    assert site.offer(y, shipped, shipped, None, None)[0]
    assert not site.offer(y, shipped, shipped, [0.5, 0.6], [0.7, 0.8])[0]               # AUC clearly below
    prof = fit_profile(binormal_site(12, 12, 0), FakeCard(), "w", methods=["temperature"], n_boot=50)
    worse = replace_offer(prof, False, why)
    with pytest.raises(NotOffered, match="not offered for adoption"):
        worse.check_adoptable()
    with pytest.raises(SiteError, match="needs a reason"):
        worse.with_override("  ")
    kept = worse.with_override("validated locally against 200 films")
    kept.check_adoptable()
    kept.save(tmp_path / "o")
    back = SiteProfile.load(tmp_path / "o")
    assert not back.offered and back.adoptable and back.override["reason"] == "validated locally against 200 films"


def replace_offer(prof: SiteProfile, offered: bool, why: str) -> SiteProfile:
    from dataclasses import replace

    return replace(prof, offered=offered, offered_why=why)


def test_a_temperature_profile_ranks_the_films_as_the_shipped_model_does():
    """Issue 25: on 26 films the temperature candidate's cross-validated AUC was 0.27 against the shipped 0.53;
    each fold's scores had been re-centred on that fold's threshold, and pooling them reordered the films. Now
    the folds' probabilities are pooled as they are: a temperature keeps the ranking within a fold, and the
    AUC counts only pairs of films ranked by the same fold's profile, so a temperature (a > 0) gives exactly the
    shipped model's AUC on those pairs, on weak, small sites too."""
    for seed in range(4):
        data = binormal_site(13, 13, seed, mu=0.15)
        z = site.base_logodds(data.logits, 1.5, 0)
        run = site_cv.nested(z, data, None, ("empirical",), (0.97,), 0.3)
        adapted, ci = site_cv.within_fold_auc(data.y, run.probability, run.folds, n_boot=200)
        assert adapted == pytest.approx(site_cv.within_fold_auc(data.y, z, run.folds)[0])
        assert ci[0] <= adapted <= ci[1]


def test_site_fit_at_a_chosen_sensitivity_says_what_it_costs(site_set, shared_model, tmp_path, capsys):
    from covidxr.cli import main

    capsys.readouterr()
    assert main(["site", "fit", str(site_set), "--out", str(tmp_path / "p"), "--target-sensitivity", "0.8"]) == 0
    err = capsys.readouterr().err
    meta = json.loads((tmp_path / "p" / "site.json").read_text())
    assert meta["target_sensitivity"] == 0.8 and meta["rule"] == site.RULE
    [op] = [o for o in meta["operating_points"] if o["target"] == 0.8]
    assert meta["threshold"] == op["threshold"]
    assert f"of 100 films without COVID-19, about {op['flagged_per_100']} flagged" in err


def test_site_refuses_a_profile_not_offered_until_an_override_is_recorded(fitted, site_set, shared_model, tmp_path,
                                                                          capsys):
    from covidxr.cli import main

    _, out = fitted
    bad = tmp_path / "worse"
    shutil.copytree(out, bad)
    meta = json.loads((bad / "site.json").read_text())
    meta["adoption"] = {"offered": False, "why": "sensitivity + specificity 0.30 lower", "override": None}
    (bad / "site.json").write_text(json.dumps(meta))
    film = str(next((site_set / "covid").iterdir()))
    capsys.readouterr()
    assert main(["predict", film, "--site", str(bad), "--json"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "not offered for adoption" in err[0] and "--override" in err[0]
    meta["adoption"]["override"] = {"reason": "checked on our own 300 films", "at": "2026-01-01T00:00:00+00:00"}
    (bad / "site.json").write_text(json.dumps(meta))
    assert main(["predict", film, "--site", str(bad), "--json"]) == 0


def test_the_version_hashes_everything_that_decides_a_result_and_survives_a_round_trip(tmp_path):
    """covidxr.profiles.version_of: a profile at another target sensitivity, threshold, rule, offer or override is
    another version; saving and loading keeps the version."""
    from dataclasses import replace

    from covidxr.profiles import version_of

    prof = fit_profile(binormal_site(12, 12, 0), FakeCard(), "v", methods=["temperature"], n_boot=20)
    v = version_of(prof)
    assert version_of(replace(prof)) == v                                            # content, not identity
    others = {"target": prof.at_target(0.97), "threshold": replace(prof, threshold=prof.threshold + 1e-6),
              "rule": replace(prof, rule="empirical"), "offer": replace(prof, offered=False),
              "override": prof.with_override("checked on 200 films", by="sub-admin"),
              "override reason": prof.with_override("another reason", by="sub-admin"),
              "overrider": prof.with_override("checked on 200 films", by="sub-other")}
    versions = {k: version_of(p) for k, p in others.items()}
    assert v not in versions.values() and len(set(versions.values())) == len(versions), versions
    for p in (prof, others["target"], others["override"]):
        p.save(tmp_path / version_of(p))
        assert version_of(SiteProfile.load(tmp_path / version_of(p))) == version_of(p)


def test_the_floor_rule_is_judged_as_the_profile_applies_it():
    """Cross-validation applies the branch of "floor" that the profile itself applies (the site's films per class,
    not the fold's): with 22 + 22 films the profile reads its own threshold at each target, and so do the folds
    (the expected figures move with the target); with 16 + 16 the shipped point is kept by both, every target alike."""
    big = fit_profile(binormal_site(22, 22, 5), FakeCard(), "f", methods=["temperature"], n_boot=20, rule="floor")
    ops = big.operating_points
    assert len({op["threshold"] for op in ops}) == len(ops)
    assert ops[0]["sensitivity"] < ops[-1]["sensitivity"] and ops[0]["specificity"] > ops[-1]["specificity"]
    small = fit_profile(binormal_site(16, 16, 5), FakeCard(), "f", methods=["temperature"], n_boot=20, rule="floor")
    assert len({(op["threshold"], op["sensitivity"], op["specificity"]) for op in small.operating_points}) == 1
