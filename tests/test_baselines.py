"""Tests of the CNN proximal networks of the baselines (flowprox.models.cnn)."""

from __future__ import annotations

import pytest
import torch
from conftest import perturb_parameters_, smooth_images
from torch import nn

from flowprox.models.cnn import ResNetProxNet, UNet, count_parameters
from flowprox.optim.prox import NetworkProx


def _tiny_resnet(**kwargs: object) -> ResNetProxNet:
    torch.manual_seed(0)
    return ResNetProxNet(channels=3, features=8, blocks=2, **kwargs)


def _tiny_unet(**kwargs: object) -> UNet:
    torch.manual_seed(0)
    return UNet(channels=3, base=8, depth=2, **kwargs)


def test_unet_has_31_04_million_parameters() -> None:
    unet = UNet(channels=3, base=64, depth=4)
    n = count_parameters(unet)
    assert n == 31_037_763
    assert round(n / 1e6, 2) == 31.04


def test_resnet_parameter_count() -> None:
    # 3x3 conv 3->128 with bias, 2 blocks of two bias-free 3x3 convs + 2 BatchNorms, 1x1 head.
    expected = (27 * 128 + 128) + 2 * (2 * 9 * 128 * 128 + 2 * 2 * 128)
    expected += (128 * 128 + 128) * 2 + (128 * 3 + 3)
    assert count_parameters(ResNetProxNet(channels=3, features=128, blocks=2)) == expected
    assert expected == 627_843


def test_count_parameters_trainable_only() -> None:
    net = _tiny_resnet()
    total = count_parameters(net)
    net.input[0].weight.requires_grad_(False)
    frozen = net.input[0].weight.numel()
    assert count_parameters(net) == total - frozen
    assert count_parameters(net, trainable_only=False) == total


@pytest.mark.parametrize("build", [_tiny_resnet, _tiny_unet], ids=["resnet", "unet"])
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_residual_network_is_identity_at_init(build, training: bool) -> None:
    net = build().train(training)
    v = smooth_images(2, 3, 32, seed=1)
    torch.testing.assert_close(net(v), v, rtol=0, atol=0)
    torch.testing.assert_close(NetworkProx(net)(v, None), v, rtol=0, atol=0)


@pytest.mark.parametrize("build", [_tiny_resnet, _tiny_unet], ids=["resnet", "unet"])
def test_non_residual_network_is_not_identity(build) -> None:
    net = build(residual=False)
    v = smooth_images(2, 3, 32, seed=1)
    out = net(v)
    assert out.shape == v.shape
    assert not torch.allclose(out, v)


@pytest.mark.parametrize("build", [_tiny_resnet, _tiny_unet], ids=["resnet", "unet"])
def test_gradient_reaches_all_parameters(build) -> None:
    net = perturb_parameters_(build(), scale=0.1, seed=2)
    v = smooth_images(2, 3, 32, seed=3)
    net(v).square().mean().backward()
    for name, param in net.named_parameters():
        assert param.grad is not None, name
        assert torch.isfinite(param.grad).all(), name
        assert param.grad.abs().sum() > 0, name


def test_zero_init_last_layer_learns() -> None:
    # At init only the last layer gets a gradient; one SGD step makes the net non-trivial.
    net = _tiny_resnet()
    v = smooth_images(2, 3, 16, seed=4)
    target = v.flip(-1)
    optimiser = torch.optim.SGD(net.parameters(), lr=0.1)
    loss0 = (net(v) - target).square().mean()
    loss0.backward()
    assert net.head[-1].weight.grad.abs().sum() > 0
    optimiser.step()
    optimiser.zero_grad()
    loss1 = (net(v) - target).square().mean()
    assert loss1 < loss0


def test_unet_runs_on_32_and_rejects_30() -> None:
    net = _tiny_unet(residual=False).eval()
    with torch.no_grad():
        out = net(torch.rand(1, 3, 32, 32))
    assert out.shape == (1, 3, 32, 32)
    with pytest.raises(ValueError, match=r"divisible by 2\*\*depth = 4, got 30x30; crop or pad"):
        net(torch.rand(1, 3, 30, 30))
    with pytest.raises(ValueError, match="32x30"):
        net(torch.rand(1, 3, 32, 30))


def test_unet_structure_matches_milesial() -> None:
    net = UNet(channels=3, base=64, depth=4)
    widths = [down.maxpool_conv[1].double_conv[0].out_channels for down in net.downs]
    assert widths == [128, 256, 512, 1024]
    up = net.ups[0]
    assert isinstance(up.up, nn.ConvTranspose2d)
    assert (up.up.in_channels, up.up.out_channels, up.up.kernel_size) == (1024, 512, (2, 2))
    assert net.outc.kernel_size == (1, 1) and net.outc.bias is not None
    assert net.inc.double_conv[0].bias is None


@pytest.mark.parametrize("build", [_tiny_resnet, _tiny_unet], ids=["resnet", "unet"])
def test_input_validation(build) -> None:
    net = build()
    with pytest.raises(ValueError, match="channels=1"):
        net(torch.rand(1, 1, 32, 32))
    with pytest.raises(ValueError, match="4-D"):
        net(torch.rand(3, 32, 32))
    with pytest.raises(ValueError, match="NaN"):
        net(torch.full((1, 3, 32, 32), float("nan")))


def test_constructor_validation() -> None:
    with pytest.raises(ValueError, match="features"):
        ResNetProxNet(features=0)
    with pytest.raises(ValueError, match="blocks"):
        ResNetProxNet(blocks=-1)
    with pytest.raises(ValueError, match="depth"):
        UNet(depth=0)
    with pytest.raises(ValueError, match="base"):
        UNet(base=2.5)  # type: ignore[arg-type]


def test_resnet_any_size_and_head_features() -> None:
    net = ResNetProxNet(channels=1, features=8, blocks=1, head_features=4)
    assert net.head[0].out_channels == 4
    assert net(torch.rand(2, 1, 7, 5)).shape == (2, 1, 7, 5)
