"""Look, choose, adopt (webapp.views.site_admin.review, issue 25), driven by AppTest as a signed-in user on a profile
fitted on synthetic numbers and kept in the session, as the Fit button leaves it: the chooser shows what each
sensitivity costs in plain words (engineering terms only in the expander), nothing is saved before Adopt, Adopt
saves an immutable version at the chosen sensitivity and records it, a profile clearly worse than the shipped
model is refused until an explicit override with its reason (both recorded), a clinician cannot adopt, and
nothing is adopted when the audit trail cannot be written.

The real fit from a batch (films scored by the shipped model) is tests/test_site_pages.py's."""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from covidxr.audit import AuditStore
from covidxr.profiles import version_of
from covidxr import site
from covidxr.site import SiteProfile, fit_profile
from tests.test_auth import ADMIN, AUTH, CLINICIAN
from tests.test_site import FakeCard, binormal_site
from webapp.services import sites
from webapp.session import state
from webapp.views import site_choice

pytestmark = [pytest.mark.model, pytest.mark.slow]   # the audit records name the shipped model; Streamlit runs

ENGINEERING_WORDS = ("temperature", "fold", "out-of-fold")
NAME = "Ward 7"


def look_and_adopt() -> None:
    """The Site profiles page's look-and-adopt step, as pages/site_profiles.py draws it after a fit."""
    from webapp.views import site_admin

    site_admin.review("covid")


def crafted_adopt() -> None:
    """A request that reaches the adopt step without the page (as a crafted one would)."""
    import streamlit as st

    from webapp.views import site_admin
    from webapp.session import state

    fitted = st.session_state[state.SITE_FITTED]
    site_admin.adopt(fitted["folder"], fitted["profile"], False)


@pytest.fixture(scope="module")
def fitted(classifier) -> SiteProfile:
    card = FakeCard(weights_sha256=classifier.card.weights_sha256)
    # 22 + 22 films: above the floor rule's 20 per class, so each sensitivity has its own threshold
    return fit_profile(binormal_site(22, 22, 1), card, NAME, methods=["temperature"], n_boot=50)


@pytest.fixture
def env(classifier, monkeypatch, tmp_path) -> str:
    monkeypatch.setenv("COVIDXR_WEIGHTS", str(classifier.directory))
    monkeypatch.setenv("COVIDXR_THREADS", "1")
    monkeypatch.setenv(sites.SITES_ENV, str(tmp_path / "profiles"))
    url = f"sqlite:///{tmp_path / 'audit.db'}"
    monkeypatch.setenv("COVIDXR_DB", url)
    return url


def app_with(profile: SiteProfile, user: dict = ADMIN, script=look_and_adopt) -> AppTest:
    at = AppTest.from_function(script, default_timeout=300)
    at.secrets["auth"] = AUTH
    at.user = user
    at.session_state[state.SITE_FITTED] = {"folder": NAME, "profile": profile, "skipped": 0}
    at.run()
    assert not at.exception, at.exception
    return at


def screen_text(at: AppTest) -> str:
    """Everything on the screen outside the engineering expander."""
    parts = [str(e.value) for kind in ("markdown", "caption", "info", "warning", "error", "success", "subheader")
             for e in getattr(at, kind)] + [w.label for w in [*at.select_slider, *at.checkbox, *at.button]]
    for df in at.dataframe:
        parts += [" ".join(map(str, df.value.columns))] + [" ".join(map(str, r)) for r in df.value.values.tolist()]
    return " ".join(parts).lower()


def saved_versions() -> list[Path]:
    return sorted((sites.sites_dir() / NAME / "versions").glob("*")) if (sites.sites_dir() / NAME).exists() else []


def adoptions(url: str) -> list:
    return AuditStore(url).records(action="site-adopt")


def test_choose_a_sensitivity_read_its_cost_and_adopt_it(env, fitted):
    at = app_with(fitted)
    slider = at.select_slider(key=state.SITE_TARGET)
    assert slider.value == fitted.target == site.DEFAULT_TARGET
    assert slider.options == [site_choice.target_label(op["target"]) for op in fitted.operating_points]
    slider.set_value(0.97).run()
    assert not at.exception
    op = {o["target"]: o for o in fitted.operating_points}[0.97]
    [said] = [m.value for m in at.markdown if m.value.startswith("Aiming at 97% sensitivity")]
    assert f"about {op['flagged_per_100']} are flagged" in said and "Of 100 films without COVID-19" in said
    assert f"{100 * op['specificity']:.0f}%" in said
    targets = next(df.value for df in at.dataframe if "sensitivity aimed at" in df.value)
    assert list(targets["sensitivity aimed at"]) == ["80%", "85%", "90%", "95%", "97%"]
    figures = next(df.value for df in at.dataframe if "scored by" in df.value)
    assert list(figures["scored by"]) == ["Shipped model", "Adapted to your films"]
    assert all(c.count("(") == 1 for c in figures["Specificity"])                       # value (95% CI)
    [chart] = [c.proto.spec for c in at.get("vega_lite_chart")]
    assert '"field": "model"' in chart and "your choice: sensitivity" in chart         # both curves, the point
    assert not any(w in screen_text(at) for w in ENGINEERING_WORDS), screen_text(at)
    [expander] = at.expander
    assert expander.label == site_choice.ENGINEERING and "temperature" in expander.text[0].value
    assert "kept in your session only" in screen_text(at)
    assert not any("fewer than 20 films of a class" in i.value for i in at.info)      # the floor rule is not in play
    assert not sites.sites_dir().exists() and not adoptions(env)                      # nothing saved before Adopt

    at.button(key=state.SITE_SAVE).click().run()
    assert not at.exception
    [version] = saved_versions()
    saved = sites.find(sites.sites_dir(), NAME, None).profile
    assert saved.target == 0.97 and saved.threshold == op["threshold"] and version.name == version_of(saved)
    assert saved.threshold < fitted.threshold                                         # not the default's threshold
    assert any(f"Adopted as version {version.name}" in s.value for s in at.success)
    assert state.SITE_FITTED not in at.session_state and not at.select_slider        # the step is over
    [rec] = adoptions(env)
    assert rec.user == "sub-admin" and rec.outcome == "success" and rec.profile_version == version.name
    assert rec.detail["target_sensitivity"] == 0.97 and rec.detail["override"] is None


