"""Calibration of the positive-class probability, and its log-odds scale: pure numpy (and scipy.special).

Whether a stated probability means what it says (the expected calibration error, with a bootstrap interval, and
the reliability table behind a reliability diagram), and the logit scale that re-centres a probability on its
threshold (covidxr.metrics' conventions: `y_true` 1 for COVID-19, `scores` the calibrated probabilities).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from .intervals import N_BOOT, _boot_chunks, _multiplicities, _percentile_ci
from .metrics import Estimate, _as_arrays

ECE_BINS = 10


@dataclass(frozen=True)
class ReliabilityBin:
    low: float            # bin edges on the predicted probability
    high: float
    n: int
    mean_predicted: float | None
    observed: float | None  # share of positives among the films in the bin



def _bin_index(scores: np.ndarray, n_bins: int) -> np.ndarray:
    """Equal-width bins on [0, 1]; a score of exactly 1 goes in the last bin."""
    return np.minimum((scores * n_bins).astype(np.int64), n_bins - 1).clip(0)


def ece(y_true: Sequence, scores: Sequence, n_bins: int = ECE_BINS) -> float | None:
    """Expected calibration error of the positive-class probability:
    sum over equal-width bins of (share of films in bin) * |observed positive rate - mean probability|."""
    y, s = _as_arrays(y_true, scores)
    if y.size == 0:
        return None
    gap = np.bincount(_bin_index(s, n_bins), weights=y - s, minlength=n_bins)
    return float(np.abs(gap).sum() / y.size)


def ece_ci(y_true: Sequence, scores: Sequence, n_bins: int = ECE_BINS, n_boot: int = N_BOOT,
           seed: int = 0) -> Estimate | None:
    """ECE with a percentile bootstrap 95% CI (resampled within each class, like the AUC)."""
    y, s = _as_arrays(y_true, scores)
    if y.size == 0:
        return None
    value = ece(y, s, n_bins)
    # one column per bin holding (y - p) of the films in it: a replicate's bin gaps are W @ cols
    cols = np.zeros((y.size, n_bins))
    cols[np.arange(y.size), _bin_index(s, n_bins)] = y - s
    groups = [np.nonzero(y == k)[0] for k in (1, 0) if np.any(y == k)]
    rng = np.random.default_rng(seed)
    reps = []
    for b in _boot_chunks(y.size, n_boot):
        gaps = sum(_multiplicities(rng, g.size, b) @ cols[g] for g in groups)
        reps.append(np.abs(gaps).sum(axis=1) / y.size)
    low, high = _percentile_ci(np.concatenate(reps))
    return Estimate(value, low, high)


def reliability(y_true: Sequence, scores: Sequence, n_bins: int = ECE_BINS) -> list[ReliabilityBin]:
    """The table behind a reliability diagram: per bin, count, mean probability, observed positive rate."""
    y, s = _as_arrays(y_true, scores)
    idx = _bin_index(s, n_bins)
    counts = np.bincount(idx, minlength=n_bins)
    sum_p = np.bincount(idx, weights=s, minlength=n_bins)
    sum_y = np.bincount(idx, weights=y, minlength=n_bins)
    return [ReliabilityBin(low=b / n_bins, high=(b + 1) / n_bins, n=int(counts[b]),
                           mean_predicted=float(sum_p[b] / counts[b]) if counts[b] else None,
                           observed=float(sum_y[b] / counts[b]) if counts[b] else None)
            for b in range(n_bins)]


# Probabilities are clipped to [c, 1 - c] before their log-odds (0 and 1 have none). 1e-7: the training's
# pooled reports were computed with it, and stored scores are rounded to 6 decimals, so it keeps their figures.
PROBABILITY_CLIP = 1e-7


def logodds(p: Sequence | float) -> np.ndarray:
    """log(p / (1 - p)), p clipped to [PROBABILITY_CLIP, 1 - PROBABILITY_CLIP]."""
    from scipy.special import logit

    return logit(np.clip(np.asarray(p, np.float64), PROBABILITY_CLIP, 1 - PROBABILITY_CLIP))


def recentre(p: Sequence, threshold: float) -> np.ndarray:
    """Shift probabilities on the logit scale so that `threshold` lands on 0.5: decisions are unchanged, and
    films scored by different models, each at its own operating point, can be pooled for their decisions
    (not for a ranking: each model's shift differs, so pooled scores are reordered across models)."""
    from scipy.special import expit

    return expit(logodds(p) - logodds(threshold))
