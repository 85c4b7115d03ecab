"""Which films of a batch a clinician reviews first: errors before the rest, surest calls first. No Streamlit."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

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
