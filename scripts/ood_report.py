"""How well does the input gate ("is this a frontal chest radiograph?") work?

Runs the shipped model's gate (covidxr.gate, as predict() runs it) over inputs that are not frontal chest films,
built here or found on disk (synthetic noise, gradients, checkerboards, rendered text, photos in
colour and in gray from the installed packages' sample data, other grayscale images, non-chest
DICOMs, chest films rotated or inverted), and over real frontal films. Prints, per kind, the share
rejected and which reasons fired, the rejection rate on non-chest inputs (target >= 98%) and the
false-alarm rate on real frontal films (target <= 1.5%), and whether the ICU film of issue 17 passes.

    python scripts/ood_report.py [--weights weights] [--real-list val.txt | --real 300] [--json out.json]
    python scripts/ood_report.py --held-out [--remeasure]   # only the card's held-out measurement of the gate
                                                  # on ../shared/data/nonchest and cxr (ood.kind.measured), per kind
                                                  # and source, both split directions; --remeasure: recompute it from
                                                  # covidxr.training.gate_features' cache
    python scripts/ood_report.py --record-gate tests/data/reference_gate.json   # the gate's verdicts on
                                                  # scripts/same_answers.py's films, for tests/test_same_answers.py

Real films: the paths in --real-list (one manifest path per line, or a CSV with a `path` column:
use held-out validation films), else a deterministic sample of --real films from MANIFEST.csv,
which may overlap the model's training films and so flatters the false-alarm rate. When the
weights' card has no OOD statistics yet, a detector is fitted here on other patients' films and
calibrated on a third disjoint group, so that no film is judged by statistics it helped make.
"""
from __future__ import annotations

import argparse
import csv
import json
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Callable, Iterable

import numpy as np
from PIL import Image, ImageOps

REPO = Path(__file__).resolve().parents[1]

from covidxr.classifier import DEFAULT_WEIGHTS, Classifier
from covidxr.films import FilmError, read_film
from covidxr.gate import GateRules
from covidxr.ood import OODDetector
from covidxr.orientation import threshold_at
from covidxr.training.synthetic import (Item, checkerboards, colour_photos, encode, gradients, gray_photos, noise,
                                        other_grayscale, text_pages, to8)

DATA = REPO.parent / "shared" / "data"
ICU_FILM = "hannover-mhh/covid/24de8686.jpg"  # an AP film with lines and tubes that an earlier gate refused (issue 17)
SEED = 20240101


def files_in(folder: Path) -> list[Item]:
    return [(p.name, p.read_bytes()) for p in sorted(folder.glob("*.dcm"))]


def untagged(folder: Path) -> list[Item]:
    """The same DICOMs' pixels as 8-bit PNGs: judged on the image alone, as an export without its header is."""
    out = []
    for name, data in files_in(folder):
        try:
            out.append((Path(name).stem + ".png", encode(to8(read_film(data, name=name).pixels))))
        except FilmError:
            continue
    return out


def transformed(paths: list[Path], how: Callable[[Image.Image], Image.Image], tag: str) -> list[Item]:
    return [(f"{p.stem}-{tag}.png", encode(how(Image.open(p).convert("L")))) for p in paths]


# ------------------------------------------------------------------ real films

def manifest() -> list[dict]:
    with open(DATA / "cxr" / "MANIFEST.csv") as f:
        return list(csv.DictReader(f))


def patient_split(rows: list[dict], sizes: list[int]) -> list[list[dict]]:
    """Deterministic samples of films, one per group, with no patient in two groups."""
    rng = np.random.default_rng(SEED)
    by_patient: dict[str, list[dict]] = {}
    for r in rows:
        by_patient.setdefault(r["patient_id"], []).append(r)
    patients = sorted(by_patient)
    rng.shuffle(patients)
    groups: list[list[dict]] = [[] for _ in sizes]
    g = 0
    for pid in patients:
        while g < len(sizes) and len(groups[g]) >= sizes[g]:
            g += 1
        if g == len(sizes):
            break
        groups[g].append(by_patient[pid][int(rng.integers(len(by_patient[pid])))])  # one film per patient
    return groups


def read_list(path: Path) -> list[str]:
    text = path.read_text().splitlines()
    if text and "path" in text[0].split(","):
        return [r["path"] for r in csv.DictReader(text)]
    return [t.strip() for t in text if t.strip()]


def cxr_items(paths: Iterable[str]) -> list[Item]:
    return [(p, (DATA / "cxr" / p).read_bytes()) for p in paths]


