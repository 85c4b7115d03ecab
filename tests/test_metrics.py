"""Metrics against cases worked out by hand (the arithmetic is in the comments)."""
import json

import numpy as np
import pytest

from covidxr import calibration as cal
from covidxr import intervals as iv
from covidxr import metrics as m
from covidxr.binary_report import binary_report

# 7 films: 3 positives (2 caught), 4 negatives (1 false alarm)
Y = [1, 1, 1, 0, 0, 0, 0]
P = [1, 1, 0, 1, 0, 0, 0]


def test_confusion_counts():
    assert m.confusion(Y, P) == m.Confusion(tp=2, fp=1, tn=3, fn=1)


def test_proportions_from_confusion():
    c = m.confusion(Y, P)
    assert m.sensitivity(c).value == pytest.approx(2 / 3)
    assert m.specificity(c).value == pytest.approx(3 / 4)
    assert m.accuracy(c).value == pytest.approx(5 / 7)
    assert m.ppv(c).value == pytest.approx(2 / 3)
    assert m.npv(c).value == pytest.approx(3 / 4)


def test_wilson_interval_hand_computed():
    # 8/10, z=1.96: centre (0.8 + 0.19208)/1.38416 = 0.71674, half 1.96*sqrt(0.016+0.009604)/1.38416 = 0.22658
    low, high = iv.wilson_ci(8, 10, z=1.96)
    assert low == pytest.approx(0.49016, abs=1e-5)
    assert high == pytest.approx(0.94332, abs=1e-5)
    # 0/10 and 10/10: the bound is z^2/n / (1 + z^2/n) = 0.38416/1.38416 = 0.27754 from the edge
    assert iv.wilson_ci(0, 10, z=1.96) == pytest.approx((0.0, 0.27754), abs=1e-5)
    assert iv.wilson_ci(10, 10, z=1.96) == pytest.approx((0.72246, 1.0), abs=1e-5)


def test_empty_denominator_is_none_not_nan():
    c = m.Confusion(tp=0, fp=1, tn=3, fn=0)  # no positive films
    assert m.sensitivity(c) is None and m.npv(c).value == 1.0
    with pytest.raises(ValueError):
        iv.wilson_ci(0, 0)


def test_auc_mann_whitney_with_ties():
    # pairs (pos, neg): (.9,.4)=1 (.9,.1)=1 (.4,.4)=0.5 (.4,.1)=1 -> 3.5/4
    assert m.auc([1, 1, 0, 0], [0.9, 0.4, 0.4, 0.1]) == pytest.approx(0.875)
    assert m.auc([1, 0], [0.5, 0.5]) == pytest.approx(0.5)
    assert m.auc([1, 1, 0], [0.1, 0.2, 0.3]) == 0.0
    assert m.auc([1, 1], [0.1, 0.2]) is None


def test_auc_bootstrap_is_stratified_resampling():
    """The vectorised replicate equals the plain AUC of the films it draws."""
    rng = np.random.default_rng(3)
    pos, neg = rng.random(7).round(1), np.sort(rng.random(9).round(1))
    wp, wn = iv._multiplicities(rng, 7, 1), iv._multiplicities(rng, 9, 1)
    assert wp.sum() == 7 and wn.sum() == 9  # each class keeps its size
    fast = m._auc_counts(pos, neg, wp, wn)[0]
    drawn_pos, drawn_neg = np.repeat(pos, wp[0].astype(int)), np.repeat(neg, wn[0].astype(int))
    slow = m.auc(np.r_[np.ones(drawn_pos.size), np.zeros(drawn_neg.size)], np.r_[drawn_pos, drawn_neg])
    assert fast == pytest.approx(slow)


def test_auc_ci_seeded_and_sensible():
    rng = np.random.default_rng(0)
    y = rng.random(400) < 0.3
    s = np.clip(0.35 * y + 0.65 * rng.random(400), 0, 1)
    a, b = m.auc_ci(y, s, seed=7), m.auc_ci(y, s, seed=7)
    assert a == b
    assert a.low < a.value < a.high
    assert a.high - a.low < 0.2
    perfect = m.auc_ci([1, 1, 0, 0], [0.9, 0.8, 0.2, 0.1])
    assert perfect.value == 1.0 and perfect.high == 1.0 and perfect.low < 0.6   # 2 + 2 films: a wide interval


def test_auc_ci_never_claims_a_collapsed_interval():
    # 20 films, perfectly separated: the bootstrap would say "1.000-1.000"; Newcombe's interval does not
    y, s = [1] * 10 + [0] * 10, list(np.linspace(0.6, 0.9, 10)) + list(np.linspace(0.1, 0.4, 10))
    e = m.auc_ci(y, s)
    assert e.value == 1.0 and e.has_interval and e.high == 1.0 and 0.75 < e.low < 0.9
    report = binary_report(y, s, 0.5).as_dict()
    assert report["auc"] == 1.0 and report["ci"]["auc"] == [e.low, 1.0]
    # 9 COVID-19 films against many others: Newcombe's interval, wider than the bootstrap's would be
    few = m.auc_ci([1] * 9 + [0] * 40, np.linspace(0, 1, 49))
    assert few.has_interval and few.low <= few.value < few.high  # the positives score lowest: AUC 0.0


