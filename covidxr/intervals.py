"""Confidence intervals and the bootstrap's resampling, for covidxr.metrics: pure numpy and math.

Wilson's score interval for a proportion, Newcombe's score-type interval for an AUC, and the
multiplicity form of the bootstrap (each resample as counts of each item, drawn in chunks so that memory
stays bounded however many films there are) with its percentile interval; and the predictive values (PPV, NPV)
of an operating point at a site's prevalence, with intervals carried over from its sensitivity and specificity.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterable

import numpy as np

Z95 = 1.959963984540054  # two-sided 95% normal quantile
N_BOOT = 1000
_BOOT_CHUNK_CELLS = 4_000_000  # bootstrap replicates are drawn in chunks of about this many cells


def wilson_ci(k: int, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval for k successes in n trials; behaves at 0 and n, unlike the Wald interval."""
    if n <= 0:
        raise ValueError("a proportion needs n > 0")
    if not 0 <= k <= n:
        raise ValueError(f"k={k} outside 0..{n}")
    p, z2 = k / n, z * z
    denom = 1 + z2 / n
    centre = (p + z2 / (2 * n)) / denom
    half = z / denom * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n))
    return max(0.0, centre - half), min(1.0, centre + half)


def _multiplicities(rng: np.random.Generator, n: int, n_boot: int) -> np.ndarray:
    """How often each of n items is drawn in each of n_boot resamples of size n (with replacement)."""
    draws = rng.integers(0, n, size=(n_boot, n)) + (np.arange(n_boot) * n)[:, None]
    return np.bincount(draws.ravel(), minlength=n_boot * n).reshape(n_boot, n).astype(np.float64)


def _boot_chunks(n: int, n_boot: int) -> Iterable[int]:
    step = max(1, _BOOT_CHUNK_CELLS // max(n, 1))
    for start in range(0, n_boot, step):
        yield min(step, n_boot - start)


def _percentile_ci(values: np.ndarray) -> tuple[float, float]:
    low, high = np.percentile(values, [2.5, 97.5])
    return float(low), float(high)


def newcombe_auc_ci(value: float, n_pos: int, n_neg: int, z: float = Z95) -> tuple[float, float]:
    """Newcombe's (2006, Stat Med 25:559, method 5) score-type interval for an AUC: the AUCs theta whose
    distance to the estimate is within z standard errors, with the variance taken at theta itself
    (as Wilson's interval does for a proportion), so it never collapses to a point at 0 or 1."""
    theta = np.linspace(0.0, 1.0, 20001)
    n_star = max(1.0, (n_pos + n_neg) / 2.0 - 1.0)
    var = theta * (1 - theta) / (n_pos * n_neg) * (1 + (n_star - 1) * ((1 - theta) / (2 - theta) + theta / (1 + theta)))
    inside = theta[(theta - value) ** 2 <= z * z * var]
    return (float(inside.min()), float(inside.max())) if inside.size else (value, value)


# ---------------------------------------------------------------- predictive values at a prevalence


def ppv(sensitivity: float, specificity: float, prevalence: float) -> float:
    """Positive predictive value by Bayes' rule: sens*p / (sens*p + (1-spec)*(1-p)); the share of positive
    calls that are right where a share `prevalence` of the films screened are of the positive class."""
    _check_rates(sensitivity, specificity, prevalence)
    hit, false_alarm = sensitivity * prevalence, (1.0 - specificity) * (1.0 - prevalence)
    return hit / (hit + false_alarm) if hit + false_alarm > 0 else float("nan")


def npv(sensitivity: float, specificity: float, prevalence: float) -> float:
    """Negative predictive value: spec*(1-p) / (spec*(1-p) + (1-sens)*p)."""
    _check_rates(sensitivity, specificity, prevalence)
    right, miss = specificity * (1.0 - prevalence), (1.0 - sensitivity) * prevalence
    return right / (right + miss) if right + miss > 0 else float("nan")


def _check_rates(*values: float) -> None:
    for v in values:
        if not 0.0 <= v <= 1.0:
            raise ValueError(f"{v} is not a proportion in [0, 1]")


@dataclass(frozen=True)
class PredictiveValues:
    """PPV and NPV at one prevalence, each with a 95% interval (see predictive_values for the method)."""
    prevalence: float
    ppv: float
    ppv_ci: tuple[float, float]
    npv: float
    npv_ci: tuple[float, float]


def predictive_values(sensitivity: float, specificity: float, prevalence: float,
                      sensitivity_ci: tuple[float, float], specificity_ci: tuple[float, float]) -> PredictiveValues:
    """PPV and NPV at `prevalence`, with 95% intervals carried over from the operating point's sensitivity and
    specificity intervals.

    Method: both PPV and NPV rise with sensitivity and with specificity (at a fixed prevalence), so the interval
    ends are the values at the ends of the two intervals: PPV(sens_low, spec_low) .. PPV(sens_high, spec_high),
    and the same for NPV. The prevalence is taken as known (a site's setting, not an estimate), and the two
    rates' intervals as independent (they come from different films); taking both ends together makes the
    interval somewhat wider than a joint 95% region would (conservative), which is the honest side for a
    screening aid."""
    for lo, hi in (sensitivity_ci, specificity_ci):
        if not lo <= hi:
            raise ValueError(f"interval ({lo}, {hi}) has its ends the wrong way round")
    s_lo, s_hi = sensitivity_ci
    c_lo, c_hi = specificity_ci
    return PredictiveValues(
        prevalence, ppv(sensitivity, specificity, prevalence),
        (ppv(s_lo, c_lo, prevalence), ppv(s_hi, c_hi, prevalence)),
        npv(sensitivity, specificity, prevalence),
        (npv(s_lo, c_lo, prevalence), npv(s_hi, c_hi, prevalence)))
