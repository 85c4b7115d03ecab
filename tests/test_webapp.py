"""The app's Streamlit-free modules: wording, tables, review ordering, batch progress, caches, in-memory PNGs."""
from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

from covidxr import lru
from webapp.session import batch
from webapp.views import images, review, tables, wording


@pytest.mark.parametrize("p, positive, expected", [
    (0.93, True, "Positive for COVID-19 pattern: 93% (operating point 41%)"),
    (0.12, False, "No COVID-19 pattern: 12% (operating point 41%)"),
    (0.9991, True, "Positive for COVID-19 pattern: > 99% (operating point 41%)"),
    (0.0001, False, "No COVID-19 pattern: < 1% (operating point 41%)"),
    (0.405, False, "No COVID-19 pattern: 40.5% (operating point 41%)"),   # near the operating point: one decimal
])
def test_verdict_says_decision_percentage_and_operating_point(p, positive, expected):
    assert wording.verdict(p, positive, 0.41, "covid") == expected


def test_verdict_never_reads_as_a_p_value_nor_rounds_certainty_to_100():
    for p in (0.996, 0.004, 0.5):
        sentence = wording.verdict(p, p >= 0.5, 0.5, "covid")
        assert "p =" not in sentence and "p <" not in sentence and "p >" not in sentence
    assert "100%" not in wording.verdict(0.996, True, 0.5, "covid")
    assert "0%" not in wording.verdict(0.004, False, 0.5, "covid").replace("50%", "")


def test_the_operating_point_is_printed_one_way():
    assert wording.fmt_threshold(0.14885684973717933) == "14.9%"
    assert wording.fmt_threshold(0.15) == "15%" and wording.fmt_threshold(0.5) == "50%"
    assert wording.operating_point(0.41) == "operating point 41%"
    line = wording.summary_line("a.png", 0.98, True, 0.149, "covid", {"covid": 0.98}, "m (weights abc)", "2026-01-01")
    assert "(operating point 14.9%)" in line and "research screening aid" in line and line.startswith("a.png · ")


def test_a_negative_with_another_finding_gets_no_green_tick():
    probs = {"covid": 0.01, "normal": 0.01, "pneumonia": 0.98}
    assert wording.tone(False, probs, "covid") == "review"
    assert wording.other_finding_sentence(probs, "covid") == "The model sees other pneumonia (98%): review."
    assert wording.tone(False, {"covid": 0.05, "normal": 0.9, "pneumonia": 0.05}, "covid") == "negative"
    assert wording.tone(False, {"covid": 0.05, "normal": 0.55, "pneumonia": 0.4}, "covid") == "negative"
    assert wording.tone(True, probs, "covid") == "positive"
    # class names come from the card: the normal class never counts as a finding, any other class does
    assert wording.abnormal_classes(["covid", "no_finding", "tb", "pneumonia"], "covid") == ["tb", "pneumonia"]
    assert wording.other_finding({"covid": 0.1, "no_finding": 0.2, "tb": 0.7}, "covid") == ("tb", 0.7)
    line = wording.summary_line("x", 0.01, False, 0.15, "covid", probs, "m", "d")
    assert "other pneumonia (98%): review" in line


def test_refusal_puts_the_decisive_reason_first_and_the_numbers_apart():
    assert wording.refusal(None, "covid") is None
    assert wording.refusal(SimpleNamespace(is_chest=True, reasons=[]), "covid") is None
    old_style = SimpleNamespace(is_chest=False, reasons=[
        "its DICOM body part is HIP, not chest",
        "its image features are unlike the chest radiographs the model was trained on (distance 2.19, limit 1.87)"])
    r = wording.refusal(old_style, "covid")
    assert r.headline.startswith("Not a frontal chest radiograph: its DICOM body part is HIP, not chest.")
    assert "No COVID-19 score is given" in r.headline
    assert r.reasons == ["Its image features are unlike the chest radiographs the model was trained on."]
    assert r.details == "distance 2.19, limit 1.87" and "2.19" not in r.text()
    new_style = SimpleNamespace(is_chest=False, reasons=["looks like a lateral view"], details="d=3.1",
                                warnings=["not validated on children"])
    r = wording.refusal(new_style, "covid")
    assert r.details == "d=3.1" and r.warnings == ["not validated on children"]
    assert "not look like" not in r.text() and "looks like a lateral view" in r.headline
    assert wording.gate_warnings(SimpleNamespace(is_chest=True, warnings=["child"])) == ["child"]
    assert wording.gate_warnings(SimpleNamespace(is_chest=True)) == [] and wording.gate_warnings(None) == []


