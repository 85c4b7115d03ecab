"""The gate's evidence for every film of a folder, extracted once and cached, so that fitting and
validating gate rules (covidxr.training.gate) reruns in seconds.

Per film: both networks' pooled features, the segmenter's lung map and the squashed film it read (64 x 64,
float16), the gate's statistics (feature distance, turned probability, lung share, lung-field shape,
paediatric look) and the verdict of its rules other than the image-kind logistic (covidxr.gate.KindLook). Written in chunks of CHUNK films, one .npz each, so that an
interrupted run resumes where it stopped; pixels of the films are never stored, only these summaries.

    python -m covidxr.training.gate_features --data ../shared/data/nonchest --out artifacts/gate_features/nonchest
    python -m covidxr.training.gate_features --data ../shared/data/cxr --out artifacts/gate_features/cxr
"""
from __future__ import annotations

import argparse
import csv
import sys
import time
from pathlib import Path
from typing import Sequence

import numpy as np

CHUNK = 128


def manifest_paths(data: Path) -> list[str]:
    with open(data / "MANIFEST.csv", newline="") as f:
        return [r["path"] for r in csv.DictReader(f)]


def evidence(clf, films) -> dict[str, np.ndarray]:
    """The gate's evidence for films (see the module docstring), as arrays with one row per film."""
    from ..gate import lung_fields

    inputs = clf.prepare(films)
    outs = clf.network_outputs(inputs)
    feats0 = outs[0].features
    # the gate's other rules alone (the image-kind logistic is what covidxr.training.gate fits on this cache)
    verdicts = [clf.ood.check(f0, x.lung_fraction, film, x.overview, x.lung_prob, clf.gate_rules, clf.child_look)
                for f0, x, film in zip(feats0, inputs, films)]
    fields = [lung_fields(x.lung_prob, clf.gate_rules) for x in inputs]
    logits = np.mean([o.logits for o in outs], axis=0)
    return {
        **{f"features{i}": o.features.astype(np.float32) for i, o in enumerate(outs)},
        "logits": logits.astype(np.float32),
        "lung_prob": np.stack([x.lung_prob for x in inputs]).astype(np.float16),
        "overview": np.stack([x.overview for x in inputs]).astype(np.float16),
        "lung_fraction": np.array([x.lung_fraction for x in inputs], np.float32),
        "distance": np.array([v.distance for v in verdicts], np.float32),
        "turned": np.array([np.nan if v.turned is None else v.turned for v in verdicts], np.float32),
        "n_fields": np.array([f.n_fields for f in fields], np.int16),
        "balance": np.array([f.balance for f in fields], np.float32),
        "separation": np.array([f.separation for f in fields], np.float32),
        "overlap": np.array([f.overlap for f in fields], np.float32),
        "side_by_side": np.array([f.side_by_side for f in fields], bool),
        "child": np.array([clf.child_look.probability(f)[0] if clf.child_look else np.nan for f in feats0], np.float32),
        "gate_is_chest": np.array([v.is_chest for v in verdicts], bool),
        "gate_reasons": np.array(["; ".join(v.reasons) for v in verdicts], dtype=str),
        "colour": np.array([str(f.facts.get("colour", "")) == "yes" for f in films], bool),
    }


def extract(clf, data: Path, out: Path, paths: Sequence[str], chunk: int = CHUNK, batch: int = 16, log=print) -> None:
    from ..films import FilmError, read_film

    out.mkdir(parents=True, exist_ok=True)
    start = time.time()
    for c0 in range(0, len(paths), chunk):
        target = out / f"chunk{c0 // chunk:04d}.npz"
        if target.exists():
            continue
        part, rows, errors = paths[c0:c0 + chunk], [], []
        kept = []
        for p in part:
            try:
                kept.append(read_film(data / p, name=p))
            except FilmError as e:
                errors.append(f"{p}: {e}")
        for i in range(0, len(kept), batch):
            rows.append(evidence(clf, kept[i:i + batch]))
        arrays = {k: np.concatenate([r[k] for r in rows]) for k in rows[0]} if rows else {}
        tmp = target.with_suffix(".tmp.npz")
        np.savez(tmp, path=np.array([f.name for f in kept], dtype=str), errors=np.array(errors, dtype=str), **arrays)
        tmp.rename(target)
        done = min(c0 + chunk, len(paths))
        log(f"{data.name}: {done}/{len(paths)} films in {time.time() - start:.0f} s ({len(errors)} unreadable in this chunk)")


def load(out: Path) -> dict[str, np.ndarray]:
    """Every chunk of a cache, concatenated (keys as `evidence`, plus `path`)."""
    parts = [dict(np.load(p, allow_pickle=False)) for p in sorted(out.glob("chunk*.npz")) if ".tmp" not in p.name]
    keys = [k for k in parts[0] if k != "errors"]
    return {k: np.concatenate([p[k] for p in parts if k in p and len(p["path"])]) for k in keys}


def main(argv: list[str] | None = None) -> int:
    from ..classifier import Classifier

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, required=True)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--weights", type=Path, default=None)
    a = ap.parse_args(argv)
    clf = Classifier.from_dir(a.weights) if a.weights else Classifier.from_dir()
    extract(clf, a.data, a.out, manifest_paths(a.data), log=lambda s: print(s, flush=True, file=sys.stderr))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