# ------------------------------------------------------------------ running the check

def check_all(clf: Classifier, det: OODDetector, items: list[Item], batch: int = 16) -> list[dict]:
    """The gate's verdict on each item, as predict() gives it (with `det`'s statistics)."""
    rows, films = [], []
    for name, data in items:
        try:
            films.append(read_film(data, name=name))
        except FilmError as e:  # the app refuses it before any score: a rejection too
            rows.append({"name": name, "is_chest": False, "distance": None, "reasons": [f"unreadable: {e}"]})
    shipped, clf.ood = clf.ood, det
    try:
        for i in range(0, len(films), batch):
            for f, p in zip(films[i:i + batch], clf.predict(films[i:i + batch])):
                v = p.ood
                rows.append({"name": f.name, "is_chest": v.is_chest, "distance": round(v.distance, 4), "turned": v.turned,
                             "lung_fraction": round(float(v.lung_fraction), 4), "reasons": v.reasons,
                             "details": v.details, "warnings": v.warnings,
                             "frontal_anatomy": bool(v.fields is not None and v.fields.side_by_side
                                                     and (v.turned is None or v.turned <= det.orient_threshold))})
    finally:
        clf.ood = shipped
    return rows


def reason_kind(reason: str) -> str:
    for key, kind in (("CT slice", "kind: CT"), ("lateral chest film", "kind: lateral"),
                      ("not look like a radiograph", "kind: not a radiograph"), ("rotated or inverted", "orientation"), ("DICOM", "dicom tags"), ("lateral view", "lateral"),
                      ("features", "features"), ("lungs", "lungs"), ("colour", "colour"), ("unreadable", "unreadable")):
        if key in reason:
            return kind
    return "other"


def summarise(rows: list[dict]) -> dict:
    rejected = [r for r in rows if not r["is_chest"]]
    reasons = Counter(reason_kind(s) for r in rows for s in r["reasons"])
    features_only = sum(any(reason_kind(s) == "features" for s in r["reasons"]) for r in rows)
    return {"n": len(rows), "rejected": len(rejected), "rate": len(rejected) / max(len(rows), 1),
            "by_features": features_only, "reasons": dict(reasons)}


def fitted_detector(clf: Classifier, fit: list[dict], val: list[dict]) -> OODDetector:
    print(f"card has no OOD statistics: fitting on {len(fit)} films, calibrating on {len(val)} "
          f"(other patients)", file=sys.stderr)
    f_fit, _ = clf.features([read_film(b, name=n) for n, b in cxr_items(r["path"] for r in fit)])
    f_val, _ = clf.features([read_film(b, name=n) for n, b in cxr_items(r["path"] for r in val)])
    return OODDetector.fit(f_fit).calibrate(f_val, 0.99)


def validation_paths() -> list[str]:
    """The films `python -m covidxr train` held out (patient-grouped, same seed): never trained on."""
    from covidxr.training.data import load_manifest, patient_split as training_split

    records = load_manifest(DATA / "cxr")
    return [r.path for r, held_out in zip(records, training_split(records)) if held_out]


