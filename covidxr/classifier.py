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

from .card import CardError, ModelCard, View
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


def split_state(state: dict[str, torch.Tensor], n_classes: int) -> tuple[list[CovidNet], LungNet]:
    """model.pt holds every network: `cls.*` the classifier, `cls1.*`, `cls2.*`, ... further ensemble
    members (the card's `members`), `lung.*` the lung segmenter."""
    prefixes = ["cls."] + sorted({k.split(".", 1)[0] + "." for k in state if k[:3] == "cls" and k[3].isdigit()},
                                 key=lambda p: int(p[3:-1]))
    nets = []
    for prefix in prefixes:
        net = CovidNet(n_classes)
        net.load_state_dict({k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)})
        nets.append(net.to(memory_format=torch.channels_last).eval())
    lungs = LungNet()
    lungs.load_state_dict({k[5:]: v for k, v in state.items() if k.startswith("lung.")})
    return nets, lungs.eval()


def stored_in_half(tensor: torch.Tensor) -> bool:
    """The classifiers' convolution kernels are stored in float16: that halves model.pt. On v7's 1,018
    validation films it moved the calibrated probability by 0.0004 on average (at most 0.013) and changed
    no decision; training calibrates on the rounded networks (as_stored). BatchNorm, biases and the head
    stay float32."""
    return tensor.is_floating_point() and tensor.dim() == 4


def as_stored(net: CovidNet) -> CovidNet:
    """Round a trained classifier's weights as model.pt stores them, so that what is calibrated and
    measured on it is what ships."""
    with torch.no_grad():
        for v in net.state_dict().values():
            if stored_in_half(v):
                v.copy_(v.half())
    return net


def join_state(nets: Sequence[CovidNet], lungs: LungNet) -> dict[str, torch.Tensor]:
    """The inverse of split_state (load_state_dict widens the float16 kernels back to float32)."""
    state = {f"lung.{k}": v for k, v in lungs.state_dict().items()}
    for i, net in enumerate(nets):
        state |= {f"cls{i or ''}.{k}": v.half() if stored_in_half(v) else v for k, v in net.state_dict().items()}
    return state


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
    """The card's networks: one, or an ensemble whose logits are averaged (`card.members`). The first
    network (`net`) also gives the features of the out-of-distribution check."""

    def __init__(self, card: ModelCard, net: CovidNet, lungs: LungNet, directory: Path,
                 members: Sequence[CovidNet] = ()):
        self.card, self.net, self.lungs, self.directory = card, net.eval(), lungs.eval(), directory
        self.members = [m.eval() for m in members]
        if len(self.members) != len(card.members):
            raise CardError(f"the card names {len(card.members)} further ensemble networks, the weights hold "
                            f"{len(self.members)}")
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
        nets, lungs = split_state(state, len(card.class_names))
        # Inference-only speed-ups, same outputs to float rounding: BatchNorm folded into the convolutions
        # (the CAM layer's kept, see fold_batchnorm) and channels-last memory (oneDNN, 25-30% faster here).
        nets = [fold_batchnorm(n, keep=(n.cam_layer,)).to(memory_format=torch.channels_last) for n in nets]
        lungs = fold_batchnorm(lungs).to(memory_format=torch.channels_last)
        return cls(card, nets[0], lungs, directory, nets[1:])

    @property
    def nets(self) -> list[CovidNet]:
        return [self.net, *self.members]

    @property
    def threshold(self) -> float:
        return self.card.threshold

    def lung_probability(self, films: Sequence[Film]) -> list[np.ndarray]:
        return lung_probability(self.lungs, films, self.card.lung_input_size)

    def prepare(self, films: Sequence[Film]) -> list[Prepared]:
        """Each film's classifier input; it keeps the segmenter's input too (`overview`), which the
        orientation check reads instead of squashing the film again."""
        inputs = [lung_input(f.pixels, self.card.lung_input_size) for f in films]
        first, *more = self.card.views
        return [replace(self.view_input(f.pixels, p, first), overview=x,
                        members=tuple(self.view_input(f.pixels, p, v) for v in more))
                for f, p, x in zip(films, segment(self.lungs, inputs), inputs)]

    def view_input(self, pixels: np.ndarray, lung_prob: np.ndarray, view: View) -> Prepared:
        """The film as one network sees it (`card.views`)."""
        c = self.card
        return prepare(pixels, lung_prob, c.input_size, c.crop_margin, c.mask_dilation,
                       blank=view.blank_outside_lungs, equalize_over=view.equalize_over, crop=view.crop_to_lungs)

    def tensor(self, prepared: Sequence[Prepared]) -> torch.Tensor:
        return to_tensor([p.image for p in prepared], self.card.mean, self.card.std).to(
            memory_format=torch.channels_last)

    def member_inputs(self, prepared: Sequence[Prepared]) -> list[list[Prepared]]:
        """Per network, the films as it sees them."""
        return [list(prepared)] + [[p.members[i] for p in prepared] for i in range(len(self.members))]

    def forward(self, prepared: Sequence[Prepared]) -> tuple[torch.Tensor, torch.Tensor]:
        """The ensemble's logits (the networks' mean) and the first network's pooled features."""
        nets, inputs = self.nets, self.member_inputs(prepared)
        feats = self.net.features(self.tensor(inputs[0]))
        logits = self.net.head(feats)
        for net, films in zip(nets[1:], inputs[1:]):
            logits = logits + net(self.tensor(films))
        return logits / len(nets), feats

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
                logits, feats = self.forward(prepared)
            out += [self.decide(f, p, lg, ft) for f, p, lg, ft in zip(chunk, prepared, logits, feats)]
        return out
