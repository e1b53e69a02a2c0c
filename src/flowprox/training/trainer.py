"""One training loop for every model in flowprox: resumable, DDP-aware, guarded against NaN.

The loop is plain (nanoGPT's shape): draw the step's batch, compute the loss, backward, clip,
step. What differs between pre-training a prior and training an unrolled network is passed in:
``loss_fn(model, batch, step)`` and ``evaluate(model) -> {"score": ..., ...}`` (lower is better).

Determinism: the batches of step ``s`` are fixed by ``(seed, s)`` (``StepBatchSampler``), and
any per-step randomness should come from ``step_generator(seed, s)``, so a resumed run continues
with exactly the batches and noise the uninterrupted run would have used; on CPU the final
weights are bit-identical.

Bad steps: a step whose loss or gradient norm is NaN/Inf is skipped (no update) and counted; after
``max_bad_steps`` in a row the last good state (model and optimizer, kept in memory at every
checkpoint) is restored; after ``max_restores`` restores the run stops with an error.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset, Sampler
from tqdm import tqdm

from flowprox.config import DataConfig, PriorExperiment, UnrolledExperiment
from flowprox.data.datasets import ImageDataset, describe, load_splits
from flowprox.training.distributed import (
    DistributedContext,
    all_reduce_max,
    broadcast_object,
    replica_divergence,
    unwrap_model,
)
from flowprox.training.plateau import flattened
from flowprox.training.resident import fits_on_device, resident_batches
from flowprox.training.rundir import RunDirectory
from flowprox.utils.checkpoint import (
    capture_rng_state,
    check_same_config,
    load_checkpoint,
    restore_rng_state,
    save_checkpoint,
)
from flowprox.utils.validation import NonFiniteError


@dataclass(frozen=True)
class LoopSettings:
    """How long to train and how often to evaluate, checkpoint and log."""

    max_steps: int
    time_limit_minutes: float = 0.0
    eval_every: int = 500
    checkpoint_every: int = 200
    log_every: int = 20
    grad_clip: float = 0.0
    max_bad_steps: int = 10
    max_restores: int = 3
    early_stopping_patience: int = 0
    stop_when_flat: bool = False
    flat_min_steps: int = 0
    flat_metric: str = "val_psnr"


def loop_settings(train_config: Any) -> LoopSettings:
    """The ``LoopSettings`` of a training config (its fields of the same names)."""
    names = [f.name for f in dataclasses.fields(LoopSettings)]
    return LoopSettings(**{n: getattr(train_config, n) for n in names if hasattr(train_config, n)})


def step_generator(seed: int, step: int) -> torch.Generator:
    """A CPU generator whose state depends only on ``(seed, step)``."""
    return torch.Generator().manual_seed((seed * 1_000_003 + step) % (2**63))


class StepBatchSampler(Sampler[list[int]]):
    """Endless batches of indices; step ``s`` uses a fixed slice of epoch ``s // steps_per_epoch``.

    Each epoch is a permutation drawn from ``(seed, epoch)``; the global batch of a step is split
    across ranks as ``global[rank::world_size]``, so ``world_size`` processes with batch ``b`` see
    exactly the images of one process with batch ``b * world_size``. Incomplete batches are dropped.
    """

    def __init__(
        self,
        num_items: int,
        global_batch_size: int,
        seed: int,
        start_step: int = 0,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        if global_batch_size > num_items:
            raise ValueError(
                f"batch size {global_batch_size} exceeds the {num_items} training images; "
                "lower train.batch_size or use more images."
            )
        self.num_items = num_items
        self.global_batch_size = global_batch_size
        self.steps_per_epoch = num_items // global_batch_size
        self.seed = seed
        self.start_step = start_step
        self.rank = rank
        self.world_size = world_size

    def global_indices(self, step: int) -> Tensor:
        """The images of step ``step`` over all ranks."""
        epoch, position = divmod(step, self.steps_per_epoch)
        order = torch.randperm(self.num_items, generator=step_generator(self.seed, -1 - epoch))
        start = position * self.global_batch_size
        return order[start : start + self.global_batch_size]

    def __iter__(self) -> Iterator[list[int]]:
        step = self.start_step
        while True:
            yield self.global_indices(step)[self.rank :: self.world_size].tolist()
            step += 1

    def __len__(self) -> int:  # an epoch's worth, for information only
        return self.steps_per_epoch


def batches(
    dataset: Dataset,
    sampler: StepBatchSampler,
    num_workers: int,
    device: torch.device,
) -> Iterator[Tensor]:
    """Batches from ``sampler`` moved to ``device``: gathered on the GPU from the images held
    there when they fit (``training.resident``), else through a ``DataLoader`` with workers
    (pinned memory and non-blocking copies on CUDA)."""
    if isinstance(dataset, ImageDataset) and fits_on_device(dataset.tensor.nbytes, device):
        yield from resident_batches(dataset.tensor.to(device), sampler)
        return
    loader = DataLoader(
        dataset,
        batch_sampler=sampler,
        num_workers=num_workers,
        pin_memory=device.type == "cuda",
        persistent_workers=num_workers > 0,
    )
    for batch in loader:
        yield batch.to(device, non_blocking=True)


def training_batches(
    dataset: Dataset,
    config: PriorExperiment | UnrolledExperiment,
    start_step: int,
    context: DistributedContext,
) -> Iterator[Tensor]:
    """This rank's share of the global batches (``config.train.batch_size``, drawn by
    ``config.seed``) of steps ``start_step, start_step + 1, ...``."""
    sampler = StepBatchSampler(
        len(dataset),  # type: ignore[arg-type]
        config.train.batch_size,
        config.seed,
        start_step=start_step,
        rank=context.rank,
        world_size=context.world_size,
    )
    return batches(dataset, sampler, config.data.num_workers, context.device)


class TrainingDivergedError(RuntimeError, ValueError):
    """Training gave up on non-finite losses, or never reached a finite validation score.

    A RuntimeError (``flowprox reproduce`` records such a run as failed and goes on) and a
    ValueError (the command line prints its message and exits with code 2): the fix is a
    setting (a lower learning rate, more warm-up, gradient clipping).
    """


def train_and_val_splits(
    data: DataConfig, context: DistributedContext, purpose: str
) -> tuple[ImageDataset, ImageDataset]:
    """The training and validation splits of ``data``, both required for ``purpose``."""
    splits = load_splits(data)
    if "train" not in splits or "val" not in splits:
        raise ValueError(
            f"{data.path} has no train/val split; {purpose} needs both "
            "(an .npz with train and val arrays, or an image folder)."
        )
    if context.is_main:
        print(f"data: {describe(splits)}")
    return splits["train"], splits["val"]


LossFn = Callable[[nn.Module, Tensor, int], Tensor]
EvaluateFn = Callable[[nn.Module], dict[str, float]]


class Trainer:
    """Runs ``LoopSettings.max_steps`` optimisation steps with checkpoints, logs and resume.

    Args:
        model: the model to train, possibly wrapped in DDP (checkpoints hold the inner module).
        optimizer: its optimizer.
        scheduler: a learning-rate scheduler stepped once per step (or None).
        settings: loop settings.
        run_dir: where logs and checkpoints go.
        context: the distributed context (rank 0 writes).
        kind: the checkpoint kind (``"prior"``, ``"unrolled"``).
        config: the resolved experiment config (plain nested dict) stored in checkpoints; on
            resume the checkpoint's config must equal it except for ``resumable_keys``.
        metric_fields: extra metrics columns returned by ``evaluate``.
    """

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        scheduler: Any,
        settings: LoopSettings,
        run_dir: RunDirectory,
        context: DistributedContext,
        kind: str,
        config: dict[str, Any],
        metric_fields: tuple[str, ...] = (),
    ) -> None:
        self.model = model
        self.optimizer = optimizer
        self.scheduler = scheduler
        self.settings = settings
        self.run_dir = run_dir
        self.context = context
        self.kind = kind
        self.config = config
        self.metric_fields = metric_fields
        self.step = 0
        self.best_score = math.inf
        self.evaluations_without_improvement = 0
        self.curve: list[tuple[int, float]] = []  # (step, flat_metric) of every evaluation
        self.elapsed_seconds = 0.0
        self.bad_steps_in_a_row = 0
        self.last_grad_norm = 0.0  # the last step's gradient norm before clipping
        self.bad_steps_total = 0
        self.restores = 0
        self._last_good: dict[str, Any] | None = None

    # ------------------------------------------------------------------ state
    def state(self) -> dict[str, Any]:
        """Everything needed to continue exactly where the run is."""
        return {
            "kind": self.kind,
            "config": self.config,
            "model": unwrap_model(self.model).state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict() if self.scheduler is not None else None,
            "step": self.step,
            "best_score": self.best_score,
            "evaluations_without_improvement": self.evaluations_without_improvement,
            "curve": list(self.curve),
            "elapsed_seconds": self.elapsed_seconds,
            "bad_steps_total": self.bad_steps_total,
            "restores": self.restores,
            "rng": capture_rng_state(),
        }

    def resume(
        self, resumable_keys: tuple[str, ...] = (), defaults: dict[str, Any] | None = None
    ) -> None:
        """Load ``last.pt`` of the run directory, checking it belongs to the same experiment
        (a setting the checkpoint predates matches at its value in ``defaults``)."""
        payload = load_checkpoint(self.run_dir.last_checkpoint, kind=self.kind)
        saved = _without(payload["config"], resumable_keys)
        check_same_config(
            saved,
            _without(self.config, resumable_keys),
            "experiment",
            self.run_dir.last_checkpoint,
            defaults=defaults,
        )
        unwrap_model(self.model).load_state_dict(payload["model"])
        self.optimizer.load_state_dict(payload["optimizer"])
        if self.scheduler is not None and payload["scheduler"] is not None:
            self.scheduler.load_state_dict(payload["scheduler"])
        self.step = payload["step"]
        self.best_score = payload["best_score"]
        self.evaluations_without_improvement = payload["evaluations_without_improvement"]
        self.curve = [tuple(point) for point in payload.get("curve", [])]
        self.elapsed_seconds = payload["elapsed_seconds"]
        self.bad_steps_total = payload["bad_steps_total"]
        self.restores = payload["restores"]
        restore_rng_state(payload["rng"])
        self._remember_good_state()

    def _remember_good_state(self) -> None:
        self._last_good = {
            "model": copy.deepcopy(unwrap_model(self.model).state_dict()),
            "optimizer": copy.deepcopy(self.optimizer.state_dict()),
        }

    def _restore_good_state(self) -> None:
        self.restores += 1
        if self.restores > self.settings.max_restores or self._last_good is None:
            raise TrainingDivergedError(
                f"training diverged: {self.bad_steps_total} steps had NaN/Inf losses or gradients "
                f"and {self.restores - 1} restores of the last good state did not help; lower "
                "the learning rate, raise the warm-up or tighten gradient clipping, then resume."
            )
        unwrap_model(self.model).load_state_dict(self._last_good["model"])
        self.optimizer.load_state_dict(self._last_good["optimizer"])
        self.optimizer.zero_grad(set_to_none=True)
        self.bad_steps_in_a_row = 0

    def _save(self, best: bool = False) -> None:
        if self.context.is_main:
            state = self.state()
            save_checkpoint(self.run_dir.last_checkpoint, state)
            if best:
                save_checkpoint(self.run_dir.best_checkpoint, state)
        self._remember_good_state()

    # ------------------------------------------------------------------ loop
    def fit(self, batch_iterator: Iterator[Tensor], loss_fn: LossFn, evaluate: EvaluateFn) -> None:
        """Train from ``self.step`` to ``max_steps`` (or the time limit, or early stopping)."""
        if self._last_good is None:
            self._remember_good_state()
        self._start_metrics()
        progress = self._progress_bar()
        running = _RunningMean()
        started = time.monotonic() - self.elapsed_seconds
        stop_reason = "max_steps"
        self.model.train()
        while self.step < self.settings.max_steps:
            loss = self._optimization_step(next(batch_iterator), loss_fn)
            self.step += 1
            progress.update(1)
            if loss is None:  # skipped: no update, no log, no evaluation
                continue
            running.add(float(loss.detach()), self.last_grad_norm)
            self.elapsed_seconds = time.monotonic() - started
            self._log_train_loss(running, progress)
            stop = self._evaluate_or_checkpoint(evaluate)
            if stop is not None:
                stop_reason = stop
                break
        progress.close()
        if not math.isfinite(self.best_score):
            raise TrainingDivergedError(
                f"training diverged: no evaluation in {self.step} steps gave a finite validation "
                f"score ({self.bad_steps_total} steps had NaN/Inf losses or gradients), so there "
                "is no best checkpoint; lower the learning rate, raise the warm-up or tighten "
                "gradient clipping."
            )
        self._report_stop(stop_reason)
        self.run_dir.close()

    def _start_metrics(self) -> None:
        """Open ``metrics.csv`` (on resume, keep the rows up to the checkpoint's step)."""
        fields = (
            "train_loss",
            *self.metric_fields,
            "lr",
            "elapsed_s",
            "replica_divergence",
            "grad_norm",
        )
        self.run_dir.start_metrics(fields, resume_step=self.step if self.step > 0 else None)

    def _progress_bar(self) -> tqdm:
        """A progress bar over the steps, shown on rank 0."""
        return tqdm(
            total=self.settings.max_steps,
            initial=self.step,
            desc=self.kind,
            disable=not self.context.is_main,
            dynamic_ncols=True,
        )

    def _optimization_step(self, batch: Tensor, loss_fn: LossFn) -> Tensor | None:
        """One update from ``batch``: its loss, or None when a rank's step was not finite.

        A step that is not finite on any rank is skipped on every rank (and counted); too
        many in a row restore the last good state.
        """
        self.optimizer.zero_grad(set_to_none=True)
        loss = self._finite_loss_and_gradients(batch, loss_fn)
        if all_reduce_max(float(loss is None), self.context) > 0:
            self._skip_bad_step()
            return None
        self.bad_steps_in_a_row = 0
        self.optimizer.step()
        if self.scheduler is not None:
            self.scheduler.step()
        return loss

    def _finite_loss_and_gradients(self, batch: Tensor, loss_fn: LossFn) -> Tensor | None:
        """The loss of ``batch`` after backward and clipping; None if it or the gradients are
        NaN/Inf (or the forward pass raised ``NonFiniteError``)."""
        try:
            loss = loss_fn(self.model, batch, self.step)
        except NonFiniteError:  # the forward pass itself produced NaN/Inf
            return None
        loss.backward()
        grad_clip = self.settings.grad_clip
        grad_norm = torch.nn.utils.clip_grad_norm_(  # foreach: one kernel per op, not per tensor
            self.model.parameters(), grad_clip if grad_clip > 0 else math.inf, foreach=True
        )
        finite = torch.isfinite(loss) and torch.isfinite(grad_norm)
        self.last_grad_norm = float(grad_norm)
        return loss if finite else None

    def _skip_bad_step(self) -> None:
        """Count a skipped step, drop its gradients, and restore the last good state if due."""
        self.bad_steps_in_a_row += 1
        self.bad_steps_total += 1
        self.optimizer.zero_grad(set_to_none=True)
        if self.context.is_main:
            tqdm.write(
                f"step {self.step}: non-finite forward pass, loss or gradient, step "
                f"skipped ({self.bad_steps_in_a_row} in a row, "
                f"{self.bad_steps_total} in all)"
            )
        if self.bad_steps_in_a_row >= self.settings.max_bad_steps:
            self._restore_good_state()

    def _log_train_loss(self, running: _RunningMean, progress: tqdm) -> None:
        """Every ``log_every`` steps: the mean training loss since the last log."""
        if self.step % self.settings.log_every == 0 and running.count:
            mean_loss = running.mean()
            progress.set_postfix(loss=f"{mean_loss:.4f}")
            row = self._row(train_loss=mean_loss, grad_norm=running.largest_grad_norm)
            self.run_dir.log(self.step, row)
            running.reset()

    def _evaluate_or_checkpoint(self, evaluate: EvaluateFn) -> str | None:
        """Evaluate or checkpoint when due; the reason to stop now, or None to go on."""
        settings = self.settings
        out_of_time = self._out_of_time()
        last_step = self.step >= settings.max_steps or out_of_time
        if self.step % settings.eval_every == 0 or last_step:
            stop = self._evaluate_and_checkpoint(evaluate)
            if stop is not None:
                return stop
        elif self.step % settings.checkpoint_every == 0:
            self._save()
        return "time limit" if out_of_time else None

    def _out_of_time(self) -> bool:
        """Whether the time limit has passed (rank 0 decides for every rank)."""
        limit = self.settings.time_limit_minutes
        out_of_time = limit > 0 and self.elapsed_seconds > 60 * limit
        return bool(broadcast_object(out_of_time, self.context))

    def _report_stop(self, stop_reason: str) -> None:
        """Say on rank 0 where and why the run stopped, and write it to ``summary.json``."""
        self.run_dir.write_summary(
            {
                "steps": self.step,
                "stop_reason": stop_reason,
                "bad_steps": self.bad_steps_total,
                "best_score": self.best_score,
                "elapsed_s": round(self.elapsed_seconds, 2),
                "max_steps": self.settings.max_steps,
                "time_limit_minutes": self.settings.time_limit_minutes,
            }
        )
        if self.context.is_main:
            tqdm.write(
                f"{self.kind}: stopped at step {self.step} ({stop_reason}) after "
                f"{self.elapsed_seconds / 60:.1f} min; best validation score {self.best_score:.4f}"
                + (f"; {self.bad_steps_total} bad steps skipped" if self.bad_steps_total else "")
            )

    def _row(self, **values: float) -> dict[str, float]:
        lr = self.optimizer.param_groups[0]["lr"]
        return {"lr": lr, "elapsed_s": round(self.elapsed_seconds, 2), **values}

    def _evaluate_and_checkpoint(self, evaluate: EvaluateFn) -> str | None:
        """Evaluate on rank 0, checkpoint, and say why the run stops now (early stopping, or
        a flattened learning curve), or None to go on."""
        metrics: dict[str, float] = {}
        if self.context.is_main:
            self.model.eval()
            with torch.inference_mode():
                metrics = evaluate(unwrap_model(self.model))
            self.model.train()
        metrics = broadcast_object(metrics, self.context)  # type: ignore[assignment]
        divergence = replica_divergence(unwrap_model(self.model), self.context)
        if divergence > 0:
            raise RuntimeError(
                f"DDP replicas diverged (checksum difference {divergence:.3e}) at step "
                f"{self.step}; this is a bug: please report it with the run directory."
            )
        score = metrics["score"]
        improved = score < self.best_score
        if improved:
            self.best_score = score
            self.evaluations_without_improvement = 0
        else:
            self.evaluations_without_improvement += 1
        self.run_dir.log(
            self.step,
            self._row(
                **{k: v for k, v in metrics.items() if k != "score"},
                replica_divergence=divergence,
            ),
        )
        if self.context.is_main:
            shown = ", ".join(f"{k} {v:.4f}" for k, v in metrics.items() if k != "score")
            tqdm.write(f"step {self.step}: {shown}" + (" (best)" if improved else ""))
        value = metrics.get(self.settings.flat_metric)
        if value is not None and math.isfinite(value):
            self.curve.append((self.step, float(value)))
        self._save(best=improved)
        patience = self.settings.early_stopping_patience
        if patience > 0 and self.evaluations_without_improvement >= patience:
            return "early stopping"
        return "flattened" if self._flattened() else None

    def _flattened(self) -> bool:
        """Whether ``stop_when_flat`` is on, ``flat_min_steps`` are done, and the best
        ``flat_metric`` gained less than ``FLAT_GAIN_DB`` over the last ``FLAT_SHARE`` of steps."""
        settings = self.settings
        if not settings.stop_when_flat or self.step < settings.flat_min_steps:
            return False
        return bool(flattened(self.curve))


class _RunningMean:
    """The mean of the training losses since the last log, and the largest gradient norm
    (before clipping) among their steps."""

    def __init__(self) -> None:
        self.total = 0.0
        self.count = 0
        self.largest_grad_norm = 0.0

    def add(self, value: float, grad_norm: float = 0.0) -> None:
        self.total += value
        self.count += 1
        self.largest_grad_norm = max(self.largest_grad_norm, grad_norm)

    def mean(self) -> float:
        return self.total / self.count

    def reset(self) -> None:
        self.total, self.count, self.largest_grad_norm = 0.0, 0, 0.0


def _without(config: dict[str, Any], dotted_keys: tuple[str, ...]) -> dict[str, Any]:
    """``config`` without the ``section.key`` entries that may change on resume."""
    result = copy.deepcopy(config)
    for dotted in dotted_keys:
        *sections, key = dotted.split(".")
        table = result
        for section in sections:
            table = table.get(section, {})
        table.pop(key, None)
    return result
