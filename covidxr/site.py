"""Site profiles: a hospital validates and recalibrates the model on its own labelled films, chooses the
sensitivity it needs, and reads what that costs before it adopts the profile.

A profile sits on top of one base model (the card's weights, by sha256) and changes only the last step:
the COVID-19 probability becomes

    p = sigmoid(a * z + b + ((f - mean) / std) . w)

where z is the base model's calibrated COVID-19 log-odds and f the first network's pooled features
(covidxr.site_maths). Two kinds of method are fitted and the one with the best cross-validated AUC is kept
(a more flexible one only when clearly better): "temperature" (a and b: keeps the ranking, moves the
operating point) and "head" (also w, shrunk toward the shipped head: can change the ranking). The threshold
is read at the site's target sensitivity by the operating-point rule (RULE, chosen by nested cross-validation
in scripts/site_measure.py; docs/site-profiles.md).

Every figure is nested-cross-validated on the site's films (covidxr.site_cv): for each target, the
sensitivity and specificity with 95% CIs that the site can expect on its next films, and "of 100 films
without COVID-19, about N flagged". A profile whose operating point is clearly worse than the shipped
model's on the same films is not offered for adoption unless an override, with its reason, is recorded.

This module holds the profile and its files; the maths is in covidxr.site_maths, the folds and nested
cross-validation in covidxr.site_cv (their public names are re-exported here).

On disk: `SITE_DIR/site.json` (name, time, base model sha256, films per class, method, rule, target,
figures, operating points, adoption, threshold, temperature, the arrays' sha256) and `SITE_DIR/site.npz`
(plain float arrays, loaded with allow_pickle=False). No film names, pixels or patient ids are stored.
"""
from __future__ import annotations

import io
import json
import re
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
from scipy.special import expit, softmax

from .atomic import write_atomic
from .card import sha256_file
from .metrics import auc, roc_curve
# cv_folds, rates, thresholds: named here for scripts/site_measure.py, which measures what `site fit` does
from .site_cv import (N_FOLDS, SiteData, cv_folds, figures, inner_logodds, nested,  # noqa: F401 - see above
                      rates, thresholds, within_fold_auc, youden_difference_ci)
from .site_maths import FLOOR_FILMS, METHODS, RULES, Adapter, base_logodds  # noqa: F401 - FLOOR_FILMS: the chooser's

SITE_FILE, ARRAYS_FILE = "site.json", "site.npz"
FORMAT = 2                 # 2: target sensitivity, rule, operating points, adoption
MIN_PER_CLASS = 8          # fewer films of either class: refused
ROUGH_PER_CLASS = 30       # fewer: fitted, but the estimate is rough
# A more flexible method must beat a simpler one's CV AUC by more than this. Measured (scripts/site_measure.py,
# ieee8023-jul2020 fold): with 0.005 the head won the inner CV on both halves and lost 0.02-0.07 AUC on the
# other half; small sites' CV AUCs vary by several hundredths, so only a clear gain counts.
PREFER_SIMPLER = 0.03
# The default target sensitivity and the operating-point rule, chosen by measurement (scripts/site_measure.py
# measure --target S, then compare; the model card's metrics.site_adaptation, docs/site-profiles.md): on the two
# two-class held-out sources (fold model: 1 of the 2 networks), 9 cells (both halves, 8-64 films per class), a
# profile judged at its own threshold on films it never saw. Target 0.90: specificity only +0.02 to +0.08 over the
# fold model on average, the operating point (sensitivity >= 0.80, specificity >= fold + 0.10) held in 1-3 of 9
# cells. 0.85: held in 6 of 9 (binormal, floor, empirical), lowest sensitivity 0.81, specificity +0.14. 0.80:
# lowest sensitivity 0.75-0.77 (below 0.80) for every rule but "shrunk". At 0.85 "floor" and "binormal" hold the
# same cells and meet the whole target in the same 4 (the other 5 are ieee8023-jul2020's, AUC 0.69 < 0.85);
# "floor" has the higher mean sensitivity + specificity - 1 (0.377 against 0.366) and, at 8-16 films per class,
# about half binormal's spread over draws (specificity SD 0.07-0.15 against 0.16-0.29): the pre-declared choice
# (scripts/site_measure.py choose_rule) picks it at 0.85 and at 0.90.
DEFAULT_TARGET = 0.85      # the sensitivity a profile is fitted for unless the site chooses (site fit --target-sensitivity)
TARGETS = (0.80, 0.85, 0.90, 0.95, 0.97)   # the chooser's targets (a site's own target is added)
RULE = "floor"             # the operating-point rule (covidxr.site_maths.RULES): below FLOOR_FILMS of a class the
                           # shipped operating point is kept (on the profile's scale), from there on binormal


