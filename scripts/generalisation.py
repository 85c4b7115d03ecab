"""Does the model generalise beyond its training hospitals, and does it look at the lungs?

Prints the model card's leave-one-source-out and ablation tables, then measures on films it never
trained on (the patient-grouped validation split that `covidxr train` held out) the share of
Grad-CAM mass inside the human-drawn lung masks of ../shared/data/lungs.

    python scripts/generalisation.py [--weights weights] [--data ../shared/data/cxr] [--json OUT]
"""
from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]

from covidxr import Classifier, ModelCard, load, read_film
from covidxr.explain import explain, lung_mass
from covidxr.training.data import load_manifest, patient_split
from covidxr.training.experiments import KAGGLE, POOLS, RECIPE_NETWORKS, SPLITS
from covidxr.training.segmenter import lung_val_split


def fmt(v, ci=None) -> str:
    if v is None:
        return "-"
    return f"{v:.3f}" + (f" ({ci[0]:.3f}-{ci[1]:.3f})" if ci and ci[0] is not None else "")


def cell(r: dict, k: str) -> str:
    """Metric `k` of a card report with its 95% CI, as the tables print it."""
    return fmt(r[k], (r.get("ci") or {}).get(k))


def one_number(member: dict, row: dict) -> float | None:
    """A network's fold in one number: its AUC, or the one rate a single-class source has."""
    if row["n_pos"] and row["n_neg"]:
        return member["auc"]
    return member["sensitivity"] if row["n_pos"] else member["specificity"]


def summary(r: dict) -> str:
    return ", ".join(f"{k} {cell(r, k)}" for k in ("auc", "sensitivity", "specificity"))


def full_length(r: dict, what: str) -> str:
    return (f"The final recipe at full length, {what}, Kaggle held out (best step {r['best_step']}, validation AUC "
            f"{fmt(r['val_auc'])}): {summary(r)}")


