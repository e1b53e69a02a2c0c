"""End-to-end training of the unrolled network for a task (``flowprox train``).

Loss: ``mean ||x^ - x||^2`` between the network's reconstruction of ``y = A x + n`` and the
clean image (paper section III-B), with fresh noise for every training batch. Adam with one
learning rate for the prox networks and another for the step parameters (``mu_k`` or
``rho_k``, ``lambda_k``). Validation loss on
fixed-seed measurements of the validation split decides early stopping and the best
checkpoint. The loop, checkpoints, resume, NaN guard and DDP are those of pre-training
(``flowprox.training.trainer.Trainer``).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from flowprox.config import (
    GlowConfig,
    ProxKind,
    UnrolledExperiment,
    config_from_dict,
    config_to_dict,
)
from flowprox.data.datasets import describe, load_splits
from flowprox.evaluation.reconstruct import reconstruct_all, stack_images
from flowprox.metrics.quality import psnr
from flowprox.models.prior import load_prior
from flowprox.models.unrolled import build_unrolled, describe_parameters, load_prox_weights
from flowprox.optim.unrolled import UnrolledProximalGradient
from flowprox.physics.noise import measure_fixed
from flowprox.physics.tasks import build_operator, task_label, validate_task
from flowprox.training.distributed import (
    DistributedContext,
    cleanup_distributed,
    setup_distributed,
    wrap_model,
)
from flowprox.training.rundir import RunDirectory
from flowprox.training.trainer import (
    StepBatchSampler,
    Trainer,
    batches,
    loop_settings,
    step_generator,
)
from flowprox.utils.validation import NonFiniteError

#: config keys that may change when a run is resumed
RESUMABLE_KEYS = (
    "train.max_steps",
    "train.time_limit_minutes",
    "train.early_stopping_patience",
    "data.num_workers",
    "train.device",
    "prior",
    "init_from",
)


def make_unrolled_optimizer(
    network: UnrolledProximalGradient, config: UnrolledExperiment
) -> torch.optim.Adam:
    """Adam: ``train.lr`` for the prox weights, ``train.lr_step`` for the step parameters."""
    train = config.train
    step_params = network.step_parameters()
    step_ids = {id(p) for p in step_params}
    weights = [p for p in network.parameters() if p.requires_grad and id(p) not in step_ids]
    groups = [{"params": step_params, "lr": train.lr_step}]
    if weights:
        groups.insert(0, {"params": weights, "lr": train.lr})
    return torch.optim.Adam(groups, lr=train.lr, betas=train.betas, eps=train.eps)


def with_prior_model(config: UnrolledExperiment, model: dict) -> UnrolledExperiment:
    """``config`` with ``prior_model`` set from the prior checkpoint's model config."""
    prior_model = config_from_dict(GlowConfig, model)
    if prior_model.image_size != config.data.resolution:
        raise ValueError(
            f"the prior was trained on {prior_model.image_size}x{prior_model.image_size} images "
            f"but data.resolution = {config.data.resolution}; use the prior's resolution "
            f"(--set data.resolution={prior_model.image_size})."
        )
    return dataclasses.replace(config, prior_model=prior_model)


def train_unrolled(
    config: UnrolledExperiment,
    out: str | Path,
    resume: bool = False,
    argv: Sequence[str] | None = None,
) -> Path:
    """Train the unrolled network of ``config`` for its task; returns the run directory.

    Under ``torchrun`` it trains with DDP: the global batch ``train.batch_size`` is split over
    the ranks, and rank 0 evaluates and writes.
    """
    context = setup_distributed(config.train.device)
    try:
        return _train(config, Path(out), resume, argv, context)
    finally:
        cleanup_distributed()


