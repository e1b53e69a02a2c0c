"""Every Glow layer: exact round trip and log-determinant against the float64 Jacobian."""

from __future__ import annotations

import pytest
import torch
from conftest import perturb_parameters_, smooth_images

from flowprox.flows import (
    ActNorm,
    AffineCoupling,
    FlowStep,
    InvConv1x1,
    SplitStandardize,
    Squeeze,
    TopStandardize,
)
from flowprox.flows.base import InvertibleModule

CHANNELS = 4


def build(name: str) -> InvertibleModule:
    layers = {
        "actnorm": lambda: ActNorm(CHANNELS),
        "invconv": lambda: InvConv1x1(CHANNELS, torch.Generator().manual_seed(1)),
        "affine_coupling": lambda: AffineCoupling(CHANNELS, hidden=8),
        "additive_coupling": lambda: AffineCoupling(CHANNELS, hidden=8, additive=True),
        "floored_coupling": lambda: AffineCoupling(CHANNELS, hidden=8, scale_floor=0.1),
        "squeeze": Squeeze,
        "split": lambda: SplitStandardize(CHANNELS),
        "bounded_split": lambda: SplitStandardize(CHANNELS, log_sd_bound=0.5),
        "top": lambda: TopStandardize(CHANNELS),
        "bounded_top": lambda: TopStandardize(CHANNELS, log_sd_bound=0.5),
        "flow_step": lambda: FlowStep(CHANNELS, 8, generator=torch.Generator().manual_seed(2)),
    }
    layer = layers[name]()
    layer.train()
    with torch.no_grad():
        layer(smooth_images(8, CHANNELS, 4))  # data-dependent init where there is one
    perturb_parameters_(layer, 0.2, seed=3)
    return layer


LAYERS = [
    "actnorm",
    "invconv",
    "affine_coupling",
    "additive_coupling",
    "floored_coupling",
    "squeeze",
    "split",
    "bounded_split",
    "top",
    "bounded_top",
    "flow_step",
]


@pytest.mark.parametrize("name", LAYERS)
@pytest.mark.parametrize(("dtype", "tol"), [(torch.float32, 1e-5), (torch.float64, 1e-10)])
def test_layer_round_trip(name: str, dtype: torch.dtype, tol: float) -> None:
    layer = build(name).to(dtype)
    x = torch.randn(3, CHANNELS, 6, 8, dtype=dtype, generator=torch.Generator().manual_seed(0))
    y, logdet = layer(x)
    assert logdet.shape == (3,)
    assert torch.allclose(layer.inverse(y), x, atol=tol, rtol=0)
    z = torch.randn(y.shape, dtype=dtype, generator=torch.Generator().manual_seed(1))
    assert torch.allclose(layer(layer.inverse(z))[0], z, atol=tol, rtol=0)


@pytest.mark.parametrize("name", LAYERS)
def test_layer_logdet_matches_jacobian(name: str) -> None:
    layer = build(name).double().eval()
    x = torch.randn(
        1, CHANNELS, 4, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(5)
    )

    def flat(v: torch.Tensor) -> torch.Tensor:
        return layer(v.view_as(x))[0].flatten()

    jacobian = torch.func.jacrev(flat)(x.flatten())
    sign, expected = torch.linalg.slogdet(jacobian)
    assert sign != 0
    _, logdet = layer(x)
    assert torch.allclose(logdet, expected.reshape(1), atol=1e-9, rtol=1e-9)


def test_actnorm_initialises_to_zero_mean_unit_std() -> None:
    layer = ActNorm(3)
    layer.train()
    x = 0.3 * torch.randn(64, 3, 5, 5) + torch.tensor([0.5, -1.0, 2.0]).view(1, 3, 1, 1)
    y, _ = layer(x)
    assert bool(layer.initialized)
    assert torch.allclose(y.mean(dim=(0, 2, 3)), torch.zeros(3), atol=1e-5)
    assert torch.allclose(y.std(dim=(0, 2, 3), unbiased=False), torch.ones(3), atol=1e-4)
    second, _ = layer(2.0 * x)  # no second initialisation
    assert torch.allclose(second, (2.0 * x + layer.loc) * torch.exp(layer.log_scale))


