"""The classifier networks' forward pass on ONNX Runtime, a CPU inference runtime.

Why: on this project's CPUs ONNX Runtime runs the EfficientNet-Lite0 networks 1.7-1.8x faster than
PyTorch's eager mode at one thread (same film batch, same run; docs/performance.md), and the networks
are most of a film's cost on every node of a cluster and in the app server. The outputs agree with
PyTorch's to float rounding (about 1e-6 on the logits; tests/test_runtime.py holds them to 1e-4).

What runs where: every forward pass of a classifier network (predict, the gate's features, site
profiles, Grad-CAM's forward) runs here; PyTorch keeps the networks themselves (training, the export
below) and the few layers after the CAM layer that Grad-CAM differentiates (covidxr/explain.py).

Each network is exported once (torch.onnx, about 3 s) to a graph with three outputs: the CAM layer's
activations, the pooled features and the logits. The graph is kept in memory per network and on disk in
a cache folder (`COVIDXR_CACHE_DIR`, default ~/.cache/covidxr), named by a hash of the network's
weights and of the versions that made it, so a later process loads it in a fraction of a second. Only
model weights are written there, never a film. An unwritable cache folder only costs the export again,
and a damaged file is replaced. A model loaded from its folder (Classifier.from_dir) names its graphs by
the weights file's checked hash instead (file_key), so that with the graphs cached its networks are never
built in PyTorch unless Grad-CAM or training needs them.
"""
from __future__ import annotations

import hashlib
import io
import os
import threading
import warnings
import weakref
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

# ONNX Runtime's Linux wheels carry Microsoft's telemetry: unless this is set before the module is imported, every
# process that makes a session writes a device id and an event queue under ~/.cache/Microsoft and would send them
# to mobile.events.data.microsoft.com. Films are patient data and the app makes no request outside its own origin:
# off, unless the operator sets the variable himself.
os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")
import onnxruntime as ort  # noqa: E402 - after the setting above
import torch  # noqa: E402
from torch import nn  # noqa: E402

from .atomic import write_atomic  # noqa: E402

CACHE_ENV = "COVIDXR_CACHE_DIR"
OUTPUTS = ("cam", "features", "logits")
FORMAT = 1  # bump when the exported graph or from_dir's preparation of the networks changes: cached graphs are not reused
OPSET = 17


@dataclass
class NetworkOutputs:
    """One network's outputs for a batch (numpy, float32)."""
    features: np.ndarray      # (n, d) pooled features
    logits: np.ndarray        # (n, classes)


