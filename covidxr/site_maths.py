"""A site profile's maths: the base model's log-odds, the adapter that recalibrates them, and the rules that
place its operating point at a target sensitivity (covidxr.site fits and stores them; covidxr.site_cv
cross-validates them).

The adapter turns the base model's calibrated COVID-19 log-odds z and the first network's pooled features f
into the site's log-odds, s = a * z + b + ((f - mean) / std) . w. The operating-point rules read a threshold
off scores of films the adapter never saw (inner out-of-fold scores), for a sensitivity the site chooses.
Why the rules differ: with 8-30 films of a class, the empirical rule ("the highest Youden's J among
thresholds with sensitivity >= S") lands at or under the lowest COVID-19 film whenever S is high, and on the
next films that calls nearly everything COVID-19 (issue 25); the binormal rule reads S off a normal fitted to
the COVID-19 films' log-odds, which uses every film rather than the one or two at the bottom.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.special import expit, logsumexp
from scipy.stats import norm

from .calibration import logodds
from .metrics import choose_threshold

HEAD_PENALTIES = (3.0, 0.3, 0.03)  # L2 on w (standardised features), strongest first
METHODS: dict[str, float | None] = {"temperature": None, **{f"head_l2_{p:g}": p for p in HEAD_PENALTIES}}
RULES = ("empirical", "binormal", "shrunk", "floor")
SHRINK_FILMS = 30   # "shrunk": weight n / (n + SHRINK_FILMS) on the site's own point, n = films of the rarer class
FLOOR_FILMS = 20    # "floor": fewer films of a class than this: the shipped operating point, the site's ranking


def method_kind(method: str) -> str:
    return "temperature" if method == "temperature" else "head"


def base_logodds(logits: np.ndarray, temperature: float, positive_index: int) -> np.ndarray:
    """The base model's calibrated positive-class log-odds, log p - log(1 - p), from its mean logits."""
    z = np.asarray(logits, np.float64) / temperature
    return z[:, positive_index] - logsumexp(np.delete(z, positive_index, 1), axis=1)


@dataclass
class Adapter:
    """s = scale * z + bias + ((f - mean) / std) . w, the site's log-odds; p = expit(s)."""
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
        return expit(self.logodds(z, features))

    def shipped_point(self, shipped_threshold: float) -> float:
        """The shipped operating point on this adapter's scale: the site log-odds of a film with the site's
        mean features whose base probability is the shipped threshold (a temperature profile decides at it
        exactly as the shipped model does)."""
        return float(self.scale * logodds(shipped_threshold) + self.bias)


def fit_adapter(z: np.ndarray, features: np.ndarray, y: np.ndarray, penalty: float | None) -> Adapter:
    """Logistic fit of an Adapter by L-BFGS: scale and bias (weakly held at 1 and 0) and, with a `penalty`,
    w on standardised features, held toward 0 (the shipped head) by penalty * |w|^2.

    The scale is fitted as exp(log scale), so it stays positive: a temperature is 1 / scale and must not turn
    the base model's ranking upside down. Unconstrained, a weak site's few films fitted a negative scale in
    some folds (issue 25: a "temperature" profile with AUC 0.27 where the shipped model had 0.53)."""
    import torch

    zt = torch.from_numpy(np.asarray(z, np.float64))
    yt = torch.from_numpy(np.asarray(y, np.float64))
    ab = torch.tensor([0.0, 0.0], dtype=torch.float64, requires_grad=True)   # log scale, bias
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
        scale = torch.exp(ab[0])
        s = scale * zt + ab[1]
        if w is not None:
            s = s + xt @ w
        loss = torch.nn.functional.binary_cross_entropy_with_logits(s, yt)
        loss = loss + 0.01 * ((scale - 1) ** 2 + 0.1 * ab[1] ** 2)
        if w is not None:
            loss = loss + penalty * (w ** 2).sum() / xt.shape[1] * 10
        loss.backward()
        return loss

    opt.step(closure)
    log_a, b = (float(v) for v in ab.detach())
    a = float(np.exp(log_a))
    if w is None:
        return Adapter(a, b)
    return Adapter(a, b, w.detach().numpy().copy(), mean, std)


# ---------------------------------------------------------------------------------------------
# the operating point at a target sensitivity


def binormal_point(y: np.ndarray, s: np.ndarray, target: float) -> float:
    """The log-odds at which a normal fitted to the COVID-19 films' log-odds s[y] has sensitivity `target`:
    mean - sd * Phi^-1(target). A smoothed reading of the ROC's sensitivity axis, steadier on few films than
    the empirical one (which sits at the lowest COVID-19 film or two)."""
    pos = np.asarray(s, np.float64)[np.asarray(y, bool)]
    sd = float(pos.std(ddof=1)) if pos.size > 1 else 1.0
    return float(pos.mean() - max(sd, 1e-6) * norm.ppf(target))


def operating_point(rule: str, y: np.ndarray, s: np.ndarray, target: float, shipped_point: float,
                    n: int | None = None) -> float:
    """The threshold (a probability) by `rule` (RULES) for sensitivity `target`, from the site's log-odds s of
    films the adapter never saw, their truth y, and the shipped operating point on the same scale. `n`: the
    films of the site's rarer class, which decide "floor" and "shrunk" (default: those of y). Cross-validation
    passes the whole site's, so that each fold applies the branch the profile itself will: a fold holds about
    4/5 of the films, and with 20-24 of a class it would otherwise judge the shipped point while the profile
    reads its own."""
    y = np.asarray(y, bool)
    n = int(min(y.sum(), (~y).sum())) if n is None else int(n)
    if rule == "empirical":
        return choose_threshold(y, expit(s), target)
    if rule == "binormal":
        point = binormal_point(y, s, target)
    elif rule == "shrunk":
        weight = n / (n + SHRINK_FILMS)
        point = weight * binormal_point(y, s, target) + (1 - weight) * shipped_point
    elif rule == "floor":
        point = shipped_point if n < FLOOR_FILMS else binormal_point(y, s, target)
    else:
        raise ValueError(f"unknown operating-point rule {rule!r} (one of {', '.join(RULES)})")
    return float(expit(point))
