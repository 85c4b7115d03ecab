"""All the metrics of a labelled, scored set at one threshold, overall and per source (BinaryReport): the
operating point and AUC (covidxr.metrics) with calibration (covidxr.calibration), movable to another threshold
without re-scoring, serialised to strict JSON (undefined metrics and their CIs are None, never NaN)."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field, replace
from typing import Sequence

import numpy as np

from .calibration import ReliabilityBin, ece_ci, reliability
from .intervals import N_BOOT
from .metrics import Estimate, OperatingPoint, RocCurve, _as_arrays, _estimates, auc_ci, operating_point, roc_curve


@dataclass(frozen=True)
class SourceReport:
    """Per-source breakdown: the operating point plus AUC when the source holds both classes."""
    n: int
    n_pos: int
    n_neg: int
    point: OperatingPoint
    auc: Estimate | None

    def as_dict(self) -> dict:
        return {"n": self.n, "n_pos": self.n_pos, "n_neg": self.n_neg,
                **_estimates({**self.point.estimates(), "auc": self.auc}),
                "confusion": self.point.confusion.as_dict()}


@dataclass(frozen=True)
class BinaryReport:
    n: int
    n_pos: int
    n_neg: int
    point: OperatingPoint
    auc: Estimate | None
    roc: RocCurve | None
    ece: Estimate | None
    reliability: list[ReliabilityBin]
    per_source: dict[str, SourceReport]
    # the data behind it, so `at()` can move the threshold without re-scoring
    y_true: np.ndarray = field(repr=False, compare=False, default_factory=lambda: np.zeros(0, np.int8))
    scores: np.ndarray = field(repr=False, compare=False, default_factory=lambda: np.zeros(0))
    sources: np.ndarray | None = field(repr=False, compare=False, default=None)

    threshold = property(lambda self: self.point.threshold)
    confusion = property(lambda self: self.point.confusion)
    sensitivity = property(lambda self: self.point.sensitivity)
    specificity = property(lambda self: self.point.specificity)
    accuracy = property(lambda self: self.point.accuracy)
    ppv = property(lambda self: self.point.ppv)
    npv = property(lambda self: self.point.npv)

    def metrics_at(self, threshold: float) -> OperatingPoint:
        return operating_point(self.y_true, self.scores, threshold)

    def at(self, threshold: float) -> "BinaryReport":
        """The same report at another threshold; AUC, ROC and calibration are threshold-free and kept."""
        per_source = {s: replace(r, point=operating_point(self.y_true[self.sources == s],
                                                          self.scores[self.sources == s], threshold))
                      for s, r in self.per_source.items()}
        return replace(self, point=self.metrics_at(threshold), per_source=per_source)

    def as_dict(self) -> dict:
        """Plain JSON types only (no numpy, no NaN): undefined metrics and their CIs are None."""
        return {"n": self.n, "n_pos": self.n_pos, "n_neg": self.n_neg, "threshold": self.threshold,
                **_estimates({**self.point.estimates(), "auc": self.auc, "ece": self.ece}),
                "confusion": self.confusion.as_dict(),
                "roc": None if self.roc is None else self.roc.as_dict(),
                "reliability": [dataclasses.asdict(b) for b in self.reliability],
                "per_source": {k: r.as_dict() for k, r in self.per_source.items()}}


def binary_report(y_true: Sequence, scores: Sequence, threshold: float, sources: Sequence[str] | None = None,
                  n_boot: int = N_BOOT, seed: int = 0) -> BinaryReport:
    """All the metrics of a labelled, scored set at one threshold, overall and per source."""
    y, s = _as_arrays(y_true, scores)
    src = None if sources is None else np.asarray([str(x) for x in sources], dtype=object)
    if src is not None and src.shape != y.shape:
        raise ValueError(f"{y.size} labels but {src.size} sources")
    per_source: dict[str, SourceReport] = {}
    if src is not None:
        for name in sorted(set(src)):
            m = src == name
            ys, ss = y[m], s[m]
            per_source[name] = SourceReport(n=int(m.sum()), n_pos=int(ys.sum()), n_neg=int(m.sum() - ys.sum()),
                                            point=operating_point(ys, ss, threshold),
                                            auc=auc_ci(ys, ss, n_boot, seed))
    return BinaryReport(n=int(y.size), n_pos=int(y.sum()), n_neg=int(y.size - y.sum()),
                        point=operating_point(y, s, threshold), auc=auc_ci(y, s, n_boot, seed),
                        roc=roc_curve(y, s), ece=ece_ci(y, s, n_boot=n_boot, seed=seed),
                        reliability=reliability(y, s), per_source=per_source,
                        y_true=y, scores=s, sources=src)
