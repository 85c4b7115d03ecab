"""Model integrity: weights load only as plain tensors and only when their sha256 matches the card."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from covidxr.card import CardError, ModelCard, sha256_file
from covidxr.classifier import DEFAULT_WEIGHTS, Classifier
from covidxr.training.experiments import FINAL, NETWORKS
from covidxr.training.recipe import VIEWS


@pytest.fixture
def weights_copy(tmp_path: Path) -> Path:
    d = tmp_path / "weights"
    shutil.copytree(DEFAULT_WEIGHTS, d)
    return d


def test_shipped_card_matches_its_files():
    card = ModelCard.load(DEFAULT_WEIGHTS)
    assert sha256_file(DEFAULT_WEIGHTS / card.weights_file) == card.weights_sha256
    assert sha256_file(DEFAULT_WEIGHTS / card.ood["file"]) == card.ood["sha256"]
    assert card.positive_class in card.class_names and 0 < card.threshold < 1
    assert card.metrics["leave_one_source_out"] and card.data["manifest_sha256"]


def test_the_card_estimates_generalisation_with_the_shipped_recipe():
    """The LOSO rows must describe the recipe that made the weights, not an older one."""
    card = ModelCard.load(DEFAULT_WEIGHTS)
    assert {r["adversary"] for r in card.metrics["leave_one_source_out"]} == {FINAL.adversary}
    assert bool(card.training["source_adversary"]) == bool(FINAL.adversary)
    assert ("JPEG" in card.training["augmentation"]) == FINAL.jpeg
    assert {(r["variant"], r["attention"]) for r in card.metrics["leave_one_source_out"]} == \
        {("+".join(NETWORKS.values()), FINAL.attention)}  # every network's fold, combined
    assert all([m["variant"] for m in r["members"]] == list(NETWORKS.values())
               for r in card.metrics["leave_one_source_out"])
    assert FINAL.variant == NETWORKS[""]  # the first network is FINAL's own
    assert card.views == [VIEWS[v] for v in NETWORKS.values()]  # what each network was trained on
    assert [m["variant"] for m in card.training["networks"]] == list(NETWORKS.values())
    assert bool(card.training["lung_attention_penalty"]) == bool(FINAL.attention)


def test_tampered_weights_are_refused(weights_copy: Path):
    path = weights_copy / "model.pt"
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(CardError, match="sha256"):
        Classifier.from_dir(weights_copy)


def test_missing_weights_are_refused(weights_copy: Path):
    (weights_copy / "model.pt").unlink()
    with pytest.raises(CardError, match="missing"):
        Classifier.from_dir(weights_copy)


class Payload:
    """Runs code when unpickled: what a malicious weights file would carry."""

    def __reduce__(self):
        return (exec, ("import pathlib; pathlib.Path(__import__('os').environ['CANARY']).write_text('ran')",))


def test_pickled_code_is_not_run_even_with_a_matching_hash(weights_copy: Path, tmp_path: Path, monkeypatch):
    canary = tmp_path / "canary"
    monkeypatch.setenv("CANARY", str(canary))
    torch.save({"cls.x": Payload()}, weights_copy / "model.pt")
    card = json.loads((weights_copy / "model_card.json").read_text())
    card["weights_sha256"] = sha256_file(weights_copy / "model.pt")  # an attacker who also edits the card
    (weights_copy / "model_card.json").write_text(json.dumps(card))
    with pytest.raises(CardError, match="safely"):
        Classifier.from_dir(weights_copy)
    assert not canary.exists()


@pytest.mark.slow
def test_tampered_ood_statistics_are_refused(weights_copy: Path):
    card = ModelCard.load(weights_copy)
    with open(weights_copy / card.ood["file"], "ab") as f:
        f.write(b"\0")
    with pytest.raises(CardError, match="sha256"):
        Classifier.from_dir(weights_copy)


@pytest.mark.parametrize("field,value,message", [("threshold", 1.5, "threshold"), ("temperature", 0, "temperature"),
                                                 ("positive_class", "cat", "positive class")])
def test_invalid_card_values_are_refused(weights_copy: Path, field, value, message):
    card = json.loads((weights_copy / "model_card.json").read_text())
    card[field] = value
    (weights_copy / "model_card.json").write_text(json.dumps(card))
    with pytest.raises(CardError, match=message):
        ModelCard.load(weights_copy)


def test_a_card_written_before_networks_loads_through_the_shim(weights_copy: Path):
    """Older cards described the first network by top-level fields and the others in `members`."""
    shipped = ModelCard.load(weights_copy)
    card = json.loads((weights_copy / "model_card.json").read_text())
    first, *others = card.pop("networks")
    card.update(blank_outside_lungs=first["view"]["blank_outside_lungs"],
                members=[{"name": n["name"], "variant": n["variant"],
                          "view": {k: v for k, v in n["view"].items() if k != "lung_mask"}} for n in others])
    (weights_copy / "model_card.json").write_text(json.dumps(card))
    old = ModelCard.load(weights_copy)
    assert old.views == shipped.views and [n.name for n in old.networks] == [n.name for n in shipped.networks]
    assert not hasattr(old, "members") and not hasattr(old, "blank_outside_lungs")
