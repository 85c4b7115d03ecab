"""Is the film upright? A small CNN of its own, on the whole film at 64 px.

A film scanned or exported the wrong way round (turned by 90/180/270 degrees, or in negative) still
gets a COVID-19 score, and a wrong one. A logistic on the classifier's own features, fit on training
films, told turned from upright there but not on films the network had not learnt: it flagged
heavily diseased, low-contrast upright films, the very ones whose score must not be withheld. Whether
a film is upright is a question about the whole film's layout (shoulders, heart, diaphragm, dark
lungs), which a few convolutions answer at 64 px, apart from what the classifier learnt.
"""
from __future__ import annotations

from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
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


def examples(films_pixels: Sequence[np.ndarray], size: int = ORIENT_SIZE) -> tuple[np.ndarray, np.ndarray]:
    """Each film upright (label 0) and turned every wrong way (labels 1..4); turned at full resolution
    before the squash, as a turned upload would be."""
    x, y = [], []
    for pixels in films_pixels:
        for label, turn in enumerate([lambda a: a, *ORIENTATIONS.values()]):
            x.append(orientation_input(np.ascontiguousarray(turn(pixels)), size))
            y.append(label)
    return np.stack(x).astype(np.float32), np.asarray(y, np.int64)


def jitter(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Small rotations, scalings and shifts plus noise: films are not all framed alike."""
    n = len(x)
    angle = (torch.rand(n, generator=gen) - 0.5) * 2 * np.deg2rad(10)
    scale = 0.9 + 0.25 * torch.rand(n, generator=gen)
    shift = (torch.rand(n, 2, generator=gen) - 0.5) * 0.16
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    theta = torch.stack([torch.stack([cos, -sin, shift[:, 0]], 1), torch.stack([sin, cos, shift[:, 1]], 1)], 1)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    out = F.grid_sample(x, grid, padding_mode="border", align_corners=False)
    return (out + 0.03 * torch.randn(out.shape, generator=gen)).clamp(0, 1)


def fit(x: np.ndarray, y: np.ndarray, epochs: int = 12, batch: int = 128, lr: float = 3e-3, seed: int = 0) -> OrientNet:
    """Train an OrientNet on `examples()`; upright weighs as much as all the turned classes together,
    so that a false alarm costs what a miss does."""
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    net = OrientNet(x.shape[-1])
    xt, yt = torch.from_numpy(x)[:, None], torch.from_numpy(y)
    weight = torch.full((1 + len(ORIENTATIONS),), 1.0)
    weight[0] = len(ORIENTATIONS)
    steps = epochs * max(1, len(x) // batch)
    opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps)
    net.train()
    for _ in range(steps):
        idx = torch.randint(len(xt), (batch,), generator=gen)
        loss = F.cross_entropy(net(jitter(xt[idx], gen)), yt[idx], weight=weight)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
    return net.eval()


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