class SiteError(ValueError):
    """A profile that cannot be made, loaded or used (too few films, another base model, tampered arrays)."""


class TooFewFilms(SiteError):
    pass


class NotOffered(SiteError):
    """A profile clearly worse than the shipped model, adopted without a recorded override."""


def check_base(name: object, base_sha256: str, card) -> None:
    """SiteError unless a profile named `name`, fitted on the weights whose hash is `base_sha256`, belongs to the
    model of `card`: a profile's operating point means nothing on other weights."""
    if base_sha256 != card.weights_sha256:
        raise SiteError(f"site profile {name!r} was made for another base model "
                        f"(weights {base_sha256[:12]}…, this model's are {card.weights_sha256[:12]}…)")


def min_sensitivity(card) -> float:
    """The card's threshold rule's minimum validation sensitivity (e.g. '... sensitivity >= 0.97 ...')."""
    m = re.search(r">=\s*([01](?:\.\d+)?)", getattr(card, "threshold_rule", "") or "")
    return float(m.group(1)) if m else 0.97


def check_target(target: float) -> float:
    if not 0.5 <= float(target) <= 0.995:
        raise SiteError(f"a target sensitivity must lie between 0.5 and 0.995, not {target}")
    return round(float(target), 4)


# ---------------------------------------------------------------------------------------------
# the profile


