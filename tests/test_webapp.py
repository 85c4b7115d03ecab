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

from webapp import batch, images, lru, review, tables, wording


@pytest.mark.parametrize("p, positive, expected", [
    (0.93, True, "Positive for COVID-19 pattern (p = 0.93, threshold 0.41)"),
    (0.12, False, "No COVID-19 pattern detected (p = 0.12, threshold 0.41)"),
    (0.9991, True, "Positive for COVID-19 pattern (p > 0.99, threshold 0.41)"),
    (0.0001, False, "No COVID-19 pattern detected (p < 0.01, threshold 0.41)"),
])
def test_verdict_says_decision_probability_and_threshold(p, positive, expected):
    assert wording.verdict(p, positive, 0.41, "covid") == expected


def test_verdict_does_not_round_certainty_to_one():
    assert "1.00" not in wording.verdict(0.996, True, 0.5, "covid")
    assert "0.00" not in wording.verdict(0.004, False, 0.5, "covid")


def test_not_chest_notice_only_for_rejected_films():
    assert wording.not_chest_notice(None, "covid") is None
    assert wording.not_chest_notice(SimpleNamespace(is_chest=True, distance=1.0, reasons=[]), "covid") is None
    msg = wording.not_chest_notice(SimpleNamespace(is_chest=False, distance=9.0, reasons=["no lungs found"]), "covid")
    assert "not look like a frontal chest radiograph" in msg and "no lungs found" in msg and "withheld" in msg


def test_class_rows_most_likely_first_with_titles():
    rows = tables.class_rows({"covid": 0.2, "normal": 0.7, "pneumonia": 0.1})
    assert [r["class"] for r in rows] == ["no finding", "COVID-19", "other pneumonia"]
    assert [r["probability"] for r in rows] == [0.7, 0.2, 0.1]


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
    assert rows == [{"metric": "Sensitivity", "value": "0.900", "95% CI": "0.600–0.980"},
                    {"metric": "Specificity", "value": "—", "95% CI": "—"},
                    {"metric": "AUC", "value": "0.950", "95% CI": "0.900–0.990"}]
    assert tables.fmt_estimate(REPORT, "auc") == "0.950 (0.900–0.990)"
    assert tables.fmt_estimate(REPORT, "specificity") == "—"
    assert tables.is_estimates(REPORT) and not tables.is_estimates({"n": 3}) and not tables.is_estimates([1])


def test_breakdown_rows_one_row_per_group():
    groups = {"hannover": {**REPORT, "n_pos": 10, "n_neg": 0}, "nih": {"n": 4, "auc": None, "ci": {}}}
    rows = tables.breakdown_rows(groups, "covid")
    assert rows[0] == {"source": "hannover", "films": 10, "COVID-19": 10, "other": 0,
                       "Sensitivity": "0.900 (0.600–0.980)", "Specificity": "—", "AUC": "0.950 (0.900–0.990)"}
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


def test_roc_points_and_shrink():
    assert tables.roc_points(None) == []
    assert tables.roc_points({"fpr": [0, 1], "tpr": [0, 1], "thresholds": [None, 0.1]}) == [
        {"fpr": 0.0, "tpr": 0.0}, {"fpr": 1.0, "tpr": 1.0}]
    small = images.shrink(np.ones((400, 200), np.float32), 100)
    assert small.shape == (100, 50)
    assert images.shrink(np.ones((40, 20), np.float32), 100).shape == (40, 20)


# ---------------------------------------------------------------- the positive class comes from the card

def test_wording_and_tables_follow_the_cards_positive_class():
    assert wording.verdict(0.7, True, 0.5, "pneumonia") == ("Positive for other pneumonia pattern "
                                                            "(p = 0.70, threshold 0.50)")
    assert "The other pneumonia score is withheld" in wording.not_chest_notice(
        SimpleNamespace(is_chest=False, reasons=[]), "pneumonia")
    assert "predicted TB" in tables.confusion_table({"tp": 1, "fp": 2, "tn": 3, "fn": 4}, "TB")
    assert tables.breakdown_rows({"a": {"n": 2, "n_pos": 1, "n_neg": 1}}, "TB") == [
        {"source": "a", "films": 2, "TB": 1, "other": 1}]


def test_upload_types_come_from_the_film_suffixes():
    pytest.importorskip("streamlit")
    from covidxr.films import FILM_SUFFIXES
    from webapp.films import UPLOAD_TYPES

    assert {f".{t}" for t in UPLOAD_TYPES} == set(FILM_SUFFIXES) and len(UPLOAD_TYPES) == len(FILM_SUFFIXES)


# ---------------------------------------------------------------- where Streamlit may be imported

PURE = ("webapp.wording", "webapp.tables", "webapp.review", "webapp.batch", "webapp.images", "webapp.lru",
        "webapp.browser")
REPO = Path(__file__).resolve().parents[1]


def fresh_python(code: str) -> str:
    """The last line `code` prints, run in a new interpreter in the repository (nothing imported yet)."""
    run = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    return run.stdout.splitlines()[-1]


def imported_by(code: str) -> set[str]:
    return set(json.loads(fresh_python(f"{code}\nimport json, sys; print(json.dumps(sorted(sys.modules)))")))


def test_pure_modules_and_the_core_never_import_streamlit_or_webapp():
    assert "streamlit" not in imported_by("import " + ", ".join(PURE))
    core = imported_by("import covidxr, covidxr.evaluate, covidxr.explain, covidxr.cli")
    assert not {m for m in core if m.split(".")[0] in ("streamlit", "webapp")}


def test_the_upload_spool_patch_runs_only_when_called():
    pytest.importorskip("streamlit")
    sizes = fresh_python("from starlette.formparsers import MultiPartParser as P; before = P.spool_max_size\n"
                         "import webapp.uploads; imported = P.spool_max_size\n"
                         "webapp.uploads.keep_uploads_in_memory(); print(before, imported, P.spool_max_size)")
    before, imported, called = map(int, sizes.split())
    assert imported == before                    # importing changed nothing
    assert called > 200 << 20 > before           # called (by app.py), the whole upload limit stays in memory


def test_session_state_keys_are_distinct():
    pytest.importorskip("streamlit")
    from webapp import state

    keys = [v for k, v in vars(state).items() if k.isupper() and isinstance(v, str)]
    assert len(keys) == len(set(keys)) >= 20
