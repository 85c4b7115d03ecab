"""The model card: the one source of truth for every number about the shipped model.

Code reads input size, normalisation, class names, threshold and temperature from here;
pages and the CLI never repeat them.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

CARD_FILE = "model_card.json"


class CardError(ValueError):
    """The model card is missing, malformed, or does not match the weights beside it."""


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


@dataclass(frozen=True)
class View:
    """How one network of the model sees a film: cropped to the lung box or whole, blanked outside the
    lungs or not, and where its histogram is taken ("lungs" or "box": the whole crop)."""

    crop_to_lungs: bool = True
    blank_outside_lungs: bool = True
    equalize_over: str = "lungs"


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
    blank_outside_lungs: bool = True  # the input is blanked outside the dilated lung mask (False: the whole lung box)
    members: list[dict[str, Any]] = field(default_factory=list)  # further networks, logits averaged with the first: {name, view}
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
        """One per network, in the order of model.pt's `cls.`, `cls1.`, ... prefixes: the first network's
        view is the card's top-level fields (cards before the ensemble have only that one)."""
        return [View(True, self.blank_outside_lungs, "lungs")] + [View(**m["view"]) for m in self.members]

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
        for m in self.members:
            try:
                View(**m["view"])
            except (KeyError, TypeError) as e:
                raise CardError(f"ensemble member {m.get('name')!r} has no valid view: {e}") from None

    def save(self, directory: str | Path) -> Path:
        self.validate()
        path = Path(directory) / CARD_FILE
        path.write_text(json.dumps(dataclasses.asdict(self), indent=2) + "\n")
        return path

    def check_weights(self, directory: str | Path) -> Path:
        """Refuse weights whose hash differs from the card: a tampered or stale file."""
        path = Path(directory) / self.weights_file
        if not path.exists():
            raise CardError(f"weights file {path} is missing")
        digest = sha256_file(path)
        if digest != self.weights_sha256:
            raise CardError(f"weights {path} have sha256 {digest[:12]}…, the model card expects "
                            f"{self.weights_sha256[:12]}…: the file was changed or does not belong to this card")
        return path
