"""The one per-batch step of every engine: records (path, label, source, error) -> result records.

A record is a plain dict so that it travels through Ray's object store as a few strings (never pixels:
each worker reads its films itself). `score_records` rebuilds the evaluate.LabelledItems, reads each
file once (hashing the bytes it reads, for --resume), and calls `covidxr.evaluate.score_batch`, the
function the in-process `iter_scores` calls too. Its result records carry every field of a
`covidxr.evaluate.Row` plus the file's sha256, as strings and numbers that round-trip exactly through
the results file and through Arrow; `row_of` turns one back into the Row.
"""
from __future__ import annotations

import hashlib
import json
import math
from typing import Iterable, Sequence

from ..evaluate import LabelledItem, Row, score_batch
from ..safety import read_regular

# Every column of a result record, in the results file's order.
FIELDS = ("path", "sha256", "label", "source", "probability", "prediction", "error", "truth", "chest_xray",
          "reasons", "details", "warnings", "class_probabilities")


def record_of(item: LabelledItem) -> dict:
    """What an engine ships for one film: its path and labels, never its bytes."""
    return {"path": item.path, "label": item.label, "source": item.source, "error": item.error}


class _HashingReader:
    """Reads the file once and remembers the sha256 of the bytes that were scored."""

    def __init__(self, path: str):
        self.path, self.sha256 = path, ""

    def __call__(self) -> bytes:
        data = read_regular(self.path)
        self.sha256 = hashlib.sha256(data).hexdigest()
        return data


def _none(v):
    """Arrow and pandas turn a missing string into None, NaN or a numpy scalar; give plain Python back."""
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return None
    return v.item() if hasattr(v, "item") else v


def score_records(classifier, records: Iterable[dict], threshold: float | None = None,
                  include_non_chest: bool = False) -> list[dict]:
    """Score one batch of records with `covidxr.evaluate.score_batch`; one result record per input, in order."""
    records = list(records)
    readers = [_HashingReader(str(r["path"])) for r in records]
    items = [LabelledItem(str(r["path"]), _none(r.get("label")), _none(r.get("source")), _none(r.get("error")), read)
             for r, read in zip(records, readers)]
    rows = score_batch(classifier, items, threshold, include_non_chest)
    return [result_of(row, read.sha256) for row, read in zip(rows, readers)]


def result_of(row: Row, sha256: str = "") -> dict:
    return {"path": row.path, "sha256": sha256, "label": row.label, "source": row.source,
            "probability": row.probability, "prediction": row.prediction, "error": row.error, "truth": row.truth,
            "chest_xray": row.chest_xray, "reasons": json.dumps(list(row.reasons)), "details": row.details,
            "warnings": json.dumps(list(row.warnings)), "class_probabilities": json.dumps(row.class_probabilities)}


def row_of(result: dict) -> Row:
    """The Row a result record stands for (inverse of result_of)."""
    g = {k: _none(result.get(k)) for k in FIELDS}
    p = g["probability"]
    return Row(str(g["path"]), g["label"], g["source"], None if p is None else float(p), g["prediction"], g["error"],
               None if g["truth"] is None else bool(g["truth"]),
               None if g["chest_xray"] is None else bool(g["chest_xray"]),
               tuple(json.loads(g["reasons"] or "[]")), g["details"], tuple(json.loads(g["warnings"] or "[]")),
               json.loads(g["class_probabilities"] or "null"))


def columns(results: Sequence[dict]) -> dict[str, list]:
    """Result records as columns (what a Ray Data batch function returns)."""
    return {k: [r[k] for r in results] for k in FIELDS}
