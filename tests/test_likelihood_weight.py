"""``train.likelihood_weight``: fine-tuning that keeps each fold's flow a density of clean
images (``MSE + beta * mean bits/dim of the folds' flows on the clean batch``)."""

from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.nn.functional as F
from conftest import smooth_uint8_images
from test_every_fold_learns import pretrained_like_prior

from flowprox.config import PriorExperiment, load_config, preset_path
from flowprox.data.datasets import ImageDataset
from flowprox.models.unrolled import build_unrolled
from flowprox.physics.tasks import build_operator
from flowprox.training.configs import unrolled_config
from flowprox.training.distributed import DistributedContext
from flowprox.training.task import ReconstructionError, _check_task_config


def _setup(beta: float, prox: str = "glow"):
    prior_model = load_config(PriorExperiment, preset_path("prior", "tiny")).model
    config = unrolled_config("inpaint", prox, "tiny")
    train = dataclasses.replace(config.train, likelihood_weight=beta, val_images=4)
    config = dataclasses.replace(config, prior_model=prior_model, train=train)
    size = config.data.resolution
    op = build_operator(config.task, size)
    torch.manual_seed(0)
    network = build_unrolled(config, op, pretrained_like_prior(prior_model, size).float())
    batch = config.train.batch_size
    val = ImageDataset(smooth_uint8_images(batch, size, seed=1))
    objective = ReconstructionError(config, op, val, val[0].shape, DistributedContext(), n_bits=5)
    x = torch.stack([val[i] for i in range(batch)])
    return config, network, objective, x


def test_beta_zero_is_the_mse_exactly() -> None:
    _, network, objective, x = _setup(0.0)
    clean = objective.op.A(x)
    y = clean + objective.config.task.sigma_n * objective._measurement_noise(7, clean)
    expected = F.mse_loss(network(y, objective.op), x)
    assert torch.equal(objective.loss(network, x, 7), expected)


def test_the_term_adds_beta_times_the_flows_bits_per_dim_and_reaches_every_flow() -> None:
    _, network, objective, x = _setup(0.1)
    _, plain_network, plain, _ = _setup(0.0)
    bits = objective.flow_bits_per_dim(network, x, 7)
    assert 0 < float(bits.detach()) < 20
    torch.testing.assert_close(
        objective.loss(network, x, 7), plain.loss(plain_network, x, 7) + 0.1 * bits
    )
    network.zero_grad()
    objective.flow_bits_per_dim(network, x, 7).backward()
    flows = {id(fold.flow): fold.flow for fold in network.proxes if hasattr(fold, "flow")}
    assert len(flows) >= 3  # untied: one flow per learned fold
    for flow in flows.values():
        grads = [p.grad for p in flow.parameters() if p.requires_grad]
        assert all(g is not None for g in grads)
        assert sum(float(g.abs().sum()) for g in grads) > 0


def test_the_term_needs_a_flow_to_fine_tune() -> None:
    for prox in ("unet", "pnp-glow"):
        config, *_ = _setup(0.1, prox)
        with pytest.raises(ValueError, match="likelihood_weight.*fine-tunes none"):
            _check_task_config(config, DistributedContext())
    config, *_ = _setup(0.1)
    _check_task_config(config, DistributedContext())  # glow: fine
    with pytest.raises(ValueError, match="train.likelihood_weight must be"):
        dataclasses.replace(config.train, likelihood_weight=-1.0)
