"""Measure site profiles honestly, on the two held-out sources that hold both classes.

For each such source of the leave-one-source-out folds (ieee8023-jul2020, the Kaggle copy), the fold model
(both networks of the shipped recipe at the fold length, trained without that source, calibrated like the
shipped model on its own validation films) scores the source's films. The source's patients are split in two
halves: a profile is fitted on one half and tested on the other, then the other way round. Reported: AUC,
sensitivity and specificity of the fold model with and without the profile (and of each candidate method),
films per class and 95% CIs; then the gain against the site set's size (8, 16, 32, 64 films per class,
several random draws).

    python scripts/site_measure.py prepare [--work .cache/train]    # segmenter, caches, fold networks, features
    python scripts/site_measure.py measure [--json out.json] [--card]  # the table (--card: into the model card)
    python scripts/site_measure.py adabn [--json adabn.json]            # AdaBN on the fold models, for comparison
    python scripts/site_measure.py card --json out.json [--adabn-json a.json] [--compare-json c.json] [--note TEXT]  # into the card
    python scripts/site_measure.py compare t080.json t085.json t090.json [--json cmp.json]  # targets side by side

`prepare` checkpoints and resumes (the fold networks are the training's `loso_<source>` runs, so
`python -m covidxr train` reuses them); its outputs live in `<work>/site/`.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]

HELD_OUT = ("ieee8023-jul2020", "kaggle-radiography-db-224px")  # the LOSO sources with both classes


def log(*a) -> None:
    print(time.strftime("%H:%M:%S"), *a, flush=True)


def prepare(data: Path, work: Path, sources: tuple[str, ...] = HELD_OUT, n_networks: int = 2) -> None:
    """The fold networks of each held-out source and, per fold, what the measurement needs: every network's
    pooled features and logits of the held-out films and of the fold's validation films."""
    from covidxr.classifier import as_stored, join_state
    from covidxr.training.cache import build_cache
    from covidxr.training.data import load_manifest, patient_split
    from covidxr.training.experiments import FINAL, fold_recipe, network_recipes
    from covidxr.training.loop import fit, infer
    from covidxr.training.segmenter import train_lungs

    work.mkdir(parents=True, exist_ok=True)
    (work / "site").mkdir(exist_ok=True)
    records = load_manifest(data)
    val = patient_split(records)
    log("lung segmenter")
    lungnet, _ = train_lungs(data.parent / "lungs", data, work, FINAL.lung_size)
    caches = {}
    for r in network_recipes(FINAL)[:n_networks]:
        log("cache", r.variant)
        caches[r.variant] = build_cache(records, data, lungnet, work, r)
    src = caches[FINAL.variant].sources
    for s in sources:
        out = work / "site" / f"fold_{s}.npz"
        if out.exists():
            continue
        held = src == s
        train_idx = np.flatnonzero(~held & ~val)
        val_idx = np.flatnonzero(~held & val)
        test_idx = np.flatnonzero(held)
        arrays: dict[str, np.ndarray] = {}
        nets = []
        for i, r in enumerate(network_recipes(fold_recipe(f"loso_{s}", FINAL))[:n_networks]):
            log("fold", r.name)
            cache = caches[r.variant]
            net = as_stored(fit(cache, train_idx, r, work))  # resumes; returns at once when done
            nets.append(net)
            for part, idx in (("test", test_idx), ("val", val_idx)):
                logits, feats = infer(net, cache, idx, r)
                arrays[f"{part}_logits{i}"] = logits
                arrays[f"{part}_features{i}"] = feats
            arrays[f"weight{i}"] = net.head.weight.detach().numpy()
            arrays[f"bias{i}"] = net.head.bias.detach().numpy()
        cache = caches[FINAL.variant]
        arrays.update(test_cls=cache.cls[test_idx], val_cls=cache.cls[val_idx], test_index=test_idx,
                      test_patient=np.array([records[i].patient for i in test_idx]))
        arrays["n_networks"] = np.array([len(nets)])
        torch.save(join_state(nets, lungnet), work / "site" / f"fold_{s}_model.pt")
        np.savez(out, **arrays)
        log("saved", out)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("what", choices=("prepare", "measure", "adabn", "card", "compare"))
    ap.add_argument("tables", nargs="*", help="compare: measured tables (measure --target S --json FILE)")
    ap.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "cxr"))
    ap.add_argument("--work", default=str(ROOT / ".cache" / "train"))
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--sources", default=",".join(HELD_OUT), help="prepare: the held-out sources")
    ap.add_argument("--networks", type=int, default=2, help="prepare: the first N networks of the ensemble (default both)")
    ap.add_argument("--json", help="write the measured table here")
    ap.add_argument("--card", action="store_true", help="write it into weights/model_card.json (metrics.site_adaptation)")
    ap.add_argument("--draws", type=int, default=10, help="random site sets per size (8, 16, 32, 64 films per class)")
    ap.add_argument("--adabn-json", help="card: AdaBN's results (from `adabn --json`) to add")
    ap.add_argument("--compare-json", help="card: the targets compared (from `compare --json`) to add")
    ap.add_argument("--note", help="card: a note to keep with the table (what was and was not measured)")
    ap.add_argument("--max-fit", type=int, default=200, help="films per class a profile is fitted on, at most")
    ap.add_argument("--adabn", action="store_true", help="also measure AdaBN (re-estimated BatchNorm statistics)")
    ap.add_argument("--rules", default=None, help="measure: operating-point rules, comma-separated (default: all)")
    ap.add_argument("--target", type=float, default=None, help="measure: the target sensitivity (default: site fit's)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if args.what == "prepare":
        prepare(Path(args.data), Path(args.work), tuple(args.sources.split(",")), args.networks)
        return 0
    if args.what == "card":  # a measured table (--json) into the model card, with AdaBN's (--adabn-json) if given
        result = json.loads(Path(args.json).read_text())
        if args.adabn_json:
            for src, r in json.loads(Path(args.adabn_json).read_text()).items():
                if src in result["folds"]:
                    result["folds"][src]["adabn"] = r
        if args.compare_json:
            result["by_target"] = json.loads(Path(args.compare_json).read_text())
        if args.note:
            result["note"] = args.note
        write_card(result)
        return 0
    if args.what == "compare":  # several measured tables, one per target sensitivity
        res = compare([json.loads(Path(t).read_text()) for t in args.tables])
        print(json.dumps(res, indent=1))
        if args.json:
            Path(args.json).write_text(json.dumps(res, indent=1) + "\n")
        return 0
    if args.what == "adabn":
        res = {s: adabn(Path(args.work), Path(args.data), s) for s in HELD_OUT
               if (Path(args.work) / "site" / f"fold_{s}.npz").exists()}
        print(json.dumps(res, indent=1))
        if args.json:
            Path(args.json).write_text(json.dumps(res, indent=1) + "\n")
        return 0
    return measure(Path(args.work), args)


SIZES = (8, 16, 32, 64)


class FoldCard:
    """What a profile needs of its base model's card, for a fold model."""

    positive_class, positive_index = "covid", 0
    class_names = ("covid", "normal", "pneumonia")

    def __init__(self, temperature: float, threshold: float, sha256: str, rule: str):
        self.temperature, self.threshold, self.weights_sha256, self.threshold_rule = temperature, threshold, sha256, rule


def fold_model(work: Path, s: str):
    """The fold's site data (every held-out film: mean logits, first network's features, truth, patients) and
    its card: temperature and threshold fitted like the shipped model's, on the fold's validation films."""
    from covidxr.card import ModelCard, sha256_file
    from covidxr.classifier import DEFAULT_WEIGHTS
    from covidxr.metrics import choose_threshold
    from covidxr.site import SiteData, min_sensitivity
    from covidxr.training.loop import fit_temperature, positive_probability

    z = np.load(work / "site" / f"fold_{s}.npz")
    n_nets = sum(1 for k in z.files if k.startswith("weight"))
    val_logits = np.mean([z[f"val_logits{i}"] for i in range(n_nets)], 0)
    shipped = ModelCard.load(DEFAULT_WEIGHTS)
    ms = min_sensitivity(shipped)
    t = fit_temperature(val_logits, z["val_cls"])
    thr = choose_threshold(z["val_cls"] == 0, positive_probability(val_logits, t), ms)
    card = FoldCard(t, thr, sha256_file(work / "site" / f"fold_{s}_model.pt"), shipped.threshold_rule)
    card.n_networks = n_nets
    data = SiteData(np.mean([z[f"test_logits{i}"] for i in range(n_nets)], 0), z["test_features0"], z["test_cls"] == 0,
                    z["test_patient"])
    return data, card


def halves(data, seed: int = 0) -> list[np.ndarray]:
    """Two halves of the source's patients (each patient's films on one side), both classes in each."""
    from covidxr.site import cv_folds

    return cv_folds(data.y, data.groups, 2, seed)


def scored(data, card, profile=None) -> np.ndarray:
    """Each film's probability, by the fold model or by a profile on top of it (no re-centring: one model
    scores all of a half's films, so its ranking is kept)."""
    from scipy.special import expit

    from covidxr.site import base_logodds

    if profile is None:
        return expit(base_logodds(data.logits, card.temperature, card.positive_index))
    return profile.probability(data.logits, data.features, card.temperature, card.positive_index)


def row(y: np.ndarray, s: np.ndarray, threshold: float = 0.5) -> dict:
    """AUC, and sensitivity and specificity at `threshold` (the scoring model's own), with 95% CIs."""
    from covidxr.site import figures

    f = figures(y, s, threshold, n_boot=1000)
    return {k: (None if f[k] is None else round(f[k], 4)) for k in ("auc", "sensitivity", "specificity")} | {
        "ci": {k: [None if v is None else round(v, 4) for v in (f["ci"][k] or [None, None])]
               for k in ("auc", "sensitivity", "specificity")}}


def cap(idx: np.ndarray, y: np.ndarray, n: int, rng) -> np.ndarray:
    """At most n films per class of idx, drawn at random (a hospital's labelled set, not a whole collection)."""
    out = [c if len(c) <= n else rng.choice(c, n, replace=False) for c in (idx[y[idx]], idx[~y[idx]])]
    return np.sort(np.concatenate(out))


def judged(test_set, card, prof) -> dict:
    """The fold model at its threshold and the profile at its own, on a test set: probabilities and decisions."""
    ps, pa = scored(test_set, card), scored(test_set, card, prof)
    return {"shipped": (ps, ps >= card.threshold), "adapted": (pa, pa >= prof.threshold)}


def pooled(y: np.ndarray, parts: list[dict], what: str, n_boot: int = 0) -> dict:
    """Two halves, each scored by its own model: AUC per half (a ranking is never pooled across models) and
    their mean; sensitivity and specificity of the pooled decisions, each at its own model's threshold, with
    Wilson 95% CIs. With `n_boot`, the AUC is the one over the pairs of films that share a half (each pair
    ranked by one model; covidxr.site.within_fold_auc) with its bootstrap 95% CI."""
    from covidxr.metrics import auc
    from covidxr.site import rates, within_fold_auc

    aucs = [auc(yy, part[what][0]) for yy, part in zip(y, parts)]
    r = rates(np.concatenate(y), np.concatenate([part[what][1] for part in parts]))
    out = {"auc": round(float(np.mean(aucs)), 4), "auc_per_half": [round(v, 4) for v in aucs],
           "sensitivity": r["sensitivity"], "specificity": r["specificity"], "ci": dict(r["ci"]),
           "flagged_per_100": r["flagged_per_100"]}
    if n_boot:
        ends = np.cumsum([0] + [len(yy) for yy in y])
        a, ci = within_fold_auc(np.concatenate(y), np.concatenate([part[what][0] for part in parts]),
                                [np.arange(lo, hi) for lo, hi in zip(ends, ends[1:])], n_boot)
        out["auc"], out["ci"]["auc"] = round(float(a), 4), [round(float(v), 4) for v in ci]
    return out


def meets(adapted: dict, shipped: dict) -> bool:
    """Issue 25's target at the profile's own threshold: sensitivity >= 0.80 and specificity >= the fold
    model's + 0.10, with AUC >= 0.85."""
    return bool(adapted["sensitivity"] >= 0.80 and adapted["specificity"] >= shipped["specificity"] + 0.10
                and adapted["auc"] >= 0.85)


def fitted_by_rule(fit_set, card, name: str, rules: tuple[str, ...], target: float, n_boot: int) -> dict:
    """{rule: profile}: one profile fitted (its method chosen by nested cross-validation), its threshold at
    `target` read by each rule on the same inner out-of-fold scores (what fit_profile does for its own rule)."""

    from covidxr.site import METHODS, base_logodds, fit_profile, inner_logodds, thresholds

    prof = fit_profile(fit_set, card, name, n_boot=n_boot, rule=rules[0], target=target)
    z = base_logodds(fit_set.logits, card.temperature, card.positive_index)
    adapter, s = inner_logodds(z, fit_set, METHODS[prof.method])
    return {r: replace(prof, rule=r, threshold=thresholds(adapter, fit_set.y, s, r, (target,), card.threshold)[target])
            for r in rules}


def measure_source(work: Path, s: str, draws: int, max_fit: int = 200, rules: tuple[str, ...] | None = None,
                   target: float | None = None) -> dict:
    """Per operating-point rule: a profile fitted on one half of the source's patients (its threshold read at
    `target` inside that half), judged on the other half at its own threshold, both ways; then the same with
    n films per class drawn from one half (SIZES, `draws` draws)."""
    from covidxr.site import DEFAULT_TARGET, RULES

    rules, target = rules or RULES, target or DEFAULT_TARGET
    data, card = fold_model(work, s)
    parts = halves(data)
    log(s, "films", len(data.y), "covid", int(data.y.sum()))
    rng = np.random.default_rng(1)
    directions = [(parts[0], parts[1]), (parts[1], parts[0])]
    capped = [cap(f, data.y, max_fit, rng) for f, _ in directions]
    out = {"films": {"covid": int(data.y.sum()), "non-covid": int((~data.y).sum())},
           "patients": int(len(set(data.groups))), "fold_networks": card.n_networks,
           "fold_threshold": round(card.threshold, 4), "fold_temperature": round(card.temperature, 3),
           "films_fitted_per_half": [{"covid": int(data.y[f].sum()), "non-covid": int((~data.y[f]).sum())}
                                     for f in capped], "max_fit_per_class": max_fit, "target_sensitivity": target,
           "halves": {}, "by_site_size": {}}
    ys = [data.y[t] for _, t in directions]
    got = {r: [] for r in rules}
    for k, (fit_idx, (_, test_idx)) in enumerate(zip(capped, directions)):
        for r, prof in fitted_by_rule(data.subset(fit_idx), card, f"{s}_half{k}", rules, target, 50).items():
            got[r].append(judged(data.subset(test_idx), card, prof) | {"method": prof.method})
    for rule in rules:
        res = {"fold_model": pooled(ys, got[rule], "shipped", 1000),
               "with_profile": pooled(ys, got[rule], "adapted", 1000),
               "methods_chosen": [g["method"] for g in got[rule]]}
        res["target_met"] = meets(res["with_profile"], res["fold_model"])
        out["halves"][rule] = res
        log(s, "halves", rule, res["with_profile"], res["target_met"])
    for n in SIZES:
        cells: dict[str, list] = {r: [] for r in ("fold_model", *rules)}
        for d in range(draws):
            fit_idx, test_idx = directions[d % 2]
            pos, neg = fit_idx[data.y[fit_idx]], fit_idx[~data.y[fit_idx]]
            if min(len(pos), len(neg)) < n:
                continue
            pick = np.r_[rng.choice(pos, n, replace=False), rng.choice(neg, n, replace=False)]
            test_set = data.subset(test_idx)
            for rule, prof in fitted_by_rule(data.subset(pick), card, f"{s}_{n}_{d}", rules, target, 20).items():
                j = judged(test_set, card, prof)
                cells[rule].append(pooled([test_set.y], [j], "adapted"))
            cells["fold_model"].append(pooled([test_set.y], [j], "shipped"))
        if cells["fold_model"]:
            mean = {r: {k: round(float(np.mean([c[k] for c in v])), 4) for k in ("auc", "sensitivity", "specificity")}
                    for r, v in cells.items()}
            for r in rules:
                mean[r]["sd"] = {k: round(float(np.std([c[k] for c in cells[r]])), 4)
                                 for k in ("auc", "sensitivity", "specificity")}
                mean[r]["target_met"] = meets(mean[r], mean["fold_model"])
            out["by_site_size"][str(n)] = {"draws": len(cells["fold_model"]), **mean}
        log(s, "size", n, out["by_site_size"].get(str(n)))
    return out


def choose_rule(folds: dict) -> dict:
    """The operating-point rule chosen by these measurements: the most cells (fold x site size, and the
    halves) meeting the target, then the highest mean Youden's J on the films the profiles never saw."""
    score = {}
    for rule in next(iter(folds.values()))["halves"]:
        cells = [f["halves"][rule]["with_profile"] | {"met": f["halves"][rule]["target_met"]} for f in folds.values()]
        cells += [c[rule] | {"met": c[rule]["target_met"]} for f in folds.values() for c in f["by_site_size"].values()]
        score[rule] = {"cells_met": sum(c["met"] for c in cells), "cells": len(cells),
                       "mean_youden": round(float(np.mean([c["sensitivity"] + c["specificity"] - 1 for c in cells])), 4)}
    best = max(score, key=lambda r: (score[r]["cells_met"], score[r]["mean_youden"]))
    return {"chosen": best, "by_rule": score}


def operating_point_held(adapted: dict, shipped: dict) -> bool:
    """The operating-point half of issue 25's target, which a rule and a target sensitivity decide (the AUC
    half is the ranking's, the same for every rule): sensitivity >= 0.80 and specificity >= the fold model's
    + 0.10, at the profile's own threshold on films it never saw."""
    return bool(adapted["sensitivity"] >= 0.80 and adapted["specificity"] >= shipped["specificity"] + 0.10)


def compare(results: list[dict]) -> dict:
    """Measured tables at several target sensitivities (`measure --target S --json`), side by side: per target
    and rule, the cells (both folds' halves and every site size) whose operating point held, those meeting the
    whole target, the mean sensitivity and specificity at the profile's own threshold, and the worst cell's
    sensitivity. What chose DEFAULT_TARGET and RULE (docs/site-profiles.md)."""
    out = {}
    for res in results:
        first = next(iter(res["folds"].values()))
        t = str(first["target_sensitivity"])
        for rule in first["halves"]:
            cells = []
            for f in res["folds"].values():
                h = f["halves"][rule]
                cells.append((h["with_profile"], h["fold_model"], h["target_met"]))
                cells += [(c[rule], c["fold_model"], c[rule]["target_met"]) for c in f["by_site_size"].values()]
            out.setdefault(t, {})[rule] = {
                "cells": len(cells), "operating_point_held": sum(operating_point_held(a, b) for a, b, _ in cells),
                "target_met": sum(bool(m) for _, _, m in cells),
                "mean_sensitivity": round(float(np.mean([a["sensitivity"] for a, _, _ in cells])), 4),
                "min_sensitivity": round(float(np.min([a["sensitivity"] for a, _, _ in cells])), 4),
                "mean_specificity_gain": round(float(np.mean([a["specificity"] - b["specificity"]
                                                              for a, b, _ in cells])), 4)}
    return out


def adabn(work: Path, data_dir: Path, s: str, n_stats: int = 256, n_test: int = 400) -> dict:
    """AdaBN on the fold model: every BatchNorm's statistics re-estimated on films of one half of the source
    (unlabelled), then the other half scored; against the fold model on the same films. Needs the networks
    before BatchNorm is folded (the fold's model.pt holds them so)."""
    from covidxr.classifier import split_state
    from covidxr.metrics import auc
    from covidxr.training.cache import build_cache
    from covidxr.training.data import load_manifest
    from covidxr.training.experiments import FINAL, fold_recipe, network_recipes
    from covidxr.training.loop import infer, positive_probability

    data, card = fold_model(work, s)
    z = np.load(work / "site" / f"fold_{s}.npz")
    index = z["test_index"]
    parts = halves(data)
    rng = np.random.default_rng(2)
    stats_pos = rng.choice(parts[0], min(n_stats, len(parts[0])), replace=False)
    test_pos = np.sort(rng.choice(parts[1], min(n_test, len(parts[1])), replace=False))
    records = load_manifest(data_dir)
    n_nets = sum(1 for k in z.files if k.startswith("weight"))
    nets, _ = split_state(torch.load(work / "site" / f"fold_{s}_model.pt", map_location="cpu", weights_only=True), n_nets, 3)
    base, adapted = [], []
    for i, (net, r) in enumerate(zip(nets, network_recipes(fold_recipe(f"loso_{s}", FINAL)))):
        cache = build_cache(records, data_dir, None, work, r)  # exists: loaded, the segmenter is not needed
        base.append(infer(net.eval(), cache, index[test_pos], r)[0])
        for m in net.modules():
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                m.reset_running_stats()
                m.momentum = None  # a cumulative average over the site's films
                m.train()
        with torch.no_grad():
            from covidxr.training.cache import network_batch, to_batch
            for k in range(0, len(stats_pos), 32):
                net.features(network_batch(to_batch(cache, index[stats_pos[k:k + 32]]), r))
        adapted.append(infer(net.eval(), cache, index[test_pos], r)[0])
        log(s, "adabn network", i)
    y = data.y[test_pos]
    a0 = auc(y, positive_probability(np.mean(base, 0), card.temperature))
    a1 = auc(y, positive_probability(np.mean(adapted, 0), card.temperature))
    return {"films_for_statistics": int(len(stats_pos)), "films_scored": int(len(test_pos)),
            "fold_model_auc": round(a0, 4), "adabn_auc": round(a1, 4), "auc_gain": round(a1 - a0, 4)}


def measure(work: Path, args) -> int:
    t0 = time.time()
    folds = {}
    for s in HELD_OUT:
        if not (work / "site" / f"fold_{s}.npz").exists():
            log(s, "no fold model yet (run `prepare`): skipped")
            continue
        folds[s] = measure_source(work, s, args.draws, args.max_fit,
                                  tuple(args.rules.split(",")) if args.rules else None, args.target)
        if args.adabn:
            folds[s]["adabn"] = adabn(work, Path(args.data), s)
            log(s, "adabn", folds[s]["adabn"])
    result = {
        "what": "each held-out source of the leave-one-source-out folds with both classes: the fold model (the "
                "shipped recipe's first fold_networks networks at the fold length, trained without the source, "
                "calibrated on its own validation films) scores the source's films; the source's patients are split "
                "in two halves, a site profile is fitted on one (its threshold read at the target sensitivity inside "
                "that half, by nested cross-validation) and judged on the other at its own threshold, then the other "
                "way round; AUC over the pairs of films that share a half with a bootstrap 95% CI (each half's AUC "
                "beside it), sensitivity and specificity of the pooled decisions with Wilson 95% CIs; then n films "
                "per class drawn from one half, judged on the other (means over draws)",
        "script": "scripts/site_measure.py",
        "target": "at the profile's own threshold: sensitivity >= 0.80 and specificity >= the fold model's + 0.10, "
                  "with AUC >= 0.85",
        "folds": folds, "rule": choose_rule(folds) if folds else None, "seconds": round(time.time() - t0)}
    text = json.dumps(result, indent=1)
    print(text)
    if args.json:
        Path(args.json).write_text(text + "\n")
    if args.card:
        write_card(result)
    return 0


def write_card(result: dict) -> None:
    """Only metrics.site_adaptation; the file is re-read right before it is written."""
    path = ROOT / "weights" / "model_card.json"
    card = json.loads(path.read_text())
    card["metrics"]["site_adaptation"] = result
    path.write_text(json.dumps(card, indent=2, ensure_ascii=False) + "\n")


if __name__ == "__main__":
    sys.exit(main())
