"""Is the film upright? A small CNN of its own, on the whole film at 64 px.

A film scanned or exported the wrong way round (turned by 90/180/270 degrees, or in negative) still
gets a COVID-19 score, and a wrong one. A logistic on the classifier's own features, fit on training
films, told turned from upright there but not on films the network had not learnt: it flagged
heavily diseased, low-contrast upright films, the very ones whose score must not be withheld. Whether
a film is upright is a question about the whole film's layout (shoulders, heart, diaphragm, dark
lungs), which a few convolutions answer at 64 px, apart from what the classifier learnt.

This module is what inference needs; the net is trained by covidxr.training.orientation.
"""
from __future__ import annotations

from typing import Callable, Sequence

import numpy as np
import torch
from torch import nn

from .preprocess import lung_input

ORIENT_SIZE = 64
ORIENTATIONS: dict[str, Callable[[np.ndarray], np.ndarray]] = {  # wrong ways round, as scanned or exported
    "rotated 90": lambda a: np.rot90(a, 1),
    "rotated 180": lambda a: np.rot90(a, 2),
    "rotated 270": lambda a: np.rot90(a, 3),
    "inverted": lambda a: 1.0 - a,
}
WIDTHS = (16, 32, 64, 64)  # channels of the four stride-2 convolutions
MIN_THRESHOLD = 0.5  # calibration may raise the bar on "turned" probability, never lower it below even odds


class OrientNet(nn.Module):
    """Four stride-2 convolutions and a linear layer over the flattened 4x4 map (position matters here,
    so no global pooling). Class 0 is upright, then ORIENTATIONS in order."""

    def __init__(self, size: int = ORIENT_SIZE, widths: Sequence[int] = WIDTHS):
        super().__init__()
        layers, c_in = [], 1
        for c in widths:
            layers += [nn.Conv2d(c_in, c, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(c), nn.ReLU(inplace=True)]
            c_in = c
        self.body = nn.Sequential(*layers)
        self.head = nn.Linear(c_in * (size // 2 ** len(widths)) ** 2, 1 + len(ORIENTATIONS))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x).flatten(1))


def orientation_input(pixels: np.ndarray, size: int = ORIENT_SIZE) -> np.ndarray:
    """The whole film squashed to size x size and equalised (the lung segmenter's input)."""
    return lung_input(pixels, size)


def turned_probability(net: OrientNet, inputs: Sequence[np.ndarray]) -> np.ndarray:
    """Per input, the probability that it is NOT upright (1 - P(upright))."""
    net.eval()
    with torch.inference_mode():
        x = torch.from_numpy(np.stack(inputs).astype(np.float32))[:, None]
        return 1.0 - torch.softmax(net(x), -1)[:, 0].numpy().astype(np.float64)


def threshold_at(upright_scores: np.ndarray, quantile: float) -> float:
    """The turned-probability threshold that `quantile` of held-out upright films stay under."""
    return max(MIN_THRESHOLD, float(np.quantile(upright_scores, quantile)))


def state_arrays(net: OrientNet, prefix: str) -> dict[str, np.ndarray]:
    return {prefix + k: v.numpy() for k, v in net.state_dict().items()}


def from_arrays(arrays: dict[str, np.ndarray], prefix: str) -> OrientNet | None:
    """Rebuild the net from arrays named prefix + state-dict key, or None when there are none."""
    state = {k[len(prefix):]: torch.from_numpy(np.asarray(v)) for k, v in arrays.items() if k.startswith(prefix)}
    if not state:
        return None
    cells = state["head.weight"].shape[1] // state[f"body.{3 * (len(WIDTHS) - 1)}.weight"].shape[0]
    net = OrientNet(int(round(cells ** 0.5)) * 2 ** len(WIDTHS))  # the input size the net was trained at
    net.load_state_dict(state)
    return net.eval()
