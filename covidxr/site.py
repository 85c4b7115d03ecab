"""Site profiles: a hospital validates and recalibrates the model on its own labelled films.

A profile sits on top of one base model (the card's weights, by sha256) and changes only the last step:
the COVID-19 probability becomes

    p = sigmoid(a * z + b + ((f - mean) / std) . w)

where z is the base model's calibrated COVID-19 log-odds (its mean logits over the card's temperature) and
f the first network's pooled features (the gate's; every path that decides a film, explain() included, has
them). Two methods are fitted and the one that does best in cross-validation on the site's films is kept:

- "temperature": a and b only (w = 0): the site's own temperature (1/a) and offset, then the threshold by
  the card's rule. Keeps the base model's ranking (AUC) and moves its operating point.
- "head": also w, a logistic layer on the frozen features, shrunk toward the shipped head (w = 0 is the
  shipped head) by an L2 penalty; can change the ranking.

Re-estimating BatchNorm statistics on the site's films (AdaBN) was measured too, on the leave-one-source-out
fold models (scripts/site_measure.py); it needs the networks before BatchNorm is folded into their
convolutions and gave no gain worth that (docs/site-profiles.md), so it is not a method here.

Figures are cross-validated on the site's films: folds by patient where ids exist, by film otherwise; a film
is never scored by a profile fitted on it, and the threshold inside each fold is chosen on inner
out-of-fold scores of its training part only. The shipped model's figures on the same films come beside them.

On disk: `SITE_DIR/site.json` (name, time, base model sha256, films per class, method, figures, threshold,
temperature, the arrays' sha256) and `SITE_DIR/site.npz` (plain float arrays, loaded with allow_pickle=False).
No film names, pixels or patient ids are stored.
"""
from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from .metrics import auc, binary_report, choose_threshold

SITE_FILE, ARRAYS_FILE = "site.json", "site.npz"
FORMAT = 1
MIN_PER_CLASS = 8          # fewer films of either class: refused
ROUGH_PER_CLASS = 30       # fewer: fitted, but the estimate is rough
HEAD_PENALTIES = (3.0, 0.3, 0.03)  # L2 on w (standardised features), strongest first
# A more flexible method must beat a simpler one's CV AUC by more than this. Measured (scripts/site_measure.py,
# ieee8023-jul2020 fold): with 0.005 the head won the inner CV on both halves and lost 0.02-0.07 AUC on the
# other half; small sites' CV AUCs vary by several hundredths, so only a clear gain counts.
PREFER_SIMPLER = 0.03
N_FOLDS = 5
INNER_FOLDS = 3
SEED = 0


class SiteError(ValueError):
    """A profile that cannot be made, loaded or used (too few films, another base model, tampered arrays)."""


class TooFewFilms(SiteError):
    pass


def min_sensitivity(card) -> float:
    """The card's threshold rule's minimum validation sensitivity (e.g. '... sensitivity >= 0.97 ...')."""
    m = re.search(r">=\s*([01](?:\.\d+)?)", getattr(card, "threshold_rule", "") or "")
    return float(m.group(1)) if m else 0.97


# ---------------------------------------------------------------------------------------------
# the site's films as the profile sees them


@dataclass
class SiteData:
    """The site's labelled films, as numbers: the base model's mean logits (n, C), the first network's
    pooled features (n, d), the truth (n,) and, where known, patient ids (only to group folds; never stored)."""
    logits: np.ndarray
    features: np.ndarray
    y: np.ndarray
    groups: np.ndarray | None = None

    def __post_init__(self) -> None:
        self.logits = np.asarray(self.logits, np.float64)
        self.features = np.asarray(self.features, np.float64)
        self.y = np.asarray(self.y, bool)

    def subset(self, idx: np.ndarray) -> "SiteData":
        return SiteData(self.logits[idx], self.features[idx], self.y[idx],
                        None if self.groups is None else np.asarray(self.groups)[idx])

    @property
    def counts(self) -> tuple[int, int]:
        return int(self.y.sum()), int((~self.y).sum())


