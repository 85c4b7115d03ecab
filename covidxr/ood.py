"""The gate's statistics: how far a film's image features lie from the training films', and whether it is upright.

The gate itself (every piece of evidence, the order of the reasons, the verdict) is covidxr.gate.

A classifier trained on chest films still returns a confident COVID-19 probability for a knee, a
photo or a page of text. Two kinds of evidence say "this is not what the model was made for":

- the image itself: the classifier's pooled features (`CovidNet.features`, 1280-d) lie far from
  those of the training films, measured as a Mahalanobis distance under a Ledoit-Wolf shrunk
  covariance (top components kept exactly, the rest as one isotropic variance, to keep the file
  small); the threshold is a high quantile of the distances of held-out real films; the lung
  segmenter finds no lungs, or an implausible share of the image; and a small CNN of its own
  (covidxr.orientation) says the film is turned or in negative;
- what the file says: a colour image, or DICOM tags naming another modality, body part or a
  lateral view. Missing tags are unknown, not failures: many real chest files lack them.

The statistics live in an .npz (no pickle) beside the weights, named and hashed in the model card.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from .card import CardError, ModelCard, check_sha256, sha256_file
from .films import Film
from .gate import GateRules, Verdict, check as gate_check
from .orientation import ORIENT_SIZE, OrientNet, from_arrays, orientation_input, state_arrays, threshold_at, turned_probability

OOD_FILE = "ood.npz"
ORIENT_PREFIX = "orient_net."  # the orientation net's state, stored in the same .npz

OODResult = Verdict  # the gate's verdict under its former name (covidxr.OODResult)


def ledoit_wolf(z: np.ndarray) -> tuple[np.ndarray, float]:
    """Covariance of centred rows `z`, shrunk toward a scaled identity by the Ledoit-Wolf (2004)
    optimal amount, so that it stays well conditioned with fewer films than 1280 dimensions
    (scikit-learn's estimator; imported here, as only fitting the statistics needs it)."""
    from sklearn.covariance import ledoit_wolf as estimate

    cov, shrink = estimate(z, assume_centered=True)
    return cov, float(shrink)


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
    orient_net: OrientNet | None = None    # P(turned or inverted) from the whole film at 64 px
    orient_threshold: float = 0.5
    orient_quantile: float = float("nan")  # share of held-out upright films the threshold lets pass

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

    def calibrate_orientation(self, upright_inputs: Sequence[np.ndarray], quantile: float = 0.995) -> "OODDetector":
        """Set the orientation threshold so that `quantile` of held-out upright films pass (never below
        even odds): withholding the score of a real film is the costly mistake."""
        if self.orient_net is None:
            raise ValueError("this detector has no orientation net to calibrate")
        self.orient_threshold = threshold_at(turned_probability(self.orient_net, upright_inputs), quantile)
        self.orient_quantile = quantile
        return self

    def turned_probability(self, film: Film, overview: np.ndarray | None = None) -> float | None:
        """P(the film is rotated or inverted), or None when this detector has no orientation net.
        `overview`: the film already squashed and equalised (`orientation_input`), if at hand."""
        if self.orient_net is None:
            return None
        if overview is None or overview.shape != (ORIENT_SIZE, ORIENT_SIZE):
            overview = orientation_input(film.pixels)
        return float(turned_probability(self.orient_net, [overview])[0])

    @property
    def rule(self) -> str:
        orient = ""
        if self.orient_net is not None:
            calibrated = (f", {self.orient_quantile:.1%} of the held-out real films below it"
                          if np.isfinite(self.orient_quantile) else "")
            orient = ("; a small CNN on the whole film at 64 px (covidxr.orientation, trained on training films "
                      "upright, rotated by 90/180/270 degrees and inverted) flags a film it finds turned with "
                      f"probability above {self.orient_threshold:.3f}{calibrated}")
        return (f"Mahalanobis distance of the pooled classifier features (Ledoit-Wolf shrinkage "
                f"{self.shrinkage:.3f}, {len(self.variances)} components + isotropic rest, fit on "
                f"{self.n_fit} training films); threshold = {self.quantile:.1%} quantile on "
                f"{self.n_calibration} held-out real films" + orient)

    def gate_rule(self, rules: GateRules | None = None, kind_look=None) -> str:
        """The whole gate's rule in words, for the model card (the feature statistics' own in `rule`)."""
        from .gate import rule_text

        return rule_text(self, rules or GateRules(), kind_look)

    def save(self, directory: str | Path, name: str = OOD_FILE) -> tuple[str, str]:
        """Write the statistics as .npz; returns (file name, sha256) for the model card."""
        path = Path(directory) / name
        orient = {} if self.orient_net is None else {**state_arrays(self.orient_net, ORIENT_PREFIX),
                                                     "orient_threshold": np.float64(self.orient_threshold),
                                                     "orient_quantile": np.float64(self.orient_quantile)}
        np.savez(path, mean=self.mean, basis=self.basis, variances=self.variances,
                 residual=np.float64(self.residual), shrinkage=np.float64(self.shrinkage),
                 n_fit=np.int64(self.n_fit), quantile=np.float64(self.quantile),
                 n_calibration=np.int64(self.n_calibration), **orient)
        return name, sha256_file(path)

    def card_entry(self, name: str, sha256: str, rules: GateRules | None = None) -> dict:
        """The model card's `ood` section for this detector and the gate's rules."""
        rules = rules or GateRules()
        return {"file": name, "sha256": sha256, "threshold": self.threshold, "rule": self.gate_rule(rules),
                "gate": rules.as_dict()}

    @classmethod
    def load(cls, directory: str | Path, card: ModelCard) -> "OODDetector":
        """Read the statistics named in card.ood, refusing a file whose sha256 differs from the card."""
        entry = card.ood
        if "threshold" not in entry or "sha256" not in entry:
            raise CardError("model card's ood section needs file, sha256 and threshold")
        path = check_sha256(Path(directory) / entry["file"], entry["sha256"], "OOD statistics")
        try:
            with np.load(path, allow_pickle=False) as z:
                det = cls(mean=z["mean"], basis=z["basis"], variances=z["variances"],
                          residual=float(z["residual"]), shrinkage=float(z["shrinkage"]),
                          n_fit=int(z["n_fit"]), quantile=float(z["quantile"]),
                          n_calibration=int(z["n_calibration"]))
                if "orient_w" in z.files:  # the logistic on the classifier's features, retired for OrientNet
                    raise CardError(f"OOD statistics {path} hold the retired orientation logistic; refit them with "
                                    "`python -m covidxr train --data ../shared/data/cxr --out <this folder> "
                                    "--work <its training work folder> --stages ood` (about 5 min)")
                det.orient_net = from_arrays({k: z[k] for k in z.files}, ORIENT_PREFIX)
                if det.orient_net is not None:
                    det.orient_threshold, det.orient_quantile = float(z["orient_threshold"]), float(z["orient_quantile"])
        except CardError:
            raise
        except (ValueError, KeyError, OSError, RuntimeError) as e:  # RuntimeError: a net of another shape
            raise CardError(f"OOD statistics {path} could not be read: {e}") from None
        det.threshold = float(entry["threshold"])
        return det

    def check(self, features_1d: np.ndarray, lung_fraction: float, film: Film,
              overview: np.ndarray | None = None, lung_prob: np.ndarray | None = None,
              rules: GateRules | None = None, child_look=None, kind_look=None) -> Verdict:
        """The gate's verdict (covidxr.gate) with these statistics; `rules` default to the shipped ones."""
        return gate_check(self, rules or GateRules(), features_1d, lung_fraction, film, overview, lung_prob, child_look,
                          kind_look)
