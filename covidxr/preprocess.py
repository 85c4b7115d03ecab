"""Film pixels -> every network's input, in one pass: find the lungs once, then for each network's
View crop (or not), equalise and (if the view says so) blank outside the lungs.

Public COVID-19 collections are confounded with their hospitals: text markers, borders, exposure
and film size tell the source, and the source tells the class. Cropping to the lung field and
equalising the intensities inside it takes most of those cues away; blanking everything outside the
lungs takes the rest, at a cost in held-out AUC (docs/history.md has the measurements).
Training and inference share these functions so that both see identical inputs.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import cv2
import numpy as np
import torch
from PIL import Image

from .card import View

MIN_LUNG_FRACTION = 0.03  # below this the segmenter found no lungs: use the whole film instead


def resize(a: np.ndarray, height: int, width: int) -> np.ndarray:
    """Bilinear resize of a float image (antialiased when shrinking, by Pillow)."""
    return np.asarray(Image.fromarray(np.ascontiguousarray(a, dtype=np.float32), mode="F")
                      .resize((width, height), Image.BILINEAR), dtype=np.float32)


def equalize(a: np.ndarray, weight: np.ndarray | None = None, bins: int = 256) -> np.ndarray:
    """Histogram equalisation to [0, 1], with the histogram taken where `weight` is high (the lungs)."""
    idx = np.clip((a * (bins - 1)).round().astype(np.int64), 0, bins - 1)
    hist = np.bincount(idx.ravel(), weights=None if weight is None else weight.ravel(), minlength=bins)
    if hist.sum() <= 0:
        hist = np.bincount(idx.ravel(), minlength=bins).astype(np.float64)
    cdf = np.cumsum(hist)
    cdf = (cdf - cdf[0]) / max(cdf[-1] - cdf[0], 1e-6)
    return cdf[idx].astype(np.float32)


def lung_input(pixels: np.ndarray, size: int) -> np.ndarray:
    """The segmenter's input: the whole film squashed to size x size and equalised."""
    return equalize(resize(pixels, size, size))


def lung_box(mask: np.ndarray, margin: float) -> tuple[float, float, float, float] | None:
    """(top, bottom, left, right) of the lung mask as fractions of the film, widened by `margin`."""
    ys, xs = np.nonzero(mask > 0.5)
    if len(ys) < MIN_LUNG_FRACTION * mask.size:
        return None
    h, w = mask.shape
    t, b, l, r = ys.min() / h, (ys.max() + 1) / h, xs.min() / w, (xs.max() + 1) / w
    mh, mw = (b - t) * margin, (r - l) * margin
    return max(0.0, t - mh), min(1.0, b + mh), max(0.0, l - mw), min(1.0, r + mw)


