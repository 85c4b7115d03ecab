"""Confidence intervals and the bootstrap's resampling, for covidxr.metrics: pure numpy and math.

Wilson's score interval for a proportion, Newcombe's score-type interval for an AUC, and the
multiplicity form of the bootstrap (each resample as counts of each item, drawn in chunks so that memory
stays bounded however many films there are) with its percentile interval.
"""
from __future__ import annotations

import math
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
