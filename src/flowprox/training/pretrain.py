"""Maximum-likelihood pre-training of the Glow prior (``flowprox pretrain``).

Loss: bits per dimension of uniformly dequantised ``n_bits`` images (``flows.dequantization``).
Validation: bits per dimension at the bin midpoints (deterministic, no dequantisation noise), a
full pass over the validation split (or its first ``val_images``). Adam or Adamax with linear
warm-up and gradient-norm clipping; ActNorm's data-dependent initialisation runs once on
``init_batch_size`` training images, identical on every rank.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from torch import Tensor, nn

from flowprox.config import PriorExperiment, config_to_dict
from flowprox.data.datasets import ImageDataset
from flowprox.flows import Glow
from flowprox.flows.dequantization import bits_per_dim, dequantize
from flowprox.models.prior import build_glow
from flowprox.training.distributed import (
    DistributedContext,
    check_global_batch,
    cleanup_distributed,
    setup_distributed,
    wrap_model,
)
from flowprox.training.rundir import RunDirectory, open_run_directory
from flowprox.training.trainer import (
    StepBatchSampler,
    Trainer,
    loop_settings,
    step_generator,
    train_and_val_splits,
    training_batches,
)

#: config keys that may change when a run is resumed (a longer run, another time budget, workers)
RESUMABLE_KEYS = (
    "train.max_steps",
    "train.time_limit_minutes",
    "data.num_workers",
    "train.device",
)


@torch.no_grad()
def evaluate_bits_per_dim(
    glow: Glow,
    dataset: ImageDataset,
    n_bits: int,
    batch_size: int = 256,
    max_images: int = 0,
    device: torch.device | str = "cpu",
) -> float:
    """Mean bits/dim over ``dataset`` at the bin midpoints (deterministic)."""
    count = len(dataset) if max_images <= 0 else min(max_images, len(dataset))
    total = 0.0
    for start in range(0, count, batch_size):
        x = torch.stack([dataset[i] for i in range(start, min(start + batch_size, count))])
        x = x.to(device)
        total += float(glow.bits_per_dim(x, n_bits, dequantize_noise=False).sum())
    return total / count


def initialize_actnorm(glow: Glow, images: Tensor, n_bits: int, seed: int) -> None:
    """Run one forward pass in training mode so every ActNorm initialises from ``images``."""
    noise = torch.rand(images.shape, generator=step_generator(seed, -(10**6)))
    glow.train()
    with torch.no_grad():
        glow(dequantize(images, n_bits, noise=noise.to(images.device)))


def pretrain_prior(
    config: PriorExperiment,
    out: str | Path,
    resume: bool = False,
    argv: Sequence[str] | None = None,
) -> Path:
    """Pre-train a Glow prior by maximum likelihood; returns the run directory.

    Launched under ``torchrun`` it trains with DDP (gloo on CPU, NCCL on GPU): the global batch
    ``train.batch_size`` is split over the ranks.
    """
    context = setup_distributed(config.train.device)
    try:
        return _pretrain(config, Path(out), resume, argv, context)
    finally:
        cleanup_distributed()


def _pretrain(
    config: PriorExperiment,
    out: Path,
    resume: bool,
    argv: Sequence[str] | None,
    context: DistributedContext,
) -> Path:
    """The steps of ``pretrain_prior`` in this process (one rank of a DDP run, or the only one)."""
    _check_prior_config(config, context)
    config_dict = config_to_dict(config)
    with open_run_directory(out, config_dict, argv, context.is_main, resume) as run_dir:
        train_set, val_set = train_and_val_splits(config.data, context, "pre-training")
        glow = _build_initialized_glow(config, train_set, resume, context)
        trainer = _make_prior_trainer(config, config_dict, glow, run_dir, context, resume)
        objective = MaximumLikelihood(config, val_set, train_set[0].shape, context)
        train_batches = training_batches(train_set, config, trainer.step, context)
        trainer.fit(train_batches, objective.loss, objective.evaluate)
        return out


def _check_prior_config(config: PriorExperiment, context: DistributedContext) -> None:
    """Raise on a model size that is not the data's, or a batch the ranks cannot share."""
    if config.model.image_size != config.data.resolution:
        raise ValueError(
            f"model.image_size = {config.model.image_size} differs from data.resolution = "
            f"{config.data.resolution}; set both to the same size."
        )
    check_global_batch(config.train.batch_size, context)


def _build_initialized_glow(
    config: PriorExperiment, train_set: ImageDataset, resume: bool, context: DistributedContext
) -> Glow:
    """The Glow of ``config.model`` on the device, its ActNorms initialised unless resuming.

    The weights are drawn after ``torch.manual_seed(config.seed)``; ActNorm's data-dependent
    initialisation uses ``train.init_batch_size`` training images fixed by the seed.
    """
    torch.manual_seed(config.seed)
    glow = build_glow(config.model).to(context.device)
    if context.is_main:
        parameters = sum(p.numel() for p in glow.parameters())
        print(f"Glow prior: {parameters:,} parameters ({parameters / 1e6:.2f} M)")
    if not resume:  # the checkpoint holds the initialised ActNorms
        init_size = min(config.train.init_batch_size, len(train_set))
        init_sampler = StepBatchSampler(len(train_set), init_size, config.seed)
        init_images = torch.stack([train_set[i] for i in init_sampler.global_indices(0)])
        initialize_actnorm(glow, init_images.to(context.device), config.train.n_bits, config.seed)
    return glow


