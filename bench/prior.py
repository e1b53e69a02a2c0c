"""Glow pre-training, flowprox vs normflows: test bits/dim and training throughput side by side.

What is compared. flowprox's pre-training of its Glow prior (``build_glow``,
``initialize_actnorm``, the loss of ``pretrain_prior``) against the multi-scale Glow of the
``normflows`` package (a bench-only dependency: ``pip install -e .[bench]``) built the way
normflows' own Glow example builds it (``examples/glow_colab.ipynb``): per level ``K``
``nf.flows.GlowBlock(channels, hidden, split_mode="channel", scale=True)`` (affine coupling with
Glow's ``sigmoid(h + 2)`` scale, LU-parametrised invertible 1x1 convolution, data-initialised
ActNorm) and a ``nf.flows.Squeeze``, ``nf.flows.Merge`` between levels, and a base distribution
per level, all in an ``nf.MultiscaleFlow``; the example's class-conditional base
``ClassCondDiagGaussian`` is replaced by the unconditional ``nf.distributions.GlowBase``
(learned per-channel mean and log-scale) and ``class_cond=False``. Both models get the same number
of levels ``L``, steps per level ``K``, coupling width and (affine) coupling from the config
(the ``small`` preset, ``flowprox/presets/prior-small.toml``, by default). Architectural
differences that remain, because they are how each library builds Glow:

* split priors: flowprox's factored-out half at each split is standardised by Glow's *conditional*
  prior (mean and log-sd per pixel from a zero-initialised 3x3 convolution of the kept half);
  normflows' ``MultiscaleFlow`` hands a level's base distribution only the factored-out half, so
  its split prior is an *unconditional* ``GlowBase`` (one mean and log-scale per channel). The
  top level is a per-channel learned Gaussian in both.
* coupling network: both are conv3x3-ReLU-conv1x1-ReLU-conv3x3 with a zero-initialised last
  layer; flowprox's first two convolutions start from N(0, 0.05^2) weights and its last layer has
  Glow's learned output scale ``exp(3 s)``; normflows uses PyTorch's default initialisation and
  no output scale.
* input: flowprox's flow sees ``x - 0.5``; normflows' sees ``x`` (its first ActNorm, initialised
  from data, absorbs the shift either way).

Data and density. Both models are trained on the same global batches (``StepBatchSampler`` with
the config's seed and batch size) and the same dequantisation noise (``step_generator(seed,
step)``, as ``pretrain_prior``'s loss): step ``s`` of either model sees the identical tensor
``x = (k + u) / 2^n_bits`` in ``[0, 1)``. That is exactly normflows' convention (its example
feeds ``ToTensor`` images through ``Scale(255/256)`` and ``Jitter(1/256)``, i.e. ``(k + u) / 256``,
and reports ``nll / (D ln 2) + 8``), so no change of variables is needed: the log-Jacobian
correction between the two input ranges is zero and both log-densities are of ``x`` itself.
Bits/dim are ``(-log p(x) + D ln 2^n_bits) / (D ln 2)`` for both (``flows.bits_per_dim``), the
training loss is their batch mean. ActNorm's data-dependent initialisation uses the same 256
training images and noise for both (``initialize_actnorm`` for flowprox; one no-grad
``log_prob`` on that tensor for normflows, whose ActNorm initialises itself on its first call).
Same optimiser for both: the config's optimiser and learning rate, with its warm-up and its
learning-rate schedule over the time budget (``TimeBudgetSchedule``) and gradient-norm clipping;
a step with a non-finite loss or gradient is skipped, as in
``flowprox.training.trainer``.

Timing. Both models train in one process, interleaved step by step: the next step always goes to
the model that has used less training time so far, until each has used ``--budget-minutes`` of
its own training time; every step (zero_grad, forward, loss, backward, clip, optimiser and
scheduler step, reading the loss) is timed with ``time.perf_counter`` (CUDA synchronised), and
building the batch is not timed. Interleaving spreads machine noise over both models alike.
Training throughput is images processed / time spent in that model's steps.

Evaluation. After training, test bits/dim of each model at the bin midpoints ``u = 1/2``
(deterministic) over the test split (``--test-images`` to cut it), in eval mode under no_grad,
through ``flowprox.training.pretrain.evaluate_bits_per_dim`` for both.

Floors (``--check`` exits with 1 when one fails): our test bits/dim <= normflows', and our
throughput >= 1.0x normflows'.

Usage::

    python bench/prior.py --data /work/shared/data [--config PRIOR.toml]
                          [--budget-minutes 5] [--test-images 0] [--device cpu]
                          [--markdown PATH] [--check]
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import platform
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor, nn

from flowprox.config import PriorExperiment, load_config, preset_path
from flowprox.data.datasets import ImageDataset, describe, load_splits
from flowprox.flows.dequantization import bits_per_dim, dequantize
from flowprox.models.prior import build_glow
from flowprox.training.pretrain import (
    evaluate_bits_per_dim,
    initialize_actnorm,
    make_optimizer,
)
from flowprox.training.trainer import StepBatchSampler, step_generator

try:
    import normflows as nf
except ImportError:  # pragma: no cover - depends on the environment
    nf = None

OURS = "flowprox"
THEIRS = "normflows"
FLOOR_THROUGHPUT_RATIO = 1.0
DEFAULT_CONFIG = preset_path("prior", "small")
LOG_2PI = math.log(2.0 * math.pi)
TRAIN_BPD_WINDOW = 100  # steps averaged for the "train bits/dim" column


# ------------------------------------------------------------------------------------ models


def build_normflows_glow(
    in_channels: int, levels: int, steps_per_level: int, hidden: int, image_size: int
) -> nn.Module:
    """normflows' multi-scale Glow as its Glow example builds it, with an unconditional base.

    normflows numbers levels from the coarsest: level ``i = 0`` works at ``H / 2^L`` with
    ``C 2^(L+1)`` channels, level ``i > 0`` at ``H / 2^(L-i)`` with ``C 2^(L+1-i)`` channels. Its
    ``x -> z`` direction (``log_prob``) runs from level ``L - 1`` down to 0: squeeze, the ``K``
    GlowBlocks (each ActNorm, 1x1 convolution, affine coupling in that order), then, below the
    top, ``Merge.inverse`` splits off the second half of the channels to the level's ``GlowBase``.
    """
    if nf is None:
        raise RuntimeError(
            "normflows is not installed; install the bench extra: pip install -e '.[bench]' "
            "(or pip install normflows)."
        )
    q0, merges, flows = [], [], []
    for i in range(levels):
        channels = in_channels * 2 ** (levels + 1 - i)
        with warnings.catch_warnings():  # Invertible1x1Conv calls the deprecated torch.lu
            warnings.filterwarnings("ignore", message=".*torch.lu is deprecated.*")
            level_flows = [
                nf.flows.GlowBlock(channels, hidden, split_mode="channel", scale=True)
                for _ in range(steps_per_level)
            ]
        flows.append([*level_flows, nf.flows.Squeeze()])
        if i > 0:
            merges.append(nf.flows.Merge())
            side = image_size // 2 ** (levels - i)
            latent_shape = (in_channels * 2 ** (levels - i), side, side)
        else:
            side = image_size // 2**levels
            latent_shape = (in_channels * 2 ** (levels + 1), side, side)
        q0.append(nf.distributions.GlowBase(latent_shape))
    return nf.MultiscaleFlow(q0, flows, merges, class_cond=False)


class NormflowsDensity(nn.Module):
    """``log_prob(x)`` of a normflows ``MultiscaleFlow`` on images ``x`` in [0, 1) (nats, (B,)).

    normflows models ``(k + u) / 256`` in [0, 1) directly, the same tensor flowprox models, so the
    log-density needs no change-of-variables correction.
    """

    def __init__(self, flow: nn.Module) -> None:
        super().__init__()
        self.flow = flow

    def log_prob(self, x: Tensor) -> Tensor:
        return self.flow.log_prob(x, None)

    def forward(self, x: Tensor) -> Tensor:
        return self.log_prob(x)


def flowprox_log_prob(glow: nn.Module) -> Callable[[Tensor], Tensor]:
    """The training-time log-density of ``pretrain_prior``'s loss."""

    def log_prob(x: Tensor) -> Tensor:
        z, logdet = glow(x)
        return -0.5 * (z.pow(2) + LOG_2PI).sum(dim=1) + logdet

    return log_prob


