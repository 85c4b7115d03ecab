"""scripts/ood_report.py's false-alarm estimate with thresholds set on other films than those judged."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

from covidxr.ood import OODDetector
from covidxr.orientation import OrientNet

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("ood_report", ROOT / "scripts" / "ood_report.py")
ood_report = importlib.util.module_from_spec(spec)
spec.loader.exec_module(ood_report)

FEATURES = "its image features are unlike the chest radiographs the model was trained on"
TURNED = "it looks rotated or inverted"


def rows(distance: np.ndarray, turned: np.ndarray, reasons: list[list[str]]) -> list[dict]:
    return [{"distance": float(d), "turned": float(t), "reasons": r} for d, t, r in zip(distance, turned, reasons)]


def detector(orient: bool) -> OODDetector:
    det = OODDetector(mean=np.zeros(2), basis=np.eye(2), variances=np.ones(2), residual=1.0, quantile=0.9)
    if orient:
        det.orient_net, det.orient_quantile = OrientNet(), 0.9
    return det


def test_each_half_is_judged_at_the_other_halfs_quantiles():
    rng = np.random.default_rng(0)
    d, o = rng.normal(size=2000), rng.uniform(0.5, 1.0, size=2000)  # turned probabilities above even odds
    r = rows(d, o, [[] for _ in d])
    only_distance = ood_report.cross_calibrated_rate(r, detector(orient=False))
    both = ood_report.cross_calibrated_rate(r, detector(orient=True))
    assert abs(only_distance - 0.10) < 0.02                       # one 90% quantile: about 10% flagged
    assert abs(both - (1 - 0.9 * 0.9)) < 0.025                     # two independent ones: about 19%


def test_reasons_the_quantiles_do_not_set_still_count_and_calibrated_ones_are_recomputed():
    n = 400
    d, o = np.zeros(n), np.full(n, 0.7)
    reasons = [[FEATURES, TURNED] for _ in range(n)]               # the shipped thresholds flagged them all
    reasons[0] = ["no lungs were found in it"]
    rate = ood_report.cross_calibrated_rate(rows(d, o, reasons), detector(orient=True))
    assert rate == 1 / n   # equal values never exceed their own quantile: only the lung reason stays


def test_turned_probabilities_below_even_odds_are_never_flagged():
    n = 400
    rate = ood_report.cross_calibrated_rate(rows(np.zeros(n), np.linspace(0.0, 0.49, n), [[] for _ in range(n)]),
                                            detector(orient=True))
    assert rate == 0.0
