"""The model: its networks, their lung segmenter and the gate, as the card describes them.

A film's way through predict(): read (films/) -> prepare every network's input in one pass
(preprocess.py) -> the networks' logits, averaged -> the decision at the card's operating point ->
the gate (gate.py, with ood.py's statistics), which says whether the film is a frontal chest radiograph at all.

One Classifier is safe to share between threads (a Streamlit server's sessions): predict() only
reads the networks, and Grad-CAM hooks live on pooled private copies of their tails (see cam.py).
"""
from __future__ import annotations

import os
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch

from .card import CardError, ModelCard, Network, decision_label
from .films import Film
from .model import CovidNet, LungNet, fold_batchnorm
from .gate import ChildLook, GateRules, KindLook, Verdict
from .ood import OODDetector
from . import runtime
from .runtime import NetworkOutputs, OnnxNetwork
from .preprocess import FilmInputs, Prepared, lung_input, prepare_film, to_tensor


def _shipped_weights() -> Path:
    """The shipped model: inside the package once installed from the wheel (setup.py puts weights/ there as
    covidxr/weights), else at the root of the checkout the package runs from."""
    here = Path(__file__).resolve().parent
    return here / "weights" if (here / "weights").is_dir() else here.parent / "weights"


DEFAULT_WEIGHTS = _shipped_weights()
THREADS_ENV = "COVIDXR_THREADS"


def set_threads(threads: int | None = None) -> int:
    """Torch intra-op threads: argument, else $COVIDXR_THREADS, else 1 (measured best on a busy 2-core box)."""
    n = threads or int(os.environ.get(THREADS_ENV, "1") or 1)
    if torch.get_num_threads() != n:
        torch.set_num_threads(n)
    return n


def network_states(state: dict[str, torch.Tensor], n_networks: int) -> list[dict[str, torch.Tensor]]:
    """model.pt holds every network, the i-th under `Network.state_prefix(i)`: each network's own tensors,
    refused if the file holds networks the card does not name, or lacks one it names."""
    extra = {k.split(".", 1)[0] for k in state if k.startswith("cls")} - {Network.state_prefix(i)[:-1] for i in range(n_networks)}
    if extra:
        raise CardError(f"the weights hold networks the card does not name: {', '.join(sorted(extra))}")
    out = []
    for i in range(n_networks):
        prefix = Network.state_prefix(i)
        out.append({k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)})
    missing = [Network.state_prefix(i)[:-1] for i, s in enumerate(out) if not s]
    if missing:
        raise CardError(f"the weights hold no network {', '.join(missing)}, which the card names")
    return out


def build_network(state: dict[str, torch.Tensor], n_classes: int) -> CovidNet:
    net = CovidNet(n_classes)
    net.load_state_dict(state)
    return net.to(memory_format=torch.channels_last).eval()


def split_state(state: dict[str, torch.Tensor], n_networks: int, n_classes: int) -> tuple[list[CovidNet], LungNet]:
    """model.pt's networks (network_states) and the lung segmenter, stored under `lung.`."""
    nets = [build_network(s, n_classes) for s in network_states(state, n_networks)]
    return nets, lung_net(state)


def lung_net(state: dict[str, torch.Tensor]) -> LungNet:
    lungs = LungNet()
    lungs.load_state_dict({k[5:]: v for k, v in state.items() if k.startswith("lung.")})
    return lungs.eval()


def stored_in_half(tensor: torch.Tensor) -> bool:
    """The classifiers' convolution kernels are stored in float16: that halves model.pt. On the shipped model's 1,018
    validation films it moved the calibrated probability by 0.0004 on average (at most 0.013) and changed
    no decision; training calibrates on the rounded networks (as_stored). BatchNorm, biases and the head
    stay float32."""
    return tensor.is_floating_point() and tensor.dim() == 4


def as_stored(net: CovidNet) -> CovidNet:
    """Round a trained classifier's weights as model.pt stores them, so that what is calibrated and
    measured on it is what ships."""
    with torch.no_grad():
        for v in net.state_dict().values():
            if stored_in_half(v):
                v.copy_(v.half())
    return net


