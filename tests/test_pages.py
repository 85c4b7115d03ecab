"""Every page of the app, run in-process by Streamlit's AppTest with the shipped model and real films.

Streamlit 1.67's AppTest supports `st.file_uploader` (`at.file_uploader[0].set_value(...)`), so the
uploads here go through the same widget a clinician uses. The model is loaded once per process
(`st.cache_resource`), as on the server.
"""
from __future__ import annotations

import io
import re
import zipfile
from pathlib import Path

import pydicom
import pytest
from streamlit.testing.v1 import AppTest

from covidxr.card import ModelCard
from covidxr.classifier import Classifier
from tests.conftest import REPO, shared_data
from webapp.session import state
from webapp.views import icons
from tests.hostile import plain
from webapp.views.literal import literal
from webapp.views.wording import fmt_pct, fmt_threshold

pytestmark = [pytest.mark.model, pytest.mark.slow]

APP = str(REPO / "app.py")
SAMPLES = REPO / "samples"
COVID_SAMPLE = SAMPLES / "covid" / "006f3a8a.jpg"
NORMAL_SAMPLE = SAMPLES / "normal" / "00001300_000.jpg"
DICOM_FILM = shared_data("dicom", "cxr", "siim-acr_CR_PA_jpeg-baseline.dcm")
NOT_CHEST_DICOM = shared_data("dicom", "other", "pydicom_MR_small.dcm")
TIMEOUT = 300  # the first run imports torch and loads the model on a busy 2-core machine


@pytest.fixture(scope="module")
def weights(classifier) -> Path:
    """The model folder conftest's `classifier` loaded (the shipped one, or $COVIDXR_TEST_WEIGHTS), for the app."""
    return classifier.directory


@pytest.fixture
def card(weights) -> ModelCard:
    return ModelCard.load(weights)


def started_app(weights, monkeypatch) -> AppTest:
    """The app as AppTest drives it, on `weights`, one torch thread, no server folders; run once, with no
    exception. Shared with the site-profile page tests."""
    monkeypatch.setenv("COVIDXR_WEIGHTS", str(weights))
    monkeypatch.setenv("COVIDXR_THREADS", "1")
    monkeypatch.delenv("COVIDXR_DATA_ROOTS", raising=False)
    at = AppTest.from_file(APP, default_timeout=TIMEOUT)
    at.run()
    assert not at.exception
    return at


@pytest.fixture
def app(weights, monkeypatch) -> AppTest:
    return started_app(weights, monkeypatch)


def texts(at: AppTest, raw: bool = False) -> list[str]:
    """Every text the page shows (alerts, markdown, captions, headings), as a reader sees it (outside text is
    escaped by webapp.views.literal: tests.hostile.plain undoes it); `raw`: the Markdown sources."""
    out = []
    for kind in ("success", "error", "warning", "info", "markdown", "caption", "title", "header", "subheader"):
        out += [str(e.value) for e in getattr(at, kind)]
    return out if raw else [plain(t) for t in out]


def verdicts(at: AppTest) -> list[str]:
    return [e.value for e in [*at.success, *at.error, *at.warning] if "COVID-19 pattern:" in e.value]


def count_calls(monkeypatch, owner, name: str) -> list:
    """Wrap owner.name so that each call is recorded."""
    calls: list = []
    original = getattr(owner, name)

    def wrapper(*args, **kwargs):
        calls.append(args)
        return original(*args, **kwargs)

    monkeypatch.setattr(owner, name, wrapper)
    return calls


def film_upload(path: Path, mime: str = "image/jpeg") -> tuple[str, bytes, str]:
    return path.name, path.read_bytes(), mime


def samples_zip(extra: dict[str, bytes] | None = None) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for p in sorted(SAMPLES.glob("*/*.jpg")):
            z.write(p, f"films/{p.parent.name}/{p.name}")
        for name, data in (extra or {}).items():
            z.writestr(f"films/{name}", data)
    return buf.getvalue()


def run_evaluation(at: AppTest, source: str = "The sample films") -> AppTest:
    at.switch_page("pages/evaluate.py").run()
    at.radio(key=state.EVAL_SOURCE).set_value(source).run()
    at.button(key=state.EVAL_RUN).click().run()
    assert not at.exception
    return at


