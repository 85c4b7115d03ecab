"""Binary screening metrics with honest uncertainty: pure numpy, no torch. The proportions at an operating point
(Wilson intervals), the ROC and its AUC (bootstrap or Newcombe interval), and the threshold rule; calibration is
covidxr.calibration's, a whole set's report covidxr.binary_report's.

Convention everywhere: `y_true` is 1 for COVID-19 (positive), 0 otherwise; `scores` are the calibrated
positive-class probabilities; a film is called positive when `score >= threshold`.
A metric whose denominator is empty (e.g. sensitivity on a source with no positives) is `None`,
never NaN, so reports serialise to strict JSON.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from .intervals import N_BOOT, Z95, _boot_chunks, _multiplicities, _percentile_ci, newcombe_auc_ci, wilson_ci

MIN_CLASS_FOR_AUC_CI = 10  # fewer films of either class: the AUC gets no interval ("too few films for an interval")

PROPORTIONS = ("sensitivity", "specificity", "accuracy", "ppv", "npv")


@dataclass(frozen=True)
class Confusion:
    tp: int
    fp: int
    tn: int
    fn: int

    @property
    def n(self) -> int:
        return self.tp + self.fp + self.tn + self.fn

    def as_dict(self) -> dict[str, int]:
        return {"tp": self.tp, "fp": self.fp, "tn": self.tn, "fn": self.fn}


@dataclass(frozen=True)
class Estimate:
    """A point estimate with its 95% interval; low and high are None when no honest interval exists
    (too few films, or a bootstrap that collapses to one value): serialised as a null CI."""
    value: float
    low: float | None
    high: float | None

    @property
    def has_interval(self) -> bool:
        return self.low is not None and self.high is not None

    def ci(self) -> list[float | None]:
        return [self.low, self.high]


def _finite(x: float | None) -> float | None:
    """A JSON-safe number: None for missing, NaN or infinite."""
    return float(x) if x is not None and math.isfinite(x) else None


def _estimates(named: dict[str, "Estimate | None"]) -> dict:
    """{name: value, ..., "ci": {name: [low, high] or None}}: the shape every report serialises to."""
    out: dict = {k: (None if e is None else _finite(e.value)) for k, e in named.items()}
    out["ci"] = {k: (None if e is None or not e.has_interval else [_finite(e.low), _finite(e.high)])
                 for k, e in named.items()}
    return out


@dataclass(frozen=True)
class RocCurve:
    """Points of the empirical ROC; point k is the rule `score >= thresholds[k]` (the first is +inf)."""
    fpr: np.ndarray
    tpr: np.ndarray
    thresholds: np.ndarray

    def as_dict(self) -> dict[str, list]:
        return {"fpr": self.fpr.tolist(), "tpr": self.tpr.tolist(),
                "thresholds": [_finite(t) for t in self.thresholds.tolist()]}


@dataclass(frozen=True)
class OperatingPoint:
    """Everything that depends on the threshold; cheap to recompute (the app's slider)."""
    threshold: float
    confusion: Confusion
    sensitivity: Estimate | None
    specificity: Estimate | None
    accuracy: Estimate | None
    ppv: Estimate | None
    npv: Estimate | None

    def estimates(self) -> dict[str, Estimate | None]:
        return {k: getattr(self, k) for k in PROPORTIONS}


# ---------------------------------------------------------------------------------------------
# proportions


def _as_arrays(y_true: Sequence, scores: Sequence | None = None) -> tuple[np.ndarray, np.ndarray | None]:
    y = np.asarray(y_true).astype(bool).astype(np.int8).ravel()
    if scores is None:
        return y, None
    s = np.asarray(scores, dtype=np.float64).ravel()
    if s.shape != y.shape:
        raise ValueError(f"{y.size} labels but {s.size} scores")
    if not np.all(np.isfinite(s)):
        raise ValueError("scores must be finite numbers")
    return y, s


def confusion(y_true: Sequence, y_pred: Sequence) -> Confusion:
    y, p = _as_arrays(y_true)[0].astype(bool), _as_arrays(y_pred)[0].astype(bool)
    if y.shape != p.shape:
        raise ValueError(f"{y.size} labels but {p.size} predictions")
    return Confusion(tp=int(np.sum(y & p)), fp=int(np.sum(~y & p)), tn=int(np.sum(~y & ~p)), fn=int(np.sum(y & ~p)))


def proportion(k: int, n: int, z: float = Z95) -> Estimate | None:
    """k/n with its Wilson interval; None when n == 0 (the metric is undefined, not zero)."""
    if n == 0:
        return None
    low, high = wilson_ci(k, n, z)
    return Estimate(k / n, low, high)


def sensitivity(c: Confusion) -> Estimate | None:
    return proportion(c.tp, c.tp + c.fn)


def specificity(c: Confusion) -> Estimate | None:
    return proportion(c.tn, c.tn + c.fp)


def accuracy(c: Confusion) -> Estimate | None:
    return proportion(c.tp + c.tn, c.n)


def ppv(c: Confusion) -> Estimate | None:
    return proportion(c.tp, c.tp + c.fp)


def npv(c: Confusion) -> Estimate | None:
    return proportion(c.tn, c.tn + c.fn)


def operating_point(y_true: Sequence, scores: Sequence, threshold: float) -> OperatingPoint:
    """Confusion and the five proportions at `threshold`; O(n), no bootstrap (fast enough for a slider)."""
    y, s = _as_arrays(y_true, scores)
    c = confusion(y, s >= threshold)
    return OperatingPoint(float(threshold), c, sensitivity(c), specificity(c), accuracy(c), ppv(c), npv(c))


# ---------------------------------------------------------------------------------------------
# ranking


def _auc_counts(pos: np.ndarray, neg_sorted: np.ndarray, weights_pos: np.ndarray, weights_neg: np.ndarray) -> np.ndarray:
    """Mann-Whitney AUC for each row of multiplicity weights (rows: bootstrap replicates).

    For each positive the weighted count of negatives below it plus half the tied ones, via the
    cumulative weights of the sorted negatives: O(B * (n_pos + n_neg)), no pairwise matrix.
    """
    lo = np.searchsorted(neg_sorted, pos, side="left")
    hi = np.searchsorted(neg_sorted, pos, side="right")
    cum = np.zeros((weights_neg.shape[0], neg_sorted.size + 1))
    np.cumsum(weights_neg, axis=1, out=cum[:, 1:])
    wins = cum[:, lo] + 0.5 * (cum[:, hi] - cum[:, lo])
    return (weights_pos * wins).sum(axis=1) / (weights_pos.sum(axis=1) * weights_neg.sum(axis=1))


def auc(y_true: Sequence, scores: Sequence) -> float | None:
    """Area under the ROC curve = P(score_pos > score_neg) + 0.5 P(tie); None without both classes."""
    y, s = _as_arrays(y_true, scores)
    pos, neg = s[y == 1], np.sort(s[y == 0])
    if pos.size == 0 or neg.size == 0:
        return None
    return float(_auc_counts(pos, neg, np.ones((1, pos.size)), np.ones((1, neg.size)))[0])


def auc_ci(y_true: Sequence, scores: Sequence, n_boot: int = N_BOOT, seed: int = 0,
           min_class: int = MIN_CLASS_FOR_AUC_CI) -> Estimate | None:
    """AUC with a 95% CI: a percentile bootstrap with positives and negatives resampled separately
    (stratified, so every replicate keeps the class sizes and has an AUC).

    With fewer than `min_class` films of either class, or when every replicate gives the same AUC
    (perfectly separated small sets: the bootstrap cannot see beyond the films it has and would
    claim "1.000-1.000"), the interval is Newcombe's score-type interval instead, which stays honest
    on few films (AUC 1.0 on 10 + 10 films: 0.82-1.00)."""
    y, s = _as_arrays(y_true, scores)
    pos, neg = s[y == 1], s[y == 0]
    if pos.size == 0 or neg.size == 0:
        return None
    order = np.argsort(neg, kind="stable")
    neg_sorted = neg[order]
    value = float(_auc_counts(pos, neg_sorted, np.ones((1, pos.size)), np.ones((1, neg.size)))[0])
    if min(pos.size, neg.size) < min_class:
        return Estimate(value, *newcombe_auc_ci(value, pos.size, neg.size))
    rng = np.random.default_rng(seed)
    reps = [_auc_counts(pos, neg_sorted, _multiplicities(rng, pos.size, b), _multiplicities(rng, neg.size, b))
            for b in _boot_chunks(pos.size + neg.size, n_boot)]
    low, high = _percentile_ci(np.concatenate(reps))
    if high - low < 1e-12:  # degenerate: every resample ranks the films the same way
        return Estimate(value, *newcombe_auc_ci(value, pos.size, neg.size))
    return Estimate(value, low, high)


def roc_curve(y_true: Sequence, scores: Sequence) -> RocCurve | None:
    """ROC points at every distinct score, from (0, 0) at +inf down to (1, 1); None without both classes."""
    y, s = _as_arrays(y_true, scores)
    n_pos, n_neg = int(y.sum()), int(y.size - y.sum())
    if n_pos == 0 or n_neg == 0:
        return None
    order = np.argsort(-s, kind="stable")
    s_desc, y_desc = s[order], y[order]
    last_of_value = np.r_[np.nonzero(np.diff(s_desc))[0], s_desc.size - 1]
    tps = np.cumsum(y_desc)[last_of_value]
    fps = (last_of_value + 1) - tps
    return RocCurve(fpr=np.r_[0.0, fps / n_neg], tpr=np.r_[0.0, tps / n_pos],
                    thresholds=np.r_[np.inf, s_desc[last_of_value]])


# ---------------------------------------------------------------------------------------------
# threshold choice


def threshold_rule(min_sensitivity: float) -> str:
    """The rule `choose_threshold` applies, in words (for the model card)."""
    return (f"maximise Youden's J (sensitivity + specificity - 1) among thresholds with validation "
            f"sensitivity >= {min_sensitivity:g}; threshold placed midway between adjacent validation scores")


def choose_threshold(y_true: Sequence, scores: Sequence, min_sensitivity: float = 0.95) -> float:
    """Decision threshold by the rule: among thresholds whose sensitivity on (y_true, scores) is at
    least `min_sensitivity`, take the one with the largest Youden's J = sensitivity + specificity - 1;
    ties go to the higher threshold (fewer false positives at equal J).

    Candidates are the distinct scores (rule `score >= t`). The returned value lies midway between
    the chosen score and the next lower distinct score (half the chosen score at the bottom), so
    these films are classified exactly as measured and a tiny shift in a probability does not flip them.
    A sensitivity of 1 is always reachable (the lowest score), so there is always an answer.
    """
    if not 0.0 <= min_sensitivity <= 1.0:
        raise ValueError(f"min_sensitivity {min_sensitivity} outside [0, 1]")
    roc = roc_curve(y_true, scores)
    if roc is None:
        raise ValueError("choosing a threshold needs both positive and negative films")
    tpr, fpr, thr = roc.tpr[1:], roc.fpr[1:], roc.thresholds[1:]   # drop the +inf point
    ok = tpr >= min_sensitivity - 1e-12
    j = np.where(ok, tpr - fpr, -np.inf)
    k = int(np.flatnonzero(j == j.max())[0])  # thresholds descend: the first maximum is the highest
    below = thr[k + 1] if k + 1 < thr.size else 0.0
    return float((thr[k] + below) / 2)