# ---------------------------------------------------------------------------------- training


@dataclass
class Contender:
    """One model under training, with its optimiser and its running totals."""

    name: str
    module: nn.Module
    log_prob: Callable[[Tensor], Tensor]
    optimizer: torch.optim.Optimizer
    schedule: TimeBudgetSchedule
    grad_clip: float
    step: int = 0
    seconds: float = 0.0
    images: int = 0
    bad_steps: int = 0
    losses: list[float] = field(default_factory=list)
    test_bpd: float = math.nan

    @property
    def parameters(self) -> int:
        return sum(p.numel() for p in self.module.parameters())

    @property
    def throughput(self) -> float:
        return self.images / self.seconds if self.seconds > 0 else math.nan

    @property
    def train_bpd(self) -> float:
        recent = self.losses[-TRAIN_BPD_WINDOW:]
        return sum(recent) / len(recent) if recent else math.nan

    def train_step(self, x: Tensor, n_bits: int, synchronize: Callable[[], None]) -> None:
        """One timed optimisation step on the dequantised batch ``x`` (the trainer's order)."""
        synchronize()
        start = time.perf_counter()
        loss = bits_per_dim(self.log_prob(x), x[0].numel(), n_bits).mean()
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(
            self.module.parameters(), self.grad_clip if self.grad_clip > 0 else math.inf
        )
        value = float(loss.detach())
        finite = math.isfinite(value) and bool(torch.isfinite(grad_norm))
        if finite:
            self.schedule.set_learning_rate(self.optimizer, self.step, self.seconds)
            self.optimizer.step()
        else:
            self.optimizer.zero_grad(set_to_none=True)
        synchronize()
        self.seconds += time.perf_counter() - start
        self.images += x.shape[0]
        self.step += 1
        if finite:
            self.losses.append(value)
        else:
            self.bad_steps += 1


