"""A site profile's cross-validation: the site's films as numbers, their folds, and nested cross-validation of
an adapter with its operating point (covidxr.site_maths), so that every figure a site reads is of films that
neither the adapter nor its threshold saw.

Nested: in each outer fold the adapter is fitted on the other films, its threshold is read (by the rule, at
the target) off inner out-of-fold scores of those films only, and the outer fold's films are scored and
decided by both. Decisions pool across folds (each fold decides at its own threshold); rankings do not:
each fold's profile has its own scale and offset, so its scores are pooled as probabilities, never re-centred
on the fold's threshold (issue 25: re-centring moved each fold by its own threshold's log-odds, several units
apart when the empirical rule put one under the lowest COVID-19 film, and reordered the films across folds,
which is how a "temperature" profile, monotone within each fold, scored an AUC below the shipped one).
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass, field

import numpy as np

from .binary_report import binary_report
from .intervals import wilson_ci
from .site_maths import Adapter, fit_adapter, operating_point

N_FOLDS = 5
INNER_FOLDS = 3
SEED = 0


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


def cv_folds(y: np.ndarray, groups: np.ndarray | None, k: int = N_FOLDS, seed: int = SEED) -> list[np.ndarray]:
    """Test indices of k folds by scikit-learn's StratifiedGroupKFold: a patient's films (groups) in one fold,
    single films when there are no ids, the classes spread evenly; k is lowered to the rarer class's count of
    patients when that is smaller, so every fold can hold both classes. Every film is in exactly one fold."""
    from sklearn.model_selection import StratifiedGroupKFold

    y = np.asarray(y, bool)
    g = np.arange(len(y)).astype(str) if groups is None else np.asarray(groups).astype(str)
    per_class = min(len(set(g[y])), len(set(g[~y])))
    k = max(2, min(k, per_class))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "the least populated class has only N members"
        splits = StratifiedGroupKFold(k, shuffle=True, random_state=seed).split(np.zeros(len(y)), y, g)
        return [np.sort(test) for _, test in splits if len(test)]


def _others(n: int, test: np.ndarray) -> np.ndarray:
    return np.setdiff1d(np.arange(n), test)


def inner_logodds(z: np.ndarray, data: SiteData, penalty: float | None, k: int = INNER_FOLDS,
                  seed: int = SEED) -> tuple[Adapter, np.ndarray]:
    """The adapter on all of `data`, and the site log-odds of each of its films by an adapter fitted without
    it (in-sample scores would flatter the sensitivity its threshold is read at)."""
    adapter = fit_adapter(z, data.features, data.y, penalty)
    out = np.zeros(len(data.y))
    for test in cv_folds(data.y, data.groups, k, seed + 1):
        train = _others(len(data.y), test)
        a = adapter
        if data.y[train].any() and not data.y[train].all():
            a = fit_adapter(z[train], data.features[train], data.y[train], penalty)
        out[test] = a.logodds(z[test], data.features[test])
    return adapter, out


def thresholds(adapter: Adapter, y: np.ndarray, s: np.ndarray, rule: str, targets: tuple[float, ...],
               shipped_threshold: float, n: int | None = None) -> dict[float, float]:
    """{target: threshold} by `rule` on inner out-of-fold log-odds s (`n`: see site_maths.operating_point)."""
    point = adapter.shipped_point(shipped_threshold)
    return {t: operating_point(rule, y, s, t, point, n) for t in targets}


@dataclass
class Nested:
    """Nested cross-validation of one method: pooled out-of-fold probabilities (for the ranking: AUC, ROC) and,
    per rule and target, every film's decision by its fold's profile at its fold's threshold."""
    probability: np.ndarray
    decisions: dict[tuple[str, float], np.ndarray] = field(default_factory=dict)
    fold_thresholds: dict[tuple[str, float], list[float]] = field(default_factory=dict)
    folds: list[np.ndarray] = field(default_factory=list)

    @property
    def n_folds(self) -> int:
        return len(self.folds)


def nested(z: np.ndarray, data: SiteData, penalty: float | None, rules: tuple[str, ...], targets: tuple[float, ...],
           shipped_threshold: float, k: int = N_FOLDS, seed: int = SEED) -> Nested:
    n = len(data.y)
    out = Nested(np.zeros(n))
    folds = out.folds = cv_folds(data.y, data.groups, k, seed)
    n_class = int(min(data.counts))  # the site's rarer class: each fold applies the rule's branch the profile will
    for rule in rules:
        for t in targets:
            out.decisions[(rule, t)] = np.zeros(n, bool)
            out.fold_thresholds[(rule, t)] = []
    for test in folds:
        train = _others(n, test)
        part = data.subset(train)
        adapter, s = inner_logodds(z[train], part, penalty, seed=seed)
        p = adapter.probability(z[test], data.features[test])
        out.probability[test] = p
        for rule in rules:
            for t, thr in thresholds(adapter, part.y, s, rule, targets, shipped_threshold, n_class).items():
                out.decisions[(rule, t)][test] = p >= thr
                out.fold_thresholds[(rule, t)].append(thr)
    return out