def test_a_false_positive_explains_itself():
    assert wording.review_explanation("FP", "normal", "covid") == (
        "The model called this COVID-19 pattern; the label says no finding.")
    assert "label says COVID-19" in wording.review_explanation("FN", "covid", "covid")
    assert wording.review_explanation("TP", "covid", "covid") is None


def test_metrics_as_percentages_with_intervals():
    assert wording.fmt_rate(0.9) == "90%" and wording.fmt_rate(0.9123) == "91.2%" and wording.fmt_rate(None) == "—"
    assert wording.fmt_rate_ci([0.812, 0.951]) == "81.2–95.1%" and wording.fmt_rate_ci([None, None]) == "—"
    assert set(wording.METRIC_HELP) >= {"ppv", "npv", "ece", "auc", "sensitivity", "specificity"}


def test_class_rows_most_likely_first_with_titles():
    rows = tables.class_rows({"covid": 0.2, "normal": 0.7, "pneumonia": 0.1})
    assert [r["class"] for r in rows] == ["no finding", "COVID-19", "other pneumonia"]
    assert [r["probability"] for r in rows] == ["70%", "20%", "10%"]
    tiny = tables.class_rows({"covid": 0.003, "normal": 0.997})                # rounded as the banner rounds:
    assert [r["probability"] for r in tiny] == ["> 99%", "< 1%"]              # never a false "0%" or "100%"
    assert wording.fmt_pct(0.003) == "< 1%"


def test_file_key_is_content_based():
    assert lru.file_key(b"abc") == lru.file_key(bytes(b"abc"))
    assert lru.file_key(b"abc") != lru.file_key(b"abd")


def test_png_bytes_roundtrip_in_memory():
    rgb = np.random.default_rng(0).integers(0, 256, (7, 5, 3), dtype=np.uint8)
    back = np.asarray(Image.open(io.BytesIO(images.png_bytes(rgb))))
    assert back.shape == (7, 5, 3) and np.array_equal(back, rgb)


def test_to_uint8_clips_and_scales():
    out = images.to_uint8(np.array([[-0.5, 0.0, 0.5, 1.0, 2.0]], dtype=np.float32))
    assert out.dtype == np.uint8 and out.tolist() == [[0, 0, 128, 255, 255]]


def test_overlay_name():
    assert images.overlay_name("chest.dcm") == "chest_gradcam.png"
    assert images.overlay_name("covid/a.b.png") == "a.b_gradcam.png"
    assert images.overlay_name("") == "film_gradcam.png"


def test_progress_text_and_eta():
    assert batch.eta_seconds(0, 10, 5.0) is None
    assert batch.eta_seconds(5, 10, 10.0) == pytest.approx(10.0)
    assert batch.progress_text(5, 10, 10.0) == "Scored 5 of 10 films · about 10 s left"
    assert batch.progress_text(10, 10, 10.0) == "Scored 10 of 10 films"
    assert batch.fmt_duration(125) == "2 min 05 s" and batch.fmt_duration(3700) == "1 h 01 min"


@pytest.mark.parametrize("truth, pred, expected", [
    (True, True, "TP"), (True, False, "FN"), (False, True, "FP"), (False, False, "TN"), (None, True, "?")])
def test_outcome(truth, pred, expected):
    assert review.outcome(truth, pred) == expected


def test_review_puts_errors_first_then_sorts_by_confidence():
    t = 0.4
    scored = [(0.9, True),    # 0 TP, sure
              (0.1, True),    # 1 FN, very wrong
              (0.35, True),   # 2 FN, near the threshold
              (0.8, False),   # 3 FP
              (0.05, False),  # 4 TN
              (0.5, None)]    # 5 unlabelled
    order = review.review_items(scored, t)
    assert [it.index for it in order] == [1, 2, 3, 0, 4, 5]
    assert [it.outcome for it in order] == ["FN", "FN", "FP", "TP", "TN", "?"]
    least = review.review_items(scored, t, most_confident_first=False)
    assert [it.index for it in least][:2] == [2, 1]
    only_fp = review.review_items(scored, t, outcomes={"FP"})
    assert [it.index for it in only_fp] == [3]


def test_review_follows_the_threshold():
    scored = [(0.6, False), (0.3, True)]
    assert [it.outcome for it in review.review_items(scored, 0.5)] == ["FN", "FP"]
    assert [it.outcome for it in review.review_items(scored, 0.2)] == ["FP", "TP"]