@dataclass
class TimeBudgetSchedule:
    """The preset's learning-rate schedule over a wall-clock budget, the same for both models.

    Linear warm-up over ``warmup_steps`` steps (as ``pretrain_prior``); then the config's
    ``lr_schedule``: ``"constant"``, or ``"cosine"`` decay to ``final_fraction`` where progress
    is the share of the model's own training-time budget used after its warm-up (the step count
    a wall-clock budget allows is not known in advance).
    """

    base_lr: float
    warmup_steps: int
    schedule: str
    final_fraction: float
    budget_seconds: float
    warmup_end_seconds: float | None = None

    def factor(self, step: int, seconds: float) -> float:
        if step < self.warmup_steps:
            return (step + 1) / self.warmup_steps
        if self.warmup_end_seconds is None:
            self.warmup_end_seconds = seconds
        if self.schedule == "constant":
            return 1.0
        remaining = max(self.budget_seconds - self.warmup_end_seconds, 1e-9)
        progress = min(1.0, (seconds - self.warmup_end_seconds) / remaining)
        cosine = 0.5 * (1 + math.cos(math.pi * progress))
        return self.final_fraction + (1 - self.final_fraction) * cosine

    def set_learning_rate(
        self, optimizer: torch.optim.Optimizer, step: int, seconds: float
    ) -> None:
        for group in optimizer.param_groups:
            group["lr"] = self.base_lr * self.factor(step, seconds)


class BatchSource:
    """The dequantised global batch of step ``s``: ``StepBatchSampler`` images, step noise.

    A batch is built once and kept until every model still training has taken it, so the models
    get the identical tensor.
    """

    def __init__(
        self, dataset: ImageDataset, batch_size: int, seed: int, n_bits: int, device: torch.device
    ) -> None:
        self.dataset = dataset
        self.sampler = StepBatchSampler(len(dataset), batch_size, seed)
        self.batch_size = batch_size
        self.seed = seed
        self.n_bits = n_bits
        self.device = device
        self.image_shape = tuple(dataset[0].shape)
        self._cache: dict[int, tuple[Tensor, set[str]]] = {}

    def get(self, step: int, taker: str, takers: set[str]) -> Tensor:
        if step not in self._cache:
            indices = self.sampler.global_indices(step)
            images = self.dataset.tensor[indices].to(torch.float32).div_(255.0)
            noise = torch.rand(
                (self.batch_size, *self.image_shape), generator=step_generator(self.seed, step)
            )
            x = dequantize(images, self.n_bits, noise=noise).to(self.device)
            self._cache[step] = (x, set())
        x, taken = self._cache[step]
        taken.add(taker)
        if takers <= taken:
            del self._cache[step]
        return x


