"""Fits the gate's "looks paediatric" logistic (covidxr.gate.ChildLook) on the first network's pooled features.

Children's films exist in one source only (kermany-via-suyash091, Guangzhou, ages 1-5): the logistic tells
that source's films from the adult sources' as much as children from adults, and its held-out rates are
on that one source's patients. It raises a warning, never a refusal.

    python -m covidxr.training.gate --data ../shared/data/cxr --out weights   # writes weights/gate.npz; prints the card entry
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

CHILD_SOURCE = "kermany-via-suyash091"


def fit_child_look(features: np.ndarray, child: np.ndarray, c: float = 0.01) -> tuple[np.ndarray, float]:
    """(w, b) of a class-balanced, L2 logistic on standardised features, folded back to raw features."""
    from sklearn.linear_model import LogisticRegression

    mu, sd = features.mean(0), features.std(0) + 1e-6
    lr = LogisticRegression(C=c, class_weight="balanced", max_iter=2000).fit((features - mu) / sd, child)
    w = lr.coef_[0] / sd
    return w.astype(np.float32), float(lr.intercept_[0] - np.dot(lr.coef_[0], mu / sd))


def main(argv: list[str] | None = None) -> int:
    from ..classifier import Classifier
    from ..films import read_film
    from ..gate import CHILD_FILE, ChildLook
    from .data import load_manifest, patient_split

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, required=True)
    ap.add_argument("--out", type=Path, default=Path("weights"))
    ap.add_argument("--adults", type=int, default=600, help="training films to fit on (a seeded sample), plus every "
                    "other training film of the paediatric source")
    ap.add_argument("--threshold", type=float, default=0.8)
    a = ap.parse_args(argv)
    clf = Classifier.from_dir(a.out)
    records = load_manifest(a.data)
    val = patient_split(records)
    rng = np.random.default_rng(0)
    train_idx = np.flatnonzero(~val)
    sample = rng.choice(train_idx, a.adults, replace=False)  # training films (a few may be children's)
    kids = [i for i in train_idx if records[i].source == CHILD_SOURCE and i not in set(sample)]
    fit_idx = np.concatenate([sample, kids]).astype(int)

    def feats(idx) -> np.ndarray:
        return clf.features([read_film(a.data / records[i].path) for i in idx])[0].astype(np.float64)

    w, b = fit_child_look(feats(fit_idx), np.array([records[i].source == CHILD_SOURCE for i in fit_idx]))
    look = ChildLook(w, b, a.threshold)
    val_idx = np.flatnonzero(val)
    p = look.probability(feats(val_idx))
    kid = np.array([records[i].source == CHILD_SOURCE for i in val_idx])
    measured = {"held_out_children_warned": int((p[kid] > a.threshold).sum()), "held_out_children": int(kid.sum()),
                "held_out_adults_warned": int((p[~kid] > a.threshold).sum()), "held_out_adults": int((~kid).sum())}
    name, sha = look.save(a.out)
    print(json.dumps({"file": name, "sha256": sha, "threshold": a.threshold, "measured": measured}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