def tables(card: ModelCard) -> list[str]:
    m = card.metrics
    out = ["Leave-one-source-out (train without the source, score all of its films):", "",
           "| held-out source | films (covid/other) | sensitivity (95% CI) | specificity (95% CI) | AUC (95% CI) |",
           "|---|---|---|---|---|"]
    for r in m.get("leave_one_source_out", []):
        out.append(f"| {r['held_out']} | {r['n']} ({r['n_pos']}/{r['n_neg']}) | {cell(r, 'sensitivity')} | "
                   f"{cell(r, 'specificity')} | {cell(r, 'auc')} |")
    networks = [r for r in m.get("leave_one_source_out", []) if len(r.get("members") or []) > 1]
    if networks:
        names = [n["variant"] for n in networks[0]["members"]]
        out += ["", "Each network of the ensemble alone on the same folds (AUC, or the one rate a single-class source has):", "",
                "| held-out source | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
        for r in networks:
            out.append(f"| {r['held_out']} | " + " | ".join(fmt(one_number(n, r)) for n in r["members"]) + " |")
    shipped = " + ".join(RECIPE_NETWORKS.values())
    for split, what in SPLITS.items():
        rows = [r for r in m.get("ablations", []) if r.get("split", "kaggle_only") == split]
        if split == "without_kaggle":  # the shipped recipe on this split is the Kaggle LOSO fold
            rows = [{"name": f"{shipped} (shipped; = the Kaggle LOSO fold)", "imagenet": True, **r}
                    for r in m.get("leave_one_source_out", []) if r["held_out"] == KAGGLE] + rows
        elif m.get("kaggle_only_to_other_sources"):
            r = m["kaggle_only_to_other_sources"]
            rows = [{**r, **r["test"], "name": f"{shipped} (shipped)", "imagenet": True}] + rows
        if not rows:
            continue
        out += ["", f"Ablations, {what}:", "",
                "| variant | ImageNet init | fold's validation AUC | held-out AUC (95% CI) | sensitivity | specificity |",
                "|---|---|---|---|---|---|"]
        for r in rows:
            out.append(f"| {r['name']} | {'yes' if r['imagenet'] else 'no (scratch)'} | {fmt(r.get('val_auc'))} | "
                       f"{cell(r, 'auc')} | {cell(r, 'sensitivity')} | {cell(r, 'specificity')} |")
    pooled = m.get("leave_one_source_out_pooled") or {}
    for part, what in POOLS.items():
        if pooled.get(part):
            out += ["", f"Pooled, {what}: every film scored by the LOSO model that never saw its source "
                        f"({pooled[part]['n']} films, each fold at its own threshold): {summary(pooled[part])}"]
    adv = m.get("source_adversary") or {}
    if adv.get("per_source"):
        out += ["", f"Source adversary (gradient reversal, weight {adv['weight']}), leave-one-source-out, with / without:", "",
                "| held-out source | sensitivity | specificity | AUC (95% CI) |", "|---|---|---|---|"]
        for r in adv["per_source"]:
            out.append(f"| {r['held_out']} | " + " | ".join(f"{cell(r['with'], k)} / {cell(r['without'], k)}"
                                                            for k in ("sensitivity", "specificity", "auc")) + " |")
        for part, what in POOLS.items():
            for side in ("with", "without"):
                r = (adv.get(f"pooled_{side}") or {}).get(part)
                if r:
                    out.append(f"\nPooled, {what}, {side} the adversary: {summary(r)}")
        if adv.get("full_length_without_kaggle_with"):
            out.append(f"\n{full_length(adv['full_length_without_kaggle_with'], 'with the adversary')}")
    if m.get("shipped_recipe_without_kaggle"):
        out += ["", full_length(m["shipped_recipe_without_kaggle"], "as shipped")]
    return out


def lung_attention(clf: Classifier, data: Path, lungs: Path) -> dict:
    records = load_manifest(data)
    val = {r.path for r, v in zip(records, patient_split(records)) if v}
    with open(lungs / "MANIFEST.csv", newline="") as f:
        every = list(csv.DictReader(f))
    unseen_mask = {r["film"] for r, v in zip(every, lung_val_split(len(every))) if v}
    rows = [r for r in every if r["film"] in val and r["label"] == clf.card.positive_class]
    masked, raw, fresh, empty = [], [], [], 0
    for r in rows:
        film = read_film(data / r["film"])
        mask = np.asarray(read_film(lungs / r["mask"]).pixels) > 0.5
        for keep, store in ((True, masked), (False, raw)):
            v = lung_mass(explain(clf, film, masked=keep).heatmap, mask)
            empty += keep and not np.isfinite(v)
            if np.isfinite(v):
                store.append(v)
                if keep and r["film"] in unseen_mask:
                    fresh.append(v)
    return {"n_films": len(rows), "mean_lung_mass": float(np.mean(masked)) if masked else None,
            "n_empty_maps": int(empty),  # no positive evidence anywhere: no mass to place, left out of the means
            "mean_lung_mass_empty_as_zero": float(np.sum(masked) / len(rows)) if rows else None,
            "mean_lung_mass_unmasked": float(np.mean(raw)) if raw else None,
            "films": "validation-split COVID-19 films with human lung masks (never used to train the classifier)",
            "n_films_mask_unseen": len(fresh), "mean_lung_mass_mask_unseen": float(np.mean(fresh)) if fresh else None,
            "mask_unseen": "the subset whose masks the lung segmenter did not train on either (its own 12% hold-out)"}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--weights", default=str(ROOT / "weights"))
    ap.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "cxr"))
    ap.add_argument("--lungs", default=None)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    clf = load(args.weights)
    print("\n".join(tables(clf.card)))
    data = Path(args.data)
    att = lung_attention(clf, data, Path(args.lungs) if args.lungs else data.parent / "lungs")
    print(f"\nGrad-CAM mass inside the lung masks, {att['n_films']} {att['films']}: "
          f"{fmt(att['mean_lung_mass'])} (heatmap as shipped), {fmt(att['mean_lung_mass_unmasked'])} (before the lung mask); "
          f"{fmt(att['mean_lung_mass_mask_unseen'])} on the {att['n_films_mask_unseen']} of them whose masks the "
          f"segmenter never saw either. {att['n_empty_maps']} of the {att['n_films']} maps are empty (no positive "
          f"evidence) and are left out of those means; counting them as 0: {fmt(att['mean_lung_mass_empty_as_zero'])}")
    if args.json:
        Path(args.json).write_text(json.dumps({"card_metrics": clf.card.metrics, "lung_attention": att}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
