"""The networks on ONNX Runtime (covidxr/runtime.py) give PyTorch's numbers, Grad-CAM on the tail gives the
whole network's map, and the exported graphs are cached by the weights they were made from."""
from __future__ import annotations

import copy
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from pytorch_grad_cam import GradCAM
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

from covidxr import runtime
from covidxr.explain import explain, place
from covidxr.films import read_film
from tests.conftest import REPO, shared_data

# Float rounding between two runtimes: measured up to 5e-7 on logits and 5e-6 on Grad-CAM maps (scaled to a
# maximum of 1) over the sample films; 1e-4 leaves room for other CPUs' kernels without hiding a wrong layer.
TOLERANCE = 1e-4


@pytest.fixture(scope="module")
def films():
    paths = sorted((REPO / "samples").glob("*/*.jpg"))[:4] + sorted(shared_data("cxr").glob("*/*/*.png"))[:4]
    return [read_film(p) for p in paths]


@pytest.fixture(scope="module")
def inputs(classifier, films):
    return classifier.prepare(films)


def test_onnx_outputs_are_pytorchs(classifier, inputs):
    for i, net in enumerate(classifier.nets):
        x = classifier.tensor([f.networks[i] for f in inputs])
        out = classifier.onnx(i).run(x)
        with torch.inference_mode():
            a = net.cam_activations(x)
            features = net.features(x)
            logits = net(x)
        np.testing.assert_allclose(out.features, features.numpy(), atol=TOLERANCE)
        np.testing.assert_allclose(out.logits, logits.numpy(), atol=TOLERANCE)
        np.testing.assert_allclose(classifier.onnx(i).cam_activations(x), a.numpy(), atol=TOLERANCE)


def test_split_at_the_cam_layer_is_the_whole_network(classifier, inputs):
    net = classifier.nets[0]
    x = classifier.tensor([f.networks[0] for f in inputs])
    with torch.inference_mode():
        assert torch.equal(net.features_from_cam(net.cam_activations(x)), net.features(x))


def test_predict_is_the_pytorch_ensembles(classifier, films, inputs):
    """The probabilities predict() gives are those of the networks run by PyTorch, to float rounding."""
    logits, _ = classifier.forward_pytorch(inputs)
    want = torch.softmax(logits / classifier.card.temperature, -1)[:, classifier.card.positive_index]
    got = [p.probability for p in classifier.predict(films)]
    np.testing.assert_allclose(got, want.numpy(), atol=TOLERANCE)


def whole_network_gradcam(classifier, film) -> np.ndarray:
    """Grad-CAM as pytorch-grad-cam makes it on each whole PyTorch network, laid on the film and averaged
    as explain() does (masked=False): the reference for the tail-only version."""
    (x,) = classifier.prepare([film])
    heat = np.zeros(film.pixels.shape, np.float32)
    for net, inp in zip(classifier.nets, x.networks):
        net = copy.deepcopy(net)
        cam = GradCAM(model=net, target_layers=[net.cam_layer])
        with torch.enable_grad():
            m = cam(input_tensor=classifier.tensor([inp]).clone(),
                    targets=[ClassifierOutputTarget(classifier.card.positive_index)])[0]
        heat += place(m, inp.box, film.pixels.shape)
    return heat / heat.max() if heat.max() > 0 else heat


def test_gradcam_on_the_tail_is_the_whole_networks(classifier, films):
    for film in films[:4]:
        got = explain(classifier, film, masked=False).heatmap
        want = whole_network_gradcam(classifier, film)
        assert np.abs(got - want).max() <= TOLERANCE * 10, film.name  # maps in [0, 1]: 1e-3 of the scale


def test_graph_is_exported_once_then_read_from_the_cache(classifier, tmp_path, monkeypatch):
    monkeypatch.setenv(runtime.CACHE_ENV, str(tmp_path))
    net, side = classifier.nets[0], classifier.card.input_size
    data = runtime.graph_bytes(net, side)
    files = list((tmp_path / "onnx").iterdir())
    assert [f.name for f in files] == [f"{runtime.weights_key(net, side)}.onnx"]
    assert files[0].read_bytes() == data

    def no_export(*a, **k):
        raise AssertionError("exported again although the cache holds the graph")

    monkeypatch.setattr(runtime, "export", no_export)
    assert runtime.graph_bytes(net, side) == data


