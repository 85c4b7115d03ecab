"""Metrics and scores as table rows for st.dataframe (evaluation page, model card, result view). No Streamlit."""
from __future__ import annotations

from typing import Any, Iterable, Sequence

from covidxr.card import decision_label

from webapp.views.review import outcome
from webapp.views.wording import (METRIC_TITLES, NOT_CHEST, OUTCOME_TITLES, class_title, fmt_pct, fmt_rate, fmt_rate_ci,
                                  is_refused, row_reasons, row_warnings)

RATIO_METRICS = {"auc"}  # shown as a number (0.868): an area, not a share of films; the rest as percentages


def fmt_num(x: float | None, digits: int = 3) -> str:
    return "—" if x is None else f"{x:.{digits}f}"


def fmt_metric(name: str, x: float | None) -> str:
    """A metric as the pages show it: AUC as 0.868, proportions and ECE as percentages ("91.2%")."""
    return fmt_num(x) if name in RATIO_METRICS else fmt_rate(x)


def fmt_metric_ci(name: str, ci: Sequence[float | None] | None) -> str:
    return fmt_ci(ci) if name in RATIO_METRICS else fmt_rate_ci(ci)


def fmt_ci(ci: Sequence[float | None] | None, digits: int = 3) -> str:
    """[low, high] -> "0.912–0.987"; "—" when the interval is undefined."""
    if not ci or ci[0] is None or ci[1] is None:
        return "—"
    return f"{ci[0]:.{digits}f}–{ci[1]:.{digits}f}"


def fmt_estimate(report: dict, name: str) -> str:
    """"95.3% (91.2–98.7%)" (AUC: "0.953 (0.912–0.987)") from a report dict shaped
    {name: value, "ci": {name: [low, high]}}."""
    value = report.get(name)
    if value is None:
        return "—"
    ci = fmt_metric_ci(name, (report.get("ci") or {}).get(name))
    return fmt_metric(name, value) + ("" if ci == "—" else f" ({ci})")


RATES = ("auc", "sensitivity", "specificity")  # the three figures every comparison table shows


def estimate_cells(report: dict) -> dict[str, str]:
    """AUC, sensitivity and specificity of a report dict as table cells titled as everywhere in the app,
    each "value (95% CI)" (fmt_estimate)."""
    return {METRIC_TITLES[k]: fmt_estimate(report, k) for k in RATES}


def is_estimates(d: Any) -> bool:
    """True for a dict shaped like a metrics report: some known metric plus a "ci" mapping."""
    return isinstance(d, dict) and isinstance(d.get("ci"), dict) and any(k in d for k in METRIC_TITLES)


def class_rows(class_probabilities: dict[str, float]) -> list[dict[str, Any]]:
    """Per-class probabilities as table rows, most likely first, as the banner rounds them (wording.fmt_pct:
    "< 1%", never a false "0%")."""
    return [{"class": class_title(c), "probability": fmt_pct(float(p))}
            for c, p in sorted(class_probabilities.items(), key=lambda kv: -kv[1])]


def metric_rows(report: dict, names: Iterable[str] = METRIC_TITLES) -> list[dict[str, Any]]:
    """One row per metric present in a report dict: title, value, 95% CI."""
    ci = report.get("ci") or {}
    return [{"metric": METRIC_TITLES.get(n, n), "value": fmt_metric(n, report.get(n)),
             "95% CI": fmt_metric_ci(n, ci.get(n)) if report.get(n) is not None else "—"}
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


def score_column(positive_class: str) -> str:
    return f"{class_title(positive_class)} score"


NOT_SCORED = "not scored"


def _image_entries(rows: Iterable[Any], threshold: float, positive_class: str):
    """(table row, probability or None) for each film image_rows lists."""
    score = score_column(positive_class)
    for r in rows:
        if is_refused(r) and getattr(r, "error", None) is None:
            yield {"decision": NOT_CHEST, score: f"{NOT_SCORED}: {NOT_CHEST}", "film": r.path,
                   "outcome": row_reasons(r) or NOT_CHEST, "label": r.label or "", "source": r.source or "",
                   "warnings": ""}, None
            continue
        if r.probability is None:
            continue
        called = r.probability >= threshold
        yield {"decision": decision_label(called, positive_class), score: fmt_pct(float(r.probability), threshold),
               "film": r.path, "outcome": OUTCOME_TITLES[outcome(r.positive, called)], "label": r.label or "",
               "source": r.source or "", "warnings": row_warnings(r)}, float(r.probability)


def image_rows(rows: Iterable[Any], threshold: float, positive_class: str = "covid") -> list[dict[str, Any]]:
    """The per-image table: one dict per scored or refused film (evaluate.Row), with its decision in the
    exports' words (`covid` / `non-covid`) and its outcome at `threshold`; the score rounded as the banner rounds
    it (wording.fmt_pct: one rule everywhere). A film the gate refused says "not scored: not a frontal chest
    radiograph" where a score would be, its reasons in the outcome, never a score or a blank; a scored film its
    warnings (a child's film). Decision and score come first: a phone's narrow table shows them before the film's
    name and label, which a reader can scroll to.
    Failures are listed elsewhere."""
    return [row for row, _ in _image_entries(rows, threshold, positive_class)]


def image_table(rows: Iterable[Any], threshold: float, positive_class: str = "covid"):
    """image_rows for st.dataframe, with a score column that sorts by the score: the column holds the probability
    (none for a refused film) and shows image_rows' words (a pandas Styler's display values), where text would
    sort "10%" before "9%" and "< 1%" after "97%"."""
    import pandas as pd

    entries = list(_image_entries(rows, threshold, positive_class))
    score = score_column(positive_class)
    frame = pd.DataFrame([row for row, _ in entries], columns=list(entries[0][0]) if entries else None)
    if entries:
        frame[score] = pd.array([p for _, p in entries], dtype="Float64")
    return frame.style.format(lambda p: fmt_pct(float(p), threshold), subset=[score] if entries else None,
                              na_rep=f"{NOT_SCORED}: {NOT_CHEST}")


def refused_rows(rows: Iterable[Any]) -> list[dict[str, Any]]:
    """The films the gate refused, with their reasons in words (for the batch page's list)."""
    return [{"film": r.path, "label": r.label or "", "reasons": row_reasons(r) or NOT_CHEST,
             **({"details": r.details} if getattr(r, "details", None) else {})}
            for r in rows if is_refused(r) and getattr(r, "error", None) is None]


def roc_points(roc: dict | None) -> list[dict[str, float]]:
    """ROC points {fpr, tpr} from a report's "roc" dict, for a chart."""
    if not roc:
        return []
    return [{"fpr": float(f), "tpr": float(t)} for f, t in zip(roc["fpr"], roc["tpr"])]


CHAR_PX, PAD_PX, MAX_PX = 6.2, 16, 420  # Streamlit's 14 px sans-serif (about 6 px a character): checked in Chromium at 1440x900


def column_widths(rows: Sequence[dict[str, Any]]) -> dict[str, int]:
    """A pixel width per column that fits its longest cell (or title), so that no cell is cut off
    ("0.677 (0.615–" of an AUC with its CI); capped at MAX_PX, past which a table scrolls sideways."""
    widths: dict[str, int] = {}
    for r in rows:
        for k, v in r.items():
            n = max(len(str(k)), len("" if v is None else str(v)))
            widths[k] = max(widths.get(k, 0), n)
    return {k: min(MAX_PX, round(CHAR_PX * n + PAD_PX)) for k, n in widths.items()}
