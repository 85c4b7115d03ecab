"""Training the orientation net (covidxr.orientation.OrientNet): each training film upright and turned
every wrong way, learnt with small geometric jitter and noise."""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ..orientation import ORIENT_SIZE, ORIENTATIONS, OrientNet, orientation_input
from .augment import affine, warp


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
    """Small rotations (+-10 deg), scalings and shifts plus noise: films are not all framed alike. The
    border is repeated, not blacked out, so that a black edge cannot tell a turned film."""
    out = warp(x, affine(len(x), 10, (0.9, 1.15), 0.08, gen), padding="border")
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
