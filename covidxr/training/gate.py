"""Fits the gate's logistics on the first network's pooled features: "looks paediatric" (covidxr.gate.ChildLook)
and "what kind of image" (covidxr.gate.KindLook: frontal film, lateral film, CT slice, other).

Children's films exist in one source only (kermany-via-suyash091, Guangzhou, ages 1-5): the logistic tells
that source's films from the adult sources' as much as children from adults, and its held-out rates are
on that one source's patients. It raises a warning, never a refusal.

    python -m covidxr.training.gate --data ../shared/data/cxr --out weights   # writes weights/gate.npz; prints the card entry
    python -m covidxr.training.gate kind --out weights   # measures KindLook both ways, writes weights/kind.npz and the card's
                                                       # ood.kind (reads the cache of covidxr.training.gate_features)

KindLook is measured with a split that keeps each source's images together (SPLITS): fitted on one source of CT
slices, one half of the lateral films' cases and one half of the frontal films' patients, then judged on the
other CT source, the other laterals and the other frontal patients; then the other way round. Every image of
../shared/data/nonchest and ../shared/data/cxr is so judged once by a gate that was not fitted on it. The shipped
logistic is fitted on all of them.
"""
from __future__ import annotations

import argparse
import csv
import hashlib
import json
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

CHILD_SOURCE = "kermany-via-suyash091"


def fit_child_look(features: np.ndarray, child: np.ndarray, c: float = 0.01) -> tuple[np.ndarray, float]:
    """(w, b) of a class-balanced, L2 logistic on standardised features, folded back to raw features."""
    from sklearn.linear_model import LogisticRegression

    mu, sd = features.mean(0), features.std(0) + 1e-6
    lr = LogisticRegression(C=c, class_weight="balanced", max_iter=2000).fit((features - mu) / sd, child)
    w = lr.coef_[0] / sd
    return w.astype(np.float32), float(lr.intercept_[0] - np.dot(lr.coef_[0], mu / sd))


KIND_C = 0.1            # the logistic's inverse L2 strength on standardised features
KIND_THRESHOLD = 0.5    # refused when P(not frontal) is above this
NONCHEST = ("nonchest",)
CT_SOURCES = ("covidct", "ieee8023")
# direction -> (CT source fitted on, half of the lateral cases and frontal patients fitted on); the rest is judged
SPLITS = {"A": ("covidct", 0), "B": ("ieee8023", 1)}
GENERATED = "generated"
TURNED = "turned"  # the source of turned_set's films
TURNED_PER_SOURCE = 25  # frontal films per source turned four ways for the fit


def case_of(path: str) -> str:
    """The case (patient) a file of ../shared/data/nonchest belongs to, as its name gives it: ieee8023's
    "000002-11-b" and Eurorad's "16646_1_2" by their number, "covid-19-caso-95-2-16" by its case, "...-day0-L"
    without the day and view; one image per case otherwise."""
    stem = Path(path).stem.split("__", 1)[-1].lower()
    for pattern in (r"^(\d{6})-", r"^(\d{5})_", r"(caso-\d+)", r"^(.*?)(-day\d+.*|-l(-.*)?|-\d+(-b)?|_jumbo.*)?$"):
        m = re.search(pattern, stem)
        if m:
            return m.group(1)
    return stem


def half_of(key: str) -> int:
    """0 or 1, fixed by the key's hash: which half of the cases (or patients) a group falls in."""
    return int(hashlib.sha256(key.encode()).hexdigest(), 16) % 2


@dataclass
class GateSet:
    """Every cached film's evidence (covidxr.training.gate_features), one row per film."""
    path: np.ndarray         # path under its folder
    kind: np.ndarray         # "frontal", "lateral", "ct" or "other" (covidxr.gate.KINDS)
    source: np.ndarray       # cxr source; "covidct" or "ieee8023" for ../shared/data/nonchest; "generated"
    group: np.ndarray        # patient (cxr) or case (nonchest): never split
    view: np.ndarray         # the cxr manifest's view ("" elsewhere)
    features: np.ndarray     # the first network's pooled features
    base_refused: np.ndarray # refused by the gate's other rules (everything but KindLook)

    def take(self, mask: np.ndarray) -> "GateSet":
        return GateSet(**{k: v[mask] for k, v in self.__dict__.items()})

    @classmethod
    def join(cls, *sets: "GateSet") -> "GateSet":
        return cls(**{k: np.concatenate([getattr(s, k) for s in sets]) for k in cls.__dataclass_fields__})


def cached_set(cache: Path, data: Path) -> GateSet:
    """../shared/data/cxr or ../shared/data/nonchest (`data`) with its evidence cached in `cache`."""
    from .gate_features import load

    d = load(cache)
    return rows_set(data, [str(p) for p in d["path"]], d["features0"], ~d["gate_is_chest"])


