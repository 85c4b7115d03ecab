"""Does running the networks on ONNX Runtime change any answer? The shipped model's probabilities, decisions
and AUC on the validation films of ../shared/data/cxr (the card's patient split), from predict()'s
ONNX Runtime path and from the same networks on PyTorch:

    .venv/bin/python scripts/runtime_check.py [--limit N]

Prints one JSON object: films, the largest probability difference, decisions changed, and the AUC both ways.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

from covidxr.classifier import Classifier, load
from covidxr.films import FilmError, read_film
from covidxr.metrics import auc
from covidxr.training.data import load_manifest, patient_split

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "cxr"
BATCH = 16


def probabilities(clf: Classifier, logits: torch.Tensor) -> np.ndarray:
    c = clf.card
    return torch.softmax(logits.float() / c.temperature, -1)[:, c.positive_index].numpy()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, default=DATA)
    ap.add_argument("--limit", type=int, help="only the first N validation films")
    a = ap.parse_args(argv)
    clf = load()
    records = load_manifest(a.data)
    val = [r for r, v in zip(records, patient_split(records)) if v][:a.limit]
    ort_p, torch_p, labels = [], [], []
    for i in range(0, len(val), BATCH):
        chunk = []
        for r in val[i:i + BATCH]:
            try:
                chunk.append((r, read_film(a.data / r.path)))
            except FilmError:
                continue
        inputs = clf.prepare([f for _, f in chunk])
        with torch.inference_mode():
            ort_p += list(probabilities(clf, clf.forward(inputs)[0]))
        torch_p += list(probabilities(clf, clf.forward_pytorch(inputs)[0]))
        labels += [int(r.label == clf.card.positive_class) for r, _ in chunk]
    o, t = np.asarray(ort_p), np.asarray(torch_p)
    print(json.dumps({
        "films": len(o),
        "max_probability_difference": float(np.abs(o - t).max()),
        "decisions_changed": int(((o >= clf.threshold) != (t >= clf.threshold)).sum()),
        "auc_onnxruntime": auc(labels, o), "auc_pytorch": auc(labels, t),
    }, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
