"""The model card as a clinician reads it: who it is for, who it must not be used on, what to expect at a
new hospital (the unseen-hospital figures first), then the headline figures. Every number comes from the
card (weights/model_card.json); nothing is repeated here. No Streamlit."""
from __future__ import annotations

from typing import Any

from webapp.views.tables import estimate_cells, fmt_estimate
from webapp.views.wording import class_title, fmt_change, fmt_threshold

SOURCE_TITLES = {"hannover-mhh": "Hannover Medical School", "ieee8023-jul2020": "Cohen et al. collection (ieee8023)",
                 "ieee8023-via-darkcovidnet": "Cohen et al. collection (DarkCovidNet copy)",
                 "kaggle-radiography-db-224px": "COVID-19 Radiography Database (Kaggle)",
                 "kermany-via-suyash091": "Kermany paediatric pneumonia", "nih-cxr8-via-darkcovidnet": "NIH ChestX-ray8"}
CHILD_WORDS = ("child", "paediatric", "pediatric")


def source_title(name: str) -> str:
    return SOURCE_TITLES.get(name, name)


def must_not_use(card: Any) -> list[str]:
    """The card's limits that say who or what the model must not be used on (children, other views)."""
    return [l for l in card.limits if any(w in l.lower() for w in (*CHILD_WORDS, "frontal", "lateral"))]


def unseen_folds(card: Any) -> list[dict]:
    """Leave-one-source-out folds whose held-out source holds both classes (so an AUC exists), lowest AUC first."""
    folds = (card.metrics or {}).get("leave_one_source_out") or []
    return sorted((f for f in folds if f.get("auc") is not None), key=lambda f: f["auc"])


def new_hospital_text(card: Any) -> str:
    """What to expect at a hospital whose films the model never saw, in plain words, from the LOSO folds."""
    folds = unseen_folds(card)
    if not folds:
        return ("The card records no test on a hospital left out of training: expect the model to do worse on your "
                "films than on the films it was built from.")
    name = class_title(card.positive_class)
    parts = [f"**AUC {fmt_estimate(f, 'auc')}** on {source_title(f['held_out'])} ({f['n_pos']} {name} and "
             f"{f['n_neg']} other films)" for f in folds]
    lowest = folds[0]
    return (f"When a source of films was left out of training entirely and scored afterwards (the closest we have "
            f"to a new hospital), the model ranked {name} films above the others with " + "; ".join(parts) + ". "
            f"Take the lower figure, AUC {lowest['auc']:.3f}, as the expectation for a new hospital: about "
            f"{lowest['auc']:.0%} of the time a {name} film scores higher than a film without it. The figures on "
            "held-out patients of the training sources, further down, are much higher and overstate what to "
            "expect elsewhere.")


def held_out_rows(card: Any) -> list[dict]:
    """One row per left-out source: films, AUC, sensitivity and specificity with their 95% CIs."""
    name = class_title(card.positive_class)
    rows = []
    for f in (card.metrics or {}).get("leave_one_source_out") or []:
        rows.append({"source left out of training": source_title(f["held_out"]), "films": f.get("n"),
                     name: f.get("n_pos"), "other": f.get("n_neg"), **estimate_cells(f)})
    return sorted(rows, key=lambda r: r["AUC"] == "—")


def decision_text(card: Any) -> str:
    name = class_title(card.positive_class)
    return (f"A film is called **positive for a {name} pattern** when its calibrated {name} probability is at or "
            f"above the operating point, **{fmt_threshold(card.threshold)}**. It was chosen to favour sensitivity, "
            "as a screening aid should: expect false positives.")


def _title(key: str) -> str:
    return key.replace("_", " ").replace("without kaggle", "(Kaggle copy left out)").strip().capitalize()


def ablation_rows(card: Any) -> list[dict]:
    """The ablations (engineering detail) as readable rows: what was tried, where tested, AUC and rates."""
    rows = []
    for a in (card.metrics or {}).get("ablations") or []:
        split = {"kaggle_only": "trained on Kaggle only, tested on the other sources"}.get(
            a.get("split"), str(a.get("split") or "").replace("_", " "))
        rows.append({"variant": _title(a.get("name", "")), "test": split, "films": a.get("n"), **estimate_cells(a)})
    return rows


