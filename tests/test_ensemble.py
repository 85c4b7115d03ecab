"""An ensemble model: networks that see the film differently, logits averaged, maps averaged.

Built here from the shipped first network and a perturbed copy of it that sees the whole film, so that
the two networks disagree and every number can be recomputed by hand."""
from __future__ import annotations

import copy
import dataclasses
import json
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.conftest import REPO
from covidxr.card import CARD_FILE, CardError, ModelCard, Network, View, sha256_file
from covidxr.classifier import DEFAULT_WEIGHTS, Classifier, join_state, split_state
from covidxr.explain import explain
from covidxr.films import read_film
from covidxr.preprocess import prepare, prepare_film
from covidxr.training.cache import network_input
from covidxr.training.experiments import FINAL, network_recipes
from covidxr.training.recipe import VIEWS

WHOLE_FILM = View(crop_to_lungs=False, blank_outside_lungs=False, equalize_over="box")
SAMPLES = sorted((REPO / "samples").glob("*/*.jpg"))


def single(classifier: Classifier) -> Classifier:
    """The first network alone."""
    return Classifier(replace(classifier.card, networks=classifier.card.networks[:1]), classifier.nets[:1],
                      classifier.lungs, classifier.directory)


def perturbed(net):
    """A second opinion that disagrees, visibly."""
    other = copy.deepcopy(net)
    with torch.no_grad():
        other.head.weight.mul_(-0.7)
        other.head.bias.add_(0.3)
    return other


@pytest.fixture(scope="module")
def pair(classifier) -> Classifier:
    first = single(classifier)
    card = replace(first.card, networks=[*first.card.networks, Network("whole", WHOLE_FILM, "film_lungs")])
    return Classifier(card, [classifier.nets[0], perturbed(classifier.nets[0])], classifier.lungs, classifier.directory)


@pytest.fixture(scope="module")
def films():
    return [read_film(p) for p in SAMPLES[:3]]


def test_each_network_sees_the_film_as_its_view_says(pair, films):
    c = pair.card
    for film, inputs in zip(films, pair.prepare(films)):
        lung_box, whole = inputs.networks
        assert lung_box.box == inputs.box != (0.0, 1.0, 0.0, 1.0)  # the first network: the lung box
        assert whole.box == (0.0, 1.0, 0.0, 1.0)
        p = pair.lung_probability([film])[0]
        expect = prepare(film.pixels, p, WHOLE_FILM, c.input_size, c.crop_margin, c.mask_dilation)
        assert np.allclose(whole.image, expect.image) and np.allclose(whole.mask, expect.mask)
        assert 0.05 < whole.mask.mean() < 0.95  # the lung mask is kept for the heatmap's lung mass


def test_the_probability_is_the_softmax_of_the_mean_logits(pair, films):
    c = pair.card
    with torch.inference_mode():
        prepared = pair.prepare(films)
        a = pair.nets[0](pair.tensor([p.networks[0] for p in prepared]))
        b = pair.nets[1](pair.tensor([p.networks[1] for p in prepared]))
    expect = torch.softmax((a + b) / 2 / c.temperature, -1)[:, c.positive_index]
    got = [p.probability for p in pair.predict(films)]
    assert got == pytest.approx(expect.tolist(), abs=1e-5)
    alone = [p.probability for p in single(pair).predict(films)]
    assert max(abs(x - y) for x, y in zip(got, alone)) > 1e-3  # the second network counts


def test_explain_gives_predicts_numbers_and_the_mean_of_the_networks_maps(pair, films):
    film = films[0]
    ex = explain(pair, film)
    p = pair.predict([film])[0]
    assert ex.prediction.probability == pytest.approx(p.probability, abs=1e-5)
    assert ex.prediction.label == p.label
    first = explain(single(pair), film).heatmap
    second_net = Classifier(replace(pair.card, networks=pair.card.networks[1:]), pair.nets[1:], pair.lungs,
                            pair.directory)  # the second network alone, on its own view of the film
    second = explain(second_net, film).heatmap
    mean = first + second
    assert np.allclose(ex.heatmap, mean / mean.max(), atol=1e-4)
    assert ex.heatmap.shape == film.pixels.shape and ex.heatmap.max() == pytest.approx(1.0)