def test_confidence_is_zero_at_threshold_and_one_at_extremes():
    assert review.confidence(0.4, 0.4) == 0.0
    assert review.confidence(1.0, 0.4) == pytest.approx(1.0) and review.confidence(0.0, 0.4) == pytest.approx(1.0)


def _row(path, label, probability=None, error=None, chest_xray=True, reasons=()):
    from covidxr.report import Row

    return Row(path, label, "src", probability=probability, error=error, truth=None if label is None else label == "covid",
               chest_xray=chest_xray, reasons=reasons)


def test_the_review_shows_scored_and_refused_films_in_review_order_and_pages_them():
    rows = [_row("tp.png", "covid", 0.9), _row("broken.png", "covid", error="not a film"),
            _row("lateral.png", "normal", chest_xray=False, reasons=("a lateral view",)),
            _row("fn.png", "covid", 0.1), _row("tn.png", "normal", 0.2), _row("fp.png", "normal", 0.7)]
    entries = review.reviewable(rows)
    assert entries == [0, 2, 3, 4, 5]                                  # the unreadable film is not reviewed
    assert review.ordered(rows, entries, 0.5) == [(3, "FN"), (5, "FP"), (0, "TP"), (4, "TN"), (2, review.REFUSED)]
    assert review.ordered(rows, entries, 0.05, outcomes={"FP", "TP"}) == [(5, "FP"), (4, "FP"), (0, "TP"), (3, "TP")]
    title, why = review.describe(rows[5], "FP", "covid", 0.5)
    assert title.startswith(wording.OUTCOME_TITLES["FP"]) and why == wording.review_explanation("FP", "normal", "covid")
    assert review.describe(rows[2], review.REFUSED, "covid", 0.5) == (wording.NOT_CHEST, "a lateral view")
    assert [list(r) for r in review.page_rows(10, 1, 8, 4)] == [[0, 1, 2, 3], [4, 5, 6, 7]]
    assert [list(r) for r in review.page_rows(10, 2, 8, 4)] == [[8, 9]]


def test_the_dialog_steps_through_the_errors_when_opened_on_one_else_through_every_film():
    shown, outcome_of = [3, 5, 0, 4], {3: "FN", 5: "FP", 0: "TP", 4: "TN"}
    assert review.place(shown, outcome_of, 3) == (None, 5, "1 of 2 errors")
    assert review.place(shown, outcome_of, 5) == (3, None, "2 of 2 errors")
    assert review.place(shown, outcome_of, 0) == (5, 4, "3 of 4 films")
    assert review.place([0, 4], outcome_of, 3) == (None, None, "")     # no longer among the shown films


def test_lru_evicts_least_recently_used():
    c = lru.LRU(2)
    c.put("a", 1)
    c.put("b", 2)
    assert c.get("a") == 1          # a is now the most recent
    c.put("c", 3)
    assert "b" not in c and c.get("a") == 1 and c.get("c") == 3 and len(c) == 2


REPORT = {"sensitivity": 0.9, "specificity": None, "auc": 0.95, "n": 10,
          "ci": {"sensitivity": [0.6, 0.98], "specificity": None, "auc": [0.9, 0.99]}}


def test_metric_rows_and_estimates_show_ci_or_dash():
    rows = tables.metric_rows(REPORT)
    assert rows == [{"metric": "Sensitivity", "value": "90%", "95% CI": "60–98%"},
                    {"metric": "Specificity", "value": "—", "95% CI": "—"},
                    {"metric": "AUC", "value": "0.950", "95% CI": "0.900–0.990"}]
    assert tables.fmt_estimate(REPORT, "auc") == "0.950 (0.900–0.990)"
    assert tables.fmt_estimate(REPORT, "sensitivity") == "90% (60–98%)"
    assert tables.fmt_estimate(REPORT, "specificity") == "—"
    assert tables.is_estimates(REPORT) and not tables.is_estimates({"n": 3}) and not tables.is_estimates([1])


def test_breakdown_rows_one_row_per_group():
    groups = {"hannover": {**REPORT, "n_pos": 10, "n_neg": 0}, "nih": {"n": 4, "auc": None, "ci": {}}}
    rows = tables.breakdown_rows(groups, "covid")
    assert rows[0] == {"source": "hannover", "films": 10, "COVID-19": 10, "other": 0,
                       "Sensitivity": "90% (60–98%)", "Specificity": "—", "AUC": "0.950 (0.900–0.990)"}
    assert rows[1] == {"source": "nih", "films": 4, "AUC": "—"}


