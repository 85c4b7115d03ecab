"""The public inference surface: `Classifier.from_dir("weights").predict(films)`.

One Classifier is safe to share between threads (a Streamlit server's sessions): predict() only
reads the networks, and Grad-CAM hooks live on pooled private copies of the network (see explain.py).
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from .card import CardError, ModelCard
from .films import Film
from .model import CovidNet, LungNet, fold_batchnorm
from .preprocess import Prepared, lung_input, prepare, to_tensor

DEFAULT_WEIGHTS = Path(__file__).resolve().parent.parent / "weights"
THREADS_ENV = "COVIDXR_THREADS"


def set_threads(threads: int | None = None) -> int:
    """Torch intra-op threads: argument, else $COVIDXR_THREADS, else 1 (measured best on a busy 2-core box)."""
    n = threads or int(os.environ.get(THREADS_ENV, "1") or 1)
    if torch.get_num_threads() != n:
        torch.set_num_threads(n)
    return n


def split_state(state: dict[str, torch.Tensor], n_classes: int) -> tuple[CovidNet, LungNet]:
    """model.pt holds both networks: `cls.*` the classifier, `lung.*` the lung segmenter."""
    net = CovidNet(n_classes)
    net.load_state_dict({k[4:]: v for k, v in state.items() if k.startswith("cls.")})
    lungs = LungNet()
    lungs.load_state_dict({k[5:]: v for k, v in state.items() if k.startswith("lung.")})
    return net.to(memory_format=torch.channels_last).eval(), lungs.eval()


def lung_probability(lungs: LungNet, films: Sequence[Film], size: int) -> list[np.ndarray]:
    """Per film, the segmenter's lung probability at size x size (training's cache uses it too)."""
    return segment(lungs, [lung_input(f.pixels, size) for f in films])


def segment(lungs: LungNet, inputs: Sequence[np.ndarray]) -> list[np.ndarray]:
    """Lung probabilities of segmenter inputs (`lung_input`)."""
    x = torch.from_numpy(np.stack(inputs))[:, None]
    with torch.inference_mode():
        return list(torch.sigmoid(lungs(x))[:, 0].numpy())


@dataclass
class Prediction:
    name: str
    probability: float                  # calibrated probability of the positive class (COVID-19)
    positive: bool                      # probability >= threshold
    label: str                          # "covid" or "non-covid": the product decision
    threshold: float
    class_probabilities: dict[str, float]
    lung_fraction: float                # share of the film found to be lung (0: none found)
    box: tuple[float, float, float, float]  # lung crop (top, bottom, left, right), fractions
    ood: "object | None" = None         # ood.OODResult when the check ran
    extra: dict = field(default_factory=dict)


class Classifier:
    def __init__(self, card: ModelCard, net: CovidNet, lungs: LungNet, directory: Path):
        self.card, self.net, self.lungs, self.directory = card, net.eval(), lungs.eval(), directory
        self.ood = None
        if card.ood.get("file"):
            from .ood import OODDetector

            self.ood = OODDetector.load(directory, card)

    @classmethod
    def from_dir(cls, directory: str | Path = DEFAULT_WEIGHTS, threads: int | None = None) -> "Classifier":
        """Load weights only if their sha256 matches the card, and only as plain tensors."""
        directory = Path(directory)
        set_threads(threads)
        card = ModelCard.load(directory)
        path = card.check_weights(directory)
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:  # noqa: BLE001
            raise CardError(f"weights {path} could not be loaded safely: {e}") from None
        net, lungs = split_state(state, len(card.class_names))
        # Inference-only speed-ups, same outputs to float rounding: BatchNorm folded into the convolutions
        # (the CAM layer's kept, see fold_batchnorm) and channels-last memory (oneDNN, 25-30% faster here).
        net = fold_batchnorm(net, keep=(net.cam_layer,)).to(memory_format=torch.channels_last)
        lungs = fold_batchnorm(lungs).to(memory_format=torch.channels_last)
        return cls(card, net, lungs, directory)

    @property
    def threshold(self) -> float:
        return self.card.threshold

    def lung_probability(self, films: Sequence[Film]) -> list[np.ndarray]:
        return lung_probability(self.lungs, films, self.card.lung_input_size)

    def prepare(self, films: Sequence[Film]) -> list[Prepared]:
        """Each film's classifier input; it keeps the segmenter's input too (`overview`), which the
        orientation check reads instead of squashing the film again."""
        c = self.card
        inputs = [lung_input(f.pixels, c.lung_input_size) for f in films]
        return [replace(prepare(f.pixels, p, c.input_size, c.crop_margin, c.mask_dilation, blank=c.blank_outside_lungs),
                        overview=x)
                for f, p, x in zip(films, segment(self.lungs, inputs), inputs)]

    def tensor(self, prepared: Sequence[Prepared]) -> torch.Tensor:
        return to_tensor([p.image for p in prepared], self.card.mean, self.card.std).to(
            memory_format=torch.channels_last)

    def decide(self, film: Film, prep: Prepared, logits: torch.Tensor, features: torch.Tensor | None) -> Prediction:
        c = self.card
        probs = torch.softmax(logits.float() / c.temperature, -1).tolist()
        p = probs[c.positive_index]
        positive = p >= c.threshold
        ood = (self.ood.check(features.numpy(), prep.lung_fraction, film, prep.overview)
               if (self.ood and features is not None) else None)
        return Prediction(
            name=film.name, probability=float(p), positive=bool(positive),
            label=c.positive_class if positive else f"non-{c.positive_class}", threshold=c.threshold,
            class_probabilities=dict(zip(c.class_names, map(float, probs))),
            lung_fraction=prep.lung_fraction, box=prep.box, ood=ood)

    def predict(self, films: Sequence[Film], batch_size: int = 16) -> list[Prediction]:
        out: list[Prediction] = []
        for i in range(0, len(films), batch_size):
            chunk = films[i:i + batch_size]
            prepared = self.prepare(chunk)
            with torch.inference_mode():
                feats = self.net.features(self.tensor(prepared))
                logits = self.net.head(feats)
            out += [self.decide(f, p, lg, ft) for f, p, lg, ft in zip(chunk, prepared, logits, feats)]
        return out
