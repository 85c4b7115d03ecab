"""The shipped recipe and the experiments that estimate how it generalises: folds trained without a
source (or a group of sources) and scored on it, ensembles of the networks' folds, pooled reports,
and the ablations. Their measured results are in docs/ablation-notes.md and in the model card."""
from __future__ import annotations

import json
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
from scipy.special import expit

from ..calibration import logodds, recentre
from .cache import Cache
from .loop import checkpoint_path, fit, infer, positive_probability, stopping_record
from .recipe import Recipe

# The shipped recipe: the lung box, JPEG augmentation, the lung-attention penalty ("inside" form, weight 3),
# early stopping on the validation AUC within a one-cycle schedule of at most 1,400 steps.
FINAL = Recipe("final", 1400, variant="crop", lr=1e-3, eval_every=100, patience=4, jpeg=True, attention=3.0)
# The shipped model is an ensemble: FINAL's recipe trained on each of these inputs, logits averaged.
# Run-name suffix -> input variant; the first is FINAL's own, so its runs keep FINAL's names.
NETWORKS = {"": "crop", "_film": "film_lungs"}
ADVERSARY_WEIGHT = 0.3  # tried, not shipped: see source_adversary in the card
FOLD_STEPS = 120
KAGGLE = "kaggle-radiography-db-224px"
POOLS = {"all_sources": "all sources", "without_kaggle": "every source but Kaggle"}  # pooled LOSO reports
SPLITS = {  # the two ways of holding hospitals out that have both classes on the test side
    "kaggle_only": "train on the Kaggle copy only, test on every other source",
    "without_kaggle": "train on every other source, test on the Kaggle copy (both classes within one collection)",
}
PENALISED_BOX = dict(variant="crop", jpeg=True, attention=FINAL.attention)  # the lung box + the lung-attention penalty
RECIPE = "crop_jpeg_attention"  # the ablation that is the shipped recipe (its without_kaggle twin is the Kaggle LOSO fold itself)
RECIPE_NETWORKS = {"": RECIPE, "_film": "film_lungs_jpeg_attention"}  # ...per network of the ensemble (NETWORKS)
ABLATIONS = {  # name -> Recipe settings (changes to its neutral defaults) + the split
    "lungs": dict(jpeg=True, split="kaggle_only"),  # the lung box blanked outside the lungs, JPEG augmentation
    "lungs_no_jpeg": dict(split="kaggle_only"),
    "lungs_no_jpeg_without_kaggle": dict(split="without_kaggle"),
    "lungs_scratch": dict(imagenet=False, split="kaggle_only"),
    "film": dict(variant="film", split="kaggle_only"),
    "crop": dict(variant="crop", split="kaggle_only"),
    "film_without_kaggle": dict(variant="film", split="without_kaggle"),
    "crop_without_kaggle": dict(variant="crop", split="without_kaggle"),
    "film_jpeg": dict(variant="film", jpeg=True, split="kaggle_only"),
    "crop_jpeg": dict(variant="crop", jpeg=True, split="kaggle_only"),
    "film_jpeg_without_kaggle": dict(variant="film", jpeg=True, split="without_kaggle"),
    "crop_jpeg_without_kaggle": dict(variant="crop", jpeg=True, split="without_kaggle"),
    "crop_jpeg_attention_outside": dict(**PENALISED_BOX, attention_mode="outside", split="kaggle_only"),
    "crop_jpeg_attention_outside_without_kaggle": dict(**PENALISED_BOX, attention_mode="outside", split="without_kaggle"),
    "crop_jpeg_attention": dict(**PENALISED_BOX, split="kaggle_only"),  # the shipped recipe, first network
    "film_lungs_jpeg_attention": dict(PENALISED_BOX, variant="film_lungs", split="kaggle_only"),  # second network
    "lungs_unfrozen": dict(frozen_blocks=1, split="kaggle_only"),
    "lungs_unfrozen_without_kaggle": dict(frozen_blocks=1, split="without_kaggle"),
}


def ablation(name: str) -> tuple[Recipe, str]:
    """The ablation's 120-step recipe (run `ablation_<name>`) and its split (a key of SPLITS)."""
    settings = dict(ABLATIONS[name])
    split = settings.pop("split")
    return Recipe(f"ablation_{name}", FOLD_STEPS, **settings), split


def report(y: np.ndarray, p: np.ndarray, threshold: float, sources: np.ndarray | None = None) -> dict:
    """A binary report as the card keeps it (no ROC curve or reliability table)."""
    from ..binary_report import binary_report

    d = binary_report(y, p, threshold, sources, n_boot=500).as_dict()
    d.pop("roc", None)
    d.pop("reliability", None)
    return d