def test_actnorm_does_not_reinitialise_after_load_state_dict() -> None:
    trained = ActNorm(3)
    trained.train()
    trained(torch.randn(16, 3, 4, 4) * 5 + 1)
    fresh = ActNorm(3)
    fresh.load_state_dict(trained.state_dict())
    fresh.train()
    fresh(torch.randn(16, 3, 4, 4))  # a new batch with other statistics
    assert torch.equal(fresh.loc, trained.loc)
    assert torch.equal(fresh.log_scale, trained.log_scale)


def test_invconv_inverse_is_cached_while_frozen_and_refreshed_after_an_update() -> None:
    layer = InvConv1x1(6, torch.Generator().manual_seed(0)).requires_grad_(False)
    first = layer.inverse_weight(torch.float32)
    assert layer.inverse_weight(torch.float32) is first
    with torch.no_grad():
        layer.log_s.add_(0.1)
    refreshed = layer.inverse_weight(torch.float32)
    assert refreshed is not first
    assert torch.allclose(
        refreshed.double() @ layer.weight(torch.float64),
        torch.eye(6, dtype=torch.float64),
        atol=1e-6,
    )


def test_invconv_inverse_is_differentiable_when_training() -> None:
    layer = InvConv1x1(4, torch.Generator().manual_seed(0))
    y = torch.randn(2, 4, 3, 3)
    layer.inverse(y).square().sum().backward()
    assert layer.lower.grad is not None and layer.log_s.grad is not None


def test_squeeze_rejects_odd_sizes() -> None:
    with pytest.raises(ValueError, match="even height and width"):
        Squeeze()(torch.randn(1, 3, 5, 4))


def test_coupling_rejects_single_channel() -> None:
    with pytest.raises(ValueError, match="at least 2 channels"):
        AffineCoupling(1, 8)


def test_scale_floor_bounds_the_inverse_amplification() -> None:
    """With scale logits driven to -100 (what far-off inputs do), an unfloored coupling's
    inverse overflows to inf, while the floored one amplifies by exactly 1/floor at most."""
    y = torch.ones(1, CHANNELS, 2, 2)
    for floor, expected in ((0.0, float("inf")), (0.1, 10.0)):
        layer = AffineCoupling(CHANNELS, hidden=8, scale_floor=floor)
        last = layer.net[-1]
        with torch.no_grad():
            last.conv.bias.fill_(-100.0)  # shift -100 (half), scale logit -100 (other half)
            last.conv.bias[: CHANNELS // 2].zero_()  # shift 0
        x_b = layer.inverse(y)[:, CHANNELS // 2 :]
        assert torch.allclose(x_b, torch.full_like(x_b, expected))


def test_scale_floor_outside_unit_interval_is_an_error() -> None:
    with pytest.raises(ValueError, match="scale_floor"):
        AffineCoupling(CHANNELS, 8, scale_floor=1.0)


def test_a_log_sd_bound_keeps_the_split_priors_inverse_finite_far_from_the_data() -> None:
    """A Glow with its couplings floored, its split priors' convolutions at a generic point and
    latents at 100x the data's scale: without a bound the split priors' ``exp(log_sd)`` (a
    linear function of the kept half) overflows; with bound ``b`` each scales by at most
    ``exp(b)`` and the whole inverse stays finite."""
    from flowprox.flows import Glow

    z = 100.0 * torch.randn(2, 3 * 16 * 16, generator=torch.Generator().manual_seed(0))
    outputs = {}
    for bound in (0.0, 3.0):
        glow = Glow(3, levels=2, steps_per_level=2, hidden=8, image_size=16, scale_floor=0.1,
                    log_sd_bound=bound)  # fmt: skip
        perturb_parameters_(glow, 0.5, seed=4)
        with torch.no_grad():
            outputs[bound] = glow.inverse(z)
            for module in glow.modules():
                if isinstance(module, SplitStandardize | TopStandardize):
                    keep = module.keep if isinstance(module, SplitStandardize) else None
                    if keep is not None:
                        x_keep = 100.0 * torch.randn(2, keep, 4, 4)
                        _, log_sd = module._mean_and_log_sd(x_keep)
                        assert float(log_sd.abs().max()) <= bound or bound == 0.0
    assert not torch.isfinite(outputs[0.0]).all()
    assert torch.isfinite(outputs[3.0]).all()


def test_a_negative_log_sd_bound_is_an_error() -> None:
    with pytest.raises(ValueError, match="log_sd_bound must be a finite number >= 0"):
        SplitStandardize(CHANNELS, log_sd_bound=-1.0)
