"""The in-process engine: the records scored here, one batch at a time, by the shared per-batch step."""
from __future__ import annotations

from typing import Iterator, Sequence

from ..classifier import load
from .batch import score_records


def stream(records: Sequence[dict], *, classifier=None, weights=None, threads: int | None = None,
           threshold: float | None = None, include_non_chest: bool = False, batch_size: int = 16,
           site: str | None = None, **_ignored) -> Iterator[list[dict]]:
    """Result records, a batch at a time, in order. `classifier`: one already loaded (else loaded here)."""
    if classifier is None:
        classifier = load(weights, threads, site)
    for start in range(0, len(records), batch_size):
        yield score_records(classifier, records[start:start + batch_size], threshold, include_non_chest)
