"""What training adds to the classification loss to keep a network off its sources' cues: a source
adversary through gradient reversal, and the lung-attention penalty on the Grad-CAM map."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from scipy.special import expit
from torch import nn

from ..model import FEATURES, CovidNet
from .data import CLASSES, POSITIVE
from .recipe import ATTENTION_MODES


class Reverse(torch.autograd.Function):
    """Identity forward; backward multiplies the gradient by -weight (Ganin & Lempitsky 2015)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: float) -> torch.Tensor:
        ctx.weight = weight
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        return -ctx.weight * grad, None


class SourceAdversary(nn.Module):
    """Predicts a film's source from the pooled features; through Reverse, the backbone is pushed to
    make that impossible. The weight ramps up as in DANN (2 / (1 + exp(-10 p)) - 1, p = share of steps)."""

    def __init__(self, sources: list[str], weight: float):
        super().__init__()
        self.sources, self.weight = sorted(set(sources)), weight
        self.head = nn.Sequential(nn.Linear(FEATURES, 256), nn.ReLU(), nn.Linear(256, len(self.sources)))

    def loss(self, features: torch.Tensor, sources: list[str], progress: float) -> torch.Tensor:
        w = self.weight * float(2 * expit(10 * progress) - 1)
        target = torch.tensor([self.sources.index(s) for s in sources])
        return F.cross_entropy(self.head(Reverse.apply(features, w)), target)


class LungAttention:
    """A training penalty that asks the evidence for the positive class to lie on the lungs ("right for the
    right reasons", Ross et al. 2017), measured on the Grad-CAM map that `explain` shows, differentiably.

    The map is computed in closed form. Grad-CAM reads `cam_layer` (conv_head, before its BatchNorm, which the
    classifier keeps unfolded there); with global pooling and a linear head, the positive logit's gradient
    there is the head weight times the BatchNorm scale times ReLU6's slope, so Grad-CAM =
    ReLU(r), r = sum_k w_k s_k mean_ij[0 < B_kij < 6] A_k, with A the conv output, B = BatchNorm(A) and s_k its
    scale. Hooks keep A and B from the forward pass.

    Forms (Recipe.attention_mode):
    - "outside": the share of ReLU(r) outside the lung mask, on every film. It can be gamed: a map with no
      positive part scores 0, and a network can learn to carry its evidence in the last BatchNorm's shift,
      which Grad-CAM does not see, leaving an empty map while keeping its accuracy.
    - "inside": on positive films, 1 - (positive evidence inside the lungs) / (all evidence, |r|), so an empty or
      negative map costs the most; on the other films the "outside" share (their map may be empty)."""

    def __init__(self, net: CovidNet, mode: str = "inside", positive_index: int = CLASSES.index(POSITIVE)):
        if mode not in ATTENTION_MODES:
            raise ValueError(f"unknown lung-attention mode {mode!r}; one of {ATTENTION_MODES}")
        bn = net.backbone.bn2
        bn.act.inplace = False  # the hook keeps the ReLU6's input, which an in-place ReLU6 would overwrite
        self.net, self.mode, self.positive_index, self.conv, self.pre = net, mode, positive_index, None, None
        net.cam_layer.register_forward_hook(lambda _m, _in, out: setattr(self, "conv", out))
        bn.act.register_forward_hook(lambda _m, inputs, _out: setattr(self, "pre", inputs[0]))

    def signed_map(self) -> torch.Tensor:
        """(N, h, w) r of the last forward pass (Grad-CAM before its ReLU), up to a positive factor per film."""
        bn = self.net.backbone.bn2
        scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
        slope = ((self.pre > 0) & (self.pre < 6)).float().mean((2, 3))
        w = self.net.head.weight[self.positive_index]
        return torch.einsum("nc,nchw->nhw", w * scale * slope, self.conv)

    def cam(self) -> torch.Tensor:
        return F.relu(self.signed_map())

    def penalty(self, masks: torch.Tensor, positive: torch.Tensor) -> torch.Tensor:
        """Per film, in [0, 1]; `masks` (N, 1, S, S) lung masks as the input was warped, `positive` (N,) bool."""
        r = self.signed_map()
        cam, lung = F.relu(r), F.adaptive_avg_pool2d(masks, r.shape[-2:])[:, 0]
        outside = (cam * (1 - lung)).sum((1, 2)) / (cam.sum((1, 2)) + 1e-6)
        if self.mode == "outside":
            return outside
        inside = (cam * lung).sum((1, 2)) / (r.abs().sum((1, 2)) + 1e-6)
        return torch.where(positive, 1 - inside, outside)
