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
from flowprox.data.datasets import ImageDataset
from flowprox.evaluation.reconstruct import reconstruct_all, stack_images
from flowprox.flows import Glow
from flowprox.metrics.quality import psnr
from flowprox.models.prior import load_prior
from flowprox.models.unrolled import build_unrolled, describe_parameters, load_prox_weights
from flowprox.optim.unrolled import UnrolledProximalGradient
from flowprox.physics.noise import measure_fixed
from flowprox.physics.operators import LinearOperator
from flowprox.physics.tasks import build_operator, task_label, validate_task
from flowprox.training.distributed import (
    DistributedContext,
    check_global_batch,
    cleanup_distributed,
    setup_distributed,
    unwrap_model,
    wrap_model,
)
from flowprox.training.rundir import RunDirectory, open_run_directory
from flowprox.training.trainer import (
    Trainer,
    loop_settings,
    step_generator,
    train_and_val_splits,
    training_batches,
)
from flowprox.utils.validation import NonFiniteError

#: config keys that may change when a run is resumed
RESUMABLE_KEYS = (
    "train.max_steps",
    "train.time_limit_minutes",
    "train.early_stopping_patience",
    "train.stop_when_flat",
    "train.flat_min_steps",
    "data.num_workers",
    "train.device",
    "prior",
    "init_from",
)


def make_unrolled_optimizer(
    network: UnrolledProximalGradient, config: UnrolledExperiment
) -> torch.optim.Adam:
    """Adam: ``train.lr`` for the prox weights, ``train.lr_step`` for the step parameters.

    ``foreach=True``: one multi-tensor update instead of a Python loop over the ~1,200 tensors of
    four flows (torch picks it by itself only on CUDA); the same values bit for bit
    (tests/test_unrolled.py), in less time per ``small`` GLOW prox step (bench/step_variants.py:
    ``bfloat16`` against ``bfloat16-looped-adam``).
    """
    train = config.train
    step_params = network.step_parameters()
    step_ids = {id(p) for p in step_params}
    weights = [p for p in network.parameters() if p.requires_grad and id(p) not in step_ids]
    groups = [{"params": step_params, "lr": train.lr_step}]
    if weights:
        groups.insert(0, {"params": weights, "lr": train.lr})
    return torch.optim.Adam(groups, lr=train.lr, betas=train.betas, eps=train.eps, foreach=True)


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
    """The steps of ``train_unrolled`` in this process (one rank of a DDP run, or the only one)."""
    _check_task_config(config, context)
    config, prior, n_bits = _with_loaded_prior(config)
    config_dict = config_to_dict(config)
    with open_run_directory(out, config_dict, argv, context.is_main, resume) as run_dir:
        train_set, val_set = train_and_val_splits(config.data, context, "training")
        image_shape = train_set[0].shape
        op = build_operator(config.task, config.data.resolution, image_shape[0]).to(context.device)
        network = _build_network(config, op, prior, resume, context)
        trainer = _make_unrolled_trainer(config, config_dict, network, run_dir, context, resume)
        objective = ReconstructionError(config, op, val_set, image_shape, context, n_bits)
        train_batches = training_batches(train_set, config, trainer.step, context)
        trainer.fit(train_batches, objective.loss, objective.evaluate)
        return out


def _check_task_config(config: UnrolledExperiment, context: DistributedContext) -> None:
    """Raise on an invalid task, a batch the ranks cannot share, or a likelihood term without a
    flow to fine-tune."""
    validate_task(config.task)
    check_global_batch(config.train.batch_size, context)
    if config.train.likelihood_weight > 0:
        if config.model.prox != ProxKind.GLOW:
            raise ValueError(
                f"train.likelihood_weight = {config.train.likelihood_weight:g} keeps fine-tuned "
                f"flows density models, but prox {config.model.prox!r} fine-tunes none; use it "
                "with --prox glow, or set train.likelihood_weight=0."
            )
        if context.world_size > 1:
            raise ValueError(
                "train.likelihood_weight > 0 is not supported under torchrun yet (the term runs "
                "the flows outside DDP's forward pass); train on one process, or set it to 0."
            )


def _with_loaded_prior(
    config: UnrolledExperiment,
) -> tuple[UnrolledExperiment, Glow | None, int]:
    """The pre-trained prior of ``config.prior`` (or None), ``config`` with its model config,
    and the bits per channel of the prior's data (8 without a prior).

    A flow prox without a prior is an error.
    """
    if config.prior:
        prior, prior_config = load_prior(config.prior)
        n_bits = int(prior_config.get("train", {}).get("n_bits", 8))
        return with_prior_model(config, prior_config["model"]), prior, n_bits
    if config.model.prox in ProxKind.flows():
        raise ValueError(
            f"prox {config.model.prox!r} needs the pre-trained prior: pass --prior PRIOR.pt "
            "(the best.pt of a `flowprox pretrain` run)."
        )
    return config, None, 8


def _build_network(
    config: UnrolledExperiment,
    op: LinearOperator,
    prior: Glow | None,
    resume: bool,
    context: DistributedContext,
) -> UnrolledProximalGradient:
    """The unrolled network of ``config`` on the device, seeded by ``config.seed``.

    A new run takes its prox weights from ``config.init_from`` when given (a resumed run has
    them in its checkpoint).
    """
    torch.manual_seed(config.seed)
    network = build_unrolled(config, op, prior).to(context.device)
    if config.init_from and not resume:
        load_prox_weights(network, config, config.init_from)
    if context.is_main:
        steps = ", ".join(f"{k} = {v:.4g}" for k, v in network.step_summary().items() if "_1" in k)
        print(f"task: {task_label(config.task)}; {config.model.data_step} data step; {steps}")
        print(describe_parameters(config.model.prox, network))
    return network