def dilate(mask: np.ndarray, radius: int) -> np.ndarray:
    """Binary dilation then a soft edge, so that the lung borders and costophrenic angles stay in view.

    A square max filter, then a box mean that ignores the zero padding: the same numbers as torch's
    max_pool2d + avg_pool2d(count_include_pad=False), by OpenCV's separable filters, because torch's
    stride-1 pooling took 15-25 ms of a 30 ms preparation here and this takes 0.3 ms."""
    a = (mask > 0.5).astype(np.float32)
    if radius > 0:
        a = cv2.dilate(a, np.ones((2 * radius + 1,) * 2, np.uint8), borderType=cv2.BORDER_CONSTANT, borderValue=0)
        k = (2 * (radius // 2) + 1,) * 2
        sums = [cv2.boxFilter(x, -1, k, normalize=False, borderType=cv2.BORDER_CONSTANT) for x in (a, np.ones_like(a))]
        a = sums[0] / sums[1]
    return a


def box_slices(box: tuple[float, float, float, float], shape: tuple[int, int]) -> tuple[slice, slice]:
    """Rows and columns of an array of `shape` covered by a (top, bottom, left, right) fraction box.

    One definition for cropping the film, cropping its lung map and pasting a heatmap back."""
    t, b, l, r = box
    h, w = shape
    return (slice(int(t * h), max(int(t * h) + 1, int(round(b * h)))),
            slice(int(l * w), max(int(l * w) + 1, int(round(r * w)))))


@dataclass
class Prepared:
    """What one network saw, and where it came from in the film."""

    image: np.ndarray          # float32 SxS in [0, 1]: the equalised input (blanked outside the lungs if the view says so)
    mask: np.ndarray           # float32 SxS soft lung mask in the input (1 = lung; all ones when no lungs are known)
    box: tuple[float, float, float, float]  # the input's extent (top, bottom, left, right), fractions of the film
    lung_fraction: float       # share of the film the segmenter called lung (0 when none found or not used)


@dataclass
class FilmInputs:
    """One film, prepared for the whole model: each network's input (in the card's order) and the
    segmenter's view of the whole film, which the gate's orientation check reads too."""

    networks: tuple[Prepared, ...]
    overview: np.ndarray       # float32 the film squashed to the segmenter's size and equalised (`lung_input`)
    lung_prob: np.ndarray      # float32 the segmenter's lung probability on `overview` (the gate reads its shape)
    lung_fraction: float       # share of the film found to be lung (0: none found)
    box: tuple[float, float, float, float]  # the lung box with its margin (the whole film when none found)


def prepare(pixels: np.ndarray, lung_prob: np.ndarray, view: View, size: int, margin: float,
            dilation: float) -> Prepared:
    """The film as a network with this `view` sees it, from the segmenter's lung probability
    `lung_prob` (any resolution). A view that keeps the whole film still returns its lung mask (for
    the lung-attention penalty and the heatmap's lung mass)."""
    if not view.lung_mask:
        lung_prob = np.zeros_like(lung_prob)  # no lungs -> whole film, nothing blanked
    frac = float((lung_prob > 0.5).mean())
    box = lung_box(lung_prob, margin)
    if box is None:  # no lungs found: whole film, nothing blanked; the gate reports it
        box, frac = (0.0, 1.0, 0.0, 1.0), 0.0
    elif not view.crop_to_lungs:
        box = (0.0, 1.0, 0.0, 1.0)
    crop = resize(pixels[box_slices(box, pixels.shape)], size, size)
    if frac == 0.0:
        mask = np.ones((size, size), np.float32)
    else:
        m = lung_prob[box_slices(box, lung_prob.shape)].astype(np.float32)
        mask = dilate(resize(m, size, size), int(round(dilation * size)))
    image = equalize(crop, mask if view.equalize_over == "lungs" else None)
    if view.blank_outside_lungs:
        image = image * mask
    return Prepared(image=image, mask=mask, box=box, lung_fraction=frac)


def prepare_film(pixels: np.ndarray, overview: np.ndarray, lung_prob: np.ndarray, views: Sequence[View],
                 size: int, margin: float, dilation: float) -> FilmInputs:
    """Every network's input for one film, from its segmenter input and lung probability."""
    box = lung_box(lung_prob, margin)
    return FilmInputs(networks=tuple(prepare(pixels, lung_prob, v, size, margin, dilation) for v in views),
                      overview=overview, lung_prob=lung_prob,
                      lung_fraction=0.0 if box is None else float((lung_prob > 0.5).mean()),
                      box=box or (0.0, 1.0, 0.0, 1.0))


def normalise(x: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """(N, 1 or 3, S, S) grayscale in [0, 1] -> the networks' normalised 3-channel input."""
    m = torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1)
    s = torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1)
    return (x.expand(-1, 3, -1, -1) - m) / s


def to_tensor(images: Sequence[np.ndarray], mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """Grayscale [0, 1] images -> normalised 3-channel batch (N, 3, S, S)."""
    return normalise(torch.from_numpy(np.stack(images))[:, None], mean, std).contiguous()
