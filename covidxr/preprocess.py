"""Film pixels -> the classifier's input: find the lungs, crop to them, equalise, and (if the card
says so) blank the rest.

Public COVID-19 collections are confounded with their hospitals: text markers, borders, exposure
and film size tell the source, and the source tells the class. Cropping to the lung field and
equalising the intensities inside it takes most of those cues away; blanking everything outside the
lungs takes the rest, at a cost in held-out AUC (models v1-v4 did; v6 keeps the box and is trained
to look at the lungs instead: see train.LungAttention). v7 adds a network that sees the whole film
(`crop=False`), trained the same way.
Training and inference share these functions so that both see identical inputs.
"""
from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
import torch
from PIL import Image

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
    """What the classifier saw, and where it came from in the film."""

    image: np.ndarray          # float32 SxS in [0, 1]: equalised lung crop (blanked outside the lungs if `blank`)
    mask: np.ndarray           # float32 SxS soft lung mask in the crop (1 = seen)
    box: tuple[float, float, float, float]  # crop (top, bottom, left, right), fractions of the film
    lung_fraction: float       # share of the film the segmenter called lung (0 when none found)
    overview: np.ndarray | None = None  # the whole film as the segmenter saw it (`lung_input`), when kept
    members: tuple["Prepared", ...] = ()  # the same film as each further network of an ensemble sees it


def prepare(pixels: np.ndarray, lung_prob: np.ndarray, size: int, margin: float, dilation: float,
            blank: bool = True, equalize_over: str = "lungs", crop: bool = True) -> Prepared:
    """Crop the film to the lungs found in `lung_prob` (any resolution) and build the model's input.

    `equalize_over`: "lungs" takes the histogram inside the lung mask, "box" over the whole crop (so that
    the lungs keep their brightness relative to bone and mediastinum). `crop=False` keeps the whole film
    but still returns its lung mask (for the lung-attention penalty and the heatmap's lung mass)."""
    lung = lung_prob > 0.5
    frac = float(lung.mean())
    box = lung_box(lung_prob, margin)
    if box is None:  # no lungs found: whole film, nothing blanked; the OOD check reports it
        box, frac = (0.0, 1.0, 0.0, 1.0), 0.0
    elif not crop:
        box = (0.0, 1.0, 0.0, 1.0)
    crop = resize(pixels[box_slices(box, pixels.shape)], size, size)
    if frac == 0.0:
        mask = np.ones((size, size), np.float32)
    else:
        m = lung_prob[box_slices(box, lung_prob.shape)].astype(np.float32)
        mask = dilate(resize(m, size, size), int(round(dilation * size)))
    image = equalize(crop, mask if equalize_over == "lungs" else None)
    if blank:
        image = image * mask
    return Prepared(image=image, mask=mask, box=box, lung_fraction=frac)


def to_tensor(images: list[np.ndarray], mean: list[float], std: list[float]) -> torch.Tensor:
    """Grayscale [0, 1] images -> normalised 3-channel batch (N, 3, S, S)."""
    x = torch.from_numpy(np.stack(images))[:, None].expand(-1, 3, -1, -1)
    m = torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1)
    s = torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1)
    return ((x - m) / s).contiguous()
