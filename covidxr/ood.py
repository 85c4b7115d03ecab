"""Is this a frontal chest radiograph? The check that stands between an odd upload and a score.

A classifier trained on chest films still returns a confident COVID-19 probability for a knee, a
photo or a page of text. Two kinds of evidence say "this is not what the model was made for":

- the image itself: the classifier's pooled features (`CovidNet.features`, 1280-d) lie far from
  those of the training films, measured as a Mahalanobis distance under a Ledoit-Wolf shrunk
  covariance (top components kept exactly, the rest as one isotropic variance, to keep the file
  small); the threshold is a high quantile of the distances of held-out real films; and the lung
  segmenter finds no lungs, or an implausible share of the image;
- what the file says: a colour image, or DICOM tags naming another modality, body part or a
  lateral view. Missing tags are unknown, not failures: many real chest files lack them.

The statistics live in an .npz (no pickle) beside the weights, named and hashed in the model card.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

import numpy as np

from .card import CardError, ModelCard, sha256_file
from .films import Film

if TYPE_CHECKING:
    from .classifier import Classifier

OOD_FILE = "ood.npz"
LUNG_FRACTION_RANGE = (0.08, 0.75)       # share of the image a frontal chest film's lungs plausibly cover
RADIOGRAPH_MODALITIES = {"CR", "DX", "DR", "RG"}  # computed, digital, direct and film radiography
CHEST_BODY_PARTS = ("CHEST", "THORAX", "LUNG")
LATERAL_VIEWS = {"LL", "RL", "LAT", "LATERAL", "LLD", "RLD"}


@dataclass
class OODResult:
    is_chest: bool
    distance: float             # feature distance (about 1 for a typical training film)
    reasons: list[str]          # why it is not, in words for the clinician; empty when is_chest


def ledoit_wolf(z: np.ndarray) -> tuple[np.ndarray, float]:
    """Covariance of centred rows `z`, shrunk toward a scaled identity by the Ledoit-Wolf (2004)
    optimal amount, so that it stays well conditioned with fewer films than 1280 dimensions."""
    n, d = z.shape
    emp = z.T @ z / n
    mu = np.trace(emp) / d
    z2 = z ** 2
    beta = (np.sum(z2.T @ z2) / n - np.sum(emp ** 2)) / (d * n)
    delta = (np.sum(emp ** 2) - 2 * mu * np.trace(emp) + d * mu ** 2) / d
    shrink = 0.0 if delta <= 0 else float(min(beta, delta) / delta)
    cov = (1.0 - shrink) * emp
    cov[np.diag_indices(d)] += shrink * mu
    return cov, shrink


@dataclass
class OODDetector:
    mean: np.ndarray            # (d,)
    basis: np.ndarray           # (k, d) leading eigenvectors of the shrunk covariance
    variances: np.ndarray       # (k,) their eigenvalues
    residual: float             # mean eigenvalue of the d - k directions left out
    shrinkage: float = 0.0
    n_fit: int = 0
    threshold: float = float("nan")
    quantile: float = float("nan")
    n_calibration: int = 0
    extra: dict = field(default_factory=dict)
    orient_w: np.ndarray | None = None  # (d,) logistic weights: > 0 means rotated or inverted
    orient_b: float = 0.0

    @classmethod
    def fit(cls, features: np.ndarray, components: int = 256) -> "OODDetector":
        """Fit on the training films' pooled features (n, d)."""
        x = np.asarray(features, np.float64)
        if x.ndim != 2 or len(x) < 2:
            raise ValueError(f"need an (n >= 2, d) feature matrix, got shape {x.shape}")
        mean = x.mean(0)
        cov, shrink = ledoit_wolf(x - mean)
        evals, evecs = np.linalg.eigh(cov)              # ascending
        evals = np.maximum(evals, 1e-12)
        k = min(components, x.shape[1])
        rest = evals[:-k] if k < len(evals) else evals[:0]
        residual = float(rest.mean()) if len(rest) else float(evals[0])
        return cls(mean=mean.astype(np.float32), basis=evecs[:, -k:].T.astype(np.float32),
                   variances=evals[-k:].astype(np.float32), residual=residual, shrinkage=shrink,
                   n_fit=len(x))

    def distance(self, features: np.ndarray) -> np.ndarray:
        """Mahalanobis distance per row, divided by sqrt(d) so that a typical film scores about 1."""
        z = np.atleast_2d(np.asarray(features, np.float64)) - self.mean
        p = z @ self.basis.T.astype(np.float64)
        inside = np.sum(p ** 2 / self.variances, axis=1)
        outside = np.maximum(np.sum(z ** 2, axis=1) - np.sum(p ** 2, axis=1), 0.0) / self.residual
        return np.sqrt((inside + outside) / z.shape[1])

    def calibrate(self, val_features: np.ndarray, quantile: float = 0.99) -> "OODDetector":
        """Set the threshold at `quantile` of the distances of held-out real films (not the fit's:
        those sit closer than any new film will)."""
        d = self.distance(val_features)
        self.threshold, self.quantile, self.n_calibration = float(np.quantile(d, quantile)), quantile, len(d)
        return self

    @property
    def rule(self) -> str:
        return (f"Mahalanobis distance of the pooled classifier features (Ledoit-Wolf shrinkage "
                f"{self.shrinkage:.3f}, {len(self.variances)} components + isotropic rest, fit on "
                f"{self.n_fit} training films); threshold = {self.quantile:.1%} quantile on "
                f"{self.n_calibration} held-out real films; lung share outside "
                f"{LUNG_FRACTION_RANGE}, colour, or DICOM tags of another modality, body part or a "
                f"lateral view also mark a film as not a frontal chest radiograph"
                + ("; a logistic check on the same features flags films rotated by 90/180/270 degrees "
                   "or inverted (fit on training films only)" if self.orient_w is not None else ""))

    def save(self, directory: str | Path, name: str = OOD_FILE) -> tuple[str, str]:
        """Write the statistics as .npz; returns (file name, sha256) for the model card."""
        path = Path(directory) / name
        orient = {} if self.orient_w is None else {"orient_w": self.orient_w, "orient_b": np.float64(self.orient_b)}
        np.savez(path, mean=self.mean, basis=self.basis, variances=self.variances,
                 residual=np.float64(self.residual), shrinkage=np.float64(self.shrinkage),
                 n_fit=np.int64(self.n_fit), quantile=np.float64(self.quantile),
                 n_calibration=np.int64(self.n_calibration), **orient)
        return name, sha256_file(path)

    def card_entry(self, name: str, sha256: str) -> dict:
        """The model card's `ood` section for this detector."""
        return {"file": name, "sha256": sha256, "threshold": self.threshold, "rule": self.rule}

    @classmethod
    def load(cls, directory: str | Path, card: ModelCard) -> "OODDetector":
        """Read the statistics named in card.ood, refusing a file whose sha256 differs from the card."""
        entry = card.ood
        if "threshold" not in entry or "sha256" not in entry:
            raise CardError("model card's ood section needs file, sha256 and threshold")
        path = Path(directory) / entry["file"]
        if not path.exists():
            raise CardError(f"OOD statistics {path} are missing")
        digest = sha256_file(path)
        if digest != entry["sha256"]:
            raise CardError(f"OOD statistics {path} have sha256 {digest[:12]}…, the model card expects "
                            f"{str(entry['sha256'])[:12]}…: the file was changed or does not belong to this card")
        try:
            with np.load(path, allow_pickle=False) as z:
                det = cls(mean=z["mean"], basis=z["basis"], variances=z["variances"],
                          residual=float(z["residual"]), shrinkage=float(z["shrinkage"]),
                          n_fit=int(z["n_fit"]), quantile=float(z["quantile"]),
                          n_calibration=int(z["n_calibration"]))
                if "orient_w" in z.files:
                    det.orient_w, det.orient_b = z["orient_w"], float(z["orient_b"])
        except (ValueError, KeyError, OSError) as e:
            raise CardError(f"OOD statistics {path} could not be read: {e}") from None
        det.threshold = float(entry["threshold"])
        return det

    def check(self, features_1d: np.ndarray, lung_fraction: float, film: Film) -> OODResult:
        """Every reason, from features, lungs and file facts, that this is not a frontal chest film."""
        dist = float(self.distance(features_1d)[0])
        reasons = []
        if not dist <= self.threshold:
            reasons.append(f"its image features are unlike the chest radiographs the model was "
                           f"trained on (distance {dist:.2f}, limit {self.threshold:.2f})")
        if self.orient_w is not None and float(np.ravel(features_1d) @ self.orient_w) + self.orient_b > 0:
            reasons.append("it looks rotated or inverted (a frontal chest film is read upright, "
                           "not turned or in negative)")
        reasons += lung_reasons(lung_fraction) + fact_reasons(film.facts)
        return OODResult(is_chest=not reasons, distance=dist, reasons=reasons)


