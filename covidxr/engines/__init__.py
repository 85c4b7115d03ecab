"""Engines that score many films: in-process (`local`, the default) and on a Ray cluster (`ray`).

Both send the same records (covidxr.engines.batch.record_of: path and labels) through the same
per-batch step (batch.score_records -> covidxr.evaluate.score_batch), so their rows are the same; the
report is built from those rows by covidxr.evaluate.build_report either way. `score_all` is the driver:
it streams result batches from an engine into the results file as they finish (results.py), skips
films the file already holds on `resume`, and returns one Row per film, in the films' order.
"""
from __future__ import annotations

import os
import time
from typing import Callable, Sequence

from ..evaluate import EvaluationReport, LabelledItem, Row, build_report, scan_folder
from .batch import record_of, row_of
from .results import ResultsFile, already_done

ENGINES = ("local", "ray")


class EngineError(RuntimeError):
    """The engine could not score every film (e.g. the cluster went away for good)."""


def _stream(engine: str):
    if engine == "local":
        from .local import stream
    elif engine == "ray":
        from .ray import stream
    else:
        raise ValueError(f"unknown engine {engine!r}; expected one of {', '.join(ENGINES)}")
    return stream


def score_all(items: Sequence[LabelledItem], engine: str = "local", *, results: str | os.PathLike | None = None,
              resume: bool = False, progress: Callable[[int, int], None] | None = None, **options) -> list[Row]:
    """One Row per distinct item path, in the items' order. `options` go to the engine: classifier (local),
    weights, threads, threshold, include_non_chest, batch_size, and for Ray workers, address, spill_dir,
    temp_dir. With `results`, every finished batch is appended there; with `resume` too, films whose path
    and sha256 it already holds are taken from it and not scored again."""
    records, seen = [], set()
    for it in items:
        if it.path not in seen:
            seen.add(it.path)
            records.append(record_of(it))
    rf = ResultsFile(results) if results else None
    if resume and rf is None:
        raise ValueError("--resume needs --results FILE (the file of the run to resume)")
    done = rf.read() if resume else {}
    by_path: dict[str, dict] = {}
    todo = []
    for rec, stored in already_done(records, done):
        if stored is not None:
            by_path[rec["path"]] = stored
        else:
            todo.append(rec)
    total = len(records)
    if progress:
        progress(len(by_path), total)
    if rf:
        rf.open(fresh=not resume)
    try:
        wanted = {r["path"] for r in todo}
        for batch in _stream(engine)(todo, **options):
            new = [r for r in batch if r["path"] in wanted]  # a batch retried after a fault comes back once
            wanted.difference_update(r["path"] for r in new)
            if rf and new:
                rf.append(new)
            by_path.update((r["path"], r) for r in new)
            if progress:
                progress(len(by_path), total)
    finally:
        if rf:
            rf.close()
    missing = [r["path"] for r in records if r["path"] not in by_path]
    if missing:
        raise EngineError(f"{len(missing)} film(s) were not scored; rerun with --resume to score them")
    return [row_of(by_path[r["path"]]) for r in records]


def evaluate_folder(root, engine: str = "local", *, threshold: float, positive_class: str,
                    include_non_chest: bool = False, **options) -> EvaluationReport:
    """covidxr.evaluate.evaluate_folder on an engine, streamed and resumable (see score_all)."""
    t0 = time.perf_counter()
    rows = score_all(scan_folder(root, positive_class), engine, threshold=threshold,
                     include_non_chest=include_non_chest, **options)
    return build_report(rows, threshold, positive_class, include_non_chest=include_non_chest,
                        seconds=time.perf_counter() - t0)
