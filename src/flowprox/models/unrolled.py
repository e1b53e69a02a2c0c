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
from flowprox.flows.memory import activation_bytes
from flowprox.models.cnn import ResNetProxNet, UNet
from flowprox.models.precision import set_network_precision
from flowprox.models.prior import build_glow
from flowprox.optim.prox import NetworkProx
from flowprox.optim.unrolled import (
    DATA_STEPS,
    UnrolledProximalGradient,
    flow_unrolled_network,
    fold_proxes,
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


FINALS = ("prox", "data-step")


def initial_rho(config: UnrolledExperiment) -> float:
    """``rho_0``: ``model.rho_init``, or the rule ``max((sigma_n / rho_prox_sigma)^2,
    rho_floor)`` when it is 0 (see ``UnrolledModelConfig``)."""
    model = config.model
    if model.rho_init > 0:
        return model.rho_init
    if not (model.rho_prox_sigma > 0 and model.rho_floor > 0):
        raise ValueError(
            f"model.rho_prox_sigma ({model.rho_prox_sigma}) and model.rho_floor "
            f"({model.rho_floor}) must be > 0; e.g. 0.1 and 1e-11, or set model.rho_init > 0."
        )
    return max((config.task.sigma_n / model.rho_prox_sigma) ** 2, model.rho_floor)


def initial_mu(config: UnrolledExperiment, op: LinearOperator) -> float:
    """``mu_0``: ``model.mu_init``, or ``1 / (||A||^2 (1 + rho_0))`` when it is 0."""
    if config.model.mu_init > 0:
        return config.model.mu_init
    size = config.data.resolution
    shape = (config.prior_model.in_channels, size, size)
    return step_size_from_operator(op, shape) / (1.0 + initial_rho(config))


def initial_estimate(config: UnrolledExperiment, prior: Glow | None = None) -> str:
    """``x_0``: ``model.initial_estimate``, or for ``"auto"`` the same image for every prox kind,
    the prior's mode ``g_0(0)`` (or zeros when no prior is given). Never ``A^T y``: for
    denoising and inpainting that is a fixed point of the data step, which then returns it
    whatever its step parameter, and the fold's step parameter gets no gradient."""
    chosen = config.model.initial_estimate
    if chosen != "auto":
        return chosen
    has_prior = prior is not None or bool(config.prior)
    return "prior_mode" if has_prior or config.model.prox in ProxKind.flows() else "zeros"


def uses_memory_saving(config: UnrolledExperiment, prior: Glow) -> bool:
    """Whether the flow proxes recompute their activations in backward (``model.memory_saving``).

    ``"auto"``: on when plain autograd would keep more than ``model.memory_budget_gb`` for one
    training step, measured as ``activation_bytes`` of the prior for ``train.batch_size``
    images times the number of flows a step passes through (one per learned fold).
    """
    model = config.model
    if model.memory_saving != "auto":
        return model.memory_saving == "on"
    size = config.data.resolution
    flows = model.num_folds if model.final == "prox" else model.num_folds - 1
    per_step = activation_bytes(prior, (size, size), config.train.batch_size) * flows
    return per_step > model.memory_budget_gb * 2**30


def build_unrolled(
    config: UnrolledExperiment, op: LinearOperator, prior: Glow | None = None
) -> UnrolledProximalGradient:
    """The unrolled network of ``config`` for operator ``op``: ``model.num_folds`` folds, each a
    data step (``model.data_step``) then a prox of kind ``model.prox``, the last fold's prox
    learned or not by ``model.final``, alike for every prox kind.

    Args:
        config: the experiment.
        op: the task's operator (for ``mu_0 = 1 / (||A||^2 (1 + rho_0))``).
        prior: the pre-trained flow. When None an untrained flow of ``config.prior_model`` is
            built (only right when a checkpoint's weights are loaded next).
    """
    model = config.model
    if model.prox not in PROX_KINDS:
        raise ValueError(f"unknown prox {model.prox!r}; choose one of {PROX_KINDS}.")
    if model.final not in FINALS:
        raise ValueError(f"unknown model.final {model.final!r}; choose one of {FINALS}.")
    if model.data_step not in DATA_STEPS:
        raise ValueError(
            f"unknown model.data_step {model.data_step!r}; choose one of {DATA_STEPS}."
        )
    initial = initial_estimate(config, prior)
    if prior is None and (model.prox in ProxKind.flows() or initial == "prior_mode"):
        prior = build_glow(config.prior_model)
    steps = {
        "mu_init": initial_mu(config, op) if model.data_step == "gradient" else 1.0,
        "lambda_init": model.lambda_init,
        "data_step": model.data_step,
        "rho_init": initial_rho(config),
    }
    final_prox = model.final == "prox"
    if model.prox in ProxKind.flows():
        network = flow_unrolled_network(
            cast(Glow, prior),  # built above when not given
            num_folds=model.num_folds,
            shrinkage=model.shrinkage,  # type: ignore[arg-type]
            tied=model.tied,
            freeze_flow=model.prox == ProxKind.PNP_GLOW,
            memory_saving=uses_memory_saving(config, cast(Glow, prior)),
            shrink_last_fold=final_prox,
            **steps,  # type: ignore[arg-type]
        )
        if initial != "prior_mode":
            network.initial_estimate = initial
    else:
        network = UnrolledProximalGradient(
            fold_proxes(
                lambda: NetworkProx(cnn_network(config)), model.num_folds, final_prox, model.tied
            ),  # fmt: skip
            initial_estimate=initial,  # type: ignore[arg-type]
            prior=prior,
            **steps,  # type: ignore[arg-type]
        )
    set_network_precision(network, model.network_precision)
    return network


def trainable_parameters(network: UnrolledProximalGradient) -> dict[str, int]:
    """Trainable parameters: per fold's prox (unique modules), step parameters, and total."""
    seen: set[int] = set()
    per_fold = []
    for prox in network.proxes:
        params = [p for p in prox.parameters() if p.requires_grad and id(p) not in seen]
        seen.update(id(p) for p in params)
        per_fold.append(sum(p.numel() for p in params))
    steps = sum(p.numel() for p in network.step_parameters())
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
        f"largest fold {counts['per_fold_max']:,}, step parameters {counts['steps']}); "
        f"journal: {JOURNAL_PARAMETERS[ProxKind(prox)]} at the paper's widths"
    )


def saved_config(payload: dict[str, Any]) -> UnrolledExperiment:
    """The experiment of an unrolled checkpoint. Checkpoints written before ``model.data_step``
    and ``model.final`` existed had gradient data steps, and a last fold without a flow for the
    flow proxes but with a CNN for the CNN proxes: those settings are filled in."""
    values = {**payload["config"], "model": dict(payload["config"]["model"])}
    model = values["model"]
    if "data_step" not in model:
        model["data_step"] = "gradient"
        flow = model.get("prox", ProxKind.GLOW.value) in ProxKind.flows()
        model.setdefault("final", "data-step" if flow else "prox")
        if not flow and model.get("initial_estimate", "auto") == "auto":
            model["initial_estimate"] = "adjoint"
    return config_from_dict(UnrolledExperiment, values)


def load_unrolled(
    path: str | Path, op: LinearOperator | None = None, map_location: str | torch.device = "cpu"
) -> tuple[UnrolledProximalGradient, UnrolledExperiment]:
    """A trained unrolled network from its checkpoint, in eval mode, and its experiment config."""
    payload = load_checkpoint(path, kind="unrolled")
    config = saved_config(payload)
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
    source = saved_config(payload)
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
