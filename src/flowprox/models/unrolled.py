"""The unrolled network an experiment config describes, and its reconstruction from checkpoints.

``build_unrolled`` turns an ``UnrolledExperiment`` into an ``UnrolledProximalGradient`` whose
prox is a fine-tuned flow (``glow``), the frozen pre-trained flow (``pnp-glow``), or a CNN
(``resnet``, ``unet``); ``load_unrolled`` rebuilds a trained network from its checkpoint alone
(the prior's architecture is recorded in the config, its weights in the state dict).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, cast

import torch
from torch import nn

from flowprox.config import ProxKind, UnrolledExperiment, config_from_dict
from flowprox.flows import Glow
from flowprox.models.cnn import ResNetProxNet, UNet
from flowprox.models.prior import build_glow
from flowprox.optim.prox import NetworkProx, Prox
from flowprox.optim.unrolled import (
    UnrolledProximalGradient,
    flow_unrolled_network,
    step_size_from_operator,
)
from flowprox.physics.operators import LinearOperator
from flowprox.physics.tasks import build_operator
from flowprox.utils.checkpoint import load_checkpoint

PROX_KINDS = ProxKind.values()

#: the journal's trainable-parameter counts (whole unrolled network), for side-by-side reports
JOURNAL_PARAMETERS = {
    ProxKind.RESNET: "0.16 M",
    ProxKind.UNET: "31.04 M",
    ProxKind.GLOW: "25.78 M",
    ProxKind.PNP_GLOW: "not given",
}


def cnn_network(config: UnrolledExperiment) -> nn.Module:
    """A fresh CNN prox network of the config (``resnet`` or ``unet``)."""
    model = config.model
    channels = config.prior_model.in_channels
    if model.prox == ProxKind.RESNET:
        return ResNetProxNet(channels, features=model.resnet_features, blocks=model.resnet_blocks)
    if model.prox == ProxKind.UNET:
        return UNet(channels, base=model.unet_base, depth=model.unet_depth)
    raise ValueError(f"{model.prox!r} is not a CNN prox; use 'resnet' or 'unet'.")


def build_unrolled(
    config: UnrolledExperiment, op: LinearOperator, prior: Glow | None = None
) -> UnrolledProximalGradient:
    """The unrolled network of ``config`` for operator ``op``.

    Args:
        config: the experiment (``model.prox`` selects the prox).
        op: the task's operator; ``mu_k`` starts at ``1 / ||A||^2`` unless ``model.mu_init > 0``.
        prior: the pre-trained flow. When None an untrained flow of ``config.prior_model`` is
            built (only right when a checkpoint's weights are loaded next).
    """
    model = config.model
    if model.prox not in PROX_KINDS:
        raise ValueError(f"unknown prox {model.prox!r}; choose one of {PROX_KINDS}.")
    needs_prior = model.prox in ProxKind.flows() or model.initial_estimate == "prior_mode"
    if prior is None and needs_prior:
        prior = build_glow(config.prior_model)
    size = config.data.resolution
    shape = (config.prior_model.in_channels, size, size)
    mu_init = model.mu_init if model.mu_init > 0 else step_size_from_operator(op, shape)
    initial = model.initial_estimate
    if model.prox in ProxKind.flows():
        network = flow_unrolled_network(
            cast(Glow, prior),  # built above when not given
            num_folds=model.num_folds,
            mu_init=mu_init,
            lambda_init=model.lambda_init,
            shrinkage=model.shrinkage,  # type: ignore[arg-type]
            tied=model.tied,
            freeze_flow=model.prox == ProxKind.PNP_GLOW,
            memory_saving=model.memory_saving,
        )
        if initial not in ("auto", "prior_mode"):
            network.initial_estimate = initial
        return network
    if model.tied:
        shared = NetworkProx(cnn_network(config))
        proxes: list[Prox] = [shared] * model.num_folds
    else:
        proxes = [NetworkProx(cnn_network(config)) for _ in range(model.num_folds)]
    return UnrolledProximalGradient(
        proxes,
        mu_init,
        model.lambda_init,
        initial_estimate="adjoint" if initial == "auto" else initial,  # type: ignore[arg-type]
        prior=prior,
    )


def trainable_parameters(network: UnrolledProximalGradient) -> dict[str, int]:
    """Trainable parameters: per fold's prox (unique modules), step parameters, and total."""
    seen: set[int] = set()
    per_fold = []
    for prox in network.proxes:
        params = [p for p in prox.parameters() if p.requires_grad and id(p) not in seen]
        seen.update(id(p) for p in params)
        per_fold.append(sum(p.numel() for p in params))
    steps = sum(p.numel() for p in (network.mu_raw, network.lambda_raw) if p is not None)
    return {
        "per_fold_max": max(per_fold),
        "folds": sum(per_fold),
        "steps": steps,
        "total": sum(per_fold) + steps,
    }


def describe_parameters(prox: str, network: UnrolledProximalGradient) -> str:
    """One line with our trainable-parameter counts beside the journal's figure."""
    counts = trainable_parameters(network)
    return (
        f"{prox}: {counts['total']:,} trainable parameters ({counts['total'] / 1e6:.3f} M; "
        f"largest fold {counts['per_fold_max']:,}, mu/lambda {counts['steps']}); "
        f"journal: {JOURNAL_PARAMETERS[ProxKind(prox)]} at the paper's widths"
    )


def load_unrolled(
    path: str | Path, op: LinearOperator | None = None, map_location: str | torch.device = "cpu"
) -> tuple[UnrolledProximalGradient, UnrolledExperiment]:
    """A trained unrolled network from its checkpoint, in eval mode, and its experiment config."""
    payload = load_checkpoint(path, kind="unrolled")
    config = config_from_dict(UnrolledExperiment, payload["config"])
    if op is None:
        op = build_operator(config.task, config.data.resolution, config.prior_model.in_channels)
    network = build_unrolled(config, op)
    network.load_state_dict(payload["model"])
    network.to(map_location).eval()
    return network, config


def load_prox_weights(
    network: UnrolledProximalGradient, config: UnrolledExperiment, path: str | Path
) -> None:
    """Start ``network``'s prox modules from another run's (``--init-from``, e.g. a denoiser).

    Only the prox weights are copied; ``mu_k``, ``lambda_k`` and ``x_0`` keep their values for
    the new task. The source must have the same prox kind and architecture.
    """
    payload = load_checkpoint(path, kind="unrolled")
    source = config_from_dict(UnrolledExperiment, payload["config"])
    mine, theirs = config.model, source.model
    keys = (
        "prox",
        "num_folds",
        "tied",
        "resnet_features",
        "resnet_blocks",
        "unet_base",
        "unet_depth",
    )
    different = [k for k in keys if getattr(mine, k) != getattr(theirs, k)]
    shown = [f"{k}: {getattr(theirs, k)!r} there, {getattr(mine, k)!r} here" for k in different]
    flow = config.model.prox in ProxKind.flows()
    if flow and source.prior_model != config.prior_model:
        shown.append("the prior's architecture (prior_model)")
    if source.prior_model.in_channels != config.prior_model.in_channels:
        shown.append("the number of image channels")
    if shown:
        raise ValueError(
            f"--init-from {path} has another architecture ({'; '.join(shown)}); initialise "
            "from a run with the same prox and model settings (e.g. its denoising run)."
        )
    state: dict[str, Any] = {k: v for k, v in payload["model"].items() if k.startswith("proxes.")}
    missing, unexpected = network.load_state_dict(state, strict=False)
    not_loaded = [k for k in missing if k.startswith("proxes.")]
    if not_loaded or unexpected:
        raise ValueError(
            f"--init-from {path}: prox weights do not match ({len(not_loaded)} missing, "
            f"{len(unexpected)} unexpected); is it a checkpoint of the same prox?"
        )
