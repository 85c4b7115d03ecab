"""Pure helpers behind the app's pages: how results are worded, keyed, ordered and timed.

Kept out of the pages so that they are unit-tested without Streamlit, and so that every page words a
result the same way. Nothing here imports Streamlit or touches the disk.
"""
from __future__ import annotations

import hashlib
import io
import math
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Generic, Hashable, Iterable, Sequence, TypeVar

import numpy as np
from PIL import Image

CLASS_TITLES = {"covid": "COVID-19", "normal": "no finding", "pneumonia": "other pneumonia"}
OUTCOMES = ("FN", "FP", "TP", "TN")  # review order: the errors a clinician must see first
OUTCOME_TITLES = {"FN": "false negative", "FP": "false positive", "TP": "true positive",
                  "TN": "true negative", "?": "no label"}


def class_title(name: str) -> str:
    """A class name as a clinician reads it ("covid" -> "COVID-19")."""
    return CLASS_TITLES.get(name.lower(), name)


def file_key(data: bytes) -> str:
    """Content key for per-user caches: the same film uploaded twice is scored and explained once."""
    return hashlib.sha256(data).hexdigest()


def fmt_p(p: float) -> str:
    """A probability to two decimals that never rounds a near-certainty to a false 1.00 or 0.00."""
    if p > 0.995:
        return "> 0.99"
    if p < 0.005:
        return "< 0.01"
    return f"= {p:.2f}"


def verdict(probability: float, positive: bool, threshold: float, positive_class: str = "covid") -> str:
    """The decision said plainly, with the number and the operating point behind it."""
    name = class_title(positive_class)
    numbers = f"(p {fmt_p(probability)}, threshold {threshold:.2f})"
    return f"Positive for {name} pattern {numbers}" if positive else f"No {name} pattern detected {numbers}"


def not_chest_notice(ood: Any) -> str | None:
    """Why a film's score is withheld, or None when the film looks like a frontal chest radiograph.

    `ood` is a covidxr.ood.OODResult (is_chest, distance, reasons) or None when no check ran."""
    if ood is None or getattr(ood, "is_chest", True):
        return None
    reasons = getattr(ood, "reasons", None) or []
    why = f" ({'; '.join(map(str, reasons))})" if reasons else ""
    return ("This does not look like a frontal chest radiograph" + why + ". The COVID-19 score is "
            "withheld: the model was not made for this kind of image.")


def class_rows(class_probabilities: dict[str, float]) -> list[dict[str, Any]]:
    """Per-class probabilities as table rows, most likely first."""
    return [{"class": class_title(c), "probability": round(float(p), 4)}
            for c, p in sorted(class_probabilities.items(), key=lambda kv: -kv[1])]


