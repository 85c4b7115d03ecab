"""The labelled films: manifest, classes, the patient-grouped validation split and the seeds."""
from __future__ import annotations

import csv
import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

SEED = 20261127
CLASSES = ("covid", "normal", "pneumonia")  # the manifest's labels, in the order of the classifier's logits
POSITIVE = CLASSES[0]                       # the class behind the product's decision; the card records both
VAL_FRACTION = 0.15


def seed_everything(seed: int = SEED) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


@dataclass
class Record:
    path: str       # relative to the data directory
    source: str
    label: str
    patient: str


def load_manifest(data: Path) -> list[Record]:
    with open(data / "MANIFEST.csv", newline="") as f:
        return [Record(r["path"], r["source"], r["label"], r["patient_id"] or r["path"]) for r in csv.DictReader(f)]


def patient_split(records: list[Record], val_fraction: float = VAL_FRACTION, seed: int = SEED) -> np.ndarray:
    """True where a record is in validation; whole patients go one way, per source and label."""
    rng = random.Random(seed)
    groups: dict[tuple[str, str], list[str]] = {}
    for r in records:
        key = (r.source, r.label)
        if r.patient not in groups.setdefault(key, []):
            groups[key].append(r.patient)
    val_patients: set[str] = set()
    for key in sorted(groups):
        patients = sorted(groups[key])
        rng.shuffle(patients)
        val_patients.update(patients[: max(1, round(val_fraction * len(patients)))] if len(patients) > 3 else [])
    return np.array([r.patient in val_patients for r in records])


def counts_per_source(records: list[Record]) -> dict[str, dict[str, int]]:
    """Films per source and label, in manifest order of first appearance."""
    counts: dict[str, dict[str, int]] = {}
    for r in records:
        counts.setdefault(r.source, {}).setdefault(r.label, 0)
        counts[r.source][r.label] += 1
    return counts
