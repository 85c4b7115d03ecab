"""Probe a candidate input before a full training run: held-out AUC on both splits, and whether its Grad-CAM
stays on the lungs.

A short model (not the shipped recipe) is trained on the candidate input, on the same patient-grouped training
split as the shipped model, then scored on its validation films, and its heatmaps are measured against the human
lung masks of the validation COVID-19 films, as `generalisation.py` does for the shipped model. The lung mass
reported is the map as the model saw its input: masked by the lung mask only when the input was blanked
outside it. The two held-out splits are the card's ablation splits (120-step folds).

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
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

import generalisation  # noqa: E402
from covidxr import Classifier  # noqa: E402
from covidxr import train as T  # noqa: E402
from covidxr.metrics import auc  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--variant", choices=sorted(T.VARIANTS), default="lungs")
    ap.add_argument("--dilation", type=float, default=T.MASK_DILATION, help="lung mask dilation, share of the crop side")
    ap.add_argument("--attention", type=float, default=0.0, help="weight of the lung-attention penalty (train.LungAttention)")
    ap.add_argument("--attention-mode", choices=("inside", "outside"), default="inside")
    ap.add_argument("--steps", type=int, default=300, help="the short model for the lung-mass check (0: none)")
    ap.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "cxr"))
    ap.add_argument("--work", default=str(ROOT / ".cache" / "train"))
    ap.add_argument("--splits", action="store_true", help="also run the two 120-step held-out folds")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    T.MASK_DILATION = args.dilation  # the cache is named by it, so another dilation gets its own cache
    data, work = Path(args.data), Path(args.work)
    records = T.load_manifest(data)
    val = T.patient_split(records)
    lungnet, _ = T.train_lungs(data.parent / "lungs", data, work)
    cache = T.build_cache(records, data, lungnet, work, args.variant)
    tag = f"probe_{args.variant}_dilate{args.dilation:g}" + (f"_attention{args.attention:g}{args.attention_mode}" if args.attention else "")
    out = {"variant": args.variant, "dilation": args.dilation, "attention": args.attention,
           "attention_mode": args.attention_mode, "steps": args.steps}
    attention = dict(attention=args.attention, attention_mode=args.attention_mode)
    if args.splits:
        kaggle = cache.sources == T.KAGGLE
        for split in T.SPLITS:
            train_mask = kaggle if split == "kaggle_only" else ~kaggle
            cfg = T.fold_config(f"{tag}_{split}", variant=args.variant, **attention)
            r = T.run_fold(cache, cfg.name, train_mask, ~train_mask, val, cfg, work)
            out[split] = {"auc": r["test"]["auc"], "ci": r["test"]["ci"]["auc"], "val_auc": r["val_auc"]}
    if not args.steps:
        print(json.dumps(out, indent=1))
        return 0
    net = T.fit(cache, np.flatnonzero(~val),
                replace(T.FINAL, name=tag, steps=args.steps, eval_every=0, variant=args.variant, **attention), work)
    out["val_auc"] = auc(cache.y[val], T.positive_probability(T.infer(net, cache, np.flatnonzero(val))[0]))
    shipped = Classifier.from_dir(ROOT / "weights")
    card = replace(shipped.card, mask_dilation=args.dilation, blank_outside_lungs=T.VARIANTS[args.variant]["blank"],
                   members=[])  # the probe's one network
    clf = Classifier(card, net.eval(), shipped.lungs, shipped.directory)
    clf.prepare = lambda films: [T.prepare_variant(f.pixels, p, args.variant)  # as its training cache was made
                                 for f, p in zip(films, clf.lung_probability(films))]
    att = generalisation.lung_attention(clf, data, data.parent / "lungs")
    out["lung_mass"] = att["mean_lung_mass"]  # masked only where the input was blanked (explain)
    out["lung_mass_unmasked"] = att["mean_lung_mass_unmasked"]
    out["empty_maps"] = f"{att['n_empty_maps']} of {att['n_films']}"
    print(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