def _make_unrolled_trainer(
    config: UnrolledExperiment,
    config_dict: dict,
    network: UnrolledProximalGradient,
    run_dir: RunDirectory,
    context: DistributedContext,
    resume: bool,
) -> Trainer:
    """The trainer of ``network`` (DDP-wrapped when distributed), resumed from ``last.pt``."""
    model = wrap_model(network, context)
    trainer = Trainer(
        model,
        make_unrolled_optimizer(network, config),
        None,
        loop_settings(config.train),
        run_dir,
        context,
        kind="unrolled",
        config=config_dict,
        metric_fields=("val_loss", "val_psnr", "mu_1", "rho_1", "lambda_1"),
    )
    if resume:
        trainer.resume(RESUMABLE_KEYS, defaults=config_to_dict(UnrolledExperiment()))
    return trainer


class ReconstructionError:
    """The task objective: the MSE of a training step and the validation metrics.

    Validation uses fixed-seed measurements of the first ``train.val_images`` validation images
    (the same for every run, batch size and device).

    Args:
        config: the experiment (task, seed, ``train`` batch sizes and measurement seed).
        op: the task's forward operator, on the training device.
        val_set: the validation split.
        image_shape: ``(C, H, W)`` of one image.
        context: this process's rank and device.
    """

    def __init__(
        self,
        config: UnrolledExperiment,
        op: LinearOperator,
        val_set: ImageDataset,
        image_shape: torch.Size,
        context: DistributedContext,
        n_bits: int = 8,
    ) -> None:
        self.config = config
        self.n_bits = n_bits
        self.op = op
        self.image_shape = image_shape
        self.context = context
        self.x_val = stack_images(val_set, config.train.val_images)
        self.y_val = self._fixed_measurements(self.x_val)

    def _fixed_measurements(self, x: Tensor) -> Tensor:
        """``A x + n`` with noise fixed by ``train.measurement_seed`` (computed on the CPU)."""
        train = self.config.train
        y = measure_fixed(self.op.cpu(), x, self.config.task.sigma_n, train.measurement_seed)
        self.op.to(self.context.device)
        return y

    def loss(self, model: nn.Module, x: Tensor, step: int) -> Tensor:
        """``mean ||x^ - x||^2`` for measurements of ``x`` with the noise of ``(seed, step)``,
        plus ``likelihood_weight`` times :meth:`flow_bits_per_dim` when it is positive."""
        clean = self.op.A(x)
        y = clean + self.config.task.sigma_n * self._measurement_noise(step, clean)
        loss = F.mse_loss(model(y, self.op), x)
        beta = self.config.train.likelihood_weight
        if beta > 0:
            loss = loss + beta * self.flow_bits_per_dim(unwrap_model(model), x, step)
        return loss

    def flow_bits_per_dim(self, network: nn.Module, x: Tensor, step: int) -> Tensor:
        """The mean over the network's distinct flows of their mean bits/dim on the clean batch
        ``x`` (reduced to the prior's bits, dequantised by noise of ``(seed, step)``)."""
        flows = list({id(p.flow): p.flow for p in network.proxes if hasattr(p, "flow")}.values())
        noise = torch.rand(x.shape, generator=step_generator(self.config.seed + 1, step))
        noise = noise.to(x.device)
        per_flow = [flow.bits_per_dim(x, self.n_bits, dequantize_noise=noise) for flow in flows]
        return torch.stack([bits.mean() for bits in per_flow]).mean()

    def _measurement_noise(self, step: int, clean: Tensor) -> Tensor:
        """This rank's rows of the step's standard normal noise for the whole global batch, in
        the measurements' shape (that of the images for denoising, inpainting and deblurring)."""
        rank, world_size = self.context.rank, self.context.world_size
        noise = torch.randn(
            (self.config.train.batch_size, *clean.shape[1:]),
            generator=step_generator(self.config.seed, step),
        )[rank::world_size]
        return noise.to(clean.device)

    def evaluate(self, network: nn.Module) -> dict[str, float]:
        """Validation loss (the score), PSNR and the first fold's ``mu``, ``lambda``."""
        train = self.config.train
        try:
            x_hat = reconstruct_all(
                network, self.y_val, self.op, train.eval_batch_size, self.context.device
            )
        except NonFiniteError:  # a diverged network: never the best checkpoint
            nan = float("nan")
            return {"score": math.inf, "val_loss": nan, "val_psnr": nan, "mu_1": nan,
                    "rho_1": nan, "lambda_1": nan}  # fmt: skip
        return self._metrics(network, x_hat)

    def _metrics(self, network: nn.Module, x_hat: Tensor) -> dict[str, float]:
        """The validation metrics of the reconstructions ``x_hat``."""
        val_loss = float(F.mse_loss(x_hat, self.x_val))
        metrics = {"score": val_loss, "val_loss": val_loss}
        metrics["val_psnr"] = float(psnr(x_hat, self.x_val).mean())
        steps = network.step_summary()  # type: ignore[operator]
        for name in ("mu_1", "rho_1", "lambda_1"):
            metrics[name] = steps.get(name, 0.0)
        return metrics
