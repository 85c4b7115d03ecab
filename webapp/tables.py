"""Metrics and scores as table rows for st.dataframe (evaluation page, model card, result view). No Streamlit."""
from __future__ import annotations

from typing import Any, Iterable, Sequence

from .review import outcome
from .wording import METRIC_TITLES, OUTCOME_TITLES, class_title


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


def class_rows(class_probabilities: dict[str, float]) -> list[dict[str, Any]]:
    """Per-class probabilities as table rows, most likely first."""
    return [{"class": class_title(c), "probability": round(float(p), 4)}
            for c, p in sorted(class_probabilities.items(), key=lambda kv: -kv[1])]


def metric_rows(report: dict, names: Iterable[str] = METRIC_TITLES) -> list[dict[str, Any]]:
    """One row per metric present in a report dict: title, value, 95% CI."""
    ci = report.get("ci") or {}
    return [{"metric": METRIC_TITLES.get(n, n), "value": fmt_num(report.get(n)), "95% CI": fmt_ci(ci.get(n))}
            for n in names if n in report]


def breakdown_rows(groups: dict[str, dict], positive_class: str, key: str = "source",
                   names: Sequence[str] = ("sensitivity", "specificity", "accuracy", "auc")) -> list[dict[str, Any]]:
    """Per-source (or per held-out source) metrics, one row per group, each "value (CI)"; the film
    counts are headed "films", the positive class's title and "other"."""
    counts = {"n": "films", "n_pos": class_title(positive_class), "n_neg": "other"}
    rows = []
    for g, r in groups.items():
        row: dict[str, Any] = {key: g}
        row.update({title: r[count] for count, title in counts.items() if count in r})
        row.update({METRIC_TITLES.get(n, n): fmt_estimate(r, n) for n in names if n in r})
        rows.append(row)
    return rows


def confusion_table(confusion: dict[str, int], positive_class: str) -> dict[str, dict[str, int]]:
    """{tp, fp, tn, fn} -> columns "predicted ..." x rows "actual ..." for a 2x2 table."""
    pos, neg = class_title(positive_class), f"not {class_title(positive_class)}"
    return {f"predicted {pos}": {f"actual {pos}": confusion["tp"], f"actual {neg}": confusion["fp"]},
            f"predicted {neg}": {f"actual {pos}": confusion["fn"], f"actual {neg}": confusion["tn"]}}


def image_rows(rows: Iterable[Any], threshold: float) -> list[dict[str, Any]]:
    """The per-image table: one dict per scored film (evaluate.Row), with its outcome at `threshold`."""
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