def test_confusion_table_places_counts():
    t = tables.confusion_table({"tp": 1, "fp": 2, "tn": 3, "fn": 4}, "covid")
    assert t["predicted COVID-19"] == {"actual COVID-19": 1, "actual not COVID-19": 2}
    assert t["predicted not COVID-19"] == {"actual COVID-19": 4, "actual not COVID-19": 3}


def row(path, label, p, error=None):
    from covidxr.evaluate import Row, truth
    return Row(path, label, None, p, None, error, truth(label, "covid"))


def test_image_rows_skip_failures_and_follow_threshold():
    rows = [row("a", "covid", 0.7), row("b", "normal", 0.6), row("c", "normal", None, "broken")]
    assert [(r["film"], r["outcome"]) for r in tables.image_rows(rows, 0.5)] == [("a", "true positive"),
                                                                                 ("b", "false positive")]
    assert [r["outcome"] for r in tables.image_rows(rows, 0.8)] == ["false negative", "true negative"]
    # the decision in the exports' words (covid / non-covid), the score as the banner words it (one rounding rule)
    assert [(r["decision"], r["COVID-19 score"]) for r in tables.image_rows(rows, 0.65)] == [
        ("covid", "70%"), ("non-covid", "60%")]
    low = [row("d", "normal", 0.003), row("e", "covid", 0.6449)]
    assert [r["COVID-19 score"] for r in tables.image_rows(low, 0.65)] == [
        wording.fmt_pct(0.003), wording.fmt_pct(0.6449, 0.65)] == ["< 1%", "64.5%"]   # one decimal at the threshold


def refused_row(path, label, p=0.9, reasons=("its DICOM body part is HIP, not chest (distance 3.0, limit 1.9)",)):
    """A row as the gate's evaluate.Row will carry it (chest_xray False and its reasons)."""
    return SimpleNamespace(path=path, label=label, source=None, probability=p, error=None, chest_xray=False,
                           reasons=list(reasons), positive=label == "covid", prediction=None)


def test_refused_films_show_no_score_anywhere_in_the_tables():
    rows = [row("a", "covid", 0.7), refused_row("hip.dcm", "normal")]
    table = tables.image_rows(rows, 0.5)
    assert table[1]["COVID-19 score"] == "not scored: not a frontal chest radiograph"   # the reason, never "None"
    assert table[1]["decision"] == "not a frontal chest radiograph"
    assert None not in table[1].values()
    assert [list(r)[:2] for r in table] == [["decision", "COVID-19 score"]] * 2   # first on a phone's narrow table
    assert table[1]["outcome"] == "its DICOM body part is HIP, not chest"          # reasons in words, no numbers
    assert tables.refused_rows(rows) == [{"film": "hip.dcm", "label": "normal",
                                          "reasons": "its DICOM body part is HIP, not chest"}]
    assert "90" not in str(table[1]) and "0.9" not in str(table[1])


def test_the_per_image_table_sorts_by_score_and_shows_the_banners_words():
    """Text scores sorted "10%" before "9%" and "< 1%" after "97%": the table holds the probability, shows fmt_pct."""
    rows = [row("a", "covid", 0.97), row("b", "normal", 0.002), refused_row("hip.dcm", "normal"),
            row("c", "normal", 0.1), row("d", "normal", 0.09)]
    table = tables.image_table(rows, 0.5)
    data = table.data
    assert str(data["COVID-19 score"].dtype) == "Float64" and data["COVID-19 score"].isna().tolist() == [
        False, False, True, False, False]
    assert list(data.sort_values("COVID-19 score", na_position="first")["film"]) == ["hip.dcm", "b", "d", "c", "a"]
    shown = table.to_string()
    for text in ("97%", "< 1%", "10%", "9%", "not scored: not a frontal chest radiograph"):
        assert text in shown
    assert "0.97" not in shown and "0.002" not in shown and "nan" not in shown.lower().replace("non-covid", "")
    words = tables.image_rows(rows, 0.5)                     # the same rows and columns as the words' table
    assert list(data.columns) == list(words[0]) and list(data["film"]) == [r["film"] for r in words]


