"""An ensemble model: networks that see the film differently, logits averaged, maps averaged.

Built here from the shipped first network and a perturbed copy of it that sees the whole film, so that
the two networks disagree and every number can be recomputed by hand."""
from __future__ import annotations

import copy
import json
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.conftest import REPO
from covidxr import train
from covidxr.card import CardError, ModelCard, View, sha256_file
from covidxr.classifier import DEFAULT_WEIGHTS, Classifier, join_state, split_state
from covidxr.explain import explain, place
from covidxr.films import read_film
from covidxr.preprocess import prepare

WHOLE_FILM = View(crop_to_lungs=False, blank_outside_lungs=False, equalize_over="box")
SAMPLES = sorted((REPO / "samples").glob("*/*.jpg"))


def single(classifier: Classifier) -> Classifier:
    """The first network alone."""
    return Classifier(replace(classifier.card, members=[]), classifier.net, classifier.lungs, classifier.directory)


@pytest.fixture(scope="module")
def pair(classifier) -> Classifier:
    other = copy.deepcopy(classifier.net)
    with torch.no_grad():
        other.head.weight.mul_(-0.7)  # a second opinion that disagrees, visibly
        other.head.bias.add_(0.3)
    card = replace(single(classifier).card, members=[{"name": "whole", "view": WHOLE_FILM.__dict__}])
    return Classifier(card, classifier.net, classifier.lungs, classifier.directory, [other])


@pytest.fixture(scope="module")
def films():
    return [read_film(p) for p in SAMPLES[:3]]


def test_each_network_sees_the_film_as_its_view_says(pair, films):
    c = pair.card
    for film, prep in zip(films, pair.prepare(films)):
        assert prep.box != (0.0, 1.0, 0.0, 1.0)  # the first network: the lung box
        (whole,) = prep.members
        assert whole.box == (0.0, 1.0, 0.0, 1.0)
        p = pair.lung_probability([film])[0]
        expect = prepare(film.pixels, p, c.input_size, c.crop_margin, c.mask_dilation, blank=False,
                         equalize_over="box", crop=False)
        assert np.allclose(whole.image, expect.image) and np.allclose(whole.mask, expect.mask)
        assert 0.05 < whole.mask.mean() < 0.95  # the lung mask is kept for the heatmap's lung mass


def test_the_probability_is_the_softmax_of_the_mean_logits(pair, films):
    c = pair.card
    with torch.inference_mode():
        prepared = pair.prepare(films)
        a = pair.net(pair.tensor(prepared))
        b = pair.members[0](pair.tensor([p.members[0] for p in prepared]))
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
    second_net = Classifier(replace(pair.card, blank_outside_lungs=False, members=[]), pair.members[0], pair.lungs,
                            pair.directory)
    second_net.prepare = lambda fs: [pr.members[0] for pr in pair.prepare(fs)]  # its own view of the film
    second = explain(second_net, film).heatmap
    mean = first + second
    assert np.allclose(ex.heatmap, mean / mean.max(), atol=1e-4)
    assert ex.heatmap.shape == film.pixels.shape and ex.heatmap.max() == pytest.approx(1.0)


def test_weights_round_trip_and_load_from_a_folder(pair, tmp_path: Path, films):
    d = tmp_path / "weights"
    shutil.copytree(DEFAULT_WEIGHTS, d)
    (first, *_), lungs = split_state(torch.load(d / "model.pt", weights_only=True), 3)  # as trained, not folded
    other = copy.deepcopy(first)
    with torch.no_grad():
        other.head.weight.mul_(-0.7)
        other.head.bias.add_(0.3)
    torch.save(join_state([first, other], lungs), d / "model.pt")
    card = json.loads((d / "model_card.json").read_text())
    card.update(members=pair.card.members, weights_sha256=sha256_file(d / "model.pt"),
                blank_outside_lungs=pair.card.blank_outside_lungs)
    (d / "model_card.json").write_text(json.dumps(card))
    loaded = Classifier.from_dir(d)
    assert len(loaded.nets) == 2 and loaded.card.views == [View(True, pair.card.blank_outside_lungs), WHOLE_FILM]
    got = [p.probability for p in loaded.predict(films)]
    assert got == pytest.approx([p.probability for p in pair.predict(films)], abs=1e-4)  # BatchNorm folded on load
    nets, _ = split_state(torch.load(d / "model.pt", weights_only=True), 3)
    assert len(nets) == 2 and torch.equal(nets[1].head.weight, other.head.weight)


def test_a_card_and_weights_that_disagree_on_the_networks_are_refused(pair, classifier):
    with pytest.raises(CardError, match="1 further ensemble networks, the weights hold 0"):
        Classifier(pair.card, classifier.net, classifier.lungs, classifier.directory)
    bad = replace(pair.card, members=[{"name": "x", "view": {"crop": False}}])
    with pytest.raises(CardError, match="no valid view"):
        bad.validate()


def test_a_training_variant_round_trips_through_the_card():
    """Inference rebuilds each network's input from the card's view: it must be the one training used."""
    rng = np.random.default_rng(0)
    pixels = rng.random((300, 260)).astype(np.float32)
    lung = np.zeros((64, 64), np.float32)
    lung[10:50, 8:28] = lung[10:50, 36:56] = 1
    for variant in train.MEMBERS.values():
        v = train.view(variant)
        got = prepare(pixels, lung, train.INPUT_SIZE, train.CROP_MARGIN, train.MASK_DILATION,
                      blank=v.blank_outside_lungs, equalize_over=v.equalize_over, crop=v.crop_to_lungs)
        expect = train.prepare_variant(pixels, lung, variant)
        assert np.array_equal(got.image, expect.image) and np.array_equal(got.mask, expect.mask)
        assert got.box == expect.box
    card = ModelCard.load(DEFAULT_WEIGHTS)
    assert [m["view"] for m in card.members] == [train.view(v).__dict__ for v in list(train.MEMBERS.values())[1:]]


def test_kernels_are_stored_in_half_and_training_measures_what_ships():
    from covidxr.classifier import as_stored
    from covidxr.model import CovidNet, LungNet

    torch.manual_seed(0)
    net = CovidNet(3).eval()
    state = join_state([net], LungNet())
    kinds = {k: v.dtype for k, v in state.items() if k.startswith("cls.") and v.is_floating_point()}
    assert kinds["cls.backbone.conv_stem.weight"] == torch.float16
    assert kinds["cls.head.weight"] == torch.float32 and kinds["cls.backbone.bn2.running_var"] == torch.float32
    (loaded,), _ = split_state(state, 3)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        before = net(x)
        rounded = as_stored(net)(x)
        assert torch.equal(rounded, loaded.eval().to(memory_format=torch.contiguous_format)(x))
        assert 0 < (before - rounded).abs().max() < 0.05  # rounding moved the logits, a little