def test_a_profile_clearly_worse_is_refused_until_an_override_with_its_reason_is_recorded(env, fitted):
    why = "sensitivity + specificity 0.40 lower"
    worse = replace(fitted, operating_points=[{**op, "offered": False, "why": why} for op in fitted.operating_points],
                    offered=False, offered_why=why)
    at = app_with(worse)
    assert any(e.value.startswith("Not offered for adoption") and why in e.value for e in at.error)
    adopt = lambda: at.button(key=state.SITE_SAVE)  # noqa: E731
    assert adopt().disabled and not at.text_input
    at.checkbox(key=f"{state.SITE_OVERRIDE}_box").check().run()
    assert adopt().disabled                                                          # the box alone is not enough
    at.text_input(key=state.SITE_OVERRIDE).set_value("checked on 300 films of our own").run()
    assert not adopt().disabled
    assert not sites.sites_dir().exists()
    adopt().click().run()
    assert not at.exception
    saved = sites.find(sites.sites_dir(), NAME, None).profile
    assert not saved.offered and saved.override["reason"] == "checked on 300 films of our own"
    assert saved.override["by"] == "sub-admin"
    [rec] = adoptions(env)
    assert rec.detail["override"] == "checked on 300 films of our own" and rec.detail["offered"] is False
    assert rec.profile_version == version_of(saved) != version_of(replace(saved, override=None))


def test_without_the_override_a_refused_profile_is_not_adopted_even_by_a_crafted_request(env, fitted):
    worse = replace(fitted, offered=False, offered_why="clearly worse")
    at = app_with(worse, script=crafted_adopt)
    assert any("not offered for adoption" in e.value for e in at.error)
    assert not sites.sites_dir().exists()
    [rec] = adoptions(env)
    assert rec.outcome == "denied" and rec.detail["why"] == "clearly worse"


def test_a_clinician_cannot_adopt(env, fitted):
    at = app_with(fitted, user=CLINICIAN, script=crafted_adopt)
    assert any("Only a site admin" in e.value for e in at.error)
    assert not sites.sites_dir().exists() and not adoptions(env)
    [denied] = AuditStore(env).records(action="denied")
    assert denied.user == "sub-clin" and denied.detail["attempted"] == "site-adopt"


def test_nothing_is_adopted_when_the_audit_trail_cannot_be_written(env, fitted, monkeypatch, tmp_path):
    at = app_with(fitted)
    (tmp_path / "file").write_text("")
    monkeypatch.setenv("COVIDXR_DB", f"sqlite:///{tmp_path / 'file' / 'audit.db'}")
    at.button(key=state.SITE_SAVE).click().run()
    assert any("audit trail cannot be written" in e.value for e in at.error)
    assert not sites.sites_dir().exists()


def test_replacing_an_adopted_name_needs_its_box(env, fitted):
    sites.save(fitted, sites.sites_dir(), NAME, user="sub-admin")
    at = app_with(fitted.at_target(0.8))
    assert at.button(key=state.SITE_SAVE).disabled
    assert any("already adopted on this server" in w.value for w in at.warning)
    at.checkbox(key=state.site_overwrite(NAME)).check().run()
    at.button(key=state.SITE_SAVE).click().run()
    assert not at.exception
    assert [(v.version, v.state) for v in sites.history(sites.sites_dir(), NAME)] == [
        (version_of(fitted), "retired"), (version_of(fitted.at_target(0.8)), "adopted")]


def test_below_twenty_films_of_a_class_the_chooser_says_every_sensitivity_decides_alike(env, classifier):
    card = FakeCard(weights_sha256=classifier.card.weights_sha256)
    small = fit_profile(binormal_site(16, 16, 1), card, NAME, methods=["temperature"], n_boot=50)
    assert len({op["threshold"] for op in small.operating_points}) == 1
    at = app_with(small)
    assert any("fewer than 20 films of a class" in i.value and "same decisions" in i.value for i in at.info)