def test_a_childs_scored_film_carries_its_warning_in_the_batch_table_and_the_report_line():
    from covidxr.gate import CHILD_WARNING

    child = SimpleNamespace(path="kid.jpg", label="pneumonia", source=None, probability=0.2, error=None,
                            chest_xray=True, reasons=[], warnings=[CHILD_WARNING], positive=False)
    refused = refused_row("ct.png", "normal")
    refused.warnings = [CHILD_WARNING]  # a refused row's warnings are never shown: it has no score
    table = tables.image_rows([row("a", "covid", 0.7), child, refused], 0.5)
    assert [r["warnings"] for r in table] == ["", CHILD_WARNING, ""]
    assert wording.row_warnings(child) == CHILD_WARNING and wording.row_warnings(refused) == ""
    line = wording.summary_line("kid.jpg", 0.2, False, 0.15, "covid", {"covid": 0.2}, "m", "d", [CHILD_WARNING])
    assert f"warning: {CHILD_WARNING}" in line
    assert "warning" not in wording.summary_line("a.jpg", 0.2, False, 0.15, "covid", {"covid": 0.2}, "m", "d")
    lines = wording.report_lines(0.2, False, 0.15, "covid", {"covid": 0.2}, "m", "d", [CHILD_WARNING])
    assert lines[1] == f"Warning: {CHILD_WARNING}"              # under the report picture (download, DICOM SC)
    assert not any(x.startswith("Warning") for x in wording.report_lines(0.2, False, 0.15, "covid", {}, "m", "d"))


def test_batch_report_moves_threshold_without_rebuilding_and_knows_interruption(monkeypatch):
    from covidxr import evaluate

    rows = [row("a", "covid", 0.9), row("b", "covid", 0.4), row("c", "normal", 0.3), row("d", "normal", 0.1)]
    b = batch.Batch("t", total=5, threshold=0.5, positive_class="covid")
    b.rows.extend(rows)
    assert b.interrupted                                # 4 of 5 scored, not done
    built = []
    real = evaluate.build_report
    monkeypatch.setattr(evaluate, "build_report", lambda *a, **k: built.append(1) or real(*a, **k))
    assert b.report().metrics.sensitivity.value == 0.5
    b.threshold = 0.35
    assert b.report().metrics.sensitivity.value == 1.0 and b.report().metrics.specificity.value == 1.0
    assert len(built) == 1                              # one bootstrap, then only the threshold moved
    b.rows.append(row("e", "normal", 0.2))
    b.report()
    assert len(built) == 2                              # new rows: a new report
    b.done = True
    assert not b.interrupted and [i for i, _ in b.scored()] == [0, 1, 2, 3, 4]
    b.seconds = 1.5
    assert b.report().as_dict()["seconds"] == 1.5      # the JSON download carries the run's time


def test_batch_metrics_leave_refused_films_out_unless_included():
    from dataclasses import replace

    from covidxr.evaluate import Row

    rows = [Row("a", "covid", None, 0.9, None, None, True, True), Row("b", "normal", None, 0.1, None, None, False, True),
            Row("dog.jpg", "normal", None, 0.95, None, None, False, False, ("a photograph",))]
    b = batch.Batch("t", total=3, threshold=0.5, positive_class="covid")
    b.rows.extend(rows)
    assert [i for i, _ in b.refused()] == [2] and [i for i, _ in b.scored()] == [0, 1]
    left_out = b.report()
    assert left_out.metrics.n == 2 and left_out.metrics.specificity.value == 1.0
    assert len(left_out.rows) == 3 and left_out.rows[2].probability is None   # listed, with no score
    b.include_refused = True
    included = b.report()
    assert included.metrics.n == 3 and included.metrics.specificity.value == 0.5
    assert [r.chest_xray for r in included.rows] == [True, True, False]       # rows keep the gate's verdict
    assert b.can_include_refused()
    b.rows[2] = replace(rows[2], probability=None)
    assert not b.can_include_refused()


def test_interleave_keeps_every_prefix_balanced_and_each_class_in_order():
    items = [("covid", k) for k in range(30)] + [("normal", k) for k in range(10)] + [("pneumonia", k) for k in range(5)]
    out = batch.interleave(items, key=lambda it: it[0])
    assert sorted(out) == sorted(items)
    for label in ("covid", "normal", "pneumonia"):
        assert [k for l, k in out if l == label] == sorted(k for l, k in out if l == label)   # own order kept
    for n in range(9, len(out) + 1):                    # any interrupted run sees each class in proportion
        prefix = [l for l, _ in out[:n]]
        assert abs(prefix.count("covid") / n - 30 / 45) < 0.15
        assert prefix.count("normal") >= 1 and prefix.count("pneumonia") >= 1
    assert batch.interleave([], key=str) == []