@dataclass
class SiteProfile:
    name: str
    base_sha256: str
    method: str
    threshold: float
    adapter: Adapter
    films: dict[str, int]
    figures: dict = field(default_factory=dict)
    created: str = ""
    rough: bool = False
    roc: dict[str, np.ndarray] = field(default_factory=dict)   # shipped/adapted CV ROC points (fpr, tpr)
    target: float | None = None           # the sensitivity the threshold was read at
    rule: str = ""                        # the operating-point rule (covidxr.site_maths.RULES)
    operating_points: list[dict] = field(default_factory=list)  # per target: threshold, expected rates, offer
    offered: bool = True                  # False: clearly worse than the shipped model at `target`
    offered_why: str = ""
    override: dict | None = None          # {"reason", "at"}: adopted although not offered, and why

    @property
    def temperature(self) -> float:
        """The site's temperature on the base model's log-odds (1 / scale)."""
        return 1.0 / self.adapter.scale if self.adapter.scale else float("inf")

    @property
    def n_films(self) -> int:
        return int(sum(self.films.values()))

    @property
    def adoptable(self) -> bool:
        """Offered for adoption, or not offered but adopted with a recorded override."""
        return self.offered or bool(self.override)

    def describe(self) -> str:
        """'Site profile: NAME, fitted on N films, DATE'."""
        return f"Site profile: {self.name}, fitted on {self.n_films} films, {self.created[:10]}"

    def at_target(self, target: float) -> "SiteProfile":
        """This profile deciding at another of its targets (operating_points): threshold, expected figures and
        offer change; the adapter, and so the ranking, does not."""
        ops = {op["target"]: op for op in self.operating_points}
        op = ops.get(round(float(target), 4))
        if op is None:
            raise SiteError(f"this profile has no operating point at sensitivity {target} (it has "
                            f"{', '.join(f'{t:g}' for t in sorted(ops))})")
        adapted = {**self.figures.get("adapted", {}), "threshold": op["threshold"],
                   **{k: op[k] for k in ("sensitivity", "specificity", "flagged_per_100", "flagged_per_100_ci")}}
        adapted["ci"] = {**adapted.get("ci", {}), **op["ci"]}
        return replace(self, target=op["target"], threshold=op["threshold"], offered=op["offered"],
                       offered_why=op["why"], override=None, figures={**self.figures, "adapted": adapted})

    def with_override(self, reason: str, by: str = "") -> "SiteProfile":
        """The profile with an override of a refused offer recorded (its reason, time and, given, who)."""
        if not (reason or "").strip():
            raise SiteError("an override needs a reason")
        return replace(self, override={"reason": reason.strip(), **({"by": by} if by else {}),
                                       "at": datetime.now(timezone.utc).isoformat(timespec="seconds")})

    def check_adoptable(self) -> None:
        if not self.adoptable:
            raise NotOffered(f"site profile {self.name!r} is not offered for adoption: {self.offered_why} "
                             "(fit it again with --override REASON to use it anyway; the reason is recorded)")

    # -- applying it
    def probability(self, logits: np.ndarray, features: np.ndarray | None, temperature: float,
                    positive_index: int) -> np.ndarray:
        """The site's positive-class probability of films (mean logits (n, C), first network's features (n, d))."""
        return self.adapter.probability(base_logodds(logits, temperature, positive_index), features)

    def class_probabilities(self, logits: np.ndarray, features: np.ndarray | None, temperature: float,
                            positive_index: int) -> np.ndarray:
        """(n, C): the positive class at the site's probability, the others scaled to share the rest as
        the base model shares it."""
        logits = np.asarray(logits, np.float64)
        p = self.probability(logits, features, temperature, positive_index)
        q = softmax(logits / temperature, axis=1)
        q[:, positive_index] = 0
        q = q / np.maximum(q.sum(1, keepdims=True), 1e-300)
        out = q * (1 - p)[:, None]
        out[:, positive_index] = p
        return out

    # -- on disk
    def save(self, directory: str | Path) -> Path:
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        a = self.adapter
        arrays = {"scale": np.array([a.scale]), "bias": np.array([a.bias])}
        if a.w is not None:
            arrays |= {"w": a.w, "mean": a.mean, "std": a.std}
        arrays |= {f"roc_{k}": np.asarray(v, np.float64) for k, v in self.roc.items()}
        packed = io.BytesIO()
        np.savez(packed, **arrays)
        write_atomic(d / ARRAYS_FILE, packed.getvalue())  # flushed to the disk: a profile decides results
        meta = {"format": FORMAT, "name": self.name, "created": self.created, "base_sha256": self.base_sha256,
                "films": self.films, "method": self.method, "rough_estimate": self.rough,
                "target_sensitivity": self.target, "rule": self.rule,
                "threshold": self.threshold, "temperature": self.temperature, "bias": a.bias,
                "cross_validated": self.figures, "operating_points": self.operating_points,
                "adoption": {"offered": self.offered, "why": self.offered_why, "override": self.override},
                "arrays": ARRAYS_FILE, "arrays_sha256": sha256_file(d / ARRAYS_FILE)}
        write_atomic(d / SITE_FILE, json.dumps(meta, indent=1) + "\n")
        return d / SITE_FILE

    @classmethod
    def load(cls, directory: str | Path, card=None) -> "SiteProfile":
        """The profile in `directory`; SiteError when it is missing or malformed, its arrays do not match
        their sha256, or (given the base model's card) it was made for another base model."""
        d = Path(directory)
        try:
            meta = json.loads((d / SITE_FILE).read_text())
        except OSError:
            raise SiteError(f"no site profile in {d} ({SITE_FILE} missing)") from None
        except ValueError as e:
            raise SiteError(f"{d / SITE_FILE} is not valid JSON: {e}") from None
        if not isinstance(meta, dict) or not isinstance(meta.get("base_sha256"), str):  # not "weights None…"
            raise SiteError(f"{d.name}/{SITE_FILE} is malformed: it names no base model (base_sha256)")
        if card is not None:
            check_base(meta.get("name"), meta["base_sha256"], card)
        arrays = d / str(meta.get("arrays", ARRAYS_FILE))
        if arrays.parent != d or not arrays.is_file():
            raise SiteError(f"site profile {d}: arrays file missing")
        if sha256_file(arrays) != meta.get("arrays_sha256"):
            raise SiteError(f"site profile {d}: {arrays.name} does not match its sha256 in {SITE_FILE} (changed or "
                            "from another profile)")
        try:
            with np.load(arrays, allow_pickle=False) as z:
                arr = {k: z[k] for k in z.files}
            adapter = Adapter(float(arr["scale"][0]), float(arr["bias"][0]), arr.get("w"), arr.get("mean"), arr.get("std"))
            adoption = meta.get("adoption") or {}
            target = meta.get("target_sensitivity")
            return cls(name=str(meta["name"]), base_sha256=str(meta["base_sha256"]), method=str(meta["method"]),
                       threshold=float(meta["threshold"]), adapter=adapter,
                       films={str(k): int(v) for k, v in meta["films"].items()},
                       figures=meta.get("cross_validated", {}), created=str(meta.get("created", "")),
                       rough=bool(meta.get("rough_estimate", False)),
                       roc={k[4:]: v for k, v in arr.items() if k.startswith("roc_")},
                       target=None if target is None else float(target), rule=str(meta.get("rule", "")),
                       operating_points=list(meta.get("operating_points", [])),
                       offered=bool(adoption.get("offered", True)), offered_why=str(adoption.get("why", "")),
                       override=adoption.get("override") or None)
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            raise SiteError(f"site profile {d} is malformed: {e}") from None