def training_facts(card: Any) -> dict[str, str]:
    """The training run in words (no raw configuration keys)."""
    t = card.training or {}
    facts = {"Command": t.get("command"), "Date": t.get("date"), "Machine": t.get("machine"),
             "Time to weights": f"{t['seconds_to_weights'] / 60:.0f} min" if t.get("seconds_to_weights") else None,
             "Seed": t.get("seed"), "Optimiser": t.get("optimizer"), "Sampling": t.get("sampling"),
             "Augmentation": t.get("augmentation"), "Lung attention": t.get("lung_attention_penalty"),
             "Early stopping": (t.get("early_stopping") or {}).get("rule")}
    seg = t.get("lung_segmenter") or {}
    if seg.get("val_dice_mean") is not None:
        facts["Lung segmenter"] = (f"{seg.get('n_train')} training masks, validation Dice {seg['val_dice_mean']:.2f} "
                                   f"(lowest {seg.get('val_dice_min', 0):.2f}); {seg.get('note', '')}").rstrip("; ")
    return {k: str(v) for k, v in facts.items() if v not in (None, "")}


def films_per_source(card: Any) -> list[dict]:
    per = (card.data or {}).get("films_per_source") or {}
    classes = list(dict.fromkeys(c for v in per.values() for c in v))
    return [{"source": source_title(s), **{class_title(c): v.get(c, 0) for c in classes}} for s, v in per.items()]


def _site_folds(sa: dict) -> dict[str, dict]:
    """Per held-out source, its row; where the table holds one per operating-point rule (issue 25), the chosen
    rule's, judged at the profile's own threshold."""
    rule = (sa.get("rule") or {}).get("chosen")
    return {s: {**f, **((f.get("halves") or {}).get(rule) or {})} for s, f in (sa.get("folds") or {}).items()}


def site_adaptation_rows(card: Any) -> list[dict]:
    """metrics.site_adaptation (scripts/site_measure.py): per two-class held-out source, the fold model without and
    with a site profile fitted on the other half of the source's patients, each "value (95% CI)"."""
    sa = (card.metrics or {}).get("site_adaptation") or {}
    name = class_title(card.positive_class)
    rows = []
    for s, f in _site_folds(sa).items():
        films = f.get("films") or {}
        pos = films.get(card.positive_class)
        neg = sum(v for k, v in films.items() if k != card.positive_class)
        for what, key in (("model trained without it", "fold_model"), ("with a site profile", "with_profile")):
            r = f.get(key) or {}
            rows.append({"source left out of training": source_title(s), f"films ({name}/other)": f"{pos}/{neg}",
                         "scored by": what, **estimate_cells(r)})
    return rows


def site_adaptation_text(card: Any) -> str | None:
    """What the measured site-profile table says, in words (None when the card has no such measurement): per
    source, the profile at its own operating point against the model without it, and where the target was met."""
    sa = (card.metrics or {}).get("site_adaptation") or {}
    folds = _site_folds(sa)
    if not folds:
        return None
    pct = lambda v: "?" if v is None else f"{100 * v:.0f}%"  # noqa: E731
    said = []
    for s, f in folds.items():
        a, b = f.get("with_profile") or {}, f.get("fold_model") or {}
        if f.get("auc_gain") is not None and "halves" not in f:  # the table before issue 25: the gain in AUC
            said.append(f"{source_title(s)}: {fmt_change('AUC', f['auc_gain'])} with the profile")
        else:
            said.append(f"{source_title(s)}: sensitivity {pct(a.get('sensitivity'))} and specificity "
                        f"{pct(a.get('specificity'))} at the profile's own operating point, against "
                        f"{pct(b.get('sensitivity'))} and {pct(b.get('specificity'))} without it")
    met = [s for s, f in folds.items() if f.get("target_met")]
    verdict = ("The target was met on " + ", ".join(source_title(s) for s in met) + " only" if met
               else "The target was met on no source")
    used = {f.get("fold_networks") for f in folds.values()} - {None}
    shipped = len(getattr(card, "networks", None) or [])
    networks = (f"Measured with {max(used)} of the model's {shipped} networks in each model trained without the "
                "source. " if used and max(used) < shipped else "")
    return (f"A site profile fitted on one half of a held-out source's patients, scored on the other half ("
            f"{'; '.join(said)}). {verdict} (target: {sa.get('target', 'not stated')}). {networks}Fit one on your own films "
            "as a validation first: the shipped model's row is the honest local estimate, and the adapted row is "
            "worth using only when it is clearly better.")