def test_roc_points_and_shrink():
    assert tables.roc_points(None) == []
    assert tables.roc_points({"fpr": [0, 1], "tpr": [0, 1], "thresholds": [None, 0.1]}) == [
        {"fpr": 0.0, "tpr": 0.0}, {"fpr": 1.0, "tpr": 1.0}]
    small = images.shrink(np.ones((400, 200), np.float32), 100)
    assert small.shape == (100, 50)
    assert images.shrink(np.ones((40, 20), np.float32), 100).shape == (40, 20)


# ---------------------------------------------------------------- the positive class comes from the card

def test_wording_and_tables_follow_the_cards_positive_class():
    assert wording.verdict(0.7, True, 0.5, "pneumonia") == ("Positive for other pneumonia pattern: 70% "
                                                            "(operating point 50%)")
    assert "No other pneumonia score is given" in wording.not_chest_notice(
        SimpleNamespace(is_chest=False, reasons=[]), "pneumonia")
    assert "predicted TB" in tables.confusion_table({"tp": 1, "fp": 2, "tn": 3, "fn": 4}, "TB")
    assert tables.breakdown_rows({"a": {"n": 2, "n_pos": 1, "n_neg": 1}}, "TB") == [
        {"source": "a", "films": 2, "TB": 1, "other": 1}]


def test_upload_types_come_from_the_film_suffixes():
    pytest.importorskip("streamlit")
    from covidxr.films import FILM_SUFFIXES
    from webapp.session.films import UPLOAD_TYPES

    assert {f".{t}" for t in UPLOAD_TYPES} == set(FILM_SUFFIXES) and len(UPLOAD_TYPES) == len(FILM_SUFFIXES)


# ---------------------------------------------------------------- where Streamlit may be imported

PURE = ("webapp.views.wording", "webapp.views.tables", "webapp.views.review", "webapp.session.batch", "webapp.views.images",
        "webapp.views.card_view", "webapp.services.sites")
REPO = Path(__file__).resolve().parents[1]


def fresh_python(code: str) -> str:
    """The last line `code` prints, run in a new interpreter in the repository (nothing imported yet)."""
    run = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    return run.stdout.splitlines()[-1]


def imported_by(code: str) -> set[str]:
    return set(json.loads(fresh_python(f"{code}\nimport json, sys; print(json.dumps(sorted(sys.modules)))")))


@pytest.mark.slow
def test_pure_modules_and_the_core_never_import_streamlit_or_webapp():
    assert "streamlit" not in imported_by("import " + ", ".join(PURE))
    core = imported_by("import covidxr, covidxr.evaluate, covidxr.explain, covidxr.cli")
    assert not {m for m in core if m.split(".")[0] in ("streamlit", "webapp")}


def test_the_upload_spool_patch_runs_only_when_called():
    pytest.importorskip("streamlit")
    sizes = fresh_python("from starlette.formparsers import MultiPartParser as P; before = P.spool_max_size\n"
                         "import webapp.services.uploads; imported = P.spool_max_size\n"
                         "webapp.services.uploads.keep_uploads_in_memory(); print(before, imported, P.spool_max_size)")
    before, imported, called = map(int, sizes.split())
    assert imported == before                    # importing changed nothing
    assert called > 200 << 20 > before           # called (by app.py), the whole upload limit stays in memory


def test_session_state_keys_are_distinct():
    pytest.importorskip("streamlit")
    from webapp.session import state

    keys = [v for k, v in vars(state).items() if k.isupper() and isinstance(v, str)]
    assert len(keys) == len(set(keys)) >= 20


# ---------------------------------------------------------------- issue 17: heatmaps, reports, review, card

def test_muted_overlay_has_no_hot_colours_and_the_colour_bar_runs_low_to_high():
    film = np.full((40, 30), 0.5, np.float32)
    heat = np.zeros((40, 30), np.float32)
    heat[10:20, 10:20] = 1.0
    muted = images.muted_overlay(film, heat, 0.8).astype(int)
    hot = muted[15, 15]
    assert hot[2] > hot[0] and hot[2] > hot[1]          # the attended spot turns slate blue, never red/yellow
    assert (muted[0, 0] == 128).all()                   # no attention: the film's own gray
    bar = images.colour_bar(100, 8)
    assert bar.shape == (8, 100, 3) and bar[0, 0, 2] > bar[0, 0, 0] and bar[0, -1, 0] > bar[0, -1, 2]  # blue -> red
    grey = images.colour_bar(100, 8, muted=True).astype(int)
    assert np.all(grey[..., 0] <= grey[..., 2] + 1)     # the muted scale has no red end