def base_logodds(logits: np.ndarray, temperature: float, positive_index: int) -> np.ndarray:
    """The base model's calibrated positive-class log-odds, log p - log(1 - p), from its mean logits."""
    z = np.asarray(logits, np.float64) / temperature
    z = z - z.max(1, keepdims=True)
    lse = np.log(np.exp(z).sum(1))
    others = np.delete(z, positive_index, 1)
    mo = others.max(1)
    return (z[:, positive_index] - lse) - (np.log(np.exp(others - mo[:, None]).sum(1)) + mo - lse)


def sigmoid(x: np.ndarray) -> np.ndarray:
    return 0.5 * (1 + np.tanh(0.5 * np.asarray(x, np.float64)))


# ---------------------------------------------------------------------------------------------
# the model of a profile


@dataclass
class Adapter:
    """p = sigmoid(scale * z + bias + ((f - mean) / std) . w)."""
    scale: float = 1.0
    bias: float = 0.0
    w: np.ndarray | None = None
    mean: np.ndarray | None = None
    std: np.ndarray | None = None

    def logodds(self, z: np.ndarray, features: np.ndarray | None) -> np.ndarray:
        out = self.scale * np.asarray(z, np.float64) + self.bias
        if self.w is not None and features is not None:
            out = out + ((np.asarray(features, np.float64) - self.mean) / self.std) @ self.w
        return out

    def probability(self, z: np.ndarray, features: np.ndarray | None) -> np.ndarray:
        return sigmoid(self.logodds(z, features))