def _make_prior_trainer(
    config: PriorExperiment,
    config_dict: dict,
    glow: Glow,
    run_dir: RunDirectory,
    context: DistributedContext,
    resume: bool,
) -> Trainer:
    """The trainer of ``glow`` (DDP-wrapped when distributed), resumed from ``last.pt`` if asked."""
    train_config = config.train
    model = wrap_model(glow, context)
    optimizer = make_optimizer(train_config.optimizer, glow, train_config.lr)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer,
        learning_rate_factor(
            train_config.lr_schedule,
            train_config.warmup_steps,
            train_config.max_steps,
            train_config.final_lr_fraction,
        ),
    )
    trainer = Trainer(
        model,
        optimizer,
        scheduler,
        loop_settings(train_config),
        run_dir,
        context,
        kind="prior",
        config=config_dict,
        metric_fields=("val_bpd",),
    )
    if resume:
        trainer.resume(RESUMABLE_KEYS, defaults=config_to_dict(PriorExperiment()))
    return trainer


class MaximumLikelihood:
    """The pre-training objective: the loss of a training step and the validation score.

    Args:
        config: the experiment (seed, ``train.n_bits``, batch sizes, ``train.val_images``).
        val_set: the validation split.
        image_shape: ``(C, H, W)`` of one image.
        context: this process's rank and device.
    """

    def __init__(
        self,
        config: PriorExperiment,
        val_set: ImageDataset,
        image_shape: torch.Size,
        context: DistributedContext,
    ) -> None:
        self.config = config
        self.val_set = val_set
        self.image_shape = image_shape
        self.context = context

    def loss(self, model: nn.Module, x: Tensor, step: int) -> Tensor:
        """Mean bits/dim of ``x`` uniformly dequantised with the noise of ``(seed, step)`` (and,
        with ``train.noise_sigma_max > 0``, Gaussian noise of a level drawn per image)."""
        n_bits = self.config.train.n_bits
        uniform, gaussian = self._step_noise(step, x.device)
        x_continuous = dequantize(x, n_bits, noise=uniform)
        if gaussian is not None:
            x_continuous = x_continuous + gaussian
        z, logdet = model(x_continuous)
        log_prob = -0.5 * (z.pow(2) + math.log(2 * math.pi)).sum(dim=1) + logdet
        return bits_per_dim(log_prob, x[0].numel(), n_bits).mean()

    def _step_noise(self, step: int, device: torch.device) -> tuple[Tensor, Tensor | None]:
        """This rank's rows of the step's noise for the whole global batch (rank-independent):
        the dequantisation noise ``u ~ U(0, 1)``, and the augmentation ``sigma * eps`` with
        ``sigma ~ U(0, noise_sigma_max)`` per image, ``eps ~ N(0, I)``, on a ``noise_fraction``
        share of the images drawn per image (None when off)."""
        rank, world_size = self.context.rank, self.context.world_size
        shape = (self.config.train.batch_size, *self.image_shape)
        generator = step_generator(self.config.seed, step)
        uniform = torch.rand(shape, generator=generator)[rank::world_size].to(device)
        sigma_max = self.config.train.noise_sigma_max
        if sigma_max <= 0:
            return uniform, None
        sigma = sigma_max * torch.rand((shape[0], 1, 1, 1), generator=generator)
        gaussian = sigma * torch.randn(shape, generator=generator)
        fraction = self.config.train.noise_fraction
        if fraction < 1:
            gaussian = gaussian * (torch.rand(sigma.shape, generator=generator) < fraction)
        return uniform, gaussian[rank::world_size].to(device)

    def evaluate(self, glow: nn.Module) -> dict[str, float]:
        """Validation bits/dim at the bin midpoints: the score (lower is better) and ``val_bpd``."""
        train_config = self.config.train
        val_bpd = evaluate_bits_per_dim(
            glow,  # type: ignore[arg-type]
            self.val_set,
            train_config.n_bits,
            train_config.eval_batch_size,
            train_config.val_images,
            self.context.device,
        )
        return {"score": val_bpd, "val_bpd": val_bpd}


def learning_rate_factor(
    schedule: str, warmup_steps: int, max_steps: int, final_fraction: float = 0.0
) -> Callable[[int], float]:
    """Multiplier of the base learning rate at each step.

    Linear warm-up over ``warmup_steps``, then ``"constant"`` (1), or ``"cosine"`` decay from 1 to
    ``final_fraction`` at ``max_steps`` (step-based, so a resumed run follows the same curve).
    """
    if schedule not in ("constant", "cosine"):
        raise ValueError(f"unknown lr_schedule {schedule!r}; use 'constant' or 'cosine'.")
    warmup = max(warmup_steps, 1)

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        if schedule == "constant":
            return 1.0
        progress = min(1.0, (step - warmup) / max(max_steps - warmup, 1))
        return final_fraction + (1 - final_fraction) * 0.5 * (1 + math.cos(math.pi * progress))

    return factor


def make_optimizer(name: str, model: nn.Module, lr: float) -> torch.optim.Optimizer:
    """Adam or Adamax over ``model``'s parameters (``train.optimizer``)."""
    if name == "adam":
        return torch.optim.Adam(model.parameters(), lr=lr, foreach=True)
    if name == "adamax":
        return torch.optim.Adamax(model.parameters(), lr=lr, foreach=True)
    raise ValueError(f"unknown optimizer {name!r}; use 'adam' or 'adamax'.")