# ---------------------------------------------------------------------------------------------
# figures


def rates(y: np.ndarray, decided: np.ndarray) -> dict:
    """Sensitivity and specificity of decisions with Wilson 95% CIs, and what the specificity means per 100
    films without COVID-19 (flagged: 100 * (1 - specificity), its CI from the specificity's)."""
    y, d = np.asarray(y, bool), np.asarray(decided, bool)
    tp, fn, tn, fp = int((d & y).sum()), int((~d & y).sum()), int((~d & ~y).sum()), int((d & ~y).sum())
    out: dict = {"ci": {}}
    for name, k, m in (("sensitivity", tp, tp + fn), ("specificity", tn, tn + fp)):
        out[name] = None if m == 0 else round(k / m, 4)
        out["ci"][name] = None if m == 0 else [round(v, 4) for v in wilson_ci(k, m)]
    spec, ci = out["specificity"], out["ci"]["specificity"]
    out["flagged_per_100"] = None if spec is None else round(100 * (1 - spec))
    out["flagged_per_100_ci"] = None if ci is None else [round(100 * (1 - ci[1])), round(100 * (1 - ci[0]))]
    out["confusion"] = {"tp": tp, "fn": fn, "tn": tn, "fp": fp}
    return out


def figures(y: np.ndarray, scores: np.ndarray, threshold: float, n_boot: int = 1000,
            decided: np.ndarray | None = None) -> dict:
    """AUC of `scores`, and sensitivity and specificity of `decided` (default: scores >= threshold), with 95%
    CIs (covidxr.metrics), plain JSON."""
    y = np.asarray(y, bool)
    r = binary_report(y, scores, threshold, n_boot=n_boot).as_dict()
    out = {"threshold": round(float(threshold), 6), "n_pos": r["n_pos"], "n_neg": r["n_neg"], "auc": r["auc"],
           "ci": {"auc": r["ci"]["auc"]}}
    if decided is None:
        decided = np.asarray(scores) >= threshold
    rr = rates(y, decided)
    out |= {k: rr[k] for k in ("sensitivity", "specificity", "flagged_per_100", "flagged_per_100_ci", "confusion")}
    out["ci"] |= rr["ci"]
    return out


def within_fold_auc(y: np.ndarray, scores: np.ndarray, folds: list[np.ndarray], n_boot: int = 0,
                    seed: int = SEED) -> tuple[float | None, list | None]:
    """(AUC, 95% CI) over the (COVID-19, other) pairs of films that share a fold, so that both films of a pair
    were ranked by one model: pooling pairs across folds would compare scores of models with different
    scales and offsets (a temperature, monotone within each fold, reordered the pooled films: issue 25).
    The CI: a percentile bootstrap of the films, resampled within class and fold (None without n_boot)."""
    y, s = np.asarray(y, bool), np.asarray(scores, np.float64)
    blocks = []
    for f in folds:
        pos, neg = s[f][y[f]], s[f][~y[f]]
        if len(pos) and len(neg):
            blocks.append((pos[:, None] > neg[None, :]) + 0.5 * (pos[:, None] == neg[None, :]))
    if not blocks:
        return None, None
    value = sum(b.sum() for b in blocks) / sum(b.size for b in blocks)
    if not n_boot:
        return float(value), None
    rng = np.random.default_rng(seed)
    num = np.zeros(n_boot)
    den = np.zeros(n_boot)
    for b in blocks:
        wp = rng.multinomial(b.shape[0], np.full(b.shape[0], 1 / b.shape[0]), n_boot)
        wn = rng.multinomial(b.shape[1], np.full(b.shape[1], 1 / b.shape[1]), n_boot)
        num += np.einsum("ri,ij,rj->r", wp, b, wn)
        den += b.size
    reps = num / den
    return float(value), [round(float(np.quantile(reps, 0.025)), 4), round(float(np.quantile(reps, 0.975)), 4)]


def youden_difference_ci(y: np.ndarray, a: np.ndarray, b: np.ndarray, n_boot: int = 2000,
                         seed: int = SEED) -> tuple[float, float, float]:
    """(J(a) - J(b), 95% CI low, high): Youden's J (sensitivity + specificity - 1) of two sets of decisions on
    the same films, by a paired bootstrap (films resampled within each class)."""
    y, a, b = np.asarray(y, bool), np.asarray(a, bool), np.asarray(b, bool)
    rng = np.random.default_rng(seed)
    pos, neg = np.flatnonzero(y), np.flatnonzero(~y)

    def j(d: np.ndarray, ip: np.ndarray, ineg: np.ndarray) -> np.ndarray:
        return d[ip].mean(-1) - d[ineg].mean(-1)   # sensitivity - (1 - specificity)

    value = float(j(a, pos, neg) - j(b, pos, neg))
    ip = pos[rng.integers(0, len(pos), (n_boot, len(pos)))]
    ineg = neg[rng.integers(0, len(neg), (n_boot, len(neg)))]
    reps = j(a, ip, ineg) - j(b, ip, ineg)
    return value, float(np.quantile(reps, 0.025)), float(np.quantile(reps, 0.975))
