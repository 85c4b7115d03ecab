"""Which films of a batch a clinician reviews first: errors before the rest, surest calls first. No Streamlit."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable, Sequence

from webapp.views.wording import (NOT_CHEST, OUTCOME_TITLES, class_title, fmt_pct, is_refused, review_explanation,
                                  row_reasons)

OUTCOMES = ("FN", "FP", "TP", "TN")  # review order: the errors a clinician must see first
ERRORS = ("FN", "FP")
REFUSED = "X"                         # the gate judged the film not a frontal chest radiograph: no score


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
    index: int                  # position in the entries given to review_items
    outcome: str                # TP / FP / TN / FN / ? / X (refused: no score)
    probability: float | None   # None for a refused film: never shown
    confidence: float


def review_items(scored: Iterable[tuple], threshold: float,
                 outcomes: Iterable[str] | None = None, most_confident_first: bool = True) -> list[ReviewItem]:
    """Order a batch for review: false negatives, then false positives, then the rest, the refused films
    last; within each outcome by confidence. `scored` holds (probability, truth_positive) or
    (probability, truth_positive, refused) per film, in batch order."""
    keep = set(outcomes) if outcomes is not None else None
    items = []
    for i, entry in enumerate(scored):
        p, truth, refused = (*entry, False)[:3]
        if refused:
            o, it = REFUSED, ReviewItem(i, REFUSED, None, 0.0)
        else:
            o = outcome(truth, p >= threshold)
            it = ReviewItem(i, o, float(p), confidence(p, threshold))
        if keep is None or o in keep:
            items.append(it)
    rank = {o: k for k, o in enumerate((*OUTCOMES, "?", REFUSED))}
    sign = -1.0 if most_confident_first else 1.0
    return sorted(items, key=lambda it: (rank.get(it.outcome, len(rank)), sign * it.confidence, it.index))


def neighbours(sequence: list[int], current: int) -> tuple[int | None, int | None]:
    """(previous, next) of `current` in `sequence` (None at either end, or when it is not in it)."""
    if current not in sequence:
        return None, None
    k = sequence.index(current)
    return (sequence[k - 1] if k > 0 else None), (sequence[k + 1] if k + 1 < len(sequence) else None)


def reviewable(rows: Sequence) -> list[int]:
    """The batch rows the review shows: every film scored or refused by the gate; a film that could not be read
    is left out (the Batch evaluation page lists it)."""
    return [i for i, r in enumerate(rows) if r.error is None and (r.probability is not None or is_refused(r))]


def ordered(rows: Sequence, entries: Sequence[int], threshold: float, outcomes: Iterable[str] | None = None,
            most_confident_first: bool = True) -> list[tuple[int, str]]:
    """(batch row, outcome at `threshold`) of the `entries` (reviewable's) in review order (review_items), only
    those with one of `outcomes` when given."""
    scored = [(rows[i].probability, rows[i].positive, is_refused(rows[i])) for i in entries]
    return [(entries[it.index], it.outcome) for it in review_items(scored, threshold, outcomes, most_confident_first)]


def describe(row: Any, outcome_: str, positive_class: str, threshold: float) -> tuple[str, str | None]:
    """(title line, explanation) of a batch row with its outcome at the operating point in use."""
    if outcome_ == REFUSED:
        return f"{NOT_CHEST}", row_reasons(row) or None
    title = f"{OUTCOME_TITLES[outcome_]} · {class_title(positive_class)} {fmt_pct(row.probability, threshold)}"
    return title, review_explanation(outcome_, row.label, positive_class)


def place(shown: list[int], outcome_of: dict[int, str], current: int) -> tuple[int | None, int | None, str]:
    """(previous, next, "k of n errors|films") of the film open in the dialog: it steps through the shown errors
    when it was opened on one, else through every shown film; "" when the film is no longer shown."""
    errors = [k for k in shown if outcome_of.get(k) in ERRORS]
    sequence = errors if current in errors else shown
    prev, nxt = neighbours(sequence, current)
    where = f"{sequence.index(current) + 1} of {len(sequence)} {'errors' if sequence is errors else 'films'}" \
        if current in sequence else ""
    return prev, nxt, where


def page_rows(n: int, page: int, per_page: int, columns: int) -> list[range]:
    """The positions (into the ordered items) of page `page` (from 1), a range per row of `columns` tiles."""
    start, stop = (page - 1) * per_page, min(page * per_page, n)
    return [range(r0, min(r0 + columns, stop)) for r0 in range(start, stop, columns)]