def to_uint8(pixels: np.ndarray) -> np.ndarray:
    """Float [0, 1] film pixels -> 8-bit for display."""
    return (np.clip(pixels, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def png_bytes(image: np.ndarray) -> bytes:
    """An 8-bit grayscale or RGB array as PNG bytes, built in memory (never a temporary file)."""
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(image)).save(buf, format="PNG", optimize=False)
    return buf.getvalue()


def overlay_name(name: str) -> str:
    """Download name for a film's overlay: `chest.dcm` -> `chest_gradcam.png`."""
    stem = name.rsplit("/", 1)[-1].rsplit(".", 1)[0] or "film"
    return f"{stem}_gradcam.png"


# ---------------------------------------------------------------- batch progress

def eta_seconds(done: int, total: int, elapsed_s: float) -> float | None:
    """Seconds left at the rate so far; None before the first film gives a rate."""
    if done <= 0 or total <= 0 or elapsed_s <= 0:
        return None
    return max(0.0, (total - done) * elapsed_s / done)


def fmt_duration(seconds: float) -> str:
    seconds = int(math.ceil(seconds))
    if seconds < 60:
        return f"{seconds} s"
    m, s = divmod(seconds, 60)
    if m < 60:
        return f"{m} min {s:02d} s"
    h, m = divmod(m, 60)
    return f"{h} h {m:02d} min"


def progress_text(done: int, total: int, elapsed_s: float) -> str:
    """"Scored 12 of 40 films · about 8 s left" for the batch progress bar."""
    text = f"Scored {done} of {total} films"
    eta = eta_seconds(done, total, elapsed_s)
    if eta is not None and done < total:
        text += f" · about {fmt_duration(eta)} left"
    return text


# ---------------------------------------------------------------- review ordering

def outcome(truth_positive: bool | None, predicted_positive: bool) -> str:
    """TP / FP / TN / FN against the label, "?" for a film without one."""
    if truth_positive is None:
        return "?"
    return ("T" if truth_positive == predicted_positive else "F") + ("P" if predicted_positive else "N")


def confidence(probability: float, threshold: float) -> float:
    """How far the score lies from the operating point, on the side it fell: 0 at the threshold,
    1 at p = 0 or p = 1. Sorting on it puts the model's surest (and, for errors, worst) calls first."""
    if probability >= threshold:
        return (probability - threshold) / max(1.0 - threshold, 1e-9)
    return (threshold - probability) / max(threshold, 1e-9)


@dataclass(frozen=True)
class ReviewItem:
    index: int            # position in the batch's rows
    outcome: str          # TP / FP / TN / FN / ?
    probability: float
    confidence: float


def review_items(scored: Iterable[tuple[float, bool | None]], threshold: float,
                 outcomes: Iterable[str] | None = None, most_confident_first: bool = True) -> list[ReviewItem]:
    """Order a batch for review: false negatives, then false positives, then the rest; within each
    outcome by confidence. `scored` holds (probability, truth_positive) per film, in batch order."""
    keep = set(outcomes) if outcomes is not None else None
    items = []
    for i, (p, truth) in enumerate(scored):
        o = outcome(truth, p >= threshold)
        if keep is None or o in keep:
            items.append(ReviewItem(i, o, float(p), confidence(p, threshold)))
    rank = {o: k for k, o in enumerate(OUTCOMES)}
    sign = -1.0 if most_confident_first else 1.0
    return sorted(items, key=lambda it: (rank.get(it.outcome, len(rank)), sign * it.confidence, it.index))


# ---------------------------------------------------------------- per-user caches

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class LRU(Generic[K, V]):
    """A small bounded cache for one user's films and heatmaps (kept in Streamlit's session state),
    so that a long session does not grow without limit."""

    def __init__(self, capacity: int = 32):
        self.capacity = capacity
        self._d: OrderedDict[K, V] = OrderedDict()

    def get(self, key: K) -> V | None:
        if key in self._d:
            self._d.move_to_end(key)
            return self._d[key]
        return None

    def put(self, key: K, value: V) -> V:
        self._d[key] = value
        self._d.move_to_end(key)
        while len(self._d) > self.capacity:
            self._d.popitem(last=False)
        return value

    def __contains__(self, key: object) -> bool:
        return key in self._d

    def __len__(self) -> int:
        return len(self._d)

    def keys(self) -> Sequence[K]:
        return list(self._d)


# ---------------------------------------------------------------- metric tables (evaluation page, model card)

METRIC_TITLES = {"sensitivity": "Sensitivity", "specificity": "Specificity", "accuracy": "Accuracy",
                 "ppv": "PPV", "npv": "NPV", "auc": "AUC", "ece": "Calibration error (ECE)"}


def fmt_num(x: float | None, digits: int = 3) -> str:
    return "—" if x is None else f"{x:.{digits}f}"


def fmt_ci(ci: Sequence[float | None] | None, digits: int = 3) -> str:
    """[low, high] -> "0.912–0.987"; "—" when the interval is undefined."""
    if not ci or ci[0] is None or ci[1] is None:
        return "—"
    return f"{ci[0]:.{digits}f}–{ci[1]:.{digits}f}"


def fmt_estimate(report: dict, name: str, digits: int = 3) -> str:
    """"0.953 (0.912–0.987)" from a report dict shaped {name: value, "ci": {name: [low, high]}}."""
    value = report.get(name)
    if value is None:
        return "—"
    ci = (report.get("ci") or {}).get(name)
    return f"{value:.{digits}f}" + ("" if fmt_ci(ci) == "—" else f" ({fmt_ci(ci, digits)})")


def is_estimates(d: Any) -> bool:
    """True for a dict shaped like a metrics report: some known metric plus a "ci" mapping."""
    return isinstance(d, dict) and isinstance(d.get("ci"), dict) and any(k in d for k in METRIC_TITLES)


def metric_rows(report: dict, names: Iterable[str] = METRIC_TITLES) -> list[dict[str, Any]]:
    """One row per metric present in a report dict: title, value, 95% CI."""
    ci = report.get("ci") or {}
    return [{"metric": METRIC_TITLES.get(n, n), "value": fmt_num(report.get(n)), "95% CI": fmt_ci(ci.get(n))}
            for n in names if n in report]


def breakdown_rows(groups: dict[str, dict], key: str = "source",
                   names: Sequence[str] = ("sensitivity", "specificity", "accuracy", "auc")) -> list[dict[str, Any]]:
    """Per-source (or per held-out source) metrics, one row per group, each "value (CI)"."""
    rows = []
    for g, r in groups.items():
        row: dict[str, Any] = {key: g}
        for count in ("n", "n_pos", "n_neg"):
            if count in r:
                row[{"n": "films", "n_pos": "COVID-19", "n_neg": "other"}[count]] = r[count]
        row.update({METRIC_TITLES.get(n, n): fmt_estimate(r, n) for n in names if n in r})
        rows.append(row)
    return rows


def confusion_table(confusion: dict[str, int], positive: str = "covid") -> dict[str, dict[str, int]]:
    """{tp, fp, tn, fn} -> columns "predicted ..." x rows "actual ..." for a 2x2 table."""
    pos, neg = class_title(positive), f"not {class_title(positive)}"
    return {f"predicted {pos}": {f"actual {pos}": confusion["tp"], f"actual {neg}": confusion["fp"]},
            f"predicted {neg}": {f"actual {pos}": confusion["fn"], f"actual {neg}": confusion["tn"]}}


# ---------------------------------------------------------------- one user's last batch

@dataclass
class Batch:
    """The last batch evaluation of one session: rows are appended as they stream in, so an
    interrupted run keeps what was scored; the report is built once per row count and moved to
    other thresholds without re-scoring (and without redoing the bootstrap)."""
    title: str                      # what was evaluated, for the page
    total: int                      # films found
    threshold: float                # the threshold in use on the pages (the slider)
    items: list | None = None       # evaluate.LabelledItem per row, to re-read a film for review; None if not kept
    rows: list = field(default_factory=list)      # evaluate.Row, in item order
    done: bool = False
    seconds: float | None = None
    _report: Any = field(default=None, repr=False)
    _report_rows: int = field(default=-1, repr=False)

    @property
    def interrupted(self) -> bool:
        return not self.done and len(self.rows) < self.total

    def report(self):
        """evaluate.EvaluationReport of the rows so far at `threshold`."""
        from .evaluate import build_report

        if self._report is None or self._report_rows != len(self.rows):
            self._report, self._report_rows = build_report(list(self.rows), self.threshold), len(self.rows)
        return self._report.at(self.threshold)

    def scored(self) -> list[tuple[int, Any]]:
        """(index, row) for the rows that have a probability (not the failures)."""
        return [(i, r) for i, r in enumerate(self.rows) if r.probability is not None]


def image_rows(rows: Iterable[Any], threshold: float) -> list[dict[str, Any]]:
    """The per-image table: one dict per scored film, with its outcome at `threshold`."""
    out = []
    for r in rows:
        if r.probability is None:
            continue
        o = outcome(r.positive, r.probability >= threshold)
        out.append({"film": r.path, "label": r.label or "", "source": r.source or "",
                    "probability": round(float(r.probability), 4),
                    "prediction": "positive" if r.probability >= threshold else "negative",
                    "outcome": OUTCOME_TITLES[o]})
    return out


def roc_points(roc: dict | None) -> list[dict[str, float]]:
    """ROC points {fpr, tpr} from a report's "roc" dict, for a chart."""
    if not roc:
        return []
    return [{"fpr": float(f), "tpr": float(t)} for f, t in zip(roc["fpr"], roc["tpr"])]


def shrink(pixels: np.ndarray, side: int) -> np.ndarray:
    """Float film pixels reduced so that the longest side is at most `side` (a gallery thumbnail)."""
    h, w = pixels.shape
    scale = side / max(h, w)
    if scale >= 1:
        return pixels
    im = Image.fromarray(np.ascontiguousarray(pixels, dtype=np.float32), mode="F")
    return np.asarray(im.resize((max(1, round(w * scale)), max(1, round(h * scale))), Image.BILINEAR))
