"""The model card: the one source of truth for every number about the shipped model.

Code reads input size, normalisation, class names, threshold and temperature from here;
pages and the CLI never repeat them.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .safety import open_regular

CARD_FILE = "model_card.json"
EQUALIZE_OVER = ("lungs", "box")


def decision_label(positive: bool, positive_class: str) -> str:
    """The product decision in one word, as every export writes it: the positive class or "non-<it>"."""
    return positive_class if positive else f"non-{positive_class}"


class CardError(ValueError):
    """The model card is missing, malformed, or does not match the weights beside it."""


def sha256_file(path: str | Path, limit: int | None = None) -> str:
    """The hex sha256 of a regular file's bytes, read in chunks (never the whole file in memory). OSError when it
    cannot be read; FileRefused (an OSError) for a FIFO or a device, which is never opened (safety.open_regular),
    or for a file larger than `limit` (None: any size)."""
    fd, _ = open_regular(path, limit)
    with os.fdopen(fd, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def check_sha256(path: Path, expected: object, what: str) -> Path:
    """`path`, refused with CardError unless it exists and its sha256 is the one the model card gives for it: a
    file that was changed, or that belongs to another card, never reaches a clinician's result. `what` names the
    file in the message (e.g. "weights", "OOD statistics")."""
    if not path.is_file():
        raise CardError(f"{what} {path} {'are' if what.endswith('s') else 'is'} missing")
    digest = sha256_file(path)
    if digest != expected:
        raise CardError(f"{what} {path} {'have' if what.endswith('s') else 'has'} sha256 {digest[:12]}…, the model "
                        f"card expects {str(expected)[:12]}…: the file was changed or does not belong to this card")
    return path


@dataclass(frozen=True)
class View:
    """How one network sees a film; training builds its inputs from the same View, so both see the same.

    crop_to_lungs: the lung box (with the card's margin) or the whole film. blank_outside_lungs: zero
    outside the dilated lung mask. equalize_over: where the histogram is taken, "lungs" (inside the mask)
    or "box" (the whole input). lung_mask: False tells the network nothing about the lungs (the whole
    film, no mask; only ablations use it)."""

    crop_to_lungs: bool = True
    blank_outside_lungs: bool = True
    equalize_over: str = "lungs"
    lung_mask: bool = True

    def __post_init__(self) -> None:
        if self.equalize_over not in EQUALIZE_OVER:
            raise CardError(f"equalize_over {self.equalize_over!r} is not one of {EQUALIZE_OVER}")
        if self.crop_to_lungs and not self.lung_mask:
            raise CardError("a view cropped to the lungs needs the lung mask")


@dataclass(frozen=True)
class Network:
    """One network of the model: the training run that made it, the name of its input in training
    (`variant`) and what it is shown (`view`). model.pt holds the i-th network under `state_prefix(i)`."""

    name: str
    view: View
    variant: str = ""

    @staticmethod
    def state_prefix(index: int) -> str:
        return f"cls{index or ''}."

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Network":
        try:
            return cls(name=str(d["name"]), view=View(**d["view"]), variant=str(d.get("variant", "")))
        except (KeyError, TypeError) as e:
            raise CardError(f"network {d.get('name') if isinstance(d, dict) else d!r} has no valid view: {e}") from None


def _networks_of_old_card(raw: dict[str, Any]) -> list[dict[str, Any]]:
    """Cards written before `networks` described the first network by top-level fields (lung box,
    histogram over the lungs, `blank_outside_lungs`) and any further ones in `members`."""
    first = {"name": "final", "view": {"crop_to_lungs": True, "blank_outside_lungs": raw.get("blank_outside_lungs", True),
                                        "equalize_over": "lungs"}}
    return [first, *raw.get("members", [])]


@dataclass
class ModelCard:
    name: str
    architecture: str
    input_size: int                 # classifier input, square, pixels
    lung_input_size: int            # lung segmenter input, square, pixels
    mean: list[float]
    std: list[float]
    class_names: list[str]          # order of the classifier's logits
    positive_class: str             # the class behind the product's decision
    threshold: float                # on the calibrated positive-class probability
    threshold_rule: str
    temperature: float              # logits are divided by this before softmax
    weights_file: str
    weights_sha256: str
    crop_margin: float = 0.08       # lung box margin, fraction of the box size
    mask_dilation: float = 0.04     # lung mask dilation, fraction of the crop size
    networks: list[Network] = field(default_factory=list)  # logits averaged; the first also feeds the gate's features
    ood: dict[str, Any] = field(default_factory=dict)      # file, sha256, threshold, rule
    data: dict[str, Any] = field(default_factory=dict)     # manifest sha256, counts per source
    training: dict[str, Any] = field(default_factory=dict) # command, time, machine, seed, epochs
    metrics: dict[str, Any] = field(default_factory=dict)  # validation, per source, LOSO, ablations
    limits: list[str] = field(default_factory=list)
    intended_use: str = ("Research screening aid for frontal chest radiographs. Not a diagnosis; "
                         "every result must be reviewed by a qualified clinician.")

    @property
    def positive_index(self) -> int:
        return self.class_names.index(self.positive_class)

    @property
    def views(self) -> list[View]:
        return [n.view for n in self.networks]

    def describe_input(self) -> str:
        """What each network is shown, in words, for people reading the card."""
        def one(v: View) -> str:
            seen = "lung crop" if v.crop_to_lungs else "whole film"
            return f"{self.input_size} × {self.input_size} px {seen}" + (", blanked outside the lungs" if v.blank_outside_lungs else "")

        views = self.views
        text = " + ".join(one(v) for v in views)
        return (f"{len(views)} networks, logits averaged: {text}" if len(views) > 1 else text) + \
            f" (lung segmenter at {self.lung_input_size} px)"

    @classmethod
    def load(cls, directory: str | Path) -> "ModelCard":
        path = Path(directory) / CARD_FILE
        try:
            raw = json.loads(path.read_text())
        except FileNotFoundError:
            raise CardError(f"no model card at {path}") from None
        except ValueError as e:
            raise CardError(f"model card {path} is not valid JSON: {e}") from None
        names = {f.name for f in dataclasses.fields(cls)}
        missing = [f.name for f in dataclasses.fields(cls)
                   if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
                   and f.name not in raw]
        if missing:
            raise CardError(f"model card {path} lacks {', '.join(missing)}")
        if "networks" not in raw:
            raw = {**raw, "networks": _networks_of_old_card(raw)}
        if not isinstance(raw["networks"], list):
            raise CardError(f"model card {path}: networks must be a list")
        raw = {**raw, "networks": [n if isinstance(n, Network) else Network.from_dict(n) for n in raw["networks"]]}
        card = cls(**{k: v for k, v in raw.items() if k in names})
        card.validate()
        return card

    def validate(self) -> None:
        if self.positive_class not in self.class_names:
            raise CardError(f"positive class {self.positive_class!r} not in {self.class_names}")
        if not 0.0 < self.threshold < 1.0:
            raise CardError(f"threshold {self.threshold} outside (0, 1)")
        if self.temperature <= 0:
            raise CardError(f"temperature {self.temperature} must be positive")
        if len(self.mean) != 3 or len(self.std) != 3:
            raise CardError("mean and std need three channels")
        if not self.networks or not all(isinstance(n, Network) for n in self.networks):
            raise CardError("the model card names no network (networks: [{name, view}, ...])")

    def save(self, directory: str | Path) -> Path:
        self.validate()
        path = Path(directory) / CARD_FILE
        path.write_text(json.dumps(dataclasses.asdict(self), indent=2) + "\n")
        return path

    def check_weights(self, directory: str | Path) -> Path:
        """Refuse weights whose hash differs from the card: a tampered or stale file."""
        return check_sha256(Path(directory) / self.weights_file, self.weights_sha256, "weights")