def displayed(frame):
    """What an st.dataframe given a pandas Styler shows in its cells (its `value` holds the data it sorts by)."""
    from streamlit import dataframe_util

    return dataframe_util.convert_arrow_bytes_to_pandas_df(frame.proto.arrow_data.styler.display_values)


def metric(at: AppTest, label: str) -> str:
    return next(m.value for m in at.metric if m.label == label)


# ---------------------------------------------------------------- navigation and disclaimer

def test_app_opens_on_screen_page_with_disclaimer(app):
    assert app.title[0].value.startswith("Screen a chest X-ray")
    assert any("not a diagnosis" in w.value for w in app.main.warning)  # in the main area, seen on a phone
    assert app.file_uploader[0].accept_multiple_files
    assert {"png", "jpg", "jpeg", "dcm", "dicom"} <= {t.lstrip(".") for t in app.file_uploader[0].allowed_type}


@pytest.mark.parametrize("page, title", [("pages/evaluate.py", "Batch evaluation"),
                                         ("pages/review.py", "Heatmap review"),
                                         ("pages/model_card.py", "Model card"),
                                         ("pages/screen.py", "Screen a chest X-ray")])
def test_page_switching(app, page, title):
    app.switch_page(page).run()
    assert not app.exception
    assert app.title[0].value.startswith(title)
    assert any("not a diagnosis" in w.value for w in app.main.warning)  # in the main area, seen on a phone


# ---------------------------------------------------------------- screen a film

def test_sample_film_gives_decision_probabilities_and_heatmap(app, card):
    app.selectbox(key=state.SCREEN_SAMPLE).set_value(COVID_SAMPLE).run()
    assert not app.exception
    [sentence] = verdicts(app)
    assert f"(operating point {fmt_threshold(card.threshold)}, shipped model)" in sentence and "p =" not in sentence
    assert sentence.startswith(("Positive for COVID-19 pattern: ", "No COVID-19 pattern: "))
    probabilities = app.dataframe[0].value
    assert len(probabilities) == len(card.class_names)
    assert all(p.endswith("%") for p in probabilities["probability"])                 # worded as the banner words it
    captions = [c for img in app.image for c in img.captions]
    assert "Film" in captions and any(c.startswith("Grad-CAM") for c in captions)
    scale = [plain(c.value) for c in app.caption if plain(c.value).startswith("Colour scale")]   # the colour scale,
    assert scale and "0% (blue, left)" in scale[0] and "100% (red, right" in scale[0] and "COVID-19 score" in scale[0]
    shown = texts(app)
    assert sum("not the chance that this patient has COVID-19" in t for t in shown) == 1   # what the score is, once
    [pv] = [t for t in shown if t.startswith("At a prevalence of 10% (the default")]       # PPV and NPV with CIs
    assert re.search(r"right \d+(\.\d)?% of the time \(PPV, 95% CI \d+(\.\d)?–\d+(\.\d)?%\)", pv), pv
    assert "(NPV, " in pv and app.selectbox(key=state.SITE_SELECT).proto.HasField("raw_value")  # not "Choose an option"
    assert [d.label for d in app.get("download_button")] == ["Download overlay (PNG)"]
    [summary] = [c.value for c in app.code]                                           # a line to copy
    assert COVID_SAMPLE.name in summary and fmt_threshold(card.threshold) in summary and card.name in summary


def test_a_negative_with_another_finding_gets_a_warning_not_a_green_tick(app):
    child = SAMPLES / "pneumonia" / "person1000_virus_1681.jpg"
    picker = app.selectbox(key=state.SCREEN_SAMPLE)
    assert any("(child: the model is not validated on children)" in o for o in picker.options)
    picker.set_value(child).run()
    assert not app.exception
    assert any("not validated on children" in w.value for w in app.warning)           # visible, not small print
    [sentence] = verdicts(app)
    if sentence.startswith("No COVID-19 pattern"):
        assert not app.success                                                        # no green tick
        assert any("The model sees other pneumonia" in w.value and w.value.endswith(": review.") for w in app.warning)
        assert any("muted" in c for img in app.image for c in img.captions)           # the map denies no finding


