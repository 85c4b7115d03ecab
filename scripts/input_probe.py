"""Probe a candidate input before a full training run: held-out AUC on both splits, and whether its Grad-CAM
stays on the lungs.

A short model (not the shipped recipe) is trained on the candidate input, on the same patient-grouped training
split as the shipped model, then scored on its validation films, and its heatmaps are measured against the human
lung masks of the validation COVID-19 films, as `generalisation.py` does for the shipped model. The probe's
heatmaps come from a one-network model whose card names the input it was trained on, so `explain` prepares
each film as its training cache did; the lung mass is the map as the model saw its input, masked by the lung
mask only when the input was blanked outside it. The two held-out splits are the card's ablation splits
(120-step folds).

    python scripts/input_probe.py --variant crop [--attention 3] [--dilation 0.025] [--steps 300] [--splits] [--work .cache/train]
"""
from __future__ import annotations

import argparse
import json
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]

import generalisation  # this script's own folder, first on its sys.path
from covidxr.card import ModelCard, Network
from covidxr.classifier import DEFAULT_WEIGHTS, Classifier
from covidxr.metrics import auc
from covidxr.model import CovidNet, LungNet
from covidxr.training.cache import build_cache
from covidxr.training.data import load_manifest, patient_split
from covidxr.training.experiments import FINAL, KAGGLE, SPLITS, fold_recipe, run_fold
from covidxr.training.loop import fit, infer, positive_probability
from covidxr.training.recipe import VIEWS, Recipe
from covidxr.training.segmenter import train_lungs


def probe_classifier(recipe: Recipe, net: CovidNet, lungs: LungNet, template: ModelCard) -> Classifier:
    """A one-network model for `explain`: the template card's classes and operating point, the recipe's
    input (its View, sizes, margin, dilation and normalisation) and no gate."""
    card = replace(template, networks=[Network(recipe.name, recipe.view, recipe.variant)],
                   input_size=recipe.input_size, lung_input_size=recipe.lung_size, crop_margin=recipe.crop_margin,
                   mask_dilation=recipe.mask_dilation, mean=list(recipe.mean), std=list(recipe.std), ood={})
    return Classifier(card, [net], lungs, DEFAULT_WEIGHTS)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--variant", choices=sorted(VIEWS), default="lungs")
    ap.add_argument("--dilation", type=float, default=FINAL.mask_dilation, help="lung mask dilation, share of the crop side")
    ap.add_argument("--attention", type=float, default=0.0,
                    help="weight of the lung-attention penalty (covidxr.training.penalties.LungAttention)")
    ap.add_argument("--attention-mode", choices=("inside", "outside"), default="inside")
    ap.add_argument("--steps", type=int, default=300, help="the short model for the lung-mass check (0: none)")
    ap.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "cxr"))
    ap.add_argument("--work", default=str(ROOT / ".cache" / "train"))
    ap.add_argument("--splits", action="store_true", help="also run the two 120-step held-out folds")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    data, work = Path(args.data), Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    tag = f"probe_{args.variant}_dilate{args.dilation:g}" + (f"_attention{args.attention:g}{args.attention_mode}" if args.attention else "")
    # FINAL's recipe on the candidate input; another dilation is another cache (Recipe.cache_file names it)
    probe = replace(FINAL, name=tag, steps=args.steps, eval_every=0, variant=args.variant,
                    mask_dilation=args.dilation, attention=args.attention, attention_mode=args.attention_mode)
    records = load_manifest(data)
    val = patient_split(records)
    lungnet, _ = train_lungs(data.parent / "lungs", data, work, probe.lung_size)
    cache = build_cache(records, data, lungnet, work, probe)
    out = {"variant": args.variant, "dilation": args.dilation, "attention": args.attention,
           "attention_mode": args.attention_mode, "steps": args.steps}
    if args.splits:
        kaggle = cache.sources == KAGGLE
        for split in SPLITS:
            train_mask = kaggle if split == "kaggle_only" else ~kaggle
            recipe = fold_recipe(f"{tag}_{split}", variant=probe.variant, mask_dilation=probe.mask_dilation,
                                 attention=probe.attention, attention_mode=probe.attention_mode)
            r = run_fold(cache, recipe.name, train_mask, ~train_mask, val, recipe, work)
            out[split] = {"auc": r["test"]["auc"], "ci": r["test"]["ci"]["auc"], "val_auc": r["val_auc"]}
    if not args.steps:
        print(json.dumps(out, indent=1))
        return 0
    net = fit(cache, np.flatnonzero(~val), probe, work)
    out["val_auc"] = auc(cache.y[val], positive_probability(infer(net, cache, np.flatnonzero(val), probe)[0]))
    clf = probe_classifier(probe, net, lungnet, ModelCard.load(DEFAULT_WEIGHTS))
    att = generalisation.lung_attention(clf, data, data.parent / "lungs")
    out["lung_mass"] = att["mean_lung_mass"]  # masked only where the input was blanked (explain)
    out["lung_mass_unmasked"] = att["mean_lung_mass_unmasked"]
    out["empty_maps"] = f"{att['n_empty_maps']} of {att['n_films']}"
    print(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
