"""Network precision (``models.precision``): the 1x1 convolution as a matrix product, and the
prox networks in bfloat16 autocast with the flow still exactly invertible."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from conftest import make_glow, perturb_parameters_, smooth_images

from flowprox.config import (
    NETWORK_PRECISION_VALUES,
    DataConfig,
    UnrolledExperiment,
    UnrolledModelConfig,
)
from flowprox.flows.layers import AffineCoupling, InvConv1x1, channel_mix
from flowprox.models.precision import set_network_precision
from flowprox.models.unrolled import build_unrolled
from flowprox.optim.prox import NetworkProx
from flowprox.physics.operators import GaussianBlur
from flowprox.utils import precision


def test_channel_mix_is_the_1x1_convolution_with_its_gradients() -> None:
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(3, 12, 8, 8, dtype=torch.float64, generator=generator, requires_grad=True)
    w = torch.randn(12, 12, dtype=torch.float64, generator=generator, requires_grad=True)
    upstream = torch.randn(3, 12, 8, 8, dtype=torch.float64, generator=generator)
    mixed = channel_mix(x, w)
    reference = F.conv2d(x, w[:, :, None, None])
    assert mixed.is_contiguous()
    assert torch.allclose(mixed, reference, rtol=0, atol=1e-12)
    grads = torch.autograd.grad((mixed * upstream).sum(), (x, w))
    reference_grads = torch.autograd.grad((reference * upstream).sum(), (x, w))
    for got, want in zip(grads, reference_grads, strict=True):
        assert torch.allclose(got, want, rtol=0, atol=1e-10)


def _bf16_glow() -> tuple[torch.nn.Module, torch.nn.Module]:
    fp32 = perturb_parameters_(make_glow(levels=2, steps=2, hidden=32, dtype=torch.float32), 0.05)
    bf16 = make_glow(levels=2, steps=2, hidden=32, dtype=torch.float32)
    bf16.load_state_dict(fp32.state_dict())
    assert set_network_precision(bf16, "bfloat16") == 4  # 2 levels x 2 steps
    return fp32, bf16


def test_bfloat16_networks_change_the_flow_but_keep_it_invertible() -> None:
    """The coupling networks really run in bfloat16 (the latent moves by about bfloat16's
    resolution), yet ``g(f(x)) = x`` to float32 rounding: forward and inverse compute the
    same ``(t, s)`` from the same ``x_a``."""
    fp32, bf16 = _bf16_glow()
    x = smooth_images(4, 3, 8, seed=1)
    with torch.no_grad():
        z32, logdet32 = fp32(x)
        z16, logdet16 = bf16(x)
        round_trip = (bf16.inverse(z16) - x).abs().max().item()
    change = (z16 - z32).abs().max().item()
    assert 1e-5 < change < 0.1, change
    assert round_trip < 1e-4, round_trip
    assert z16.dtype == logdet16.dtype == torch.float32
    assert torch.allclose(logdet16, logdet32, rtol=1e-2)


DEVICES = [
    "cpu",
    pytest.param(
        "cuda",
        marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA is not available"),
    ),
]


@pytest.mark.parametrize("device", DEVICES)
def test_a_glow_under_outer_autocast_keeps_its_1x1_convolutions_exact(device: str) -> None:
    """Wrapped in bfloat16 autocast from outside, the 1x1 convolutions stay float32 and the
    round-trip error of the Glow stays below 1e-3 (issue 11), on the CPU and on CUDA."""
    glow = perturb_parameters_(make_glow(levels=2, steps=2, hidden=32, dtype=torch.float32), 0.05)
    glow = glow.to(device)
    invconv = next(m for m in glow.modules() if isinstance(m, InvConv1x1))
    seen = []
    invconv.register_forward_hook(lambda _m, _i, out: seen.append(out[0].dtype))
    x = smooth_images(4, 3, 8, seed=2).to(device)
    with torch.no_grad(), torch.autocast(device, dtype=torch.bfloat16):
        z, _ = glow(x)
        error = (glow.inverse(z.float()) - x).abs().max().item()
    assert seen == [torch.float32]
    assert error < 1e-3, error


def test_memory_saving_gradients_equal_autograd_under_bfloat16_networks() -> None:
    _, bf16 = _bf16_glow()
    x = smooth_images(4, 3, 8, seed=3)
    grads = []
    for memory_saving in (False, True):
        bf16.zero_grad()
        z, logdet = bf16(x, memory_saving=memory_saving)
        (z.pow(2).sum() - logdet.sum()).backward()
        grads.append(torch.cat([p.grad.flatten() for p in bf16.parameters()]))
    scale = grads[0].abs().max()
    assert (grads[1] - grads[0]).abs().max() < 1e-3 * scale


@pytest.mark.parametrize("prox", ["glow", "unet"])
def test_build_unrolled_sets_the_networks_precision(prox: str) -> None:
    prior = make_glow(levels=2, steps=2, size=8, dtype=torch.float32)
    op = GaussianBlur(sigma_b=1.0, kernel_size=5)
    networks = {}
    for name in ("float32", "bfloat16"):
        config = UnrolledExperiment(
            model=UnrolledModelConfig(prox=prox, network_precision=name, unet_base=8, unet_depth=2),
            data=DataConfig(resolution=8),
        )
        networks[name] = build_unrolled(config, op, prior)
    for name, network in networks.items():
        kinds = [
            m.network_precision
            for m in network.modules()
            if isinstance(m, AffineCoupling | NetworkProx)
        ]
        assert kinds and all(kind == name for kind in kinds)
    perturb_parameters_(networks["float32"].proxes, 0.05)  # non-trivial networks
    networks["bfloat16"].load_state_dict(networks["float32"].state_dict())
    y = op.A(smooth_images(2, 3, 8, seed=4))
    with torch.no_grad():
        out32, out16 = networks["float32"](y, op), networks["bfloat16"](y, op)
    assert out16.dtype == torch.float32
    assert 0 < (out16 - out32).abs().max() < 0.05


def test_an_unknown_precision_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="network_precision must be one of"):
        UnrolledModelConfig(network_precision="float16")
    with pytest.raises(ValueError, match="unknown network precision 'half'"):
        set_network_precision(torch.nn.Linear(2, 2), "half")
    assert set(NETWORK_PRECISION_VALUES) == set(precision.NETWORK_PRECISIONS)


def test_auto_is_bfloat16_only_where_the_cpu_computes_it_natively(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    cpu = torch.device("cpu")
    for native, expected in ((True, torch.bfloat16), (False, None)):
        monkeypatch.setattr(precision, "cpu_has_native_bfloat16", lambda native=native: native)
        assert precision.autocast_dtype("auto", cpu) is expected
        assert precision.autocast_dtype("bfloat16", cpu) is torch.bfloat16
        assert precision.autocast_dtype("float32", cpu) is None
