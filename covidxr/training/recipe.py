"""How a network is made: the input it is shown (a View, by name) and every setting of its training run.

Scripts and stages change a recipe with `dataclasses.replace`; nothing patches module constants. The
model card records the input side of the shipped recipe (sizes, margin, dilation, normalisation, each
network's View), which inference reads back, so that training and inference prepare films alike.
"""
from __future__ import annotations

from dataclasses import dataclass, fields

from ..card import View
from .data import SEED

VIEWS: dict[str, View] = {  # the inputs training can build, by name (a recipe's `variant`)
    # the whole film, equalised, no lungs known (nothing for the lung-attention penalty): what public models did
    "film": View(crop_to_lungs=False, blank_outside_lungs=False, equalize_over="lungs", lung_mask=False),
    # the whole film, equalised over the film; its lung mask kept, for the penalty only
    "film_lungs": View(crop_to_lungs=False, blank_outside_lungs=False, equalize_over="box", lung_mask=True),
    # the lung box, equalised inside the lungs, the lungs' surroundings inside the box kept
    "crop": View(crop_to_lungs=True, blank_outside_lungs=False, equalize_over="lungs"),
    # the lung box blanked outside the dilated lung mask: no text markers, borders or devices outside the lungs
    "lungs": View(crop_to_lungs=True, blank_outside_lungs=True, equalize_over="lungs"),
    "lungs_boxeq": View(crop_to_lungs=True, blank_outside_lungs=True, equalize_over="box"),
}
ATTENTION_MODES = ("inside", "outside")  # penalties.LungAttention


@dataclass(frozen=True)
class Recipe:
    """One network's recipe. The defaults are a neutral base (the blanked lung box, no JPEG augmentation,
    no penalty, no early stopping) that the ablations change one setting at a time; the shipped recipe is
    `experiments.FINAL`."""

    name: str                       # the run: its checkpoint and results are stored, and resumed, under this name
    steps: int                      # at most this many optimiser steps, the one-cycle schedule's length
    variant: str = "lungs"          # the input, a key of VIEWS
    # -- the input (the card records these for the shipped model; every network of it shares them)
    input_size: int = 192
    lung_size: int = 64             # segmenter input: 64 px finds the lung box and mask as well as 128 did, at 1/4 the cost
    crop_margin: float = 0.08       # of the lung box's side
    mask_dilation: float = 0.025    # of the input's side: keeps the pleural edge in view, little beyond it
    mean: tuple[float, float, float] = (0.5, 0.5, 0.5)  # EfficientNet-Lite's own normalisation
    std: tuple[float, float, float] = (0.5, 0.5, 0.5)
    # -- the network
    imagenet: bool = True           # ImageNet initialisation (False: from scratch)
    frozen_blocks: int = 3          # stem + this many stages keep their ImageNet weights (3: measured 1.7x faster per step)
    # -- the optimiser and the batches
    batch: int = 32
    lr: float = 1e-3
    weight_decay: float = 1e-4
    label_smoothing: float = 0.05
    seed: int = SEED
    checkpoint_every: int = 50
    # -- early stopping
    eval_every: int = 0             # score the validation films every this many steps (0: no early stopping)...
    patience: int = 0               # ...stop after this many scorings without a better AUC, keep the best
    min_delta: float = 0.001
    # -- what keeps the network off the sources' cues
    adversary: float = 0.0          # weight of a source classifier trained through gradient reversal (0 = none)
    jpeg: bool = False              # also re-encode half the training films as JPEG at quality 30-95
    attention: float = 0.0          # weight of the lung-attention penalty on the Grad-CAM map (0 = none)...
    attention_mode: str = "inside"  # ...and its form (penalties.LungAttention)
    # -- the operating point
    min_sensitivity: float = 0.97   # the threshold maximises Youden's J among those with this validation sensitivity

    def __post_init__(self) -> None:
        if self.variant not in VIEWS:
            raise ValueError(f"unknown input variant {self.variant!r}; one of {sorted(VIEWS)}")

    @property
    def view(self) -> View:
        return VIEWS[self.variant]

    @property
    def cache_file(self) -> str:
        """The training cache of this recipe's input: one per input, named by what changes its pixels (the
        margin only when it is not the default, so that the caches made before it was named keep their names)."""
        margin = "" if self.crop_margin == _DEFAULT_MARGIN else f"_margin{self.crop_margin:g}"
        return f"cache_{self.variant}_{self.input_size}_lungs{self.lung_size}_dilate{self.mask_dilation:g}{margin}.npz"


_DEFAULT_MARGIN = next(f.default for f in fields(Recipe) if f.name == "crop_margin")
