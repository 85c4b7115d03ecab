"""BatchNorm folding: an inference speed-up that must not change what the networks compute."""
import torch
from torch import nn

from covidxr.model import CovidNet, LungNet, fold_batchnorm


def _random_statistics(net: nn.Module) -> nn.Module:
    g = torch.Generator().manual_seed(0)
    for m in net.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.2)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.bias.data.copy_(torch.randn(m.num_features, generator=g) * 0.1)
    return net.eval()


def test_folded_classifier_computes_the_same_and_keeps_the_cam_layer():
    torch.manual_seed(0)
    net = _random_statistics(CovidNet(3))
    ref = CovidNet(3)
    ref.load_state_dict(net.state_dict())
    ref.eval()
    kept = net.cam_layer.weight.clone()
    fold_batchnorm(net, keep=(net.cam_layer,))
    assert sum(isinstance(m, nn.BatchNorm2d) for m in net.modules()) == 1  # only the CAM layer's
    assert torch.equal(net.cam_layer.weight, kept)
    x = torch.randn(2, 3, 96, 96)
    with torch.inference_mode():
        assert torch.allclose(net(x), ref(x), atol=1e-4)


def test_folded_segmenter_computes_the_same():
    net = _random_statistics(LungNet())
    ref = LungNet()
    ref.load_state_dict(net.state_dict())
    ref.eval()
    fold_batchnorm(net)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in net.modules())
    x = torch.rand(2, 1, 64, 64)
    with torch.inference_mode():
        assert torch.allclose(net(x), ref(x), atol=1e-4)