class _Graph(nn.Module):
    """What is exported: a network's input -> its CAM layer's activations, pooled features and logits."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        a = self.net.cam_activations(x)
        f = self.net.features_from_cam(a)
        return a, f, self.net.head(f)


def cache_dir() -> Path:
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "covidxr") / "onnx"


def _key(what: bytes | str, side: int, parts=()) -> str:
    h = hashlib.sha256(f"{FORMAT}/{OPSET}/{side}/{torch.__version__}/{ort.__version__}".encode())
    h.update(what.encode() if isinstance(what, str) else what)
    for p in parts:
        h.update(p)
    return h.hexdigest()[:32]


def weights_key(net: nn.Module, side: int) -> str:
    """A name for a network's exported graph: its weights' bytes, its input side and the versions that export."""
    parts = []
    for name, t in net.state_dict().items():
        parts += [name.encode(), t.detach().contiguous().cpu().numpy().tobytes()]
    return _key("tensors", side, parts)


def file_key(weights_sha256: str, index: int, side: int) -> str:
    """A name for the graph of the index-th network of a weights file, as Classifier.from_dir prepares it
    (FORMAT changes when that preparation does): known from the file's checked hash before the network is
    built, so that a process whose graphs are cached never builds the networks in PyTorch (the timm and
    torchvision imports alone take 2-3 s of every cluster worker's and command's start)."""
    return _key(f"file/{weights_sha256}/{index}", side)


def export(net: nn.Module, side: int) -> bytes:
    """The network as an ONNX graph for (n, 3, side, side) float32 input, n free."""
    buf = io.BytesIO()
    x = torch.zeros(1, 3, side, side)
    with warnings.catch_warnings(), torch.no_grad():
        # The TorchScript-based exporter: deprecated in favour of torch.export's, which takes several times
        # longer on these networks and gives the same graph for them; torch is pinned (requirements.txt).
        warnings.simplefilter("ignore")
        torch.onnx.export(_Graph(net).eval(), (x,), buf, input_names=["x"], output_names=list(OUTPUTS),
                          dynamic_axes={k: {0: "n"} for k in ("x", *OUTPUTS)}, opset_version=OPSET, dynamo=False)
    return buf.getvalue()


def cached(key: str) -> bytes | None:
    """The graph stored under `key` in the cache folder, if a process has already made it."""
    try:
        return (cache_dir() / f"{key}.onnx").read_bytes()
    except OSError:
        return None


def store(key: str, data: bytes) -> None:
    """Keep a graph in the cache folder; an unwritable folder is left alone (the next process exports again)."""
    path = cache_dir() / f"{key}.onnx"
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(path, data)  # a concurrent process reads the whole file or none
    except OSError:
        pass


def _exported(key: str, side: int, net: Callable[[], nn.Module]) -> bytes:
    data = export(net(), side)
    store(key, data)
    return data


def graph_bytes(net: nn.Module, side: int) -> bytes:
    """The network's exported graph, from the cache folder when a process has already made it."""
    key = weights_key(net, side)
    return cached(key) or _exported(key, side, lambda: net)


class OnnxNetwork:
    """One network's ONNX Runtime session. Safe to share between threads (InferenceSession.run is)."""

    def __init__(self, data: bytes, threads: int):
        so = ort.SessionOptions()
        so.intra_op_num_threads, so.inter_op_num_threads = threads, 1
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        so.add_session_config_entry("session.intra_op.allow_spinning", "0")  # no busy-waiting on a shared machine
        so.log_severity_level = 3  # errors only: nothing about the inputs reaches a log
        self.session = ort.InferenceSession(data, so, providers=["CPUExecutionProvider"])

    def run(self, x: torch.Tensor | np.ndarray) -> NetworkOutputs:
        f, logits = self.session.run(["features", "logits"], {"x": _array(x)})
        return NetworkOutputs(features=f, logits=logits)

    def cam_activations(self, x: torch.Tensor | np.ndarray) -> np.ndarray:
        (a,) = self.session.run(["cam"], {"x": _array(x)})
        return a


def _array(x: torch.Tensor | np.ndarray) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    return np.ascontiguousarray(x, dtype=np.float32)


_sessions: "weakref.WeakKeyDictionary[nn.Module, OnnxNetwork]" = weakref.WeakKeyDictionary()
_lock = threading.Lock()


def session(key: str, side: int, net: Callable[[], nn.Module]) -> OnnxNetwork:
    """A new session, with as many threads as torch uses now, on the graph cached under `key` (weights_key or
    file_key), else on a fresh export of net() (stored there): net() is called only when no process has cached
    the graph, and a cached file that ONNX Runtime cannot load (cut short, damaged) is replaced, not fatal. The
    caller keeps the session (network() per network object; Classifier per network, made once)."""
    threads = torch.get_num_threads()
    data = cached(key)
    if data is not None:
        try:
            return OnnxNetwork(data, threads)
        except Exception:  # noqa: BLE001 - onnxruntime raises its own exception types for a bad model
            pass
    return OnnxNetwork(_exported(key, side, net), threads)


def network(net: nn.Module, side: int) -> OnnxNetwork:
    """The session for a network, made on first use with as many threads as torch uses now. The network's
    weights must not change after that (they do not at inference: the Classifier only reads them)."""
    with _lock:
        s = _sessions.get(net)
        if s is None:
            s = _sessions[net] = session(weights_key(net, side), side, lambda: net)
        return s