def fold_recipe(name: str, base: Recipe = FINAL, **changes) -> Recipe:
    """A 120-step fold of a recipe (the shipped one unless told): without early stopping, so it follows
    every other change to the recipe."""
    return replace(base, name=name, steps=FOLD_STEPS, eval_every=0, patience=0, **changes)


def network_recipes(recipe: Recipe) -> list[Recipe]:
    """One run of `recipe` per network of the shipped ensemble (NETWORKS)."""
    return [replace(recipe, name=recipe.name + suffix, variant=variant) for suffix, variant in NETWORKS.items()]


def ensemble_fold(parts: list[dict], y: np.ndarray, sources: np.ndarray) -> dict:
    """The ensemble's fold from its networks' folds (same held-out films): each network's probabilities
    re-centred on its own fold threshold, then averaged on the log-odds scale, so that the ensemble's
    threshold is 0.5. (The shipped model averages its networks' logits before one calibration; the folds
    stored only probabilities, so this is the nearest combination they allow.)"""
    p = expit(np.mean([logodds(recentre(np.array(v["test_scores"]), v["threshold"])) for v in parts], 0))
    first = parts[0]
    return {**{k: first.get(k) for k in ("name", "imagenet", "adversary", "attention", "attention_mode", "frozen_blocks",
                                         "jpeg_augmentation", "steps", "n_train", "held_out_sources")},
            "variant": "+".join(v["variant"] for v in parts), "threshold": 0.5, "val_auc": None,
            "members": [{"variant": v["variant"], "val_auc": v["val_auc"], "threshold": v["threshold"],
                         "auc": v["test"]["auc"], "sensitivity": v["test"]["sensitivity"],
                         "specificity": v["test"]["specificity"]} for v in parts],
            **({"early_stopping": [v.get("early_stopping") for v in parts]} if "early_stopping" in first else {}),
            "test": report(y, p, 0.5, sources), "test_scores": [round(float(v), 6) for v in p]}


def run_fold(cache: Cache, name: str, train_mask: np.ndarray, test_mask: np.ndarray, val: np.ndarray,
             recipe: Recipe, work: Path) -> dict:
    """Train without the test films, pick the threshold by the shipped rule on the fold's own validation
    films, then score the films it never saw (a whole source, or a group of sources)."""
    from ..metrics import auc, choose_threshold

    out = work / "results" / f"{name}.json"
    if out.exists():
        return json.loads(out.read_text())
    t0 = time.time()
    train_idx = np.flatnonzero(train_mask & ~val)
    val_idx = np.flatnonzero(train_mask & val)
    net = fit(cache, train_idx, recipe, work, val_idx)  # early-stopped only where the recipe asks for it
    pv = positive_probability(infer(net, cache, val_idx, recipe)[0])
    thr = choose_threshold(cache.y[val_idx], pv, recipe.min_sensitivity)
    test_idx = np.flatnonzero(test_mask)
    pt = positive_probability(infer(net, cache, test_idx, recipe)[0])
    res = {"name": name, "variant": recipe.variant, "imagenet": recipe.imagenet, "adversary": recipe.adversary,
           "attention": recipe.attention, "attention_mode": recipe.attention_mode if recipe.attention else None,
           "frozen_blocks": recipe.frozen_blocks, "jpeg_augmentation": recipe.jpeg, "steps": recipe.steps,
           "n_train": int(len(train_idx)), "val_auc": auc(cache.y[val_idx], pv), "threshold": thr,
           "held_out_sources": sorted(set(cache.sources[test_idx])),
           "test": report(cache.y[test_idx], pt, thr, cache.sources[test_idx]),
           "test_scores": [round(float(v), 6) for v in pt],  # in manifest order, for the pooled LOSO report
           "seconds": round(time.time() - t0)}
    if recipe.eval_every:
        res["early_stopping"] = stopping_record(work, recipe.name)
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(res, indent=1))
    checkpoint_path(work, recipe.name).unlink(missing_ok=True)  # the fold's model is not needed again; its numbers are
    return res


def pooled_loso(folds: list[tuple[np.ndarray, np.ndarray, float, str]]) -> dict:
    """Every film scored by the fold model that never saw its source, pooled into one report: closer
    to a new hospital's mixed test set than any single-source row (most sources hold one class)."""
    y = np.concatenate([f[0] for f in folds])
    p = np.concatenate([recentre(f[1], f[2]) for f in folds])
    src = np.concatenate([[f[3]] * len(f[0]) for f in folds])
    pooled = report(y, p, 0.5, src)
    pooled.pop("per_source")  # the LOSO rows themselves
    return pooled | {"what": "each film scored by the LOSO model trained without its source; each fold's "
                             "probabilities re-centred on its own threshold (decisions unchanged)"}
