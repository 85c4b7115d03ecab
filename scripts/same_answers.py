"""Does the model still give the same answers? Record, or compare against, the probabilities and gate
verdicts of the shipped model on a fixed set of films: the bundled samples and a spread of films of
../shared/data/cxr (every source, both classes).

A refactor of the pipeline must not change what a clinician is told. This script is how that is shown:

    python scripts/same_answers.py --record tests/data/reference_answers.json   # before the change
    python scripts/same_answers.py --compare tests/data/reference_answers.json  # after: prints the largest differences

tests/test_same_answers.py runs the comparison on every test run.
"""
from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path

import numpy as np

import covidxr

REPO = Path(__file__).resolve().parents[1]
SHARED_CXR = REPO.parent / "shared" / "data" / "cxr"
N_SHARED = 300


def films(n_shared: int = N_SHARED) -> list[Path]:
    """The samples, then `n_shared` films of the shared set spread evenly over its sorted manifest."""
    paths = sorted(p for p in (REPO / "samples").glob("*/*") if p.suffix.lower() in covidxr.FILM_SUFFIXES)
    with open(SHARED_CXR / "MANIFEST.csv", newline="") as f:
        rows = sorted(r["path"] for r in csv.DictReader(f))
    step = max(1, len(rows) // n_shared)
    return paths + [SHARED_CXR / p for p in rows[::step][:n_shared]]


def relative(path: Path) -> str:
    return str(path.relative_to(REPO)) if path.is_relative_to(REPO) else str(path.relative_to(SHARED_CXR.parent.parent.parent))


def answers(model: covidxr.Classifier, paths: list[Path]) -> dict[str, dict]:
    """Per film: every class probability, the decision, and the gate's verdict and feature distance."""
    preds = model.predict([covidxr.read_film(p) for p in paths])
    return {relative(p): {"class_probabilities": r.class_probabilities, "positive": r.positive,
                          "is_chest": None if r.ood is None else r.ood.is_chest,
                          "distance": None if r.ood is None else r.ood.distance}
            for p, r in zip(paths, preds)}


def differences(reference: dict[str, dict], now: dict[str, dict]) -> dict[str, float | int]:
    """The largest probability and distance differences, and how many decisions or verdicts changed."""
    missing = sorted(set(reference) ^ set(now))
    if missing:
        raise SystemExit(f"same_answers: the film sets differ ({len(missing)} films, e.g. {missing[0]})")
    prob = max(abs(reference[k]["class_probabilities"][c] - now[k]["class_probabilities"][c])
               for k in reference for c in reference[k]["class_probabilities"])
    dist = max(abs(reference[k]["distance"] - now[k]["distance"]) / max(1.0, abs(reference[k]["distance"]))
               for k in reference if reference[k]["distance"] is not None)
    return {"films": len(reference), "max_probability_difference": float(prob),
            "max_relative_distance_difference": float(dist),
            "decisions_changed": sum(reference[k]["positive"] != now[k]["positive"] for k in reference),
            "verdicts_changed": sum(reference[k]["is_chest"] != now[k]["is_chest"] for k in reference)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    what = ap.add_mutually_exclusive_group(required=True)
    what.add_argument("--record", type=Path, help="write the answers of the current code here")
    what.add_argument("--compare", type=Path, help="compare the current code's answers with this record")
    ap.add_argument("--weights", type=Path, default=None, help="model folder (default: the shipped one)")
    args = ap.parse_args(argv)
    model = covidxr.load(args.weights) if args.weights else covidxr.load()
    now = answers(model, films())
    if args.record:
        args.record.parent.mkdir(parents=True, exist_ok=True)
        args.record.write_text(json.dumps(now, indent=1, sort_keys=True) + "\n")
        print(f"recorded {len(now)} films to {args.record}")
        return 0
    diff = differences(json.loads(args.compare.read_text()), now)
    print(json.dumps(diff, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