def train_interleaved(
    contenders: list[Contender],
    source: BatchSource,
    budget_seconds: float,
    n_bits: int,
    synchronize: Callable[[], None],
    report_every: float = 30.0,
) -> None:
    """Give the next step to whichever model has used less time, until all used the budget."""
    wall_start = last_report = time.perf_counter()
    while True:
        running = [c for c in contenders if c.seconds < budget_seconds]
        if not running:
            break
        model = min(running, key=lambda c: c.seconds)
        x = source.get(model.step, model.name, {c.name for c in running})
        model.module.train()
        model.train_step(x, n_bits, synchronize)
        now = time.perf_counter()
        if now - last_report >= report_every:
            last_report = now
            parts = ", ".join(
                f"{c.name} step {c.step} ({c.seconds:.0f} s, {c.train_bpd:.3f} bpd)"
                for c in contenders
            )
            print(f"  [{now - wall_start:5.0f} s] {parts}", flush=True)


# ---------------------------------------------------------------------------------- reporting


def _fmt(value: float, digits: int) -> str:
    return f"{value:.{digits}f}" if math.isfinite(value) else str(value)


def report(
    ours: Contender, theirs: Contender, header: list[str], test_images: int
) -> tuple[str, bool]:
    """The Markdown report and whether both floors hold."""
    lines = [*header, ""]
    lines.append(
        "| model | parameters | steps | images/s | train bits/dim "
        f"(last {TRAIN_BPD_WINDOW} steps) | test bits/dim ({test_images} images) |"
    )
    lines.append("|---|---:|---:|---:|---:|---:|")
    for c in (ours, theirs):
        bad = f" ({c.bad_steps} skipped)" if c.bad_steps else ""
        lines.append(
            f"| {c.name} | {c.parameters:,} | {c.step}{bad} | {_fmt(c.throughput, 1)} | "
            f"{_fmt(c.train_bpd, 4)} | {_fmt(c.test_bpd, 4)} |"
        )
    ratio = ours.throughput / theirs.throughput
    bpd_gap = ours.test_bpd - theirs.test_bpd
    throughput_ok = math.isfinite(ratio) and ratio >= FLOOR_THROUGHPUT_RATIO
    bpd_ok = math.isfinite(ours.test_bpd) and (
        not math.isfinite(theirs.test_bpd) or ours.test_bpd <= theirs.test_bpd
    )
    lines += [
        "",
        f"- throughput: {OURS} / {THEIRS} = {_fmt(ratio, 3)}x "
        f"(floor >= {FLOOR_THROUGHPUT_RATIO:.1f}x): {'PASS' if throughput_ok else 'FAIL'}",
        f"- test bits/dim: {OURS} - {THEIRS} = {bpd_gap:+.4f} "
        f"({OURS} / {THEIRS} = {_fmt(ours.test_bpd / theirs.test_bpd, 4)}; "
        f"floor: {OURS} <= {THEIRS}): {'PASS' if bpd_ok else 'FAIL'}",
    ]
    return "\n".join(lines) + "\n", throughput_ok and bpd_ok


