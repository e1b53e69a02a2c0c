"""No dead folds: under the default configuration of the ``tiny`` and ``small`` presets, one
backward pass gives a non-zero gradient to every fold's trainable prox parameters and to every
step parameter in use (``mu_k`` or ``rho_k``, and ``lambda_k``), for every task and prox kind.

Before the rule of docs/DESIGN.md (a data step keeps a share of its input), the CNN denoisers
had ``mu = 1 / ||A||^2 = 1`` and ``x_0 = y``: every gradient step returned ``y``, and folds
``1..K-1`` and every ``mu_k`` got exactly zero gradient.

The CNN proxes are taken at a generic point (perturbed weights), as the prior is: a fresh one
is the identity (zero-initialised last convolution), and for noise-free inpainting at the
``rho`` floor (1e-11) its outputs then equal ``y`` on the observed pixels to the last bit, so
``rho_k``'s gradient rounds to exactly zero at that one point (docs/DESIGN.md).
"""

from __future__ import annotations

import dataclasses

import pytest
import torch
from conftest import perturb_parameters_, smooth_images

from flowprox.config import GlowConfig, PriorExperiment, ProxKind, load_config, preset_path
from flowprox.models.prior import build_glow
from flowprox.models.unrolled import build_unrolled
from flowprox.optim.prox import IdentityProx, NetworkProx
from flowprox.physics.noise import measure
from flowprox.physics.tasks import build_operator
from flowprox.training.configs import unrolled_config


def pretrained_like_prior(model: GlowConfig, size: int) -> torch.nn.Module:
    """The preset's Glow with ActNorm initialised on images and no zero weights left (as after
    pre-training; the zero-initialised last convolutions would otherwise block gradients)."""
    glow = build_glow(model)
    glow.train()
    with torch.no_grad():
        glow(smooth_images(8, model.in_channels, size, seed=1))
    perturb_parameters_(glow, 0.02, seed=2)
    return glow.double().eval()


@pytest.mark.parametrize("preset", ["tiny", "small"])
@pytest.mark.parametrize("task", ["denoise", "inpaint", "deblur"])
@pytest.mark.parametrize("prox", ProxKind.values())
def test_every_fold_and_every_step_parameter_gets_a_gradient(
    preset: str, task: str, prox: str
) -> None:
    prior_model = load_config(PriorExperiment, preset_path("prior", preset)).model
    config = unrolled_config(task, prox, preset)
    config = dataclasses.replace(config, prior_model=prior_model)
    size = config.data.resolution
    prior = pretrained_like_prior(prior_model, size)
    op = build_operator(config.task, size).double()
    torch.manual_seed(0)
    network = build_unrolled(config, op, prior).double()
    for fold in network.proxes:  # CNNs at a generic point, as the prior is (see above)
        if isinstance(fold, NetworkProx):
            perturb_parameters_(fold, 0.02, seed=5)
    x = smooth_images(2, 3, size, seed=3).double()
    y = measure(op, x, config.task.sigma_n, torch.Generator().manual_seed(4))
    torch.nn.functional.mse_loss(network(y, op), x).backward()

    for k, fold in enumerate(network.proxes):
        weights = [p for p in fold.parameters() if p.requires_grad]
        if isinstance(fold, IdentityProx) or not weights:
            continue
        norm = sum(float(p.grad.abs().sum()) for p in weights if p.grad is not None)
        assert norm > 0, f"fold {k}'s prox gets no gradient"
    learned = [fold for fold in network.proxes if any(p.requires_grad for p in fold.parameters())]
    trainable_folds = 0 if prox == ProxKind.PNP_GLOW else config.model.num_folds
    if config.model.final == "data-step" and trainable_folds:
        trainable_folds -= 1
    assert len({id(fold) for fold in learned}) == (1 if config.model.tied else trainable_folds)

    steps = network.step_parameters()
    assert steps, "no step parameters"
    for parameter in steps:
        assert parameter.grad is not None and bool((parameter.grad != 0).all()), (
            f"a step parameter gets no gradient: {parameter.grad}"
        )