ORIENTATIONS = {  # what a film looks like when it was scanned or exported the wrong way round
    "rotated 90": lambda a: np.rot90(a, 1),
    "rotated 180": lambda a: np.rot90(a, 2),
    "rotated 270": lambda a: np.rot90(a, 3),
    "inverted": lambda a: 1.0 - a,
}


def fit_orientation(upright: np.ndarray, turned: np.ndarray, l2: float = 1e-3, iters: int = 500
                    ) -> tuple[np.ndarray, float]:
    """Logistic regression (balanced classes, L2, gradient descent on standardised features) that
    tells turned or inverted films from upright ones; returns (w, b) in raw feature space."""
    x = np.concatenate([upright, turned]).astype(np.float64)
    y = np.concatenate([np.zeros(len(upright)), np.ones(len(turned))])
    weight = np.where(y == 1, 0.5 / len(turned), 0.5 / len(upright))
    mu, sd = x.mean(0), x.std(0) + 1e-6
    z = (x - mu) / sd
    w, b = np.zeros(z.shape[1]), 0.0
    for _ in range(iters):
        p = 1.0 / (1.0 + np.exp(-(z @ w + b)))
        g = weight * (p - y)
        w -= 1.0 * (z.T @ g + l2 * w)
        b -= 1.0 * g.sum()
    w_raw = w / sd
    return w_raw.astype(np.float32), float(b - mu @ w_raw)