def test_upload_films_including_dicom_never_shows_patient_identity(app):
    ds = pydicom.dcmread(DICOM_FILM, stop_before_pixels=True)
    identity = [str(v) for v in (ds.get("PatientName"), ds.get("PatientID")) if v]
    app.file_uploader[0].set_value([film_upload(NORMAL_SAMPLE), film_upload(DICOM_FILM, "application/dicom")]).run()
    assert not app.exception
    assert len(verdicts(app)) == 2
    shown = " ".join(texts(app))
    assert "modality: CR" in shown                    # the study facts that help
    assert identity and not any(i in shown for i in identity)


def test_opacity_slider_redraws_without_recomputing_gradcam(app, monkeypatch):
    from webapp.views import view

    calls = count_calls(monkeypatch, view, "explain")
    app.file_uploader[0].set_value(film_upload(COVID_SAMPLE)).run()
    overlay_before = app.image[1].value
    app.slider[0].set_value(0.95).run()
    assert not app.exception
    assert len(calls) == 1                             # Grad-CAM ran once, for the upload
    assert app.image[1].value != overlay_before        # and the overlay was redrawn at the new opacity
    app.slider[0].set_value(0.0).run()
    assert len(calls) == 1


def test_bad_file_gets_a_message_and_the_app_keeps_working(app):
    app.file_uploader[0].set_value([("notes.png", b"this is text, not a film", "image/png"),
                                    ("empty.dcm", b"", "application/dicom"),
                                    film_upload(NORMAL_SAMPLE)]).run()
    assert not app.exception
    errors = [e.value for e in app.error if "could not be read" in e.value]
    assert len(errors) == 2 and errors[0].startswith(literal("notes.png")) and errors[1].startswith(literal("empty.dcm"))
    assert len(verdicts(app)) == 1                     # the good film is still scored


def test_not_a_chest_radiograph_is_flagged_and_its_score_withheld(app, card):
    assert card.ood, "the shipped model card names no out-of-distribution check"
    app.file_uploader[0].set_value(film_upload(NOT_CHEST_DICOM, "application/dicom")).run()
    assert not app.exception
    [refusal] = [plain(e.value) for e in app.error if plain(e.value).startswith("Not a frontal chest radiograph: ")]
    assert "No COVID-19 score is given" in refusal
    assert verdicts(app) == []                           # no decision, and no "show the score anyway":
    [numbers] = app.expander                             # the one expander holds the gate's numbers, labelled so
    assert numbers.label.startswith("Engineering detail")
    detail = {plain(c.value) for c in numbers.caption}
    assert detail and all("Details:" not in d for d in detail)
    shown = [t for t in texts(app) if t not in detail]
    assert not any(re.search(r"\d%", t) for t in shown)                   # no score anywhere on the page
    assert not any(c.startswith("Grad-CAM") for img in app.image for c in img.captions)
    assert not app.get("download_button") and not app.code


# ---------------------------------------------------------------- batch evaluation

def test_evaluation_metrics_and_threshold_slider_without_rescoring(app, monkeypatch):
    calls = count_calls(monkeypatch, Classifier, "predict")
    run_evaluation(app)
    scored = len(calls)
    assert scored >= 1
    assert {m.label for m in app.metric} == {"Sensitivity", "Specificity", "Accuracy", "AUC"}
    assert all(m.help for m in app.metric)                                   # each metric explained
    assert sum("95% CI" in c.value for c in app.caption) == 4
    auc_ci = [c.value for c in app.caption if "95% CI" in c.value][-1]        # 3 + 3 films: Newcombe's interval,
    assert not re.search(r"1\.000?\s*[-–]\s*1\.000?", auc_ci)               # never a collapsed "1.000-1.000"
    table = app.dataframe[-1].value
    assert len(table) == 6 and set(table["outcome"]) <= {"true positive", "false positive",
                                                         "true negative", "false negative"}
    assert set(table["decision"]) <= {"covid", "non-covid"}                  # the exports' words, on the page
    warned = dict(zip(table["film"], table["warnings"]))                      # the child's film says so here too
    assert [f for f, w in warned.items() if "child's film" in w] == [f for f in warned if "person1000_virus_1681" in f]
    assert any("`non-covid`" in c.value for c in app.caption)
    app.slider(key=state.EVAL_THRESHOLD).set_value(0.0).run()
    assert (metric(app, "Sensitivity"), metric(app, "Specificity")) == ("100%", "0%")
    app.slider(key=state.EVAL_THRESHOLD).set_value(100.0).run()
    assert metric(app, "Specificity") == "100%"
    assert len(calls) == scored                         # the slider never re-scored a film
    assert {d.label for d in app.get("download_button")} == {"Download per-image CSV", "Download full report (JSON)"}