def cross_calibrated_rate(rows: list[dict], det: OODDetector, rules: GateRules | None = None) -> float:
    """False-alarm rate with the thresholds set on other films than those judged: each half of `rows`
    judged at the distance quantile (and, when there is one, the orientation net's threshold rule) of
    the other half, plus every other reason. With `rules`, a film with two clear lung fields upright
    (`frontal_anatomy`) is flagged on its features only beyond the rules' second distance limit too."""
    def column(key: str) -> np.ndarray:
        return np.array([np.inf if r.get(key) is None else r[key] for r in rows])

    frontal = np.array([bool(r.get("frontal_anatomy")) for r in rows]) if rules else np.zeros(len(rows), bool)
    hard = rules.distance_hard_limit if rules else -np.inf
    checks = [("features", column("distance"), lambda ref: float(np.quantile(ref, det.quantile)))]
    if det.orient_net is not None and np.isfinite(det.orient_quantile):
        checks.append(("orientation", column("turned"), lambda ref: threshold_at(ref, det.orient_quantile)))
    calibrated = {kind for kind, _, _ in checks}
    other = np.array([any(reason_kind(s) not in calibrated for s in r["reasons"]) for r in rows])
    even = np.arange(len(rows)) % 2 == 0
    flagged = []
    for h in (even, ~even):
        hit = other[h].copy()
        for kind, v, limit in checks:
            lim = limit(v[~h][np.isfinite(v[~h])])
            over = v[h] > lim
            if kind == "features":  # the second limit forgives clear frontal anatomy
                over &= ~(frontal[h] & (v[h] <= max(lim, hard)))
            hit |= over
        flagged.append(hit)
    return float(np.concatenate(flagged).mean())


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--weights", type=Path, default=DEFAULT_WEIGHTS)
    ap.add_argument("--real", type=int, default=300,
                    help="real films sampled from MANIFEST.csv, only when the card has no OOD statistics")
    ap.add_argument("--real-list", type=Path, help="held-out real films (manifest paths, or CSV with `path`)")
    ap.add_argument("--transformed", type=int, default=20, help="chest films rotated / inverted, per kind")
    ap.add_argument("--fit", type=int, default=600, help="films to fit on when the card has no OOD file")
    ap.add_argument("--calibrate", type=int, default=300)
    ap.add_argument("--json", type=Path, help="write the summary and every row here")
    ap.add_argument("--record-gate", type=Path, help="only record the gate's verdicts on same_answers.py's films here")
    ap.add_argument("--held-out", action="store_true", help="only print the card's held-out measurement of the gate")
    ap.add_argument("--remeasure", action="store_true", help="with --held-out: recompute it from the feature cache")
    ap.add_argument("--cache", type=Path, default=REPO / "artifacts" / "gate_features")
    a = ap.parse_args(argv)

    t0 = time.perf_counter()
    clf = Classifier.from_dir(a.weights)
    if a.record_gate:
        return record_gate(clf, a.record_gate)
    print_held_out(clf, a.cache if a.remeasure else None)
    if a.held_out:
        return 0
    rows = manifest()
    fit, val, real = patient_split(rows, [a.fit, a.calibrate, a.real])
    det = clf.ood or fitted_detector(clf, fit, val)
    if a.real_list:
        real_paths, real_source = read_list(a.real_list), str(a.real_list)
    elif clf.ood is not None:  # the shipped detector: the films `covidxr train` held out (never trained on)
        real_paths, real_source = validation_paths(), "the training command's validation split"
    else:
        real_paths, real_source = [r["path"] for r in real], f"MANIFEST sample of {len(real)} (other patients than the fit)"
    chest_for_transforms = [DATA / "cxr" / p for p in real_paths[:a.transformed]]

    kinds: dict[str, tuple[str, Callable[[], list[Item]]]] = {
        "noise": ("non-chest", noise),
        "gradient": ("non-chest", gradients),
        "checkerboard": ("non-chest", checkerboards),
        "text": ("non-chest", text_pages),
        "colour photo": ("non-chest", colour_photos),
        "gray photo": ("non-chest", gray_photos),
        "other grayscale image": ("non-chest", other_grayscale),
        "non-chest DICOM": ("non-chest", lambda: files_in(DATA / "dicom" / "other")),
        "non-chest DICOM as PNG (no tags)": ("non-chest", lambda: untagged(DATA / "dicom" / "other")),
        "chest rotated 90": ("non-chest", lambda: transformed(chest_for_transforms, lambda im: im.rotate(90, expand=True), "rot90")),
        "chest rotated 180": ("non-chest", lambda: transformed(chest_for_transforms, lambda im: im.rotate(180), "rot180")),
        "chest inverted": ("non-chest", lambda: transformed(chest_for_transforms, ImageOps.invert, "inverted")),
        "real lateral film (fitted on)": ("non-chest", lambda: nonchest_items("lateral_cxr")),
        "real CT slice (fitted on)": ("non-chest", lambda: nonchest_items("ct_slice")),
        "real frontal film": ("chest", lambda: cxr_items(real_paths)),
        "ICU film with lines and tubes": ("chest", lambda: cxr_items([ICU_FILM])),
        "chest DICOM (other hospitals)": ("chest", lambda: files_in(DATA / "dicom" / "cxr") + files_in(DATA / "dicom" / "cxr" / "derived")),
    }
    results: dict[str, dict] = {}
    for kind, (group, make) in kinds.items():
        checked = check_all(clf, det, make())
        results[kind] = {"group": group, **summarise(checked), "rows": checked}

    print(f"\nOOD check: threshold {det.threshold:.3f} on feature distance "
          f"({'shipped' if clf.ood else 'fitted here'}); {time.perf_counter() - t0:.0f} s\n")
    print(f"{'kind':32} {'group':10} {'n':>4} {'flagged':>8} {'rate':>6}  {'by features':>11}  reasons")
    for kind, r in results.items():
        print(f"{kind:32} {r['group']:10} {r['n']:4d} {r['rejected']:8d} {r['rate']:6.1%}  "
              f"{r['by_features']:11d}  {r['reasons']}")
    non = [r for r in results.values() if r["group"] == "non-chest"]
    n_non, rej = sum(r["n"] for r in non), sum(r["rejected"] for r in non)
    by_feat = sum(r["by_features"] for r in non)
    real_r = results["real frontal film"]
    summary = {
        "non_chest_rejection_rate": rej / n_non, "non_chest_n": n_non,
        "non_chest_rejected_by_features": by_feat / n_non,
        "real_false_alarm_rate": real_r["rate"], "real_n": real_r["n"],
        "real_source": real_source,
        "real_false_alarm_rate_cross_calibrated": cross_calibrated_rate(real_r["rows"], det, clf.gate_rules),
        "icu_film_passes": results["ICU film with lines and tubes"]["rejected"] == 0,
        "non_chest_rejection_rate_per_kind": {k: r["rate"] for k, r in results.items() if r["group"] == "non-chest"},
        "dicom_chest_false_alarm_rate": results["chest DICOM (other hospitals)"]["rate"],
        "threshold": det.threshold, "detector": "shipped" if clf.ood else "fitted in this report",
        "weights": str(a.weights),
    }
    print(f"\nnon-chest rejected: {rej}/{n_non} = {rej / n_non:.1%} (target >= 98%); "
          f"by the feature distance alone {by_feat / n_non:.1%}")
    print(f"real frontal films flagged: {real_r['rejected']}/{real_r['n']} = {real_r['rate']:.1%} "
          f"(target <= 1.5%; {real_source})")
    print(f"ICU film {ICU_FILM}: {'passes' if summary['icu_film_passes'] else 'REFUSED'}")
    print(f"  the same films, each half judged at thresholds set on the other half: "
          f"{summary['real_false_alarm_rate_cross_calibrated']:.1%} (the shipped thresholds were set on these films)")
    if a.json:
        a.json.write_text(json.dumps({"summary": summary, "kinds": results}, indent=1) + "\n")
    return 0