def join_state(nets: Sequence[CovidNet], lungs: LungNet) -> dict[str, torch.Tensor]:
    """The inverse of split_state (load_state_dict widens the float16 kernels back to float32)."""
    state = {f"lung.{k}": v for k, v in lungs.state_dict().items()}
    for i, net in enumerate(nets):
        state |= {f"{Network.state_prefix(i)}{k}": v.half() if stored_in_half(v) else v for k, v in net.state_dict().items()}
    return state


def lung_probability(lungs: LungNet, films: Sequence[Film], size: int) -> list[np.ndarray]:
    """Per film, the segmenter's lung probability at size x size (training's cache uses it too)."""
    return segment(lungs, [lung_input(f.pixels, size) for f in films])


def segment(lungs: LungNet, inputs: Sequence[np.ndarray]) -> list[np.ndarray]:
    """Lung probabilities of segmenter inputs (`lung_input`)."""
    x = torch.from_numpy(np.stack(inputs))[:, None]
    with torch.inference_mode():
        return list(torch.sigmoid(lungs(x))[:, 0].numpy())


@dataclass
class Prediction:
    name: str
    probability: float                  # calibrated probability of the positive class
    positive: bool                      # probability >= threshold
    label: str                          # the positive class or "non-<positive class>": the product decision
    threshold: float
    class_probabilities: dict[str, float]
    lung_fraction: float                # share of the film found to be lung (0: none found)
    box: tuple[float, float, float, float]  # lung box with its margin (top, bottom, left, right), fractions
    ood: Verdict | None = None          # the gate's verdict (covidxr.gate; None: the card has no gate)
    extra: dict = field(default_factory=dict)
    site: str | None = None             # the site profile whose operating point decided (None: the shipped one)


class _Networks:
    """A classifier's networks, or how to build them on first use, and their sessions on the graphs named
    `graph_keys`; shared by the copies with_site() makes."""

    def __init__(self, nets: Sequence[CovidNet] | Callable[[], Sequence[CovidNet]], graph_keys: Sequence[str] | None):
        self.build = nets if callable(nets) else None
        self.nets = None if callable(nets) else [n.eval() for n in nets]
        self.graph_keys = graph_keys
        self.sessions: dict[int, OnnxNetwork] = {}
        self.lock = threading.RLock()  # a session made here may build the networks (get) on the way

    def get(self) -> list[CovidNet]:
        with self.lock:
            if self.nets is None:
                self.nets = [n.eval() for n in self.build()]
                self.build = None
            return self.nets

    def session(self, i: int, side: int) -> OnnxNetwork:
        """The i-th network's session on its keyed graph, made once (runtime.session)."""
        with self.lock:
            s = self.sessions.get(i)
            if s is None:
                s = self.sessions[i] = runtime.session(self.graph_keys[i], side, lambda: self.get()[i])
            return s


