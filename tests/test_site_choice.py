"""Choosing a fitted profile's sensitivity and adopting it (webapp.views.site_choice, issue 25), driven by AppTest on
a profile fitted on synthetic numbers: the chooser shows what each target costs in plain words, a profile
clearly worse than the shipped model is refused until a reason is recorded, and the words on the clinician's
screen carry no engineering terms (those are in the expander)."""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from covidxr.site import SiteProfile, fit_profile
from tests.test_site import FakeCard, binormal_site
from webapp.views import site_choice
from webapp.services import sites

pytestmark = pytest.mark.slow   # fits a profile (nested cross-validation) and drives Streamlit

ENGINEERING_WORDS = ("temperature", "fold", "out-of-fold")


def flow(folder: str) -> None:
    """The fit flow's last part as the page draws it: choose, look, adopt (save)."""
    from pathlib import Path

    import streamlit as st

    from covidxr.site import SiteProfile
    from webapp.views import site_choice, site_view
    from webapp.services import sites

    fitted = SiteProfile.load(Path(folder) / "fitted")
    p = site_choice.choose(fitted, key="target")
    st.dataframe(site_view.figure_rows(p), hide_index=True)
    adopted, allowed = site_choice.adopt_controls(p, key="override")
    if st.button("Save the profile at this sensitivity", key="save", disabled=not allowed):
        sites.save(adopted, Path(folder), "Ward 7", overwrite=True)
    site_choice.engineering(p)


@pytest.fixture(scope="module")
def fitted() -> SiteProfile:
    return fit_profile(binormal_site(16, 16, 1), FakeCard(), "Ward 7", methods=["temperature"], n_boot=50)


def app_for(tmp_path: Path, profile: SiteProfile) -> AppTest:
    profile.save(tmp_path / "fitted")
    at = AppTest.from_function(flow, args=(str(tmp_path),), default_timeout=60)
    at.run()
    assert not at.exception
    return at


def screen_text(at: AppTest) -> str:
    """Everything on the screen outside the engineering expander."""
    parts = [m.value for m in at.markdown] + [e.value for e in at.error] + [at.select_slider[0].label]
    for df in at.dataframe:
        parts += [" ".join(map(str, df.value.columns))] + [" ".join(map(str, r)) for r in df.value.values.tolist()]
    return " ".join(parts).lower()


def test_choose_a_target_read_its_cost_and_save_it(tmp_path, fitted):
    at = app_for(tmp_path, fitted)
    slider = at.select_slider(key="target")
    assert slider.value == fitted.target == 0.9
    assert slider.options == [site_choice.target_label(op["target"]) for op in fitted.operating_points]
    slider.set_value(0.97).run()
    assert not at.exception
    op = {o["target"]: o for o in fitted.operating_points}[0.97]
    [said] = [m.value for m in at.markdown if m.value.startswith("Aiming at 97% sensitivity")]
    assert f"about {op['flagged_per_100']} are flagged" in said and "Of 100 films without COVID-19" in said
    assert f"{100 * op['specificity']:.0f}%" in said
    rows = at.dataframe[0].value
    assert list(rows["sensitivity aimed at"]) == ["80%", "85%", "90%", "95%", "97%"]
    assert not any(w in screen_text(at) for w in ENGINEERING_WORDS)
    [expander] = at.expander
    assert expander.label == site_choice.ENGINEERING and "temperature" in expander.text[0].value
    at.button(key="save").click().run()
    saved = sites.find(tmp_path, "Ward 7", FakeCard()).profile
    assert saved.target == 0.97 and saved.threshold == op["threshold"]


def test_a_profile_clearly_worse_is_refused_until_a_reason_is_recorded(tmp_path, fitted):
    worse = replace(fitted, operating_points=[{**op, "offered": False, "why": "sensitivity + specificity 0.40 lower"}
                                              for op in fitted.operating_points], offered=False)
    at = app_for(tmp_path, worse)
    assert any(e.value.startswith("Not offered for adoption") for e in at.error)
    assert at.button(key="save").disabled
    at.text_input(key="override").set_value("checked on 300 films of our own").run()
    assert not at.button(key="save").disabled
    at.button(key="save").click().run()
    saved = sites.find(tmp_path, "Ward 7", FakeCard()).profile
    assert not saved.offered and saved.override["reason"] == "checked on 300 films of our own"
    # the same profile saved without an override cannot be chosen in the app, and says why
    sites.save(replace(saved, override=None), tmp_path, "Refused")
    found = sites.find(tmp_path, "Refused", FakeCard())
    assert found.profile is None and "not offered for adoption" in found.error
    assert sites.find(tmp_path, "Ward 7", FakeCard()).profile is not None