def fit_adapter(z: np.ndarray, features: np.ndarray, y: np.ndarray, penalty: float | None) -> Adapter:
    """Logistic fit of an Adapter by L-BFGS: scale and bias (weakly held at 1 and 0) and, with a `penalty`,
    w on standardised features, held toward 0 (the shipped head) by penalty * |w|^2."""
    import torch

    zt = torch.from_numpy(np.asarray(z, np.float64))
    yt = torch.from_numpy(np.asarray(y, np.float64))
    ab = torch.tensor([1.0, 0.0], dtype=torch.float64, requires_grad=True)
    params = [ab]
    xt = w = mean = std = None
    if penalty is not None:
        f = np.asarray(features, np.float64)
        mean = f.mean(0)
        std = np.sqrt(f.var(0) + (0.1 * f.std() + 1e-6) ** 2)  # floored: few films give noisy variances
        xt = torch.from_numpy((f - mean) / std)
        w = torch.zeros(f.shape[1], dtype=torch.float64, requires_grad=True)
        params.append(w)
    opt = torch.optim.LBFGS(params, lr=1, max_iter=100, tolerance_grad=1e-9, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        s = ab[0] * zt + ab[1]
        if w is not None:
            s = s + xt @ w
        loss = torch.nn.functional.binary_cross_entropy_with_logits(s, yt)
        loss = loss + 0.01 * ((ab[0] - 1) ** 2 + 0.1 * ab[1] ** 2)
        if w is not None:
            loss = loss + penalty * (w ** 2).sum() / xt.shape[1] * 10
        loss.backward()
        return loss

    opt.step(closure)
    a, b = (float(v) for v in ab.detach())
    if w is None:
        return Adapter(a, b)
    return Adapter(a, b, w.detach().numpy().copy(), mean, std)


METHODS: dict[str, float | None] = {"temperature": None,
                                    **{f"head_l2_{p:g}": p for p in HEAD_PENALTIES}}


def method_kind(method: str) -> str:
    return "temperature" if method == "temperature" else "head"


# ---------------------------------------------------------------------------------------------
# cross-validation


def cv_folds(y: np.ndarray, groups: np.ndarray | None, k: int = N_FOLDS, seed: int = SEED) -> list[np.ndarray]:
    """Test indices of k folds: whole patients (groups) go to one fold, or single films when there are no
    ids; each class's groups are dealt round-robin in a seeded random order, so every fold holds both
    classes when there are enough. Every film is in exactly one test fold."""
    y = np.asarray(y, bool)
    g = np.arange(len(y)).astype(str) if groups is None else np.asarray(groups).astype(str)
    rng = np.random.default_rng(seed)
    uniq = sorted(set(g))
    label = {u: bool(y[g == u].mean() >= 0.5) for u in uniq}
    fold_of: dict[str, int] = {}
    start = 0
    for cls in (True, False):
        members = [u for u in uniq if label[u] == cls]
        rng.shuffle(members)
        for j, u in enumerate(members):
            fold_of[u] = (start + j) % k
        start += len(members)
    assign = np.array([fold_of[u] for u in g])
    return [np.flatnonzero(assign == f) for f in range(k) if (assign == f).any()]


@dataclass
class Fitted:
    adapter: Adapter
    threshold: float


def _fit_with_threshold(z: np.ndarray, data: SiteData, penalty: float | None, min_sens: float,
                        inner: int = INNER_FOLDS, seed: int = SEED) -> Fitted:
    """The adapter on all of `data`, and its threshold by the card's rule on inner out-of-fold scores
    (scores of films the inner fits never saw; in-sample scores would flatter the sensitivity)."""
    adapter = fit_adapter(z, data.features, data.y, penalty)
    oof = np.zeros(len(data.y))
    folds = cv_folds(data.y, data.groups, inner, seed + 1)
    for test in folds:
        train = np.setdiff1d(np.arange(len(data.y)), test)
        if data.y[train].all() or not data.y[train].any():
            oof[test] = adapter.probability(z[test], data.features[test])
            continue
        a = fit_adapter(z[train], data.features[train], data.y[train], penalty)
        oof[test] = a.probability(z[test], data.features[test])
    return Fitted(adapter, choose_threshold(data.y, oof, min_sens))


def _logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(np.asarray(p, np.float64), 1e-9, 1 - 1e-9)
    return np.log(p) - np.log1p(-p)


def cross_validate(z: np.ndarray, data: SiteData, penalty: float | None, min_sens: float,
                   k: int = N_FOLDS, seed: int = SEED) -> np.ndarray:
    """Out-of-fold scores, each fold's re-centred so that its own threshold is 0.5 (decisions at 0.5 are
    each fold's decisions; AUC pools the folds)."""
    out = np.zeros(len(data.y))
    for test in cv_folds(data.y, data.groups, k, seed):
        train = np.setdiff1d(np.arange(len(data.y)), test)
        fitted = _fit_with_threshold(z[train], data.subset(train), penalty, min_sens, seed=seed)
        p = fitted.adapter.probability(z[test], data.features[test])
        out[test] = sigmoid(_logit(p) - _logit(fitted.threshold))
    return out


def figures(y: np.ndarray, scores: np.ndarray, threshold: float, n_boot: int = 1000) -> dict:
    """AUC, sensitivity and specificity with 95% CIs (covidxr.metrics), plain JSON."""
    r = binary_report(y, scores, threshold, n_boot=n_boot).as_dict()
    return {"threshold": round(float(threshold), 6), "n_pos": r["n_pos"], "n_neg": r["n_neg"],
            **{k: r[k] for k in ("auc", "sensitivity", "specificity", "accuracy")},
            "ci": {k: r["ci"][k] for k in ("auc", "sensitivity", "specificity", "accuracy")},
            "confusion": r["confusion"]}


# ---------------------------------------------------------------------------------------------
# the profile


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


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

    @property
    def temperature(self) -> float:
        """The site's temperature on the base model's log-odds (1 / scale)."""
        return 1.0 / self.adapter.scale if self.adapter.scale else float("inf")

    @property
    def n_films(self) -> int:
        return int(sum(self.films.values()))

    def describe(self) -> str:
        """'Site profile: NAME, fitted on N films, DATE'."""
        return f"Site profile: {self.name}, fitted on {self.n_films} films, {self.created[:10]}"

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
        z = logits / temperature
        q = np.exp(z - z.max(1, keepdims=True))
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
        np.savez(d / ARRAYS_FILE, **arrays)
        meta = {"format": FORMAT, "name": self.name, "created": self.created, "base_sha256": self.base_sha256,
                "films": self.films, "method": self.method, "rough_estimate": self.rough,
                "threshold": self.threshold, "temperature": self.temperature, "bias": a.bias,
                "cross_validated": self.figures, "arrays": ARRAYS_FILE,
                "arrays_sha256": _sha256(d / ARRAYS_FILE)}
        (d / SITE_FILE).write_text(json.dumps(meta, indent=1) + "\n")
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
        if card is not None and meta.get("base_sha256") != card.weights_sha256:
            raise SiteError(f"site profile {meta.get('name')!r} was made for another base model "
                            f"(weights {str(meta.get('base_sha256'))[:12]}…, this model's are {card.weights_sha256[:12]}…)")
        arrays = d / str(meta.get("arrays", ARRAYS_FILE))
        if arrays.parent != d or not arrays.is_file():
            raise SiteError(f"site profile {d}: arrays file missing")
        if _sha256(arrays) != meta.get("arrays_sha256"):
            raise SiteError(f"site profile {d}: {arrays.name} does not match its sha256 in {SITE_FILE} (changed or "
                            "from another profile)")
        try:
            with np.load(arrays, allow_pickle=False) as z:
                arr = {k: z[k] for k in z.files}
            adapter = Adapter(float(arr["scale"][0]), float(arr["bias"][0]), arr.get("w"), arr.get("mean"), arr.get("std"))
            return cls(name=str(meta["name"]), base_sha256=str(meta["base_sha256"]), method=str(meta["method"]),
                       threshold=float(meta["threshold"]), adapter=adapter,
                       films={str(k): int(v) for k, v in meta["films"].items()},
                       figures=meta.get("cross_validated", {}), created=str(meta.get("created", "")),
                       rough=bool(meta.get("rough_estimate", False)),
                       roc={k[4:]: v for k, v in arr.items() if k.startswith("roc_")})
        except (KeyError, TypeError, ValueError) as e:
            raise SiteError(f"site profile {d} is malformed: {e}") from None


def check_counts(n_pos: int, n_neg: int, positive_class: str = "covid") -> None:
    if min(n_pos, n_neg) < MIN_PER_CLASS:
        raise TooFewFilms(f"a site profile needs at least {MIN_PER_CLASS} films of each class; this set has {n_pos} "
                          f"{positive_class} and {n_neg} non-{positive_class} (add "
                          f"{max(0, MIN_PER_CLASS - n_pos)} {positive_class} and {max(0, MIN_PER_CLASS - n_neg)} "
                          f"non-{positive_class})")


def _roc_points(y: np.ndarray, s: np.ndarray) -> np.ndarray:
    from .metrics import roc_curve

    r = roc_curve(y, s)
    return np.zeros((2, 0)) if r is None else np.stack([np.asarray(r.fpr, float), np.asarray(r.tpr, float)])


def fit_profile(data: SiteData, card, name: str, methods: Sequence[str] | None = None, n_boot: int = 1000,
                k: int = N_FOLDS) -> SiteProfile:
    """Fit a profile on the site's films: every method cross-validated, the best kept (a more flexible one
    only when it beats a simpler one's CV AUC by more than PREFER_SIMPLER), refitted on all films."""
    n_pos, n_neg = data.counts
    check_counts(n_pos, n_neg, card.positive_class)
    min_sens = min_sensitivity(card)
    z = base_logodds(data.logits, card.temperature, card.positive_index)
    shipped_p = sigmoid(z)
    oof = {m: cross_validate(z, data, METHODS[m], min_sens, k) for m in (methods or METHODS)}
    aucs = {m: auc(data.y, s) for m, s in oof.items()}
    best = None
    for m in oof:  # simplest first
        if best is None or (aucs[m] or 0) > (aucs[best] or 0) + PREFER_SIMPLER:
            best = m
    fitted = _fit_with_threshold(z, data, METHODS[best], min_sens)
    figs = {"shipped": figures(data.y, shipped_p, card.threshold, n_boot),
            "adapted": figures(data.y, oof[best], 0.5, n_boot),
            "candidates_auc": {m: None if v is None else round(v, 4) for m, v in aucs.items()},
            "folds": len(cv_folds(data.y, data.groups, k)), "folds_by": "film" if data.groups is None else "patient",
            "note": "adapted: out-of-fold scores (each fold's profile and threshold fitted without its films); "
                    "the method was chosen on the same folds, so this is slightly optimistic"}
    figs["adapted"]["threshold"] = round(fitted.threshold, 6)
    return SiteProfile(name=name, base_sha256=card.weights_sha256, method=best, threshold=round(fitted.threshold, 6),
                       adapter=fitted.adapter, films={card.positive_class: n_pos, f"non-{card.positive_class}": n_neg},
                       figures=figs, created=datetime.now(timezone.utc).isoformat(timespec="seconds"),
                       rough=min(n_pos, n_neg) < ROUGH_PER_CLASS,
                       roc={"shipped": _roc_points(data.y, shipped_p), "adapted": _roc_points(data.y, oof[best])})


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
