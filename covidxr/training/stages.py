"""`python -m covidxr train`: the stages, in order. Each checkpoints into the work directory, so that
rerunning the same command resumes where it stopped.

final: the lung segmenter, each network of the shipped ensemble (early-stopped, rounded as model.pt
stores it), one temperature and threshold on their mean validation logits, model.pt, the gate's
statistics. loso: every source held out in turn (120-step folds of the shipped recipe). recipe: the
shipped recipe at full length without the Kaggle copy. adversary: the LOSO folds again with a source
adversary. ablations: the two held-out splits, one setting changed at a time. Then the model card.
"""
from __future__ import annotations

import json
import time
from dataclasses import replace
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from tqdm import tqdm

from ..card import ModelCard
from ..films import read_film
from ..model import CovidNet, LungNet
from .cache import Cache, build_cache
from .card_writer import write_card
from .data import CLASSES, SEED, load_manifest, patient_split
from .experiments import (ABLATIONS, ADVERSARY_WEIGHT, FINAL, KAGGLE, NETWORKS, ablation, fold_recipe,
                          network_recipes, report, run_fold)
from .loop import fit, fit_temperature, infer, positive_probability, stopping_record
from .recipe import Recipe
from .segmenter import train_lungs

STAGES = ("final", "loso", "recipe", "adversary", "ablations")  # what `covidxr train` runs by default, in order
CARD_INPUT = ("input_size", "lung_size", "crop_margin", "mask_dilation", "mean", "std")  # one per model card


def main(data: Path, out: Path, lungs_dir: Path | None = None, work: Path = Path(".cache/train"),
         stages: tuple[str, ...] = STAGES, threads: int = 2, recipe: Recipe = FINAL) -> ModelCard | None:
    """Run `stages` for `recipe` (the shipped one unless told: every network of the model is made by it,
    one per input of NETWORKS); write the model card once the final stage's results exist."""
    torch.set_num_threads(threads)
    started = time.time()
    work.mkdir(parents=True, exist_ok=True)
    out.mkdir(parents=True, exist_ok=True)
    lungs_dir = lungs_dir or data.parent / "lungs"
    records = load_manifest(data)
    val = patient_split(records)
    lungnet, lung_report = train_lungs(lungs_dir, data, work, recipe.lung_size)
    caches: dict[str, Cache] = {}

    def cache_of(r: Recipe) -> Cache:
        if r.cache_file not in caches:
            caches[r.cache_file] = build_cache(records, data, lungnet, work, r)
        return caches[r.cache_file]

    src = cache_of(recipe).sources
    if "final" in stages:
        _final_stage(cache_of, val, lungnet, lung_report, data, out, work, started, recipe)
    elif "ood" in stages:  # refit the out-of-distribution statistics of the model already in `out`
        _ood_stage(cache_of(recipe), val, data, out, work, recipe)

    def fold(r: Recipe, held_out: np.ndarray) -> None:  # trained without the held-out films, scored on them
        run_fold(cache_of(r), r.name, ~held_out, held_out, val, r, work)

    def folds(r: Recipe, held_out: np.ndarray) -> None:  # each network of the ensemble
        for one in network_recipes(r):
            fold(one, held_out)

    if "loso" in stages:
        for s in sorted(set(src)):
            folds(fold_recipe(f"loso_{s}", recipe), src == s)
    if "recipe" in stages:  # the final recipe, early-stopped, without the Kaggle copy
        folds(replace(recipe, name="recipe_without_kaggle"), src == KAGGLE)
    if "adversary" in stages:  # the LOSO folds and the full-length Kaggle fold again, with a source adversary
        for s in sorted(set(src)):  # (tried on the first network's recipe only; not shipped)
            fold(fold_recipe(f"adversary_{s}", recipe, adversary=ADVERSARY_WEIGHT), src == s)
        fold(replace(recipe, name="adversary_recipe_without_kaggle", adversary=ADVERSARY_WEIGHT), src == KAGGLE)
    if "ablations" in stages:  # the ablation table: fixed recipes, one setting changed at a time
        kaggle = src == KAGGLE
        for name in ABLATIONS:
            r, split = ablation(name)
            fold(r, ~kaggle if split == "kaggle_only" else kaggle)
    return write_card(out, work, data, recipe) if (work / "results" / "final.json").exists() else None


def check_one_card(recipes: list[Recipe]) -> None:
    """The card holds one input size, margin, dilation and normalisation for all its networks."""
    for name in CARD_INPUT:
        if len({getattr(r, name) for r in recipes}) > 1:
            raise ValueError(f"the networks of one model must share {name}: "
                             + ", ".join(f"{r.name} {getattr(r, name)}" for r in recipes))


