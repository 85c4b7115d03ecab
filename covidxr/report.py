"""Scored rows -> an evaluation report: the metrics at a threshold (moved without re-scoring), the JSON and CSV
exports. The arithmetic behind every engine's report (covidxr.evaluate reads and scores the films; the engines
send their rows here too); no file is read here."""
from __future__ import annotations

import csv
import io
from dataclasses import dataclass, replace
from typing import Iterable

from .card import decision_label
from .gate import Verdict
from .binary_report import BinaryReport, binary_report
from .metrics import OperatingPoint
from .safety import spreadsheet_safe

CSV_COLUMNS = ["path", "label", "source", "probability", "prediction", "error", "chest_xray", "reasons", "details",
               "warnings"]


@dataclass(frozen=True)
class Row:
    path: str
    label: str | None                  # class folder name, lower-cased
    source: str | None
    probability: float | None = None   # calibrated COVID-19 probability; None when the film failed
    prediction: str | None = None      # the decision at the threshold in use (decision_label)
    error: str | None = None
    truth: bool | None = None          # is the label the positive class? None when unlabelled
    chest_xray: bool | None = None     # the gate's verdict; None when the film failed or no gate ran
    reasons: tuple[str, ...] = ()      # why the gate refused it, most decisive first
    details: str | None = None         # the gate's numbers
    warnings: tuple[str, ...] = ()     # shown with the score, do not withhold it (e.g. a child's film)
    class_probabilities: dict[str, float] | None = None  # every class's, when the score is shown (predict's rows)

    @property
    def positive(self) -> bool | None:
        """The truth: is this a film of the positive class? None when unlabelled."""
        return self.truth

    @property
    def refused(self) -> bool:
        """The gate judged it not a frontal chest radiograph."""
        return self.chest_xray is False

    def as_dict(self) -> dict:
        if self.error is not None:
            return {"path": self.path, "label": self.label, "source": self.source, "error": self.error}
        return {"path": self.path, "label": self.label, "source": self.source,
                "probability": self.probability, "prediction": self.prediction, "chest_xray": self.chest_xray,
                "reasons": list(self.reasons), "details": self.details, "warnings": list(self.warnings)}

    def csv_dict(self) -> dict:
        """as_dict's values as CSV cells: lists joined by "; ", every text made safe for spreadsheets
        (safety.spreadsheet_safe: a film named `=cmd|...` is not run as a formula)."""
        d = self.as_dict()
        for k in ("reasons", "warnings"):
            if k in d:
                d[k] = "; ".join(d[k])
        return {k: spreadsheet_safe(v) for k, v in d.items()}

    def gate(self) -> dict | None:
        """The gate's verdict as every export carries it (covidxr.gate.Verdict.as_dict); None when no gate ran."""
        if self.chest_xray is None:
            return None
        return Verdict(self.chest_xray, list(self.reasons), self.details, list(self.warnings)).as_dict()

    def withheld(self) -> "Row":
        """This row without its score (a refused film's, when refused films are left out)."""
        return replace(self, probability=None, prediction=None, class_probabilities=None)


def decision(probability: float, threshold: float, positive_class: str) -> str:
    return decision_label(probability >= threshold, positive_class)


def truth(label: str | None, positive_class: str) -> bool | None:
    """Whether a class folder's films are positive: the folder is named as the positive class (any case)."""
    return None if label is None else label.lower() == positive_class.lower()


@dataclass
class EvaluationReport:
    """Scored rows plus the metrics at one threshold. `at()` moves the threshold without re-scoring."""
    threshold: float
    rows: list[Row]
    metrics: BinaryReport
    positive_class: str                # the decision's class (the model card's), as the rows name it
    seconds: float | None = None       # wall time of the scoring, when known
    include_non_chest: bool = False    # films the gate refused are in the metrics (else left out, listed)

    @property
    def n(self) -> int:
        """Films scored that carry a label (the films behind the metrics)."""
        return self.metrics.n

    @property
    def n_errors(self) -> int:
        return sum(r.error is not None for r in self.rows)

    @property
    def n_unlabelled(self) -> int:
        return sum(r.error is None and r.label is None for r in self.rows)

    @property
    def failures(self) -> list[Row]:
        return [r for r in self.rows if r.error is not None]

    @property
    def not_chest(self) -> list[Row]:
        """The films the gate judged not frontal chest radiographs (out of the metrics by default)."""
        return [r for r in self.rows if r.error is None and r.refused]

    @property
    def n_not_chest(self) -> int:
        return len(self.not_chest)

    def metrics_at(self, threshold: float) -> OperatingPoint:
        return self.metrics.metrics_at(threshold)

    def at(self, threshold: float) -> "EvaluationReport":
        rows = [r if r.probability is None else replace(r, prediction=decision(r.probability, threshold, self.positive_class))
                for r in self.rows]
        return replace(self, threshold=float(threshold), rows=rows, metrics=self.metrics.at(threshold))

    def as_dict(self) -> dict:
        """The JSON report: n, n_errors, n_unlabelled, n_not_chest, not_chest [paths], include_non_chest,
        threshold, sensitivity, specificity, accuracy, ppv, npv, auc, ece, ci {metric: [low, high]},
        confusion {tp, fp, tn, fn}, roc {fpr, tpr, thresholds}, reliability, per_source, seconds, images
        [{path, label, source, probability, prediction, chest_xray, reasons, details, warnings} or
        {path, label, source, error}]; a refused film's probability and prediction are null unless
        include_non_chest. Plain JSON types only; undefined metrics are null."""
        m = self.metrics.as_dict()
        return {"n": m.pop("n"), "n_errors": self.n_errors, "n_unlabelled": self.n_unlabelled,
                "n_not_chest": self.n_not_chest, "not_chest": [r.path for r in self.not_chest],
                "include_non_chest": self.include_non_chest, **m,
                "seconds": None if self.seconds is None else round(float(self.seconds), 3),
                "images": [r.as_dict() for r in self.rows]}

    def to_csv(self) -> str:
        """The per-image table: path, label, source, probability, prediction, error, chest_xray, reasons,
        details, warnings (reasons and warnings joined by "; "); texts made safe for spreadsheets (csv_dict)."""
        out = io.StringIO()
        w = csv.DictWriter(out, CSV_COLUMNS, lineterminator="\r\n")  # RFC 4180: a CR or LF in a cell is quoted
        w.writeheader()
        w.writerows(r.csv_dict() for r in self.rows)
        return out.getvalue()


def build_report(rows: Iterable[Row], threshold: float, positive_class: str, n_boot: int | None = None,
                 seed: int = 0, include_non_chest: bool = False, seconds: float | None = None) -> EvaluationReport:
    """Metrics over the labelled, scored rows; predictions restated at `threshold`. Sources enter
    the per-source breakdown when any row has one (rows without are grouped as "unknown"). Films the
    gate refused lose their score and stay out of the metrics unless `include_non_chest`."""
    rows = [r.withheld() if r.refused and not include_non_chest else r for r in rows]
    rows = [r if r.probability is None else replace(r, prediction=decision(r.probability, threshold, positive_class))
            for r in rows]
    scored = [r for r in rows if r.probability is not None and r.label is not None]
    sources = [r.source or "unknown" for r in scored] if any(r.source for r in scored) else None
    kw = {} if n_boot is None else {"n_boot": n_boot}
    metrics = binary_report([r.positive for r in scored], [r.probability for r in scored], threshold,
                            sources=sources, seed=seed, **kw)
    return EvaluationReport(float(threshold), rows, metrics, positive_class, seconds, include_non_chest)
