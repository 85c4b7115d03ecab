"""Augmentation: one random affine warp (classifier, segmenter and orientation net all use it),
plus the radiograph-minded changes of resolution, compression, exposure and noise."""
from __future__ import annotations

import math

import cv2
import numpy as np
import torch
import torch.nn.functional as F


def affine(n: int, rot: float, scale: tuple[float, float], shift: float, gen: torch.Generator) -> torch.Tensor:
    """(n, 2, 3) random affine matrices: rotation up to +-`rot` degrees, zoom in `scale`, shift up to
    +-`shift` (fraction of the half-side), drawn in that order from `gen`."""
    a = (torch.rand(n, generator=gen) * 2 - 1) * math.radians(rot)
    s = scale[0] + torch.rand(n, generator=gen) * (scale[1] - scale[0])
    t = (torch.rand(n, 2, generator=gen) * 2 - 1) * shift
    cos, sin = torch.cos(a) / s, torch.sin(a) / s
    return torch.stack([torch.stack([cos, -sin, t[:, 0]], 1), torch.stack([sin, cos, t[:, 1]], 1)], 1)


def warp(x: torch.Tensor, theta: torch.Tensor, padding: str = "zeros") -> torch.Tensor:
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode=padding, align_corners=False)


def jpeg_roundtrip(x: torch.Tensor, gen: torch.Generator, p: float = 0.5, quality: tuple[int, int] = (30, 95)) -> torch.Tensor:
    """Re-encode a share `p` of the films as JPEG at a random quality, so that compression cannot tell the source."""
    out = x.clone()
    for i in range(len(x)):
        if torch.rand(1, generator=gen).item() < p:
            q = int(torch.randint(quality[0], quality[1] + 1, (1,), generator=gen))
            a = (x[i, 0].numpy() * 255 + 0.5).astype(np.uint8)
            _, buf = cv2.imencode(".jpg", a, [cv2.IMWRITE_JPEG_QUALITY, q])
            out[i, 0] = torch.from_numpy(cv2.imdecode(buf, cv2.IMREAD_GRAYSCALE).astype(np.float32) / 255.0)
    return out


def augment(x: torch.Tensor, gen: torch.Generator, jpeg: bool = False,
            follow: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Radiograph-minded augmentation; resolution and exposure vary so that neither can tell the source.
    No flips: anatomy is not symmetric.

    `follow` (N, 1, S, S), e.g. the lung masks, gets the same geometric warp and nothing else."""
    n, s = len(x), x.shape[-1]
    theta = affine(n, 8, (0.9, 1.12), 0.06, gen)
    x = warp(x, theta)
    if follow is not None:
        follow = warp(follow, theta)
    out = []
    for i in range(n):  # resolution: films arrive from 224 px thumbnails to full-size detector images
        xi = x[i:i + 1]
        if torch.rand(1, generator=gen) < 0.6:
            r = int(s * (0.35 + 0.6 * torch.rand(1, generator=gen).item()))
            xi = F.interpolate(F.interpolate(xi, size=(r, r), mode="area"), size=(s, s), mode="bilinear", align_corners=False)
        out.append(xi)
    x = torch.cat(out)
    if jpeg:
        x = jpeg_roundtrip(x.clamp(0, 1), gen)
    seen = (x > 0.004).float()
    gamma = torch.exp((torch.rand(n, 1, 1, 1, generator=gen) * 2 - 1) * 0.35)
    x = x.clamp(0, 1) ** gamma
    noise = torch.randn(x.shape, generator=gen) * (torch.rand(n, 1, 1, 1, generator=gen) * 0.03)
    return ((x + noise * seen).clamp(0, 1)) * seen + x * (1 - seen), follow