def lung_reasons(lung_fraction: float) -> list[str]:
    lo, hi = LUNG_FRACTION_RANGE
    if lung_fraction <= 0:
        return ["no lungs were found in it"]
    if not lo <= lung_fraction <= hi:
        return [f"the lungs found cover {lung_fraction:.0%} of the image, implausible for a chest film"]
    return []


def fact_reasons(facts: dict[str, str]) -> list[str]:
    """Reasons from what the file says about itself; absent or blank facts are unknown, not failures."""
    get = lambda k: str(facts.get(k) or "").strip().upper()  # noqa: E731
    reasons = []
    if get("colour") == "YES":
        reasons.append("it is a colour image")
    if get("modality") and get("modality") not in RADIOGRAPH_MODALITIES:
        reasons.append(f"its DICOM modality is {get('modality')}, not a radiograph (CR/DX)")
    if get("body_part") and not any(p in get("body_part") for p in CHEST_BODY_PARTS):
        reasons.append(f"its DICOM body part is {get('body_part')}, not chest")
    if get("view") in LATERAL_VIEWS:
        reasons.append(f"its DICOM view is {get('view')}, a lateral film, not frontal")
    return reasons


def film_features(classifier: "Classifier", films: Sequence[Film], batch_size: int = 16
                  ) -> tuple[np.ndarray, np.ndarray]:
    """Pooled classifier features (n, d) and lung fractions (n,) of films, as predict() computes them."""
    import torch

    feats, fracs = [], []
    for i in range(0, len(films), batch_size):
        prepared = classifier.prepare(films[i:i + batch_size])
        with torch.inference_mode():
            feats.append(classifier.net.features(classifier.tensor(prepared)).numpy())
        fracs += [p.lung_fraction for p in prepared]
    return np.concatenate(feats), np.asarray(fracs, np.float32)
