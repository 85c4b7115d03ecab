"""Site profiles in the app (issue 14): webapp.services.sites on its own, then the pages driven by Streamlit's AppTest:
fit a profile from a labelled batch, look at it, adopt it, choose it on the Screen page, score with it, refuse a bad one.

The profile folder is a tmp one ($COVIDXR_SITES_DIR); fitting in the app is narrowed to the temperature method
and 200 bootstrap resamples (webapp.services.sites.FIT_METHODS, N_BOOT) to keep the runtime short.
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from covidxr.profiles import version_of
from streamlit.testing.v1 import AppTest

from covidxr.card import ModelCard
from tests.hostile import plain
from covidxr.classifier import DEFAULT_WEIGHTS
from covidxr.site import SiteError, fit_profile
from tests.conftest import REPO, shared_data
from tests.test_pages import started_app
from tests.test_site import FakeCard, synthetic
from webapp.views import site_view
from webapp.services import sites
from webapp.session import state
from webapp.views.wording import fmt_threshold

SAMPLES = REPO / "samples"
COVID_SAMPLE = SAMPLES / "covid" / "006f3a8a.jpg"
WEIGHTS = Path(os.environ.get("COVIDXR_TEST_WEIGHTS") or DEFAULT_WEIGHTS)
APPS = [pytest.mark.model, pytest.mark.slow]


def made_profile(name: str, sha: str, n: int = 8, seed: int = 0):
    """A small temperature profile fitted on synthetic numbers for a base model of weights `sha`."""
    return fit_profile(synthetic(n, n, seed=seed), FakeCard(weights_sha256=sha), name, methods=["temperature"],
                       n_boot=50)


def tamper(folder: Path) -> None:
    with np.load(folder / "site.npz") as z:
        arrays = {k: z[k] for k in z.files}
    arrays["bias"] = arrays["bias"] + 1
    np.savez(folder / "site.npz", **arrays)


# ---------------------------------------------------------------- webapp.services.sites on its own

def test_the_profile_folder_comes_from_the_environment(monkeypatch, tmp_path):
    monkeypatch.delenv(sites.SITES_ENV, raising=False)
    assert sites.sites_dir() == REPO / "sites"
    monkeypatch.setenv(sites.SITES_ENV, "elsewhere/profiles")
    assert sites.sites_dir() == REPO / "elsewhere" / "profiles"
    monkeypatch.setenv(sites.SITES_ENV, str(tmp_path))
    assert sites.sites_dir() == tmp_path


@pytest.mark.parametrize("name", ["Ward 7", "st-mary_2024", "A.B", "x" * 64])
def test_safe_names_are_kept(name):
    assert sites.check_name(f"  {name} ") == name


@pytest.mark.parametrize("name, why", [("", "give the profile a name"), ("../etc", "letters, digits"),
                                       (".hidden", "letters, digits"), ("a/b", "letters, digits"),
                                       ("ward 7.", "end with"), ("CON", "reserved"), ("x" * 65, "longer"),
                                       ("naïve", "letters, digits")])
def test_unsafe_names_are_refused_with_a_reason(name, why):
    with pytest.raises(ValueError, match=why):
        sites.check_name(name)


def test_save_list_refuse_and_overwrite(tmp_path):
    card = FakeCard()
    good = made_profile("Good", card.weights_sha256)
    first = sites.save(good, tmp_path, "Good")
    assert first == tmp_path / "Good" / "versions" / version_of(good)             # a version's own folder
    assert sorted(p.name for p in first.iterdir()) == ["site.json", "site.npz"]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]       # no temporary folder left
    assert not [p for p in first.parent.iterdir() if p.name.startswith(".")]
    with pytest.raises(FileExistsError):
        sites.save(good, tmp_path, "Good")
    shutil.copytree(tmp_path / "Good", tmp_path / "Tampered")
    tamper(tmp_path / "Tampered" / "versions" / version_of(good))
    sites.save(made_profile("Other", "b" * 64), tmp_path, "Other")
    (tmp_path / "not a profile").mkdir()
    listed = {p.folder: p for p in sites.list_profiles(tmp_path, card)}
    assert set(listed) == {"Good", "Tampered", "Other"}
    assert listed["Good"].profile.name == "Good" and listed["Good"].error is None
    assert listed["Tampered"].profile is None and "sha256" in listed["Tampered"].error
    assert listed["Other"].profile is None and "another base model" in listed["Other"].error
    again = made_profile("Good", card.weights_sha256, n=10, seed=1)
    before = {f.name: f.read_bytes() for f in first.iterdir()}
    sites.save(again, tmp_path, "Good", overwrite=True)
    assert sites.find(tmp_path, "Good", card).profile.n_films == 20           # the adopted version is the new one
    assert {f.name: f.read_bytes() for f in first.iterdir()} == before         # the old one was never rewritten
    assert sites.find(tmp_path, "Good", card, version_of(good)).profile.n_films == 16  # and still decides
    assert [(v.version, v.state) for v in sites.history(tmp_path, "Good")] == [(version_of(good), "retired"),
                                                                               (version_of(again), "adopted")]
    assert sites.find(tmp_path, "../Good", card).error and sites.find(tmp_path, "nothing", card).error


def test_in_use_line_rows_and_advice():
    prof = made_profile("Ward 7", "a" * 64)
    assert site_view.in_use_line(None) == "Shipped model"
    assert site_view.in_use_line(prof) == (f"Site profile: Ward 7, version {version_of(prof)}, fitted on 16 films, "
                                       f"{prof.created[:10]}")
    rows = site_view.figure_rows(prof)
    assert [r["scored by"] for r in rows] == ["Shipped model", site_view.ADAPTED]
    assert rows[1]["operating point"] == fmt_threshold(prof.threshold)
    assert all(r["AUC"].count("(") == 1 for r in rows)                          # value (95% CI)
    assert {r["model"] for r in site_view.roc_rows(prof)} == {"Shipped model", "Adapted (cross-validated)"}
    assert site_view.rough_text(prof) and "rough" in site_view.rough_text(prof)
    assert site_view.films_text(prof, "covid") == "16 films: 8 COVID-19, 8 other"
    shipped = {"auc": 0.7, "sensitivity": 0.5, "specificity": 0.6,
               "ci": {"auc": [0.6, 0.8], "sensitivity": [0.4, 0.6], "specificity": [0.5, 0.7]}}
    better = {"auc": 0.7, "sensitivity": 0.9, "specificity": 0.62,
              "ci": {"auc": [0.6, 0.8], "sensitivity": [0.85, 0.95], "specificity": [0.52, 0.72]}}
    prof.figures.update(shipped=shipped, adapted=better)
    assert site_view.clearly_better(prof) == (["sensitivity"], [])
    kind, text = site_view.advice(prof)
    assert kind == "info" and "clearly better" in text and "do not use covidxr" in text
    prof.figures["adapted"] = {**better, "ci": {**better["ci"], "specificity": [0.2, 0.4]}}   # a trade: not better
    assert site_view.clearly_better(prof) == (["sensitivity"], ["specificity"])
    kind, text = site_view.advice(prof)
    assert kind == "warning" and "keep the shipped model" in text and "clearly worse on specificity" in text
    prof.figures["adapted"] = shipped
    kind, text = site_view.advice(prof)
    assert kind == "warning" and "not clearly better" in text and "CIs overlap" in text


def row(truth, error=None, chest=True):
    return SimpleNamespace(truth=truth, error=error, chest_xray=chest)


def test_fitting_needs_eight_kept_labelled_chest_films_of_each_class():
    rows = [row(True)] * 8 + [row(False)] * 7 + [row(None), row(False, error="unreadable"), row(False, chest=False)]
    batch = SimpleNamespace(items=[object()] * len(rows), done=True, rows=rows, positive_class="covid")
    assert sites.labelled_counts(rows) == (8, 7)
    assert "at least 8" in sites.fit_blocker(batch) and "add 0 COVID-19 and 1 other" in sites.fit_blocker(batch)
    batch.rows = rows + [row(False)]
    assert sites.fit_blocker(batch) is None
    assert "run it again" in sites.fit_blocker(SimpleNamespace(**{**vars(batch), "done": False}))
    assert "not kept" in sites.fit_blocker(SimpleNamespace(**{**vars(batch), "items": None}))


def test_fit_refuses_a_classifier_that_already_has_a_profile():
    with pytest.raises(SiteError, match="shipped model"):
        sites.fit(SimpleNamespace(site=object()), [], "x")


# ---------------------------------------------------------------- the pages

@pytest.fixture(scope="module")
def card() -> ModelCard:
    return ModelCard.load(WEIGHTS)


@pytest.fixture(scope="module")
def site_films(tmp_path_factory) -> Path:
    """8 COVID-19 and 8 other labelled films (the fewest a profile accepts), as a server folder."""
    d = tmp_path_factory.mktemp("site_films")
    pick = {"covid": [("hannover-mhh", "covid", 4), ("kaggle-radiography-db-224px", "covid", 4)],
            "normal": [("kaggle-radiography-db-224px", "normal", 6)],
            "pneumonia": [("nih-cxr8-via-darkcovidnet", "pneumonia", 2)]}
    for label, parts in pick.items():
        (d / label).mkdir()
        for src, cls, n in parts:
            for f in sorted(shared_data("cxr", src, cls).iterdir())[:n]:
                shutil.copy(f, d / label / f.name)
    return d


@pytest.fixture
def profiles(tmp_path, monkeypatch) -> Path:
    d = tmp_path / "profiles"
    monkeypatch.setenv(sites.SITES_ENV, str(d))
    monkeypatch.setattr(sites, "N_BOOT", 200)
    monkeypatch.setattr(sites, "FIT_METHODS", ("temperature",))
    return d


@pytest.fixture
def app(profiles, monkeypatch) -> AppTest:
    return started_app(WEIGHTS, monkeypatch)


def in_use(at: AppTest) -> str:
    [line] = [m.value for m in at.markdown if m.value.startswith("**In use:**")]
    return plain(line.removeprefix("**In use:** "))


def version_dir(profile_dir: Path) -> Path:
    """The one version folder of a profile saved once (covidxr.profiles)."""
    [d] = list((profile_dir / "versions").iterdir())
    return d


def verdict(at: AppTest) -> str:
    [v] = [e.value for e in [*at.success, *at.error, *at.warning] if "COVID-19 pattern:" in e.value]
    return v


@pytest.mark.model
@pytest.mark.slow
def test_too_few_films_per_class_disable_fitting(app):
    app.switch_page("pages/evaluate.py").run()
    app.radio(key=state.EVAL_SOURCE).set_value("The sample films").run()
    app.button(key=state.EVAL_RUN).click().run()
    assert not app.exception
    assert any(c.value == "Scored with: **Shipped model**" for c in app.caption)   # the results say which
    app.switch_page("pages/site_profiles.py").run()                   # fitting is the site admins' page's
    assert not app.exception
    assert any("at least 8 labelled chest films of each class" in i.value and "3 COVID-19 and 3 other" in i.value
               for i in app.info)
    assert app.button(key=state.SITE_FIT).disabled and app.text_input(key=state.SITE_NAME).disabled


@pytest.mark.model
@pytest.mark.slow
def test_fit_save_choose_and_score_with_a_site_profile(app, profiles, site_films, card, monkeypatch):
    monkeypatch.setenv("COVIDXR_DATA_ROOTS", str(site_films))
    app.switch_page("pages/evaluate.py").run()
    app.radio(key=state.EVAL_SOURCE).set_value("A folder on the server").run()
    app.text_input(key=state.EVAL_FOLDER).set_value(".").run()
    app.button(key=state.EVAL_RUN).click().run()
    assert not app.exception and len(app.dataframe[-1].value) == 16
    assert len(app.get("vega_lite_chart")) == 1
    app.switch_page("pages/site_profiles.py").run()
    fit = app.button(key=state.SITE_FIT)
    assert fit.disabled                                             # no name yet
    app.text_input(key=state.SITE_NAME).set_value("../Ward 7").run()
    assert any(e.value.startswith("This name cannot be used") for e in app.error)
    assert app.button(key=state.SITE_FIT).disabled
    app.text_input(key=state.SITE_NAME).set_value("Ward 7").run()
    app.button(key=state.SITE_FIT).click().run()
    assert not app.exception

    # fitted, kept in the session only: nothing saved before it is adopted; its figures side by side, the caveat,
    # the advice, both ROC curves and the sensitivity chooser
    assert not profiles.exists() or not any(profiles.iterdir())
    assert any("kept in your session only" in i.value for i in app.info)
    fitted = app.session_state[state.SITE_FITTED]["profile"]
    table = next(df.value for df in app.dataframe if "scored by" in df.value)
    assert list(table["scored by"]) == ["Shipped model", site_view.ADAPTED]
    assert table["operating point"][0] == fmt_threshold(card.threshold)
    assert table["operating point"][1] == fmt_threshold(fitted.threshold)
    assert app.select_slider(key=state.SITE_TARGET).value == fitted.target
    assert any("rough estimate" in w.value for w in app.warning)
    assert any("clearly better" in m.value for m in [*app.info, *app.warning])
    charts = [c.proto.spec for c in app.get("vega_lite_chart")]
    assert len(charts) == 1 and '"field": "model"' in charts[0]                # the two CV ones
    assert fitted.offered, "a test that cannot adopt: the profile fitted on these films is not offered"
    app.button(key=state.SITE_SAVE).click().run()
    assert not app.exception

    # adopted: the profile's two files only, no film names
    saved = version_dir(profiles / "Ward 7")
    assert sorted(p.name for p in saved.iterdir()) == ["site.json", "site.npz"]
    text = (saved / "site.json").read_text()
    assert not any(f.stem in text for f in site_films.rglob("*.*"))
    meta = json.loads(text)
    assert meta["name"] == "Ward 7" and meta["base_sha256"] == card.weights_sha256
    assert meta["films"] == {"covid": 8, "non-covid": 8} and meta["threshold"] == fitted.threshold
    assert any(f"Adopted as version {saved.name}" in s.value for s in app.success)

    # fitted again under the same name: adopting it needs the replace box
    app.button(key=state.SITE_FIT).click().run()
    assert app.button(key=state.SITE_SAVE).disabled
    assert any("already adopted on this server" in w.value for w in app.warning)
    app.checkbox(key=state.site_overwrite("Ward 7")).check().run()
    assert not app.button(key=state.SITE_SAVE).disabled
    assert len(list((profiles / "Ward 7" / "versions").iterdir())) == 1       # still nothing new saved

    # the Screen page offers it; choosing it changes the line in use, the threshold and the report line
    app.switch_page("pages/screen.py").run()
    assert in_use(app) == "Shipped model"
    picker = app.selectbox(key=state.SITE_SELECT)
    assert picker.options == ["Shipped model", "Site profile: Ward 7"]
    app.selectbox(key=state.SCREEN_SAMPLE).set_value(COVID_SAMPLE).run()
    assert f"(operating point {fmt_threshold(card.threshold)}, shipped model)" in plain(verdict(app))  # the banner names it
    assert fmt_threshold(meta["threshold"]) != fmt_threshold(card.threshold), "a test that cannot fail"
    app.selectbox(key=state.SITE_SELECT).set_value("Ward 7").run()
    assert not app.exception
    assert in_use(app) == f"Site profile: Ward 7, version {saved.name}, fitted on 16 films, {meta['created'][:10]}"
    assert f"(operating point {fmt_threshold(meta['threshold'])}, site profile Ward 7, version {saved.name})" in plain(verdict(app))
    [summary] = [c.value for c in app.code]
    assert "site profile Ward 7" in summary and fmt_threshold(meta["threshold"]) in summary

    # the choice outlives a page switch; the Batch page scores with it and says so
    app.switch_page("pages/evaluate.py").run()
    assert any("Scored with: **Site profile: Ward 7" in plain(c.value) for c in app.caption)
    app.radio(key=state.EVAL_SOURCE).set_value("The sample films").run()
    app.button(key=state.EVAL_RUN).click().run()
    assert not app.exception
    assert app.session_state[state.BATCH].threshold == pytest.approx(meta["threshold"])
    assert app.session_state[state.BATCH_SCORED_BY]["site"] == "Ward 7"
    assert app.slider(key=state.EVAL_THRESHOLD).value == pytest.approx(100 * meta["threshold"])

    # the model card shows the profile's figures beside the shipped ones
    app.switch_page("pages/model_card.py").run()
    assert not app.exception
    assert any(plain(h.value) == "The site profile in use: Ward 7" for h in app.subheader)
    assert any(list(df.value.get("scored by", [])) == ["Shipped model", site_view.ADAPTED]
               for df in app.dataframe)

    # back to the shipped model on the Screen page
    app.switch_page("pages/screen.py").run()
    assert app.selectbox(key=state.SITE_SELECT).value == "Ward 7"
    app.selectbox(key=state.SITE_SELECT).set_value(None).run()
    assert in_use(app) == "Shipped model"

    # the review page still decides the batch's films as the batch was scored (Ward 7), not as the session now does
    app.switch_page("pages/review.py").run()
    assert not app.exception
    assert any("scored with: Site profile: Ward 7" in plain(c.value) for c in app.caption)
    opens = [b.key for b in app.button if b.key.startswith(f"{state.REVIEW_OPEN}_")]
    app.button(key=opens[0]).click().run()
    assert not app.exception
    [summary] = [c.value for c in app.code]
    assert "site profile Ward 7" in summary and fmt_threshold(meta["threshold"]) in summary


@pytest.mark.model
@pytest.mark.slow
def test_a_profile_that_does_not_load_cannot_be_chosen(app, profiles, card):
    sites.save(made_profile("Good", card.weights_sha256), profiles, "Good")
    shutil.copytree(profiles / "Good", profiles / "Tampered")
    tamper(version_dir(profiles / "Tampered"))
    sites.save(made_profile("Elsewhere", "0" * 64), profiles, "Elsewhere")
    app.run()
    assert not app.exception
    assert app.selectbox(key=state.SITE_SELECT).options == ["Shipped model", "Site profile: Good"]
    errors = [plain(e.value) for e in app.error]
    assert any("Site profile Tampered cannot be used" in e and "sha256" in e for e in errors), errors
    assert any("Site profile Elsewhere cannot be used" in e and "another base model" in e for e in errors), errors
    app.selectbox(key=state.SITE_SELECT).set_value("Good").run()
    assert in_use(app).startswith("Site profile: Good, version ")
    tamper(version_dir(profiles / "Good"))                           # changed on disk while in use
    app.run()
    assert not app.exception
    assert in_use(app) == "Shipped model"
    assert any("site profile Good can no longer be used" in plain(e.value) and "sha256" in e.value for e in app.error)
    assert app.selectbox(key=state.SITE_SELECT).options == ["Shipped model"]
    app.switch_page("pages/model_card.py").run()
    assert not app.exception and not any("site profile in use" in h.value for h in app.subheader)


def test_the_model_card_page_reads_the_measured_site_table_at_the_profiles_own_threshold():
    """webapp.views.card_view on the shipped card's metrics.site_adaptation (scripts/site_measure.py, issue 25): the
    chosen rule's rows with CIs, in words the per-source rates at the profile's own threshold, where the target
    was met, and how many of the model's networks the fold models had."""
    from webapp.views import card_view

    card = ModelCard.load(WEIGHTS)
    sa = card.metrics["site_adaptation"]
    rule = sa["rule"]["chosen"]
    rows = card_view.site_adaptation_rows(card)
    assert len(rows) == 2 * len(sa["folds"]) and all(r["AUC"].count("(") == 1 for r in rows)
    text = card_view.site_adaptation_text(card)
    for src, f in sa["folds"].items():
        a = f["halves"][rule]["with_profile"]
        assert (f"sensitivity {100 * a['sensitivity']:.0f}% and specificity {100 * a['specificity']:.0f}% at the "
                "profile's own operating point") in text
        assert (card_view.source_title(src) in text.split("The target was met on")[1]) == f["halves"][rule]["target_met"]
    nets = {f["fold_networks"] for f in sa["folds"].values()}
    assert (f"Measured with {max(nets)} of the model's {len(card.networks)} networks" in text) == (
        max(nets) < len(card.networks))