def test_other_weights_get_another_graph(classifier):
    net, side = classifier.nets[0], classifier.card.input_size
    changed = copy.deepcopy(net)
    with torch.no_grad():
        changed.head.bias.add_(1.0)
    assert runtime.weights_key(changed, side) != runtime.weights_key(net, side)
    assert runtime.weights_key(net, side + 32) != runtime.weights_key(net, side)
    x = torch.zeros(1, 3, side, side)
    shifted = runtime.network(changed, side).run(x).logits - runtime.network(net, side).run(x).logits
    np.testing.assert_allclose(shifted, 1.0, atol=TOLERANCE)  # the session follows its own network's weights


def test_an_unwritable_cache_only_costs_the_export(classifier, tmp_path, monkeypatch):
    blocked = tmp_path / "file"
    blocked.write_text("not a folder")
    monkeypatch.setenv(runtime.CACHE_ENV, str(blocked))
    net, side = classifier.nets[0], classifier.card.input_size
    data = runtime.graph_bytes(net, side)
    out = runtime.OnnxNetwork(data, 1).run(torch.zeros(2, 3, side, side))
    assert out.logits.shape == (2, len(classifier.card.class_names))


_LOAD = """
import json, sys
import covidxr
from covidxr.films import read_film
clf = covidxr.load()
films = [read_film(p) for p in sys.argv[1:]]
probs = [p.probability for p in clf.predict(films)]
print(json.dumps({"probs": probs, "built": clf._networks.nets is not None,
                  "imported": sorted(m for m in ("timm", "torchvision", "pytorch_grad_cam") if m in sys.modules)}))
"""


def _load_in_fresh_process(cache, paths) -> dict:
    home = cache / "home"
    home.mkdir(exist_ok=True)
    env = {k: v for k, v in os.environ.items() if k != "ORT_DISABLE_TELEMETRY"}
    env.update({runtime.CACHE_ENV: str(cache), "HOME": str(home)})
    r = subprocess.run([sys.executable, "-c", _LOAD, *map(str, paths)], capture_output=True, text=True, env=env,
                       cwd=REPO, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    # ONNX Runtime's telemetry (a device id and an event queue under ~/.cache/Microsoft, sent to Microsoft) is off
    assert not (home / ".cache" / "Microsoft").exists()
    return json.loads(r.stdout.strip().splitlines()[-1])


def test_a_model_whose_graphs_are_cached_is_not_built_in_pytorch(classifier, films, tmp_path):
    """Classifier.from_dir names its graphs by the weights file's hash: the first process builds the networks
    and exports them; the next one predicts from the cached graphs alone, never importing timm, torchvision
    or pytorch-grad-cam (seconds of every command's and cluster worker's start), with the same numbers.
    None of them leaves ONNX Runtime's telemetry behind."""
    paths = sorted((REPO / "samples").glob("*/*.jpg"))[:3]
    keys = [runtime.file_key(classifier.card.weights_sha256, i, classifier.card.input_size)
            for i in range(len(classifier.card.networks))]
    first = _load_in_fresh_process(tmp_path, paths)
    assert first["built"] and sorted(f.name for f in (tmp_path / "onnx").iterdir()) == sorted(f"{k}.onnx" for k in keys)
    second = _load_in_fresh_process(tmp_path, paths)
    assert not second["built"] and second["imported"] == []
    assert second["probs"] == first["probs"]
    want = [p.probability for p in classifier.predict([read_film(p) for p in paths])]
    np.testing.assert_allclose(second["probs"], want, atol=TOLERANCE)
    # a damaged cached graph is exported again, not fatal
    (tmp_path / "onnx" / f"{keys[0]}.onnx").write_bytes(b"not a graph")
    third = _load_in_fresh_process(tmp_path, paths)
    assert third["built"] and third["probs"] == first["probs"]
    assert (tmp_path / "onnx" / f"{keys[0]}.onnx").stat().st_size > 1_000_000
