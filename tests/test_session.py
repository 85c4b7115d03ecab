"""The app's pure helpers: wording, ordering, timing, caches, in-memory PNGs."""
from __future__ import annotations

import io
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

from covidxr import session as s


@pytest.mark.parametrize("p, positive, expected", [
    (0.93, True, "Positive for COVID-19 pattern (p = 0.93, threshold 0.41)"),
    (0.12, False, "No COVID-19 pattern detected (p = 0.12, threshold 0.41)"),
    (0.9991, True, "Positive for COVID-19 pattern (p > 0.99, threshold 0.41)"),
    (0.0001, False, "No COVID-19 pattern detected (p < 0.01, threshold 0.41)"),
])
def test_verdict_says_decision_probability_and_threshold(p, positive, expected):
    assert s.verdict(p, positive, 0.41, "covid") == expected


def test_verdict_does_not_round_certainty_to_one():
    assert "1.00" not in s.verdict(0.996, True, 0.5) and "0.00" not in s.verdict(0.004, False, 0.5)


def test_not_chest_notice_only_for_rejected_films():
    assert s.not_chest_notice(None) is None
    assert s.not_chest_notice(SimpleNamespace(is_chest=True, distance=1.0, reasons=[])) is None
    msg = s.not_chest_notice(SimpleNamespace(is_chest=False, distance=9.0, reasons=["no lungs found"]))
    assert "not look like a frontal chest radiograph" in msg and "no lungs found" in msg and "withheld" in msg


def test_class_rows_most_likely_first_with_titles():
    rows = s.class_rows({"covid": 0.2, "normal": 0.7, "pneumonia": 0.1})
    assert [r["class"] for r in rows] == ["no finding", "COVID-19", "other pneumonia"]
    assert [r["probability"] for r in rows] == [0.7, 0.2, 0.1]


def test_file_key_is_content_based():
    assert s.file_key(b"abc") == s.file_key(bytes(b"abc"))
    assert s.file_key(b"abc") != s.file_key(b"abd")


def test_png_bytes_roundtrip_in_memory():
    rgb = np.random.default_rng(0).integers(0, 256, (7, 5, 3), dtype=np.uint8)
    back = np.asarray(Image.open(io.BytesIO(s.png_bytes(rgb))))
    assert back.shape == (7, 5, 3) and np.array_equal(back, rgb)


def test_to_uint8_clips_and_scales():
    out = s.to_uint8(np.array([[-0.5, 0.0, 0.5, 1.0, 2.0]], dtype=np.float32))
    assert out.dtype == np.uint8 and out.tolist() == [[0, 0, 128, 255, 255]]


def test_overlay_name():
    assert s.overlay_name("chest.dcm") == "chest_gradcam.png"
    assert s.overlay_name("covid/a.b.png") == "a.b_gradcam.png"
    assert s.overlay_name("") == "film_gradcam.png"


def test_progress_text_and_eta():
    assert s.eta_seconds(0, 10, 5.0) is None
    assert s.eta_seconds(5, 10, 10.0) == pytest.approx(10.0)
    assert s.progress_text(5, 10, 10.0) == "Scored 5 of 10 films · about 10 s left"
    assert s.progress_text(10, 10, 10.0) == "Scored 10 of 10 films"
    assert s.fmt_duration(125) == "2 min 05 s" and s.fmt_duration(3700) == "1 h 01 min"


@pytest.mark.parametrize("truth, pred, expected", [
    (True, True, "TP"), (True, False, "FN"), (False, True, "FP"), (False, False, "TN"), (None, True, "?")])
def test_outcome(truth, pred, expected):
    assert s.outcome(truth, pred) == expected


def test_review_puts_errors_first_then_sorts_by_confidence():
    t = 0.4
    scored = [(0.9, True),    # 0 TP, sure
              (0.1, True),    # 1 FN, very wrong
              (0.35, True),   # 2 FN, near the threshold
              (0.8, False),   # 3 FP
              (0.05, False),  # 4 TN
              (0.5, None)]    # 5 unlabelled
    order = s.review_items(scored, t)
    assert [it.index for it in order] == [1, 2, 3, 0, 4, 5]
    assert [it.outcome for it in order] == ["FN", "FN", "FP", "TP", "TN", "?"]
    least = s.review_items(scored, t, most_confident_first=False)
    assert [it.index for it in least][:2] == [2, 1]
    only_fp = s.review_items(scored, t, outcomes={"FP"})
    assert [it.index for it in only_fp] == [3]


def test_review_follows_the_threshold():
    scored = [(0.6, False), (0.3, True)]
    assert [it.outcome for it in s.review_items(scored, 0.5)] == ["FN", "FP"]
    assert [it.outcome for it in s.review_items(scored, 0.2)] == ["FP", "TP"]


def test_confidence_is_zero_at_threshold_and_one_at_extremes():
    assert s.confidence(0.4, 0.4) == 0.0
    assert s.confidence(1.0, 0.4) == pytest.approx(1.0) and s.confidence(0.0, 0.4) == pytest.approx(1.0)


def test_lru_evicts_least_recently_used():
    c = s.LRU(2)
    c.put("a", 1)
    c.put("b", 2)
    assert c.get("a") == 1          # a is now the most recent
    c.put("c", 3)
    assert "b" not in c and c.get("a") == 1 and c.get("c") == 3 and len(c) == 2
