"""Every film prepared once per input (a recipe's View), kept as uint8 arrays beside its labels."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from ..films import read_film
from ..model import LungNet
from ..preprocess import Prepared, normalise, prepare
from .data import CLASSES, POSITIVE, Record
from .recipe import Recipe


@dataclass
class Cache:
    """Every film as one input shows it (equalised, cropped and blanked as its View says), with its labels."""

    images: np.ndarray       # (N, S, S) uint8
    masks: np.ndarray        # (N, S, S) uint8, 255 = lung (dilated) as the model sees it
    lung_fraction: np.ndarray
    records: list[Record]

    @property
    def y(self) -> np.ndarray:
        return np.array([r.label == POSITIVE for r in self.records])

    @property
    def cls(self) -> np.ndarray:
        return np.array([CLASSES.index(r.label) for r in self.records])

    @property
    def sources(self) -> np.ndarray:
        return np.array([r.source for r in self.records])


def network_input(pixels: np.ndarray, lung_prob: np.ndarray, recipe: Recipe) -> Prepared:
    """A film as the recipe's network sees it: the same function, View and numbers as inference
    (covidxr.preprocess.prepare with the card's View and sizes, which the card writer copies from the recipe)."""
    return prepare(pixels, lung_prob, recipe.view, recipe.input_size, recipe.crop_margin, recipe.mask_dilation)


def build_cache(records: list[Record], data: Path, lungs: LungNet, work: Path, recipe: Recipe) -> Cache:
    """The cache of the recipe's input (`Recipe.cache_file` in `work`), built once."""
    from ..classifier import lung_probability

    path = work / recipe.cache_file
    if path.exists():
        z = np.load(path)
        return Cache(z["images"], z["masks"], z["lung_fraction"], records)
    n, size = len(records), recipe.input_size
    images = np.zeros((n, size, size), np.uint8)
    masks = np.zeros_like(images)
    frac = np.zeros(n, np.float32)
    batch = 32
    for i in tqdm(range(0, n, batch), desc=f"cache {recipe.variant}", unit="batch"):
        films = [read_film(data / r.path) for r in records[i:i + batch]]
        for j, (f, p) in enumerate(zip(films, lung_probability(lungs, films, recipe.lung_size))):
            prep = network_input(f.pixels, p, recipe)
            images[i + j] = np.round(prep.image * 255).astype(np.uint8)
            masks[i + j] = np.round(prep.mask * 255).astype(np.uint8)
            frac[i + j] = prep.lung_fraction
    np.savez(path, images=images, masks=masks, lung_fraction=frac)
    return Cache(images, masks, frac, records)


def to_batch(cache: Cache, idx: np.ndarray | torch.Tensor, masks: bool = False) -> torch.Tensor:
    """(N, 1, S, S) float in [0, 1]: the cached films `idx` (or their lung masks)."""
    a = cache.masks if masks else cache.images
    return torch.from_numpy(a[np.asarray(idx)].astype(np.float32) / 255.0)[:, None]


def network_batch(x: torch.Tensor, recipe: Recipe) -> torch.Tensor:
    """Grayscale (N, 1, S, S) in [0, 1] -> the network's normalised 3-channel input, channels-last."""
    return normalise(x, recipe.mean, recipe.std).contiguous(memory_format=torch.channels_last)