def check_counts(n_pos: int, n_neg: int, positive_class: str = "covid") -> None:
    if min(n_pos, n_neg) < MIN_PER_CLASS:
        raise TooFewFilms(f"a site profile needs at least {MIN_PER_CLASS} films of each class; this set has {n_pos} "
                          f"{positive_class} and {n_neg} non-{positive_class} (add "
                          f"{max(0, MIN_PER_CLASS - n_pos)} {positive_class} and {max(0, MIN_PER_CLASS - n_neg)} "
                          f"non-{positive_class})")


def _roc_points(y: np.ndarray, s: np.ndarray) -> np.ndarray:
    r = roc_curve(y, s)
    return np.zeros((2, 0)) if r is None else np.stack([np.asarray(r.fpr, float), np.asarray(r.tpr, float)])


def offer(y: np.ndarray, adapted: np.ndarray, shipped: np.ndarray, adapted_auc_ci, shipped_auc_ci) -> tuple[bool, str]:
    """(offered, why): a profile is not offered when its cross-validated operating point is clearly worse than
    the shipped model's on the same films: Youden's J (sensitivity + specificity - 1) lower with a paired 95%
    CI wholly below 0, or an AUC whose 95% CI lies wholly below the shipped one's."""
    d, lo, hi = youden_difference_ci(y, adapted, shipped)
    if hi < 0:
        return False, (f"at this sensitivity its cross-validated sensitivity + specificity is {-d:.2f} lower than "
                       f"the shipped model's (95% CI {-hi:.2f} to {-lo:.2f} lower)")
    if adapted_auc_ci and shipped_auc_ci and adapted_auc_ci[1] < shipped_auc_ci[0]:
        return False, "its cross-validated AUC is clearly below the shipped model's (the 95% CIs do not overlap)"
    return True, (f"sensitivity + specificity {d:+.2f} against the shipped model's (95% CI {lo:+.2f} to {hi:+.2f})")