def test_batch_form_is_kept_when_leaving_the_page_and_coming_back(app, monkeypatch):
    monkeypatch.setenv("COVIDXR_DATA_ROOTS", str(SAMPLES))
    app.switch_page("pages/evaluate.py").run()
    app.radio(key=state.EVAL_SOURCE).set_value("A folder on the server").run()
    app.text_input(key=state.EVAL_FOLDER).set_value("covid").run()
    app.switch_page("pages/model_card.py").run()
    app.switch_page("pages/evaluate.py").run()
    assert not app.exception
    assert app.radio(key=state.EVAL_SOURCE).value == "A folder on the server"
    assert app.text_input(key=state.EVAL_FOLDER).value == "covid"


def test_batch_leaves_a_refused_film_out_of_the_metrics_and_shows_no_score(app):
    app.switch_page("pages/evaluate.py").run()
    app.selectbox(key=state.EVAL_LABEL).set_value("normal").run()
    app.file_uploader(key=state.EVAL_UPLOAD).set_value([film_upload(NORMAL_SAMPLE), film_upload(COVID_SAMPLE),
                                                        film_upload(NOT_CHEST_DICOM, "application/dicom")]).run()
    app.button(key=state.EVAL_RUN).click().run()
    assert not app.exception
    assert any("1 film judged **not a frontal chest radiograph**" in w.value for w in app.warning)
    per_image = app.dataframe[-1].value
    refused = per_image[per_image["film"] == NOT_CHEST_DICOM.name]
    assert list(refused["decision"]) == ["not a frontal chest radiograph"]
    assert refused["COVID-19 score"].isna().all()                          # no score, so it sorts apart
    shown = displayed(app.dataframe[-1])                                   # and on screen: its reason, never "None"
    scored, threshold = per_image["film"] != NOT_CHEST_DICOM.name, app.session_state[state.BATCH].threshold
    assert list(shown[~scored]["COVID-19 score"]) == ["not scored: not a frontal chest radiograph"]
    assert list(shown[scored]["COVID-19 score"]) == [fmt_pct(p, threshold) for p in per_image[scored]["COVID-19 score"]]
    assert any("2 labelled films scored" in c.value and "left out of the metrics" in c.value for c in app.caption)
    app.checkbox(key=state.EVAL_INCLUDE_REFUSED).check().run()
    assert any("3 labelled films scored" in c.value for c in app.caption)
    json_text = app.session_state[state.BATCH].report().as_dict()
    assert json_text["seconds"] is not None and json_text["seconds"] > 0


def test_zip_upload_lists_failed_files_and_scores_the_rest(app):
    app.switch_page("pages/evaluate.py").run()
    app.file_uploader(key=state.EVAL_UPLOAD).set_value([
        ("films.zip", samples_zip({"normal/broken.jpg": b"\xff\xd8\xff\xe0 truncated"}), "application/zip"),
        ("evil.zip", b"PK\x03\x04 not really a zip", "application/zip")]).run()
    app.button(key=state.EVAL_RUN).click().run()
    assert not app.exception
    per_image, failed = app.dataframe[-2].value, app.dataframe[-1].value
    assert len(per_image) == 6
    assert sorted(failed["film"]) == ["evil.zip", "films.zip/films/normal/broken.jpg"]  # classes interleaved
    assert failed["reason"].str.len().min() > 0
    assert "refused" in failed.set_index("film").loc["evil.zip", "reason"]


def test_server_folder_only_inside_allowed_roots(app, monkeypatch):
    app.switch_page("pages/evaluate.py").run()
    app.radio(key=state.EVAL_SOURCE).set_value("A folder on the server").run()
    assert any("No server folders are enabled" in i.value for i in app.info)
    monkeypatch.setenv("COVIDXR_DATA_ROOTS", str(SAMPLES))
    app.run()
    for refused in ("/etc", "../tests", "covid/../../tests"):
        app.text_input(key=state.EVAL_FOLDER).set_value(refused).run()
        app.button(key=state.EVAL_RUN).click().run()
        assert not app.exception
        assert any(e.value.startswith("Nothing was evaluated") for e in app.error), refused
    app.text_input(key=state.EVAL_FOLDER).set_value(".").run()
    app.button(key=state.EVAL_RUN).click().run()
    assert len(app.dataframe[-1].value) == 6