def train_network(cache: Cache, val: np.ndarray, work: Path, recipe: Recipe) -> tuple[CovidNet, dict]:
    """One network of the shipped model, early-stopped on the validation films and rounded as model.pt
    stores it; its validation logits are kept (results/member_<name>.json) for the ensemble's calibration."""
    from ..classifier import as_stored
    from ..metrics import auc

    path = work / "results" / f"member_{recipe.name}.json"
    t0 = time.time()
    val_idx = np.flatnonzero(val)
    net = as_stored(fit(cache, np.flatnonzero(~val), recipe, work, val_idx))  # resumes, or returns at once when done
    if path.exists():
        return net, json.loads(path.read_text())
    logits, _ = infer(net, cache, val_idx, recipe)
    res = {"name": recipe.name, "variant": recipe.variant, "early_stopping": stopping_record(work, recipe.name),
           "val_auc": auc(cache.y[val_idx], positive_probability(logits)), "val_logits": logits.tolist(),
           "seconds": round(time.time() - t0)}
    path.parent.mkdir(exist_ok=True)
    path.write_text(json.dumps(res))
    return net, res


def calibrate(networks: list[dict], cache: Cache, val: np.ndarray, min_sensitivity: float) -> dict:
    """Temperature and threshold of the ensemble, on the mean of its networks' validation logits."""
    from ..metrics import choose_threshold

    val_idx = np.flatnonzero(val)
    logits = np.mean([np.array(m["val_logits"]) for m in networks], 0)
    temperature = fit_temperature(logits, cache.cls[val_idx])
    pv = positive_probability(logits, temperature)
    thr = choose_threshold(cache.y[val_idx], pv, min_sensitivity)
    return {"temperature": temperature, "threshold": thr,
            "members": [{k: m[k] for k in ("name", "variant", "val_auc", "early_stopping", "seconds")} for m in networks],
            "validation": report(cache.y[val_idx], pv, thr, cache.sources[val_idx]),
            "val_logits": logits.tolist()}


def _final_stage(cache_of: Callable[[Recipe], Cache], val: np.ndarray, lungnet: LungNet, lung_report: dict, data: Path,
                 out: Path, work: Path, started: float, recipe: Recipe) -> None:
    from ..classifier import join_state

    res_path = work / "results" / "final.json"
    if res_path.exists() and (out / "model.pt").exists():
        return
    t0 = time.time()
    recipes = network_recipes(recipe)
    check_one_card(recipes)
    nets, networks = zip(*(train_network(cache_of(r), val, work, r) for r in recipes))
    cache = cache_of(recipe)
    res = calibrate(list(networks), cache, val, recipe.min_sensitivity)
    torch.save(join_state(nets, lungnet), out / "model.pt")
    # Each network's training time is its record's (a network that an earlier run finished comes back at
    # once here); the time to weights adds what this run spent before (segmenter, caches).
    trained = sum(m["seconds"] for m in networks)
    res.update(lungs=lung_report, seconds=trained, total_seconds=round(t0 - started) + trained,
               n_train=int((~val).sum()), n_val=int(val.sum()),
               val_names=[cache.records[i].path for i in np.flatnonzero(val)])
    res_path.parent.mkdir(exist_ok=True)
    res_path.write_text(json.dumps(res))
    _ood_stage(cache, val, data, out, work, recipe)


def _ood_stage(cache: Cache, val: np.ndarray, data: Path, out: Path, work: Path, recipe: Recipe,
               n_orient: int = 1200) -> None:
    """Out-of-distribution statistics for the model in `out`: the first network's pooled features (fit on
    training films, threshold on validation films; the gate reads the same network's features) and the
    orientation net (trained on training films upright, turned and inverted; its threshold calibrated on
    the upright validation films, never trained on)."""
    from ..ood import OODDetector
    from ..orientation import orientation_input
    from . import orientation

    res_path = work / "results" / "final.json"
    res = json.loads(res_path.read_text())
    net = load_nets(out)[0][0].eval()  # the first network gives the features
    train_idx, val_idx = np.flatnonzero(~val), np.flatnonzero(val)
    _, train_feats = infer(net, cache, train_idx, recipe)
    _, val_feats = infer(net, cache, val_idx, recipe)
    det = OODDetector.fit(train_feats).calibrate(val_feats, 0.99)

    def pixels(idx: np.ndarray, what: str) -> list[np.ndarray]:
        return [read_film(data / cache.records[i].path).pixels for i in tqdm(idx, desc=what)]

    pick = np.random.default_rng(SEED).choice(train_idx, min(n_orient, len(train_idx)), replace=False)
    det.orient_net = orientation.fit(*orientation.examples(pixels(pick, "orientation films")), seed=SEED)
    det.calibrate_orientation([orientation_input(p) for p in pixels(val_idx, "validation films")])
    ood_file, ood_sha = det.save(out)
    res["ood"] = det.card_entry(ood_file, ood_sha)
    res_path.write_text(json.dumps(res))


def load_nets(out: Path) -> tuple[list[CovidNet], LungNet]:
    """The networks of model.pt in `out`, as trained (BatchNorm not folded)."""
    from ..classifier import split_state

    return split_state(torch.load(out / "model.pt", map_location="cpu", weights_only=True), len(NETWORKS), len(CLASSES))