# ---------------------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, help="data.path (e.g. /work/shared/data)")
    parser.add_argument("--config", type=Path, default=DEFAULT_CONFIG, help="prior config TOML")
    parser.add_argument(
        "--budget-minutes", type=float, default=5.0, help="training time per model (minutes)"
    )
    parser.add_argument(
        "--test-images", type=int, default=0, help="test images evaluated (0 = the whole split)"
    )
    parser.add_argument("--device", default=None, help="cpu or cuda (default: train.device)")
    parser.add_argument("--markdown", type=Path, default=None, help="also write the report here")
    parser.add_argument("--check", action="store_true", help="exit with 1 if a floor fails")
    args = parser.parse_args(argv)
    if args.budget_minutes <= 0:
        parser.error("--budget-minutes must be positive")
    if args.test_images < 0:
        parser.error("--test-images must be >= 0 (0 = all)")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    config = load_config(PriorExperiment, args.config)
    config = dataclasses.replace(config, data=dataclasses.replace(config.data, path=args.data))
    model_config, train_config = config.model, config.train
    if model_config.image_size != config.data.resolution:
        raise ValueError(
            f"model.image_size = {model_config.image_size} differs from data.resolution = "
            f"{config.data.resolution}; set both to the same size."
        )
    if model_config.additive:
        raise ValueError("the normflows Glow here has affine couplings; set model.additive=false.")
    if model_config.scale_floor:
        print(
            f"note: normflows' couplings have no scale floor; both Glows are built without one "
            f"(the preset's model.scale_floor = {model_config.scale_floor} is set aside)."
        )
        model_config = dataclasses.replace(model_config, scale_floor=0.0)
    device = torch.device(args.device or train_config.device)

    def synchronize() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    splits = load_splits(config.data)
    for split in ("train", "test"):
        if split not in splits:
            raise ValueError(f"{args.data} has no {split} split; the benchmark needs both.")
    train_set, test_set = splits["train"], splits["test"]
    n_bits, seed = train_config.n_bits, config.seed
    test_images = len(test_set) if args.test_images == 0 else min(args.test_images, len(test_set))

    # models: flowprox exactly as pretrain_prior builds it, normflows from the same global seed
    torch.manual_seed(seed)
    glow = build_glow(model_config).to(device)
    torch.manual_seed(seed)
    flow = NormflowsDensity(
        build_normflows_glow(
            model_config.in_channels,
            model_config.levels,
            model_config.steps_per_level,
            model_config.hidden,
            model_config.image_size,
        )
    ).to(device)

    # ActNorm data-dependent initialisation: same images, same noise
    init_sampler = StepBatchSampler(
        len(train_set), min(train_config.init_batch_size, len(train_set)), seed
    )
    init_images = torch.stack([train_set[i] for i in init_sampler.global_indices(0)]).to(device)
    initialize_actnorm(glow, init_images, n_bits, seed)
    init_noise = torch.rand(init_images.shape, generator=step_generator(seed, -(10**6)))
    flow.train()
    with torch.no_grad():
        flow.log_prob(dequantize(init_images, n_bits, noise=init_noise.to(device)))

    contenders = []
    for name, module, log_prob in (
        (OURS, glow, flowprox_log_prob(glow)),
        (THEIRS, flow, flow.log_prob),
    ):
        optimizer = make_optimizer(train_config.optimizer, module, train_config.lr)
        contenders.append(
            Contender(
                name,
                module,
                log_prob,
                optimizer,
                TimeBudgetSchedule(
                    train_config.lr,
                    max(train_config.warmup_steps, 1),
                    train_config.lr_schedule,
                    train_config.final_lr_fraction,
                    60.0 * args.budget_minutes,
                ),
                train_config.grad_clip,
            )
        )
    ours, theirs = contenders

    header = [
        f"# Glow pre-training: {OURS} vs {THEIRS} ({config.name}, {args.config.name})",
        "",
        f"- data: {describe(splits)} ({args.data})",
        f"- model: L = {model_config.levels} levels, K = {model_config.steps_per_level} steps "
        f"per level, hidden {model_config.hidden}, affine couplings, "
        f"{model_config.image_size}x{model_config.image_size}x{model_config.in_channels}",
        f"- training: batch {train_config.batch_size}, {train_config.optimizer} lr "
        f"{train_config.lr:g}, warm-up {train_config.warmup_steps}, grad clip "
        f"{train_config.grad_clip:g}, ActNorm init on {len(init_images)} images, "
        f"{n_bits}-bit data; {args.budget_minutes:g} min of training time per model, steps "
        "interleaved (next step to the model with less time used)",
        f"- machine: {platform.machine()} {platform.system()}, device {device}, "
        f"torch {torch.__version__} ({torch.get_num_threads()} threads), normflows "
        f"{getattr(nf, '__version__', '?')}, Python {platform.python_version()}",
    ]
    print(f"training {OURS} and {THEIRS} for {args.budget_minutes:g} min each ...", flush=True)

    source = BatchSource(train_set, train_config.batch_size, seed, n_bits, device)
    train_interleaved(contenders, source, 60.0 * args.budget_minutes, n_bits, synchronize)

    for c in contenders:
        c.module.eval()
        c.test_bpd = evaluate_bits_per_dim(
            c.module,  # type: ignore[arg-type]  # only log_prob is used
            test_set,
            n_bits,
            train_config.eval_batch_size,
            test_images,
            device,
        )

    text, ok = report(ours, theirs, header, test_images)
    print()
    print(text, end="", flush=True)
    if args.markdown is not None:
        args.markdown.parent.mkdir(parents=True, exist_ok=True)
        args.markdown.write_text(text)
    return 1 if args.check and not ok else 0


if __name__ == "__main__":
    sys.exit(main())