def test_newcombe_interval_matches_the_published_example_shape():
    """Newcombe (2006): the interval holds the estimate, narrows as films are added, and reaches 1.0
    only at an AUC of 1.0."""
    lo10, hi10 = iv.newcombe_auc_ci(0.8, 10, 10)
    lo100, hi100 = iv.newcombe_auc_ci(0.8, 100, 100)
    assert lo10 < lo100 < 0.8 < hi100 < hi10 < 1.0
    assert iv.newcombe_auc_ci(1.0, 10, 10)[1] == 1.0 and iv.newcombe_auc_ci(0.0, 10, 10)[0] == 0.0
    # enough films of each class and overlap: a real interval around the value
    rng = np.random.default_rng(1)
    y = np.r_[np.ones(30), np.zeros(30)]
    mixed = m.auc_ci(y, np.r_[rng.normal(1, 1, 30), rng.normal(0, 1, 30)].clip(-5, 5))
    assert mixed.has_interval and mixed.low < mixed.value < mixed.high


def test_roc_points():
    r = m.roc_curve([1, 1, 0, 0], [0.9, 0.4, 0.4, 0.1])
    assert r.fpr.tolist() == [0.0, 0.0, 0.5, 1.0]
    assert r.tpr.tolist() == [0.0, 0.5, 1.0, 1.0]
    assert r.thresholds.tolist() == [np.inf, 0.9, 0.4, 0.1]
    assert r.as_dict()["thresholds"][0] is None  # JSON has no infinity


def test_ece_and_reliability_hand_computed():
    # bins: [0,.1): p .05 y 0 -> |0-.05|; [.1,.2): p .15,.15 y 1,0 -> |1-.3|; [.9,1]: p .95 y 1 -> |1-.95|
    # ECE = (.05 + .7 + .05) / 4 = .2
    y, s = [0, 1, 0, 1], [0.05, 0.15, 0.15, 0.95]
    assert cal.ece(y, s) == pytest.approx(0.2)
    table = cal.reliability(y, s)
    assert [b.n for b in table] == [1, 2, 0, 0, 0, 0, 0, 0, 0, 1]
    assert table[1].mean_predicted == pytest.approx(0.15) and table[1].observed == pytest.approx(0.5)
    assert table[2].mean_predicted is None
    assert cal.ece([1], [1.0]) == 0.0  # a score of exactly 1 lands in the last bin


def test_choose_threshold_rule():
    y = [1, 1, 1, 1, 0, 0, 0, 0]
    s = [0.9, 0.8, 0.7, 0.3, 0.6, 0.2, 0.1, 0.05]
    # sensitivity 1 first reached at t=.3 (specificity .75, J .75); midway to the next score .2
    assert m.choose_threshold(y, s, min_sensitivity=0.95) == pytest.approx(0.25)
    # with >= .5 allowed, J=.75 at t=.7 (sens .75, spec 1) and t=.3: the tie goes to the higher one, midway to .6
    assert m.choose_threshold(y, s, min_sensitivity=0.5) == pytest.approx(0.65)
    assert "Youden" in m.threshold_rule(0.95)
    with pytest.raises(ValueError):
        m.choose_threshold([1, 1], [0.2, 0.3])


def test_binary_report_per_source_single_class_is_honest():
    y = [1, 1, 1, 0, 0, 1, 0]
    s = [0.9, 0.6, 0.2, 0.7, 0.1, 0.8, 0.3]
    src = ["a", "a", "a", "b", "b", "b", "b"]
    r = binary_report(y, s, 0.5, sources=src, n_boot=200)
    assert r.confusion == m.Confusion(tp=3, fp=1, tn=2, fn=1)
    a = r.per_source["a"]  # only positives: sensitivity 2/3, no specificity, no AUC
    assert (a.n, a.n_pos, a.n_neg) == (3, 3, 0)
    assert a.point.sensitivity.value == pytest.approx(2 / 3)
    assert a.point.specificity is None and a.auc is None
    assert r.per_source["b"].auc.value == pytest.approx(1.0)  # b: pos .8 above negs .7 .1 .3
    d = json.loads(json.dumps(r.as_dict(), allow_nan=False))
    assert d["per_source"]["a"]["specificity"] is None and d["per_source"]["a"]["ci"]["auc"] is None
    assert d["confusion"] == {"tp": 3, "fp": 1, "tn": 2, "fn": 1}
    assert d["ci"]["sensitivity"] == list(iv.wilson_ci(3, 4))


def test_moving_the_threshold_recomputes_only_the_operating_point():
    y = [1, 1, 1, 0, 0, 1, 0]
    s = [0.9, 0.6, 0.2, 0.7, 0.1, 0.8, 0.3]
    r = binary_report(y, s, 0.5, sources=["a"] * 3 + ["b"] * 4, n_boot=100)
    low = r.at(0.15)
    assert low.confusion == m.Confusion(tp=4, fp=2, tn=1, fn=0)
    assert low.metrics_at(0.15) == m.operating_point(y, s, 0.15) == low.point
    assert low.per_source["a"].point.confusion == m.Confusion(tp=3, fp=0, tn=0, fn=0)
    assert low.auc == r.auc and low.ece == r.ece


def test_bad_input_is_refused():
    with pytest.raises(ValueError):
        m.auc([1, 0], [0.5])
    with pytest.raises(ValueError):
        m.operating_point([1, 0], [0.5, float("nan")], 0.5)