def test_annotated_png_carries_the_text_below_the_image():
    rgb = np.zeros((60, 500, 3), np.uint8)
    out = images.annotated(rgb, ["Positive for COVID-19 pattern: 98% (operating point 14.9%)",
                                 "Model: covidxr (weights abcdef123456)", "Date: 2026-01-01", wording.DISCLAIMER_PLAIN])
    assert out.shape[0] > 60 + 4 * 10 and out.shape[1] == 500
    assert np.array_equal(out[:60], rgb)                # the image itself untouched
    panel = out[60:]
    assert (panel < 128).any() and (panel == 255).any()  # dark text on white


def test_review_lists_refused_films_last_without_a_score_and_walks_errors():
    scored = [(0.9, False, False), (0.1, True, False), (None, False, True), (0.2, False, False)]
    order = review.review_items(scored, 0.5)
    assert [it.outcome for it in order] == ["FN", "FP", "TN", "X"]
    assert order[-1].probability is None
    assert [it.index for it in review.review_items(scored, 0.5, outcomes={"X"})] == [2]
    assert review.neighbours([4, 7, 9], 7) == (4, 9)
    assert review.neighbours([4, 7, 9], 4) == (None, 7) and review.neighbours([4], 5) == (None, None)


def test_the_child_sample_is_labelled_in_the_picker():
    pytest.importorskip("streamlit")
    from webapp.session.films import CHILD_LABEL, sample_films, sample_title

    titles = {p.name: sample_title(p) for p in sample_films()}
    assert titles["person1000_virus_1681.jpg"].endswith("(child: the model is not validated on children)")
    assert CHILD_LABEL not in titles["006f3a8a.jpg"]


def test_card_view_puts_unseen_hospitals_first_from_the_card():
    from covidxr.card import ModelCard
    from covidxr.classifier import DEFAULT_WEIGHTS
    from webapp.views import card_view

    card = ModelCard.load(DEFAULT_WEIGHTS)
    folds = card_view.unseen_folds(card)
    assert [f["auc"] for f in folds] == sorted(f["auc"] for f in folds) and folds
    text = card_view.new_hospital_text(card)
    assert f"{folds[0]['auc']:.3f}" in text and text.index(f"{folds[0]['auc']:.3f}") < text.index(f"{folds[-1]['auc']:.3f}")
    assert any("children" in l.lower() for l in card_view.must_not_use(card))
    assert wording.fmt_threshold(card.threshold) in card_view.decision_text(card)
    shown = str(card_view.ablation_rows(card)) + str(card_view.training_facts(card))
    assert "adversary" not in shown.lower() and "best_step" not in shown


# ---------------------------------------------------------------- issue 28: the drawing carries the score

def _spot():
    film = np.full((64, 64), 0.5, np.float32)
    heat = np.zeros((64, 64), np.float32)
    heat[20:40, 20:40] = 1.0
    return film, heat


def test_a_film_at_7_percent_and_one_at_99_percent_do_not_look_alike():
    """The map is normalised per film: its colour is jet(map x score), so a 99% film's hot spot is red and a 7%
    film's (called positive, e.g. at a low site operating point) is dark blue."""
    from covidxr.explain import overlay

    film, heat = _spot()
    low = images.heat_overlay(film, heat, True, 0.8, 0.07).astype(int)
    high = images.heat_overlay(film, heat, True, 0.8, 0.99).astype(int)
    assert np.abs(high - low)[20:40, 20:40].mean() > 80        # measurably different where the model looked
    r_hi, r_lo = high[30, 30], low[30, 30]
    assert r_hi[0] - r_hi[2] > 80 and r_hi[0] - r_hi[1] > 80   # (jet's dark) red where the 99% film's model looked
    assert r_lo[2] > r_lo[0] + 40 and r_lo[0] < 120             # blue, no red, at the 7% film's
    assert np.array_equal(high[0, 0], low[0, 0])               # no attention: the film's gray in both
    d = images.Drawing(film, heat)                              # the result view's drawing is the same picture
    assert np.array_equal(d.draw(0.8, score=0.07), overlay(film, heat, 0.8, 0.07))
    assert np.array_equal(overlay(film, heat, 0.8, 1.0), overlay(film, heat, 0.8))