def fit_profile(data: SiteData, card, name: str, methods: Sequence[str] | None = None, n_boot: int = 1000,
                k: int = N_FOLDS, target: float = DEFAULT_TARGET, rule: str = RULE,
                targets: Sequence[float] = TARGETS) -> SiteProfile:
    """Fit a profile on the site's films for sensitivity `target`: every method nested-cross-validated, the
    best ranking kept (a more flexible method only when it beats a simpler one's CV AUC by more than
    PREFER_SIMPLER), refitted on all films; its threshold at each target by `rule`, each with the rates the
    nested cross-validation expects and whether it is offered for adoption."""
    n_pos, n_neg = data.counts
    check_counts(n_pos, n_neg, card.positive_class)
    target = check_target(target)
    all_targets = tuple(sorted({*(round(float(t), 4) for t in targets), target}))
    z = base_logodds(data.logits, card.temperature, card.positive_index)
    shipped_p = expit(z)
    shipped_d = shipped_p >= card.threshold
    runs = {m: nested(z, data, METHODS[m], (rule,), all_targets, card.threshold, k) for m in (methods or METHODS)}
    aucs = {m: within_fold_auc(data.y, r.probability, r.folds)[0] for m, r in runs.items()}
    best = None
    for m in runs:  # simplest first
        if best is None or (aucs[m] or 0) > (aucs[best] or 0) + PREFER_SIMPLER:
            best = m
    run = runs[best]
    adapter, s = inner_logodds(z, data, METHODS[best])
    thr = thresholds(adapter, data.y, s, rule, all_targets, card.threshold)
    shipped = figures(data.y, shipped_p, card.threshold, n_boot)
    ranking = figures(data.y, run.probability, 0.5, n_boot)
    ranking["auc"], ranking["ci"]["auc"] = within_fold_auc(data.y, run.probability, run.folds, n_boot)
    shipped["auc_same_pairs"] = round(within_fold_auc(data.y, shipped_p, run.folds)[0], 4)
    ops = []
    for t in all_targets:
        r = rates(data.y, run.decisions[(rule, t)])
        ok, why = offer(data.y, run.decisions[(rule, t)], shipped_d, ranking["ci"]["auc"], shipped["ci"]["auc"])
        ops.append({"target": t, "threshold": round(thr[t], 6), **{k_: r[k_] for k_ in (
            "sensitivity", "specificity", "flagged_per_100", "flagged_per_100_ci", "ci")}, "offered": ok, "why": why})
    figs = {"shipped": shipped, "adapted": {**ranking, "ci": {"auc": ranking["ci"]["auc"]}},
            "candidates_auc": {m: None if v is None else round(v, 4) for m, v in aucs.items()},
            "folds": run.n_folds, "folds_by": "film" if data.groups is None else "patient",
            "note": "adapted: nested cross-validation (each fold's profile and threshold fitted without its films, "
                    "the threshold on inner out-of-fold scores); its AUC over the pairs of films that share a fold "
                    "(shipped model on the same pairs: auc_same_pairs), its ROC of the pooled out-of-fold "
                    "probabilities; the method was chosen on the same folds, so its AUC is slightly optimistic"}
    profile = SiteProfile(name=name, base_sha256=card.weights_sha256, method=best, threshold=0.5, adapter=adapter,
                          films={card.positive_class: n_pos, f"non-{card.positive_class}": n_neg}, figures=figs,
                          created=datetime.now(timezone.utc).isoformat(timespec="seconds"),
                          rough=min(n_pos, n_neg) < ROUGH_PER_CLASS,
                          roc={"shipped": _roc_points(data.y, shipped_p), "adapted": _roc_points(data.y, run.probability)},
                          rule=rule, operating_points=ops)
    return profile.at_target(target)


# ---------------------------------------------------------------------------------------------
# the site's films through a Classifier


@dataclass
class Collected:
    data: SiteData
    skipped: list[tuple[str, str]]   # (path, why): unreadable, not a chest film, unlabelled


def collect(classifier, items: Sequence, batch_size: int = 16,
            progress: Callable[[int, int], None] | None = None) -> Collected:
    """The base model's mean logits and first network's features of labelled items (covidxr.evaluate's
    LabelledItem): unreadable films, films the gate refuses and unlabelled ones are left out, listed."""
    import torch

    from .evaluate import _read, truth

    logits, feats, ys, skipped = [], [], [], []
    pos = classifier.card.positive_class
    if progress:
        progress(0, len(items))
    for start in range(0, len(items), batch_size):
        batch = items[start:start + batch_size]
        films, keep = [], []
        for it in batch:
            t = truth(it.label, pos)
            film, err = _read(it)
            if film is None or t is None:
                skipped.append((it.path, err or "no class folder"))
                continue
            films.append(film)
            keep.append(t)
        if films:
            inputs = classifier.prepare(films)
            with torch.inference_mode():
                lg, ft = classifier.forward(inputs)
            for film, x, l, f, t in zip(films, inputs, lg, ft, keep):
                if classifier.ood is not None:
                    verdict = classifier.decide(film, x, l, f).ood
                    if verdict is not None and not verdict.is_chest:
                        skipped.append((film.name, "not a frontal chest radiograph"))
                        continue
                logits.append(l.numpy())
                feats.append(f.numpy())
                ys.append(t)
        if progress:
            progress(start + len(batch), len(items))
    if not ys:
        return Collected(SiteData(np.zeros((0, len(classifier.card.class_names))), np.zeros((0, 1)), np.zeros(0, bool)),
                         skipped)
    return Collected(SiteData(np.stack(logits), np.stack(feats), np.array(ys)), skipped)