def test_interrupted_evaluation_keeps_the_rows_scored(app, classifier):
    from covidxr.evaluate import iter_scores, scan_folder
    from webapp.session.batch import Batch

    items = scan_folder(SAMPLES, classifier.card.positive_class)
    batch = Batch("samples", len(items), classifier.threshold, classifier.card.positive_class, items)
    for row in iter_scores(classifier, items[:3]):
        batch.rows.append(row)
    app.session_state[state.BATCH] = batch
    app.switch_page("pages/evaluate.py").run()
    assert not app.exception
    assert any("interrupted after 3 of 6 films" in w.value for w in app.warning)
    assert len(app.dataframe[-1].value) == 3


# ---------------------------------------------------------------- heatmap review

def test_review_shows_errors_first_and_opens_a_film_in_a_dialog(app, monkeypatch):
    from webapp.views import view

    run_evaluation(app)
    app.slider(key=state.EVAL_THRESHOLD).set_value(50.0).run()
    calls = count_calls(monkeypatch, view, "explain")
    app.switch_page("pages/review.py").run()
    assert not app.exception
    tiles = [m.value.split("**")[1] for m in app.markdown if m.value.startswith("**")]
    assert len(tiles) == 6
    rank = {"FN": 0, "FP": 1, "TP": 2, "TN": 3}
    assert [rank[t] for t in tiles] == sorted(rank[t] for t in tiles)
    assert len(calls) == 6                                # heatmap thumbnails, one Grad-CAM per film
    assert sum(c.value.startswith(f"{icons.WARNING} it looks like a child's film") for c in app.caption) == 1  # the Kermany sample
    if "FP" in tiles:                                     # a false positive explains itself
        assert any(c.value.startswith("The model called this COVID-19 pattern; the label says") for c in app.caption)
    opens = [b.key for b in app.button if b.key.startswith(f"{state.REVIEW_OPEN}_")]
    app.button(key=opens[0]).click().run()
    assert not app.exception
    assert len(calls) == 6                                # the dialog reuses the tile's heatmap
    assert any(c.startswith("Grad-CAM") for img in app.image for c in img.captions)
    first = app.session_state[state.REVIEW_DIALOG]
    if not app.button(key=state.REVIEW_NEXT).disabled:
        app.button(key=state.REVIEW_NEXT).click().run()
        assert not app.exception and app.session_state[state.REVIEW_DIALOG] != first
    app.button(key=state.REVIEW_CLOSE).click().run()
    assert state.REVIEW_DIALOG not in app.session_state
    app.multiselect(key=state.REVIEW_OUTCOMES).set_value(["TN"]).run()
    assert {m.value.split("**")[1] for m in app.markdown if m.value.startswith("**")} <= {"TN"}


def test_review_without_a_batch_points_to_evaluation(app):
    app.switch_page("pages/review.py").run()
    assert not app.exception
    assert any("No batch yet" in i.value for i in app.info)


# ---------------------------------------------------------------- model card

def test_model_card_page_is_for_clinicians_first(app, card):
    app.switch_page("pages/model_card.py").run()
    assert not app.exception
    shown = " ".join(texts(app))
    assert card.name in shown and fmt_threshold(card.threshold) in shown and card.threshold_rule in shown
    assert card.intended_use in shown
    headers = [h.value for h in app.header]
    assert headers[:3] == ["Who it must not be used on", "What to expect at your hospital", "How it decides"]
    assert headers.index("What to expect at your hospital") < headers.index("Headline figures (optimistic)")
    folds = sorted((f for f in card.metrics["leave_one_source_out"] if f.get("auc") is not None), key=lambda f: f["auc"])
    unseen, same_source = f"{folds[0]['auc']:.3f}", f"{card.metrics['validation']['auc']:.3f}"
    assert unseen in shown and shown.index(unseen) < shown.index("Headline figures")
    assert "Batch evaluation" in shown and "children" in app.error[0].value.lower()
    assert "Adversary" not in shown and "Best step" not in shown and "0.900" not in shown
    assert all(h.value.strip() for h in [*app.header, *app.subheader])       # no empty heading
    assert [e.label for e in app.expander][:1] == ["Architecture and input"]