class Classifier:
    """The card's networks, whose logits are averaged; the first also gives the gate's features.

    `nets`: the networks, or a function that builds them (from_dir): then they are built only when PyTorch
    itself is needed (Grad-CAM's tail, forward_pytorch, training, or a graph no process has exported yet),
    and `graph_keys` name each network's ONNX graph in runtime's cache (runtime.file_key). predict()
    runs on ONNX Runtime, so a batch worker whose graphs are cached never builds them."""

    def __init__(self, card: ModelCard, nets: Sequence[CovidNet] | Callable[[], Sequence[CovidNet]], lungs: LungNet,
                 directory: Path, graph_keys: Sequence[str] | None = None):
        self.card, self.lungs, self.directory = card, lungs.eval(), directory
        self._networks = _Networks(nets, graph_keys)
        if self._networks.nets is not None:
            self._check(self._networks.nets)
        self.ood = OODDetector.load(directory, card) if card.ood.get("file") else None
        self.gate_rules = GateRules.from_card(card.ood.get("gate"))
        child = card.ood.get("paediatric")
        self.child_look = ChildLook.load(directory, child) if self.ood and child else None
        kind = card.ood.get("kind")
        self.kind_look = KindLook.load(directory, kind) if self.ood and kind else None
        self.site = None  # a covidxr.site.SiteProfile: set only on the copy with_site() returns

    def _check(self, nets: Sequence[CovidNet]) -> None:
        if len(nets) != len(self.card.networks):
            raise CardError(f"the card names {len(self.card.networks)} networks, the weights hold {len(nets)}")

    @property
    def nets(self) -> list[CovidNet]:
        """The networks in PyTorch (built now if from_dir deferred them)."""
        return self._networks.get()

    @classmethod
    def from_dir(cls, directory: str | Path = DEFAULT_WEIGHTS, threads: int | None = None) -> "Classifier":
        """Load weights only if their sha256 matches the card, and only as plain tensors. The classifier
        networks are built in PyTorch only when needed (see Classifier)."""
        directory = Path(directory)
        set_threads(threads)
        card = ModelCard.load(directory)
        path = card.check_weights(directory)
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:  # noqa: BLE001
            raise CardError(f"weights {path} could not be loaded safely: {e}") from None
        states, n_classes = network_states(state, len(card.networks)), len(card.class_names)

        def build() -> list[CovidNet]:
            # Inference-only speed-ups, same outputs to float rounding: BatchNorm folded into the convolutions
            # (the CAM layer's kept, see fold_batchnorm) and channels-last memory (oneDNN, 25-30% faster here).
            nets = [build_network(s, n_classes) for s in states]
            return [fold_batchnorm(n, keep=(n.cam_layer,)).to(memory_format=torch.channels_last) for n in nets]

        lungs = fold_batchnorm(lung_net(state)).to(memory_format=torch.channels_last)
        keys = [runtime.file_key(card.weights_sha256, i, card.input_size) for i in range(len(states))]
        return cls(card, build, lungs, directory, graph_keys=keys)

    def with_site(self, profile) -> "Classifier":
        """This model deciding at a site profile's operating point (covidxr.site): a shallow copy sharing the
        networks; SiteError when the profile was made for another base model. None: the shipped point."""
        import copy

        from .site import check_base

        if profile is not None:
            check_base(profile.name, profile.base_sha256, self.card)
        clf = copy.copy(self)
        clf.site = profile
        return clf

    @property
    def threshold(self) -> float:
        return self.card.threshold if self.site is None else self.site.threshold

    def lung_probability(self, films: Sequence[Film]) -> list[np.ndarray]:
        return lung_probability(self.lungs, films, self.card.lung_input_size)

    def prepare(self, films: Sequence[Film]) -> list[FilmInputs]:
        """Each film's inputs for every network, from one pass of the lung segmenter."""
        c = self.card
        overviews = [lung_input(f.pixels, c.lung_input_size) for f in films]
        return [prepare_film(f.pixels, x, p, c.views, c.input_size, c.crop_margin, c.mask_dilation)
                for f, x, p in zip(films, overviews, segment(self.lungs, overviews))]

    def tensor(self, prepared: Sequence[Prepared]) -> torch.Tensor:
        """One network's inputs as its batch."""
        return to_tensor([p.image for p in prepared], self.card.mean, self.card.std).to(
            memory_format=torch.channels_last)

    def onnx(self, i: int) -> OnnxNetwork:
        """The i-th network's forward pass on ONNX Runtime (covidxr/runtime.py: 1.7x PyTorch's on CPU)."""
        n, side = self._networks, self.card.input_size
        return runtime.network(self.nets[i], side) if n.graph_keys is None else n.session(i, side)

    def network_outputs(self, inputs: Sequence[FilmInputs]) -> list[NetworkOutputs]:
        """Each network's pooled features and logits for its own view of the films."""
        return [self.onnx(i).run(self.tensor([x.networks[i] for x in inputs])) for i in range(len(self.card.networks))]

    def forward(self, inputs: Sequence[FilmInputs]) -> tuple[torch.Tensor, torch.Tensor]:
        """The networks' mean logits and the first network's pooled features (the gate's)."""
        outputs = self.network_outputs(inputs)
        logits = torch.from_numpy(np.mean([o.logits for o in outputs], axis=0, dtype=np.float32))
        return logits, torch.from_numpy(outputs[0].features)

    def forward_pytorch(self, inputs: Sequence[FilmInputs]) -> tuple[torch.Tensor, torch.Tensor]:
        """forward() on PyTorch itself: the reference that the ONNX Runtime path is checked against
        (tests/test_runtime.py, scripts/runtime_check.py); nothing else uses it."""
        with torch.inference_mode():
            features = [net.features(self.tensor([x.networks[i] for x in inputs])) for i, net in enumerate(self.nets)]
            return torch.stack([net.head(f) for net, f in zip(self.nets, features)]).mean(0), features[0]

    def features(self, films: Sequence[Film], batch_size: int = 16) -> tuple[np.ndarray, np.ndarray]:
        """The gate's inputs for films: the first network's pooled features (n, d) and the lung
        fractions (n,), as predict() computes them (the gate's statistics are fitted on these)."""
        feats, fracs = [], []
        for i in range(0, len(films), batch_size):
            inputs = self.prepare(films[i:i + batch_size])
            feats.append(self.onnx(0).run(self.tensor([x.networks[0] for x in inputs])).features)
            fracs += [x.lung_fraction for x in inputs]
        return np.concatenate(feats), np.asarray(fracs, np.float32)

    def decide(self, film: Film, inputs: FilmInputs, logits: torch.Tensor, features: torch.Tensor) -> Prediction:
        """The decision at the card's operating point, and the gate's verdict on the film."""
        c = self.card
        if self.site is None:
            probs = torch.softmax(logits.float() / c.temperature, -1).tolist()
        else:  # the site profile's probability and threshold (covidxr.site)
            probs = self.site.class_probabilities(logits.detach().double().numpy()[None],
                                                  features.detach().double().numpy()[None],
                                                  c.temperature, c.positive_index)[0].tolist()
        p = probs[c.positive_index]
        positive = p >= self.threshold
        ood = None
        if self.ood:
            ood = self.ood.check(features.numpy(), inputs.lung_fraction, film, inputs.overview, inputs.lung_prob,
                                 self.gate_rules, self.child_look, self.kind_look)
        return Prediction(
            name=film.name, probability=float(p), positive=bool(positive),
            label=decision_label(positive, c.positive_class), threshold=self.threshold,
            class_probabilities=dict(zip(c.class_names, map(float, probs))),
            lung_fraction=inputs.lung_fraction, box=inputs.box, ood=ood,
            site=None if self.site is None else self.site.name)

    def predict(self, films: Sequence[Film], batch_size: int = 16) -> list[Prediction]:
        out: list[Prediction] = []
        for i in range(0, len(films), batch_size):
            chunk = films[i:i + batch_size]
            inputs = self.prepare(chunk)
            with torch.inference_mode():
                logits, feats = self.forward(inputs)
            out += [self.decide(f, x, lg, ft) for f, x, lg, ft in zip(chunk, inputs, logits, feats)]
        return out


def load(directory: str | Path = DEFAULT_WEIGHTS, threads: int | None = None, site: str | Path | None = None) -> Classifier:
    """The one way a model is loaded (covidxr.load, the command line, every engine's workers, the app): the model in
    `directory`, refused unless it matches its card, deciding at the site profile in the folder `site` if one is named."""
    clf = Classifier.from_dir(directory or DEFAULT_WEIGHTS, threads=threads)
    if site:
        from .site import SiteProfile

        profile = SiteProfile.load(site, clf.card)
        profile.check_adoptable()  # one clearly worse than the shipped model is used only with a recorded override
        clf = clf.with_site(profile)
    return clf
