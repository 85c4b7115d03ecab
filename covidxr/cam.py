"""The Grad-CAM objects explain() borrows: one per private copy of a network's tail.

Thread safety: a Streamlit server shares one Classifier between sessions. pytorch-grad-cam works by
hooks on the target layer, and a hook on a shared module would also fire for every other thread's
call and mix their activations into this call's map. So each Grad-CAM runs on a private copy of the
tail, from a small per-network pool: a copy serves one call at a time, is made the first time that
many calls overlap, and is reused after; beyond POOL_SIZE overlapping calls, the next waits for a free
copy. The shared network is never hooked.
"""
from __future__ import annotations

import copy
import queue
import threading
import weakref
from contextlib import contextmanager
from typing import Iterator

import torch
from pytorch_grad_cam import GradCAM
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
from torch import nn

from .model import CovidNet

POOL_SIZE = 4  # private network copies per classifier; more overlapping calls wait for a free one


class _Tail(nn.Module):
    """A private copy of the layers after a network's CAM layer: the CAM layer's output -> logits, keeping
    the pooled features of its last call. `at` is the Grad-CAM target: its output is the CAM layer's."""

    def __init__(self, net: CovidNet):
        super().__init__()
        self.bn2, self.pool = copy.deepcopy(net.backbone.bn2).eval(), copy.deepcopy(net.backbone.global_pool)
        self.head = copy.deepcopy(net.head).eval()
        self.at = nn.Identity()
        for p in self.parameters():
            p.requires_grad_(False)  # the gradient wanted is the activations', not the weights'
        self.features: torch.Tensor | None = None

    def forward(self, a: torch.Tensor) -> torch.Tensor:
        f = self.pool(self.bn2(self.at(a)))  # CovidNet.features_from_cam (timm's forward_head: pool, flatten)
        self.features = f.detach()
        return self.head(f)  # what CovidNet.forward gives in eval mode (dropout is off)


class _GradCAM(GradCAM):
    """GradCAM on the tail: its input is the CAM layer's output (h x w), its map is wanted at the network's
    input size, as GradCAM on the whole network would make it."""

    def __init__(self, tail: _Tail, side: int):
        super().__init__(model=tail, target_layers=[tail.at])
        self.compute_input_gradient = True  # the input (the CAM layer's output) is what is differentiated
        self.side = side

    def get_target_width_height(self, input_tensor: torch.Tensor) -> tuple[int, int]:
        return self.side, self.side


class _CamPool:
    """Up to `size` GradCAMs, each on its own copy of the network's tail (see _Tail), lent to one call at a time."""

    def __init__(self, net: CovidNet, side: int, size: int):
        self.net, self.side, self.size, self.made = net, side, size, 0
        self.free: queue.LifoQueue[GradCAM] = queue.LifoQueue()
        self.lock = threading.Lock()

    @contextmanager
    def borrow(self) -> Iterator[GradCAM]:
        cam = None
        with self.lock:
            try:
                cam = self.free.get_nowait()
            except queue.Empty:
                make = self.made < self.size
                self.made += make
        if cam is None:
            if make:
                cam = _GradCAM(_Tail(self.net), self.side)
            else:
                cam = self.free.get()
        try:
            yield cam
        finally:
            cam.outputs = None  # drop this call's autograd graph before the next borrower
            cam.model.features = None
            cam.activations_and_grads.clear()
            self.free.put(cam)


_pools: "weakref.WeakKeyDictionary[CovidNet, _CamPool]" = weakref.WeakKeyDictionary()
_pools_lock = threading.Lock()


def pool(net: CovidNet, side: int) -> _CamPool:
    """The pool of Grad-CAMs for `net`, made on first use and kept while the network lives."""
    with _pools_lock:
        found = _pools.get(net)
        if found is None:
            found = _pools[net] = _CamPool(net, side, POOL_SIZE)
        return found


def target(index: int) -> list[ClassifierOutputTarget]:
    """Grad-CAM's target: the logit of class `index` (the card's positive class)."""
    return [ClassifierOutputTarget(index)]
