"""What the clinician reads (issue 28), asserted through the app as AppTest runs it: no selectbox left at
"Choose an option", the prevalence the PPV/NPV are computed at (the server's setting, its default, a bad value),
and the review dialog's words at a batch threshold moved away from the operating point that decided."""
from __future__ import annotations

import math

import pytest

from tests.hostile import plain
from tests.test_pages import app, card, run_evaluation, started_app, texts, weights, COVID_SAMPLE  # noqa: F401
from webapp.session import state
from webapp.views.wording import fmt_threshold

pytestmark = [pytest.mark.model, pytest.mark.slow]


def unchosen(at) -> list[str]:
    """Labels of the selectboxes that show no choice (a value set to None, or no default) with Streamlit's own
    placeholder, "Choose an option", rather than one that says what an empty box means."""
    def chosen(p) -> bool:
        return p.HasField("raw_value") or (not p.set_value and p.HasField("default"))
    return [s.label for s in at.selectbox if not chosen(s.proto) and not s.proto.placeholder]


def test_no_box_says_choose_an_option(app):
    assert unchosen(app) == []
    assert app.selectbox(key=state.SITE_SELECT).value == ""               # the shipped model, chosen and shown
    assert app.selectbox(key=state.SCREEN_SAMPLE).proto.placeholder == "No sample film"
    app.switch_page("pages/evaluate.py").run()
    assert not app.exception and unchosen(app) == []
    label = app.selectbox(key=state.EVAL_LABEL)
    assert label.value == "" and label.options[label.index].startswith("no label")


@pytest.mark.parametrize("setting, shown", [("2%", "At a prevalence of 2% (this server's setting"),
                                            ("0.25", "At a prevalence of 25% (this server's setting")])
def test_predictive_values_at_the_servers_prevalence(weights, monkeypatch, setting, shown):  # noqa: F811
    monkeypatch.setenv("COVIDXR_PREVALENCE", setting)
    at = started_app(weights, monkeypatch)
    at.selectbox(key=state.SCREEN_SAMPLE).set_value(COVID_SAMPLE).run()
    assert not at.exception
    assert any(t.startswith(shown) for t in texts(at)), texts(at)


def test_a_bad_prevalence_setting_is_reported_and_the_default_used(weights, monkeypatch):  # noqa: F811
    monkeypatch.setenv("COVIDXR_PREVALENCE", "lots")
    at = started_app(weights, monkeypatch)
    at.selectbox(key=state.SCREEN_SAMPLE).set_value(COVID_SAMPLE).run()
    assert any("prevalence setting is not used" in plain(w.value) and "lots" in plain(w.value) for w in at.warning)
    assert any(t.startswith("At a prevalence of 10% (the default") for t in texts(at))


def test_the_review_dialog_follows_the_batch_threshold_without_a_green_contradiction(app, card):  # noqa: F811
    """Move the batch threshold above a film that the operating point called positive: its dialog is amber and
    says both sides, never a green "No COVID-19 pattern: 97% (operating point 98%)"."""
    run_evaluation(app)
    batch = app.session_state[state.BATCH]
    between = [(i, r) for i, r in enumerate(batch.rows)
               if r.probability is not None and card.threshold <= r.probability < 0.99]
    assert between, "no sample film scores between the operating point and 99%: the test could not fail"
    i, row = max(between, key=lambda ir: ir[1].probability)
    trial = math.floor(100 * row.probability * 2 + 1) / 2                 # the next 0.5% step above the film
    app.slider(key=state.EVAL_THRESHOLD).set_value(trial).run()
    app.switch_page("pages/review.py").run()
    app.session_state[state.REVIEW_DIALOG] = i
    app.run()
    assert not app.exception
    assert not [s.value for s in app.success if "COVID-19 pattern" in s.value]          # no green verdict
    [said] = [plain(w.value) for w in app.warning if "trial threshold" in plain(w.value)]
    assert "below the batch's trial threshold" in said and "positive for a COVID-19 pattern at the operating point" in said
    [summary] = [c.value for c in app.code]                 # the line to copy names the trial, not "shipped model"
    assert f"the batch's trial threshold; shipped model: {fmt_threshold(card.threshold)}" in summary


def test_a_new_run_takes_the_place_of_the_previous_results(app):  # noqa: F811
    """The batch's results are one block right after the run button, where the next run's progress bar is drawn:
    starting a run replaces them at once instead of leaving the previous batch's figures under the bar."""
    run_evaluation(app)
    children = list(app.main.children.values())
    [at] = [k for k, c in enumerate(children) if getattr(c, "key", None) == state.EVAL_RUN]
    results = children[at + 1]
    assert any(s.value.startswith("Results") for s in results.subheader)   # the whole of the results, in it
    assert results.get("dataframe") and results.get("metric")
