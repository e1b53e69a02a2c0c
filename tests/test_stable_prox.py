"""The GLOW prox stays finite on very noisy inputs when its prior bounds the split priors'
log standard deviations (issue 15; ``model.log_sd_bound``, the ``small`` and ``paper`` presets)."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from conftest import perturb_parameters_, smooth_images

from flowprox.config import GlowConfig
from flowprox.models.prior import build_glow
from flowprox.models.unrolled import build_unrolled
from flowprox.physics.tasks import build_operator
from flowprox.training.configs import unrolled_config
from flowprox.utils.validation import NonFiniteError


def _glow_denoiser(log_sd_bound: float):
    """The tiny preset's GLOW denoising network on a prior at a generic point (every parameter
    perturbed by 0.3: split priors that react strongly to their input, as a trained prior's do
    off the data), couplings floored at 0.1."""
    model = GlowConfig(in_channels=3, levels=2, steps_per_level=2, hidden=16, image_size=8,
                       scale_floor=0.1, log_sd_bound=log_sd_bound)  # fmt: skip
    glow = perturb_parameters_(build_glow(model), 0.3, seed=4)
    config = unrolled_config("denoise", "glow", "tiny")
    config = dataclasses.replace(
        config, prior_model=model, model=dataclasses.replace(config.model, memory_saving="off")
    )
    op = build_operator(config.task, 8)
    return build_unrolled(config, op, glow), op


@pytest.mark.parametrize("sigma", [0.1, 0.3, 0.6, 1.0])
def test_a_glow_prox_from_a_bounded_prior_is_finite_for_noise_up_to_one(sigma: float) -> None:
    network, op = _glow_denoiser(log_sd_bound=3.0)
    x = smooth_images(8, 3, 8)
    y = x + sigma * torch.randn(x.shape, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        output = network(y, op)
    assert bool(torch.isfinite(output).all())


def test_the_same_prox_without_the_bound_overflows() -> None:
    """The control: the same perturbed prior without the bound overflows at noise 0.1 already,
    so the test above is about the bound and not about a mild prior."""
    network, op = _glow_denoiser(log_sd_bound=0.0)
    x = smooth_images(8, 3, 8)
    y = x + 0.1 * torch.randn(x.shape, generator=torch.Generator().manual_seed(1))
    with torch.no_grad(), pytest.raises(NonFiniteError):
        network(y, op)