def _train(
    config: UnrolledExperiment,
    out: Path,
    resume: bool,
    argv: Sequence[str] | None,
    context: DistributedContext,
) -> Path:
    train = config.train
    validate_task(config.task)
    if train.batch_size % context.world_size:
        raise ValueError(
            f"train.batch_size = {train.batch_size} is not divisible by the "
            f"{context.world_size} processes; use a multiple of {context.world_size}."
        )
    prior = None
    if config.prior:
        prior, prior_config = load_prior(config.prior)
        config = with_prior_model(config, prior_config["model"])
    elif config.model.prox in ProxKind.flows():
        raise ValueError(
            f"prox {config.model.prox!r} needs the pre-trained prior: pass --prior PRIOR.pt "
            "(the best.pt of a `flowprox pretrain` run)."
        )

    run_dir = RunDirectory(out, enabled=context.is_main, resume=resume)
    config_dict = config_to_dict(config)
    run_dir.write_config(config_dict)
    run_dir.write_command(argv)

    splits = load_splits(config.data)
    if "train" not in splits or "val" not in splits:
        raise ValueError(f"{config.data.path} has no train/val split; training needs both.")
    if context.is_main:
        print(f"data: {describe(splits)}")
    train_set = splits["train"]
    channels = train_set[0].shape[0]
    op = build_operator(config.task, config.data.resolution, channels).to(context.device)

    torch.manual_seed(config.seed)
    network = build_unrolled(config, op, prior).to(context.device)
    if config.init_from and not resume:
        load_prox_weights(network, config, config.init_from)
    if context.is_main:
        steps = ", ".join(f"{k} = {v:.4g}" for k, v in network.step_summary().items() if "_1" in k)
        print(f"task: {task_label(config.task)}; {config.model.data_step} data step; {steps}")
        print(describe_parameters(config.model.prox, network))

    model = wrap_model(network, context)
    optimizer = make_unrolled_optimizer(network, config)
    settings = loop_settings(train)
    trainer = Trainer(
        model,
        optimizer,
        None,
        settings,
        run_dir,
        context,
        kind="unrolled",
        config=config_dict,
        metric_fields=("val_loss", "val_psnr", "mu_1", "rho_1", "lambda_1"),
    )
    if resume:
        trainer.resume(RESUMABLE_KEYS)

    sampler = StepBatchSampler(
        len(train_set),
        train.batch_size,
        config.seed,
        start_step=trainer.step,
        rank=context.rank,
        world_size=context.world_size,
    )
    x_val = stack_images(splits["val"], train.val_images)
    y_val = measure_fixed(op.cpu(), x_val, config.task.sigma_n, train.measurement_seed)
    op.to(context.device)
    image_shape = train_set[0].shape
    sigma_n = config.task.sigma_n

    def loss_fn(model: nn.Module, x: Tensor, step: int) -> Tensor:
        noise = torch.randn(
            (train.batch_size, *image_shape), generator=step_generator(config.seed, step)
        )[context.rank :: context.world_size]
        y = op.A(x) + sigma_n * noise.to(x.device)
        return F.mse_loss(model(y, op), x)

    def evaluate(network: nn.Module) -> dict[str, float]:
        try:
            x_hat = reconstruct_all(network, y_val, op, train.eval_batch_size, context.device)
        except NonFiniteError:  # a diverged network: never the best checkpoint
            nan = float("nan")
            return {"score": math.inf, "val_loss": nan, "val_psnr": nan, "mu_1": nan,
                    "rho_1": nan, "lambda_1": nan}  # fmt: skip
        val_loss = float(F.mse_loss(x_hat, x_val))
        metrics = {"score": val_loss, "val_loss": val_loss}
        metrics["val_psnr"] = float(psnr(x_hat, x_val).mean())
        steps = network.step_summary()  # type: ignore[operator]
        for name in ("mu_1", "rho_1", "lambda_1"):
            metrics[name] = steps.get(name, 0.0)
        return metrics

    trainer.fit(
        batches(train_set, sampler, config.data.num_workers, context.device), loss_fn, evaluate
    )
    return out