def nonchest_items(kind: str) -> list[Item]:
    """../shared/data/nonchest's images of one kind: the shipped image-kind logistic was fitted on them all, so
    their rate here is not a held-out figure (print_held_out's is)."""
    with open(DATA / "nonchest" / "MANIFEST.csv", newline="") as f:
        return [(r["path"], (DATA / "nonchest" / r["path"]).read_bytes()) for r in csv.DictReader(f) if r["kind"] == kind]


def card_docs():
    """scripts/card_docs.py as a module: it formats the card's gate measurement (one table, two places)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("card_docs", REPO / "scripts" / "card_docs.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def print_held_out(clf: Classifier, cache: Path | None) -> None:
    """The gate on images it was not fitted on (../shared/data/nonchest, split by source; ../shared/data/cxr by
    patient): the card's figures, or recomputed from covidxr.training.gate_features' cache in `cache`."""
    kind = clf.card.ood.get("kind") or {}
    if cache is not None:
        from covidxr.training import gate as fitting

        gs = fitting.GateSet.join(fitting.cached_set(cache / "cxr", DATA / "cxr"),
                                  fitting.cached_set(cache / "nonchest", DATA / "nonchest"), fitting.generated_set(clf))
        measured, origin = fitting.measure(gs), f"recomputed from {cache}"
    elif kind.get("measured"):
        measured, origin = kind["measured"], "the model card's ood.kind.measured"
    else:
        print("the card holds no held-out measurement of the gate (ood.kind.measured)")
        return
    print(f"\nThe gate on images it was not fitted on ({origin}; targets: >= 98% of non-chest images refused, every "
          "lateral film refused, <= 1.5% of real frontal films flagged):\n")
    print("\n".join(card_docs().gate_measured(measured)))


def record_gate(clf: Classifier, path: Path) -> int:
    """The gate's verdict and reasons on scripts/same_answers.py's films (tests/test_same_answers.py)."""
    import same_answers  # this script's own folder, first on its sys.path when run as scripts/ood_report.py

    paths = same_answers.films()
    preds = clf.predict([read_film(p) for p in paths])
    out = {same_answers.relative(p): {"is_chest": r.ood.is_chest, "reasons": r.ood.reasons} for p, r in zip(paths, preds)}
    path.write_text(json.dumps(out, indent=1, sort_keys=True) + "\n")
    print(f"recorded {len(out)} verdicts ({sum(not v['is_chest'] for v in out.values())} refused) to {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
