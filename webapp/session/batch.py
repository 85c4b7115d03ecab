"""One session's batch evaluation: what to evaluate, the rows as they stream in, the progress text. No Streamlit.

The page runs the batch (covidxr.evaluate.iter_scores) and keeps a Batch in the session; everything
the results show is built from its stored rows, so moving the threshold never re-scores a film.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Hashable, Sequence, TypeVar

from covidxr import evaluate
from covidxr.evaluate import LabelledItem, scan_folder, scan_uploads
from covidxr.safety import resolve_inside

from webapp.views.wording import is_refused

T = TypeVar("T")

KEEP_UPLOAD_BYTES = 128 << 20  # a batch's uploads are kept for the review page up to this size per session


@dataclass
class Batch:
    """The last batch evaluation of one session: rows are appended as they stream in, so an
    interrupted run keeps what was scored; the report is built once per row count and moved to
    other thresholds without re-scoring (and without redoing the bootstrap)."""
    title: str                      # what was evaluated, for the page
    total: int                      # films found
    threshold: float                # the threshold in use on the pages (the slider)
    positive_class: str             # the model card's: which label the metrics count as positive
    items: list | None = None       # evaluate.LabelledItem per row, to re-read a film for review; None if not kept
    rows: list = field(default_factory=list)      # evaluate.Row, in item order
    done: bool = False
    seconds: float | None = None
    include_refused: bool = False   # films the gate refused enter the metrics (the page's checkbox)
    _report: Any = field(default=None, repr=False)
    _report_key: tuple = field(default=(), repr=False)

    @property
    def interrupted(self) -> bool:
        return not self.done and len(self.rows) < self.total

    def refused(self) -> list[tuple[int, Any]]:
        """(index, row) for the films the gate judged not a frontal chest radiograph."""
        return [(i, r) for i, r in enumerate(self.rows) if is_refused(r) and getattr(r, "error", None) is None]

    def can_include_refused(self) -> bool:
        """Refused films can enter the metrics only if their score was kept (the page scores with
        include_non_chest=True and lets build_report withhold it)."""
        return any(r.probability is not None for _, r in self.refused())

    def report(self) -> evaluate.EvaluationReport:
        """The report of the rows so far at `threshold`: the metrics leave the refused films out (and their
        rows lose the score) unless `include_refused`; the rows (CSV, JSON) list every film; `seconds` is the
        run's wall time."""
        key = (len(self.rows), self.include_refused)
        if self._report is None or self._report_key != key:
            self._report = evaluate.build_report(list(self.rows), self.threshold, self.positive_class,
                                                 include_non_chest=self.include_refused)
            self._report_key = key
        return replace(self._report.at(self.threshold), seconds=self.seconds)

    def scored(self) -> list[tuple[int, Any]]:
        """(index, row) for the rows that have a probability and passed the gate (not the failures)."""
        return [(i, r) for i, r in enumerate(self.rows) if r.probability is not None and not is_refused(r)]


def interleave(items: Sequence[T], key: Callable[[T], Hashable]) -> list[T]:
    """The items reordered so that every prefix holds the classes in about their overall proportion
    (each class spread evenly over the sequence, its own order kept): an interrupted batch's partial
    metrics then see both classes, not the first folder only."""
    groups: dict[Hashable, list[T]] = {}
    for it in items:
        groups.setdefault(key(it), []).append(it)
    slots = [((k + 0.5) / len(g), gi, k, it) for gi, g in enumerate(groups.values()) for k, it in enumerate(g)]
    return [it for *_, it in sorted(slots, key=lambda s: s[:3])]


def folder_batch(folder: str, roots: list[Path], positive_class: str) -> tuple[str, list[LabelledItem], bool]:
    """(title, items, keep) for a server folder, refused unless it lies inside `roots` (and, by
    scan_folder, when it holds no film); the films are re-read from disk for review, so they are
    always "kept"."""
    path = resolve_inside(folder, roots)
    return str(path), scan_folder(path, positive_class), True


def upload_batch(files: list[tuple[str, bytes]], label: str | None,
                 positive_class: str) -> tuple[str, list[LabelledItem], bool]:
    """(title, items, keep) for uploaded films and zips, read in memory; a refused zip becomes one
    failed item with its reason. The bytes are kept for review only when the upload is small."""
    items = scan_uploads(files, label, positive_class)
    size = sum(len(d) for _, d in files)
    title = ", ".join(n for n, _ in files) if len(files) <= 3 else f"{len(files)} uploaded files"
    return title, items, size <= KEEP_UPLOAD_BYTES


# ---------------------------------------------------------------- progress

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


def progress_text(done: int, total: int, elapsed_s: float, before: int = 0) -> str:
    """"Scored 12 of 40 films · about 8 s left" for the batch progress bar. `before`: films already scored when
    the clock started (a resumed cluster run), left out of the rate."""
    text = f"Scored {done} of {total} films"
    eta = eta_seconds(done - before, total - before, elapsed_s)
    if eta is not None and done < total:
        text += f" · about {fmt_duration(eta)} left"
    return text