@pytest.mark.slow
def test_weights_round_trip_and_load_from_a_folder(pair, tmp_path: Path, films):
    d = tmp_path / "weights"
    shutil.copytree(DEFAULT_WEIGHTS, d)
    shipped = ModelCard.load(d)
    (first, *_), lungs = split_state(torch.load(d / "model.pt", weights_only=True), len(shipped.networks), 3)  # as trained
    other = perturbed(first)
    torch.save(join_state([first, other], lungs), d / "model.pt")
    card = json.loads((d / CARD_FILE).read_text())
    card.update(networks=[dataclasses.asdict(n) for n in pair.card.networks], weights_sha256=sha256_file(d / "model.pt"))
    (d / CARD_FILE).write_text(json.dumps(card))
    loaded = Classifier.from_dir(d)
    assert len(loaded.nets) == 2 and loaded.card.views == [shipped.networks[0].view, WHOLE_FILM]
    got = [p.probability for p in loaded.predict(films)]
    assert got == pytest.approx([p.probability for p in pair.predict(films)], abs=1e-4)  # BatchNorm folded on load
    nets, _ = split_state(torch.load(d / "model.pt", weights_only=True), 2, 3)
    assert len(nets) == 2 and torch.equal(nets[1].head.weight, other.head.weight)
    with pytest.raises(CardError, match="networks the card does not name"):
        split_state(torch.load(d / "model.pt", weights_only=True), 1, 3)
    first_only = {k: v for k, v in torch.load(d / "model.pt", weights_only=True).items()
                  if not k.startswith(Network.state_prefix(1))}
    with pytest.raises(CardError, match="the weights hold no network cls1, which the card names"):
        split_state(first_only, 2, 3)


def test_a_card_and_weights_that_disagree_on_the_networks_are_refused(pair, tmp_path: Path):
    with pytest.raises(CardError, match="the card names 2 networks, the weights hold 1"):
        Classifier(pair.card, pair.nets[:1], pair.lungs, pair.directory)
    card = json.loads((DEFAULT_WEIGHTS / CARD_FILE).read_text())
    card["networks"] = [{"name": "x", "view": {"crop": False}}]
    (tmp_path / CARD_FILE).write_text(json.dumps(card))
    with pytest.raises(CardError, match="no valid view"):
        ModelCard.load(tmp_path)


def test_training_builds_each_networks_input_as_inference_does():
    """Inference rebuilds each network's input from the card: its View and numbers must be training's."""
    card = ModelCard.load(DEFAULT_WEIGHTS)
    recipes = network_recipes(FINAL)
    assert [(n.name, n.variant, n.view) for n in card.networks] == [(r.name, r.variant, VIEWS[r.variant]) for r in recipes]
    assert (card.input_size, card.lung_input_size, card.crop_margin, card.mask_dilation, tuple(card.mean), tuple(card.std)) \
        == (FINAL.input_size, FINAL.lung_size, FINAL.crop_margin, FINAL.mask_dilation, FINAL.mean, FINAL.std)
    rng = np.random.default_rng(0)
    pixels = rng.random((300, 260)).astype(np.float32)
    lung = np.zeros((64, 64), np.float32)
    lung[10:50, 8:28] = lung[10:50, 36:56] = 1
    inputs = prepare_film(pixels, np.zeros((64, 64), np.float32), lung, card.views, card.input_size, card.crop_margin,
                          card.mask_dilation)
    for recipe, seen in zip(recipes, inputs.networks):
        cached = network_input(pixels, lung, recipe)  # what the training cache stores for this film
        assert np.array_equal(cached.image, seen.image) and np.array_equal(cached.mask, seen.mask)
        assert cached.box == seen.box


def test_kernels_are_stored_in_half_and_training_measures_what_ships():
    from covidxr.classifier import as_stored
    from covidxr.model import CovidNet, LungNet

    torch.manual_seed(0)
    net = CovidNet(3).eval()
    state = join_state([net], LungNet())
    kinds = {k: v.dtype for k, v in state.items() if k.startswith(Network.state_prefix(0)) and v.is_floating_point()}
    assert kinds["cls.backbone.conv_stem.weight"] == torch.float16
    assert kinds["cls.head.weight"] == torch.float32 and kinds["cls.backbone.bn2.running_var"] == torch.float32
    (loaded,), _ = split_state(state, 1, 3)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        before = net(x)
        rounded = as_stored(net)(x)
        assert torch.equal(rounded, loaded.eval().to(memory_format=torch.contiguous_format)(x))
        assert 0 < (before - rounded).abs().max() < 0.05  # rounding moved the logits, a little