def test_the_colour_scale_marks_the_films_score_and_says_what_its_ends_mean():
    bar = images.colour_bar(101, 6, score=0.3).astype(int)
    assert (bar[0, 30] < 40).all()                             # the tick at the score
    assert bar[0, 90].min() > 150                              # beyond the score: washed out, unreachable
    low, high, meaning = images.scale_labels("covid", 0.3, muted=False)
    assert (low, high) == ("0%", "100%") and "COVID-19 score" in meaning and "30%" in meaning
    assert "not a COVID-19 finding" in images.scale_labels("covid", 0.3, muted=True)[2]


def test_the_report_picture_names_its_film_and_grows_by_the_scale_and_the_text():
    film, heat = _spot()
    lines = wording.report_lines(0.96, True, 0.149, "covid", {"covid": 0.96}, "m", "2026-01-01",
                                 film=wording.film_identifiers("chest 01.png"), by="shipped model")
    assert lines[0] == "Film: chest 01.png"
    assert lines[1] == "Positive for COVID-19 pattern: 96% (operating point 14.9%, shipped model)"
    assert any("not the chance that this patient has COVID-19" in x for x in lines)
    assert lines[-1] == wording.DISCLAIMER_PLAIN
    bare = images.annotated(images.heat_overlay(film, heat, True, 0.45, 0.96), [])
    report = images.report_image(film, heat, True, 0.45, lines, 0.96, "covid")
    legend = images.labelled_bar(480, "covid", 0.96, False)
    assert report.shape[0] >= bare.shape[0] + legend.shape[0] + 12 * (len(lines) + 1)
    assert wording.film_identifiers(None, "A1", "20200315") == ["Accession number: A1", "Study date: 2020-03-15"]


def test_the_decision_names_its_operating_point_and_the_score_says_what_it_is():
    assert wording.verdict(0.96, True, 0.149, "covid", wording.decided_by("North ward", "abc123")) == (
        "Positive for COVID-19 pattern: 96% (operating point 14.9%, site profile North ward, version abc123)")
    assert wording.decided_by() == "shipped model"
    assert "not the chance that this patient has COVID-19" in wording.score_meaning("covid")


def test_the_review_dialog_never_calls_a_97_percent_film_negative_in_plain_words():
    """A batch threshold moved to 98% is a trial: a 97% film is below it but positive at the operating point
    that decided (14.9%); both are said, and the page shows it amber, not green."""
    text = wording.trial_verdict(0.97, 0.98, 0.149, "covid", "shipped model")
    assert "97%" in text and "below the batch's trial threshold 98%" in text
    assert "positive for a COVID-19 pattern at the operating point 14.9%, shipped model" in text
    assert not text.startswith("No COVID-19 pattern")
    assert wording.trial_verdict(0.5, 0.98, 0.149, "covid") is not None
    assert wording.trial_verdict(0.99, 0.98, 0.149, "covid") is None   # both sides agree: the plain verdict
    assert wording.trial_verdict(0.97, 0.149, 0.149, "covid") is None  # at the operating point itself
    assert "above" in wording.trial_verdict(0.10, 0.05, 0.149, "covid")
    # sides that agree: the plain verdict, but a trial 50% is never called the shipped model's operating point
    said = wording.verdict(0.99, True, 0.5, "covid", wording.trial_point("shipped model", 0.149))
    assert said.endswith("(operating point 50%, the batch's trial threshold; shipped model: 14.9%)")


def test_changes_are_written_as_changes_and_card_columns_fit_their_cells():
    assert wording.fmt_change("AUC", -0.0561) == "AUC 0.056 lower"
    assert wording.fmt_change("AUC", 0.0733) == "AUC 0.073 higher"
    assert wording.fmt_change("AUC", 0.0002) == "AUC unchanged"
    rows = [{"source": "Kermany paediatric pneumonia", "AUC": "0.677 (0.615–0.739)"}]
    w = tables.column_widths(rows)
    assert w["AUC"] >= tables.CHAR_PX * len(rows[0]["AUC"]) and w["source"] > w["AUC"]
    assert tables.column_widths([{"x": "y" * 500}])["x"] == tables.MAX_PX


def test_the_model_card_never_writes_a_negative_auc():
    from webapp.views import card_view

    card = SimpleNamespace(positive_class="covid", metrics={"site_adaptation": {"target": "t", "folds": {
        "a": {"auc_gain": -0.056}, "b": {"auc_gain": 0.073}}}})
    text = card_view.site_adaptation_text(card)
    assert "AUC 0.056 lower" in text and "AUC 0.073 higher" in text and "-0.0" not in text
