"""Where a reproduction keeps its stages, and the training config of each of its runs.

``Reproduction`` is what the evaluation and report stages read: the preset, the data, the
tasks, the run directories and the stage marks. ``flowprox.experiments.pipeline`` runs it.
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

from flowprox.config import (
    PriorExperiment,
    UnrolledExperiment,
    apply_overrides,
    config_from_dict,
    config_to_dict,
    load_config,
    preset_path,
)
from flowprox.evaluation.evaluate import anime_path
from flowprox.experiments.plan import ALL_TASKS, REPRODUCE_PRESETS, TASKS, Method
from flowprox.physics.tasks import task_preset
from flowprox.training.configs import unrolled_config


class Reproduction:
    """The stages of one reproduction in ``out``: its settings and where each result lies."""

    def __init__(
        self,
        preset: str,
        data: str | Path,
        out: str | Path,
        device: str = "cpu",
        tasks: tuple[str, ...] = TASKS,
        overrides: tuple[str, ...] = (),
        ood_data: str | Path | None = None,
        strict: bool = False,
        budget_scale: float = 1.0,
    ) -> None:
        if preset not in REPRODUCE_PRESETS:
            raise ValueError(f"unknown preset {preset!r}; choose one of {list(REPRODUCE_PRESETS)}.")
        unknown = [t for t in tasks if t not in ALL_TASKS]
        if unknown:
            raise ValueError(f"unknown task(s) {unknown}; choose from {ALL_TASKS}.")
        self.preset = preset
        self.settings = REPRODUCE_PRESETS[preset]
        self.data = str(data)
        self.out = Path(out)
        self.device = device
        self.tasks = tasks
        self.overrides = overrides
        self.ood_data = str(ood_data) if ood_data else None
        self.strict = strict
        if not (math.isfinite(budget_scale) and budget_scale > 0):
            raise ValueError(
                f"--budget-scale must be a positive number, got {budget_scale}; e.g. 2 trains "
                "every run for twice the preset's steps."
            )
        self.budget_scale = budget_scale

    @property
    def prior_run(self) -> Path:
        return self.out / "prior"

    @property
    def prior_checkpoint(self) -> Path:
        return self.prior_run / "checkpoints" / "best.pt"

    @property
    def ood_path(self) -> Path:
        """The out-of-distribution images: ``--ood-data``, or ``anime64.npz`` beside the data."""
        return Path(self.ood_data) if self.ood_data else anime_path(self.data)

    def prior_config(self) -> PriorExperiment:
        """The prior's pre-training config: the preset's, on this data and device."""
        overrides = [
            f"data.path={json.dumps(self.data)}",
            f"train.device={json.dumps(self.device)}",
            *(["data.strict=true"] if self.strict else []),
        ]
        return load_config(PriorExperiment, preset_path("prior", self.preset), overrides)

    def run_dir(self, task: str, method: str) -> Path:
        return self.out / "train" / task / method

    def train_config(self, task: str, method: Method) -> UnrolledExperiment:
        """The experiment of ``method`` on ``task`` with this preset's budgets (their steps and
        safety cap times ``budget_scale``) and settings, then the command line's ``--set``
        overrides."""
        budget, settings = self.settings.training, self.settings.tasks
        kind = "deblur" if task == "deblur-small-support" else task
        init_from = None
        if method.from_denoiser:
            base = method.key.removesuffix("-denoiser")
            init_from = self.run_dir("denoise", base) / "checkpoints" / "best.pt"
        config = unrolled_config(
            kind, method.prox.value, self.preset, data=self.data, prior=self.prior_checkpoint,
            init_from=init_from, device=self.device,
            overrides=["data.strict=true"] if self.strict else [],
        )  # fmt: skip
        scale = self.budget_scale
        train = dataclasses.replace(
            config.train,
            lr=budget.lr(method.prox),
            time_limit_minutes=budget.safety_minutes * scale,
            max_steps=max(1, round(scale * (budget.steps(method.prox) or config.train.max_steps))),
            stop_when_flat=budget.stop_when_flat,
            flat_min_steps=round(scale * budget.flat_min_steps),
        )
        if budget.patience_steps > 0:
            patience = max(1, budget.patience_steps // train.eval_every)
            train = dataclasses.replace(train, early_stopping_patience=patience)
        task_config = config.task
        if task == "deblur-small-support":
            task_config = dataclasses.replace(
                task_preset(self.preset, "deblur"), kernel_size=settings.small_support_kernel
            )
        config = dataclasses.replace(config, train=train, task=task_config)
        if self.overrides:
            values = apply_overrides(config_to_dict(config), list(self.overrides))
            config = config_from_dict(UnrolledExperiment, values)
        return dataclasses.replace(config, name=f"{method.key}-{task}")

    def trained(self, task: str, key: str) -> bool:
        """Whether the run of method ``key`` on ``task`` left a best checkpoint."""
        return (self.run_dir(task, key) / "checkpoints" / "best.pt").is_file()

    def failures(self) -> dict[str, str]:
        """Failed training stages and why, from the stage marks."""
        found = {}
        for mark in sorted((self.out / "stages").glob("train-*.json")):
            info = json.loads(mark.read_text())
            if "failed" in info:
                found[mark.stem.removeprefix("train-")] = info["failed"]
        return found