def frontal_sample(data: Path, per_source: int, seed: int = 0) -> list[str]:
    """Up to `per_source` films of each source of ../shared/data/cxr (`data`), one per patient, seeded: the
    frontal films the gate's tests judge (the measurement judges them all)."""
    with open(data / "MANIFEST.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    rng = np.random.default_rng(seed)
    out = []
    for source in sorted({r["source"] for r in rows}):
        first: dict[str, str] = {}
        for r in rows:
            if r["source"] == source:
                first.setdefault(r["patient_id"] or r["path"], r["path"])
        paths = sorted(first.values())
        out += [paths[i] for i in sorted(rng.choice(len(paths), min(per_source, len(paths)), replace=False))]
    return out


def film_set(clf, data: Path, paths: Sequence[str], batch: int = 16) -> GateSet:
    """A GateSet of films of ../shared/data/cxr or ../shared/data/nonchest (`data`), computed now (no cache)."""
    from ..films import read_film
    from .gate_features import evidence

    parts = []
    for i in range(0, len(paths), batch):
        films = [read_film(data / p, name=p) for p in paths[i:i + batch]]
        parts.append(evidence(clf, films))
    e = {k: np.concatenate([p[k] for p in parts]) for k in ("features0", "gate_is_chest")}
    return rows_set(data, list(paths), e["features0"], ~e["gate_is_chest"])


def rows_set(data: Path, paths: list[str], features: np.ndarray, base_refused: np.ndarray) -> GateSet:
    with open(data / "MANIFEST.csv", newline="") as f:
        rows = {r["path"]: r for r in csv.DictReader(f)}
    if "kind" in next(iter(rows.values())):  # nonchest
        kind = ["lateral" if rows[p]["kind"] == "lateral_cxr" else "ct" for p in paths]
        source = [Path(p).name.split("__", 1)[0] for p in paths]
        group = [case_of(p) for p in paths]
        view = [""] * len(paths)
    else:
        kind = ["frontal"] * len(paths)
        source = [rows[p]["source"] for p in paths]
        group = [rows[p]["patient_id"] or p for p in paths]
        view = [rows[p]["view"] for p in paths]
    return GateSet(np.array(paths), np.array(kind), np.array(source), np.array(group), np.array(view),
                   np.asarray(features, np.float64), np.asarray(base_refused, bool))


def generated_set(clf) -> GateSet:
    """The generated non-radiographs of covidxr.training.synthetic.for_fitting, through the shipped gate."""
    from ..films import read_film
    from .gate_features import evidence
    from .synthetic import for_fitting

    items = for_fitting()
    films = [read_film(data, name=name) for name, data in items]
    e = evidence(clf, films)
    n = len(films)
    return GateSet(np.array([f.name for f in films]), np.array(["other"] * n), np.array([GENERATED] * n),
                   np.array([f.name for f in films]), np.array([""] * n), e["features0"].astype(np.float64),
                   ~e["gate_is_chest"])


def turned_set(clf, data: Path, paths: Sequence[str]) -> GateSet:
    """Frontal films of ../shared/data/cxr (`data`) turned by 90/180/270 degrees and inverted, as "frontal": the
    logistic says what the image is, the orientation net how it lies, so that a turned chest film is refused as
    "rotated or inverted", not as "a lateral film". Fitted on only (their patients' half), never judged."""
    from ..films import Film, read_film
    from ..orientation import ORIENTATIONS
    from .gate_features import evidence

    with open(data / "MANIFEST.csv", newline="") as f:
        patient = {r["path"]: r["patient_id"] or r["path"] for r in csv.DictReader(f)}
    films, groups = [], []
    for p in paths:
        film = read_film(data / p, name=p)
        for how, turn in ORIENTATIONS.items():
            pixels = np.ascontiguousarray(turn(film.pixels), dtype=np.float32)
            films.append(Film(pixels, pixels.shape[1], pixels.shape[0], film.format, f"{p} {how}"))
            groups.append(patient[p])
    e = {k: [] for k in ("features0", "gate_is_chest")}
    for i in range(0, len(films), 16):
        part = evidence(clf, films[i:i + 16])
        for k in e:
            e[k].append(part[k])
    n = len(films)
    return GateSet(np.array([f.name for f in films]), np.array(["frontal"] * n), np.array([TURNED] * n), np.array(groups),
                   np.array([""] * n), np.concatenate(e["features0"]).astype(np.float64), ~np.concatenate(e["gate_is_chest"]))


def fitted_only(gs: GateSet) -> np.ndarray:
    """Images that are only ever fitted on, never judged: generated non-radiographs and turned frontal films."""
    return (gs.kind == "other") | (gs.source == TURNED)


def split(gs: GateSet, direction: str) -> tuple[np.ndarray, np.ndarray]:
    """(fitted, judged) masks of one direction of SPLITS; generated images are always fitted on, turned films
    with their patients' half."""
    ct_source, half = SPLITS[direction]
    in_half = np.array([half_of(g) == half for g in gs.group])
    fit = np.where(gs.kind == "ct", gs.source == ct_source, in_half) | (gs.kind == "other")
    return fit, ~fit & ~fitted_only(gs)


def fit_kind_look(features: np.ndarray, kinds: np.ndarray, c: float = KIND_C,
                  threshold: float = KIND_THRESHOLD):
    """A class-balanced multinomial L2 logistic on standardised features, folded back to raw features."""
    from sklearn.linear_model import LogisticRegression

    from ..gate import KINDS, KindLook

    y = np.array([KINDS.index(k) for k in kinds])
    mu, sd = features.mean(0), features.std(0) + 1e-6
    lr = LogisticRegression(C=c, class_weight="balanced", max_iter=3000).fit((features - mu) / sd, y)
    coef = np.zeros((len(KINDS), features.shape[1]))
    icpt = np.full(len(KINDS), -50.0)  # a kind absent from the fit is never predicted
    coef[lr.classes_], icpt[lr.classes_] = lr.coef_, lr.intercept_
    w = coef / sd
    return KindLook(w.T.astype(np.float32), icpt - coef @ (mu / sd), threshold)


def kind_refused(look, features: np.ndarray) -> np.ndarray:
    return 1.0 - look.probabilities(features)[:, 0] > look.threshold


def portable(gs: GateSet) -> np.ndarray:
    """Adult AP films (bedside, ICU): the manifest's AP and AP supine views of hannover-mhh and ieee8023."""
    return np.isin(gs.view, ("AP", "AP supine")) & np.isin(gs.source, ("hannover-mhh", "ieee8023-jul2020"))


def counts(refused: np.ndarray, mask: np.ndarray) -> list[int]:
    return [int(refused[mask].sum()), int(mask.sum())]


def table(gs: GateSet, refused: np.ndarray) -> dict:
    """Refused films per kind and source, of the rows of `gs` (n refused, n)."""
    non = np.isin(gs.kind, ("lateral", "ct"))
    front = gs.kind == "frontal"
    out = {"non_chest": counts(refused, non), "lateral": counts(refused, gs.kind == "lateral")}
    for s in CT_SOURCES:
        m = (gs.kind == "ct") & (gs.source == s)
        if m.any():
            out[f"ct_{s}"] = counts(refused, m)
    out["frontal_flagged"] = counts(refused, front)
    out["frontal_flagged_per_source"] = {s: counts(refused, front & (gs.source == s))
                                         for s in sorted(set(gs.source[front]))}
    out["portable_ap_flagged"] = counts(refused, front & portable(gs))
    out["ap_supine_flagged"] = counts(refused, front & (gs.view == "AP supine"))
    return out


def measure(gs: GateSet, c: float = KIND_C, threshold: float = KIND_THRESHOLD) -> dict:
    """Both directions of SPLITS: each judged set's refusals by the whole gate (its other rules, or KindLook
    fitted on the other set), by KindLook alone and by the other rules alone; and all judged films together."""
    out, everyone = {}, np.zeros(len(gs.path), bool)
    for direction in SPLITS:
        fit, judged = split(gs, direction)
        look = fit_kind_look(gs.features[fit], gs.kind[fit], c, threshold)
        part = gs.take(judged)
        by_kind = kind_refused(look, part.features)
        everyone[judged] = by_kind | part.base_refused
        ct_source, half = SPLITS[direction]
        out[direction] = {
            "fitted_on": f"{ct_source} CT slices, half {half} of the lateral cases and frontal patients, "
                         f"{int((gs.kind[fit] == 'other').sum())} generated non-radiographs, "
                         f"{int((gs.source[fit] == TURNED).sum())} turned or inverted frontal films of that half",
            "gate": table(part, by_kind | part.base_refused),
            "kind_look_alone": table(part, by_kind),
            "other_rules_alone": table(part, part.base_refused)}
    judged_once = ~fitted_only(gs)
    out["both"] = table(gs.take(judged_once), everyone[judged_once])
    return out


def validation_films(data: Path) -> set[str]:
    """The frontal films `python -m covidxr train` held out (its patient-grouped validation split): the shipped
    image-kind logistic is not fitted on them either, so they measure it."""
    from .data import load_manifest, patient_split

    records = load_manifest(data)
    return {r.path for r, held_out in zip(records, patient_split(records)) if held_out}


def shipped_look(gs: GateSet, held_out: set[str]):
    """The shipped logistic: fitted on every image but the held-out frontal films; and its table on them."""
    out = (gs.kind == "frontal") & np.isin(gs.path, sorted(held_out))
    look = fit_kind_look(gs.features[~out], gs.kind[~out])
    part = gs.take(out)
    return look, table(part, kind_refused(look, part.features) | part.base_refused)


def measured_words(m: dict) -> str:
    """The held-out measurement in one paragraph, for the card's gate rule."""
    def share(c: list[int]) -> str:
        return f"{c[0]} of {c[1]} ({100.0 * c[0] / max(c[1], 1):.1f}%)"

    both, a, b, v = m["both"], m["A"]["gate"], m["B"]["gate"], m["shipped_on_validation_films"]
    worst = max(both["frontal_flagged_per_source"].items(), key=lambda kv: kv[1][0] / max(kv[1][1], 1))
    return ("Measured on images the gate was not fitted on (issue 26; ../shared/data/nonchest split by source: direction A "
            "fitted on COVID-CT's slices, half of the lateral cases and half of the frontal patients and judged on "
            "the ieee8023 CT slices, the other laterals and the other frontal patients; direction B the other way "
            f"round): non-chest images refused {share(a['non_chest'])} in A and {share(b['non_chest'])} in B, "
            f"{share(both['non_chest'])} in all; lateral films {share(both['lateral'])}; CT slices "
            f"{share(both['ct_ieee8023'])} (ieee8023) and {share(both['ct_covidct'])} (COVID-CT); real frontal films "
            f"flagged {share(both['frontal_flagged'])} of ../shared/data/cxr (at most {share(worst[1])} in one source, "
            f"{worst[0]}), adult AP/bedside films {share(both['portable_ap_flagged'])}; the shipped logistic, fitted "
            f"on all but the training command's validation films, flagged {share(v['frontal_flagged'])} of those. "
            "Per kind and source: ood.kind.measured; scripts/ood_report.py --held-out prints it")


def kind_main(argv: list[str]) -> int:
    from ..card import ModelCard
    from ..classifier import Classifier
    from ..gate import KIND_FILE

    ap = argparse.ArgumentParser(description="fit and measure the gate's image-kind logistic (ood.kind)")
    ap.add_argument("--cache", type=Path, default=Path("artifacts/gate_features"),
                    help="covidxr.training.gate_features' output: <cache>/cxr and <cache>/nonchest")
    ap.add_argument("--shared", type=Path, default=Path("../shared/data"))
    ap.add_argument("--out", type=Path, default=Path("weights"))
    ap.add_argument("--dry-run", action="store_true", help="measure only; write nothing")
    a = ap.parse_args(argv)
    clf = Classifier.from_dir(a.out)
    held_out = validation_films(a.shared / "cxr")
    to_turn = [p for p in frontal_sample(a.shared / "cxr", 10_000, seed=1) if p not in held_out]
    by_source: dict[str, list[str]] = {}
    for p in to_turn:
        by_source.setdefault(p.split("/", 1)[0], []).append(p)
    gs = GateSet.join(cached_set(a.cache / "cxr", a.shared / "cxr"), cached_set(a.cache / "nonchest", a.shared / "nonchest"),
                      generated_set(clf),
                      turned_set(clf, a.shared / "cxr", [p for ps in by_source.values() for p in ps[:TURNED_PER_SOURCE]]))
    measured = measure(gs)
    look, on_validation = shipped_look(gs, held_out)
    measured["shipped_on_validation_films"] = on_validation
    print(json.dumps(measured, indent=1))
    if a.dry_run:
        return 0
    name, sha = look.save(a.out, KIND_FILE)
    card = ModelCard.load(a.out)
    fitted = ~((gs.kind == "frontal") & np.isin(gs.path, sorted(held_out)))
    card.ood["rule"] = clf.ood.gate_rule(clf.gate_rules, look) + ". " + measured_words(measured)
    card.ood["kind"] = {"file": name, "sha256": sha, "threshold": look.threshold, "c": KIND_C,
                        "fitted_on": {**{k: int((gs.kind[fitted] == k).sum()) for k in ("frontal", "lateral", "ct", "other")},
                                      "of_them_turned_frontal": int((gs.source[fitted] == TURNED).sum())},
                        "measured": measured}
    card.save(a.out)
    print(f"wrote {a.out / name} and the card's ood.kind", file=sys.stderr)
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["kind"]:
        return kind_main(argv[1:])
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
