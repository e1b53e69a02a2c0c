"""``flowprox reproduce``: the paper's whole pipeline, stage by stage, resumable.

Stages: pre-train the prior; for every task train each method (ResNet prox, U-Net prox, both
also started from their denoising run, GLOW prox, GLOW plug-and-play); evaluate every task in
the three settings (with the classical reference and latent optimisation); write
``results.md`` (Tables I-IV beside the paper's numbers), CSVs and figures. A finished stage
leaves ``stages/NAME.json`` and is skipped on a rerun; a killed training stage resumes from its
last checkpoint.
"""

from __future__ import annotations

import dataclasses
import json
import os
import platform
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from flowprox.config import PriorExperiment, load_config
from flowprox.config import preset_path as config_preset_path

TASKS = ("denoise", "inpaint", "deblur", "deblur-small-support")


@dataclass(frozen=True)
class Method:
    """One learned method of the tables."""

    key: str
    prox: str
    label: str
    from_denoiser: bool = False


METHODS = (
    Method("resnet", "resnet", "ResNet prox"),
    Method("resnet-denoiser", "resnet", "ResNet prox, pre-trained as denoiser", True),
    Method("unet", "unet", "U-Net prox"),
    Method("unet-denoiser", "unet", "U-Net prox, pre-trained as denoiser", True),
    Method("glow", "glow", "GLOW prox (proposed)"),
    Method("pnp-glow", "pnp-glow", "GLOW plug-and-play"),
)


@dataclass(frozen=True)
class ReproducePreset:
    """Budgets of one reproduction preset (training minutes 0 = the training preset's own)."""

    glow_minutes: float = 0.0
    pnp_minutes: float = 0.0
    cnn_minutes: float = 0.0
    flow_lr: float = 1e-5
    cnn_lr: float = 1e-5
    max_steps: int = 0
    eval_images: int = 0
    anime_images: int = 100
    anime_all: bool = True
    latent_steps: int = 50
    latent_val_images: int = 16
    small_support_kernel: int = 5
    figure_rows: int = 4
    # Initial step size of the flow proxes for denoising (0 = 1 / ||A||^2 = 1). With mu_1 = 1
    # the first flow sees the noisy image itself: with the small prior (5 bits, scale floor
    # 0.1) the untrained network is finite on 32 val images, but training skipped most steps
    # for NaN and stopped. At 0.2 (first fold's noise 0.04) 100 steps ran with none skipped.
    denoise_flow_mu_init: float = 0.0


REPRODUCE_PRESETS = {
    "tiny": ReproducePreset(
        flow_lr=1e-3,
        cnn_lr=3e-3,
        max_steps=10,
        eval_images=16,
        anime_images=8,
        anime_all=False,
        latent_steps=5,
        latent_val_images=4,
        small_support_kernel=3,
        figure_rows=2,
    ),
    "small": ReproducePreset(
        glow_minutes=2.5,
        pnp_minutes=1.5,
        cnn_minutes=1.5,
        flow_lr=1e-4,
        cnn_lr=1e-3,
        eval_images=200,
        anime_images=100,
        anime_all=True,
        small_support_kernel=3,
        denoise_flow_mu_init=0.2,
    ),
    "paper": ReproducePreset(),
}


def methods_for(task: str) -> list[Method]:
    """The methods trained for ``task`` (no denoiser variants for denoising itself; the extra
    small-support deblurring column has the three proxes of Table I)."""
    if task == "denoise":
        return [m for m in METHODS if not m.from_denoiser]
    if task == "deblur-small-support":
        return [m for m in METHODS if m.key in ("resnet", "unet", "glow")]
    return list(METHODS)


class Pipeline:
    """The stages of one reproduction in ``out``."""

    def __init__(
        self,
        preset: str,
        data: str | Path,
        out: str | Path,
        device: str = "cpu",
        tasks: tuple[str, ...] = TASKS,
        overrides: tuple[str, ...] = (),
    ) -> None:
        if preset not in REPRODUCE_PRESETS:
            raise ValueError(f"unknown preset {preset!r}; choose one of {list(REPRODUCE_PRESETS)}.")
        unknown = [t for t in tasks if t not in TASKS]
        if unknown:
            raise ValueError(f"unknown task(s) {unknown}; choose from {TASKS}.")
        self.preset = preset
        self.budget = REPRODUCE_PRESETS[preset]
        self.data = str(data)
        self.out = Path(out)
        self.device = device
        self.tasks = tasks
        self.overrides = overrides
        self.stages: list[tuple[str, Callable[[], dict[str, Any]]]] = []
        self._plan()

    # ------------------------------------------------------------------ plan
    @property
    def prior_checkpoint(self) -> Path:
        return self.out / "prior" / "checkpoints" / "best.pt"

    def run_dir(self, task: str, method: str) -> Path:
        return self.out / "train" / task / method

    def _plan(self) -> None:
        self.stages.append(("prior", self._pretrain))
        for task in self.tasks:
            for method in methods_for(task):
                name = f"train-{task}-{method.key}"
                self.stages.append((name, lambda t=task, m=method: self._train(t, m)))
        for task in self.tasks:
            self.stages.append((f"evaluate-{task}", lambda t=task: self._evaluate(t)))
        self.stages.append(("report", self._report))

    # ------------------------------------------------------------------ run
    def run(self) -> Path:
        """Run every stage not yet done; returns the path of ``results.md``."""
        # Under torchrun every rank runs the training stages together (DDP); rank 0 alone
        # evaluates, reports and writes the stage marks (evaluation comes after all training).
        rank = int(os.environ.get("RANK", "0"))
        marks = self.out / "stages"
        marks.mkdir(parents=True, exist_ok=True)
        bar = tqdm(self.stages, desc=f"reproduce ({self.preset})", unit="stage", position=0,
                   disable=rank != 0)  # fmt: skip
        for name, stage in bar:
            mark = marks / f"{name}.json"
            if mark.is_file() or (rank != 0 and not name.startswith(("prior", "train-"))):
                continue
            bar.set_postfix_str(name)
            tqdm.write(f"\n=== stage {name} ===")
            started = time.monotonic()
            info = stage() or {}
            info["seconds"] = round(time.monotonic() - started, 1)
            if rank == 0:
                mark.write_text(json.dumps(info, indent=2) + "\n")
        bar.close()
        return self.out / "results.md"

    def _pretrain(self) -> dict[str, Any]:
        from flowprox.train import pretrain_prior

        out = self.out / "prior"
        overrides = [
            f"data.path={json.dumps(self.data)}",
            f"train.device={json.dumps(self.device)}",
        ]
        config = load_config(PriorExperiment, config_preset_path("prior", self.preset), overrides)
        resume = (out / "checkpoints" / "last.pt").is_file()
        pretrain_prior(config, out, resume=resume, argv=["reproduce", "prior"])
        return {"checkpoint": str(self.prior_checkpoint)}

    def train_config(self, task: str, method: Method) -> Any:
        """The experiment of ``method`` on ``task`` with this preset's budgets."""
        from flowprox.cli_tasks import unrolled_config
        from flowprox.tasks import task_preset

        budget = self.budget
        kind = "deblur" if task == "deblur-small-support" else task
        overrides = [f"train.device={json.dumps(self.device)}"]
        if method.prox in ("glow", "pnp-glow"):
            overrides.append(f"train.lr={budget.flow_lr}")
            minutes = budget.glow_minutes if method.prox == "glow" else budget.pnp_minutes
        else:
            overrides.append(f"train.lr={budget.cnn_lr}")
            minutes = budget.cnn_minutes
        if minutes > 0:
            overrides.append(f"train.time_limit_minutes={minutes}")
        flow_prox = method.prox in ("glow", "pnp-glow")
        if kind == "denoise" and flow_prox and budget.denoise_flow_mu_init > 0:
            overrides.append(f"model.mu_init={budget.denoise_flow_mu_init}")
        if budget.max_steps > 0:
            overrides.append(f"train.max_steps={budget.max_steps}")
        init_from = None
        if method.from_denoiser:
            base = method.key.removesuffix("-denoiser")
            init_from = self.run_dir("denoise", base) / "checkpoints" / "best.pt"
        config = unrolled_config(
            kind, method.prox, self.preset, data=self.data, prior=self.prior_checkpoint,
            init_from=init_from, overrides=[*overrides, *self.overrides],
        )  # fmt: skip
        if task == "deblur-small-support":
            task_config = dataclasses.replace(
                task_preset(self.preset, "deblur"), kernel_size=budget.small_support_kernel
            )
            config = dataclasses.replace(config, task=task_config)
        return dataclasses.replace(config, name=f"{method.key}-{task}")

    def _train(self, task: str, method: Method) -> dict[str, Any]:
        from flowprox.train_unrolled import train_unrolled

        if method.from_denoiser and "denoise" not in self.tasks:
            raise ValueError(f"{method.label} needs the denoising task in the reproduction.")
        run = self.run_dir(task, method.key)
        base = method.key.removesuffix("-denoiser")
        if method.from_denoiser and not self.trained("denoise", base):
            return {"run": str(run), "failed": "its denoising run failed"}
        resume = (run / "checkpoints" / "last.pt").is_file()
        try:
            train_unrolled(self.train_config(task, method), run, resume=resume,
                           argv=["reproduce", task, method.key])  # fmt: skip
        except RuntimeError as error:  # diverged: recorded, and the reproduction goes on
            tqdm.write(f"training {method.key} on {task} failed: {error}")
            return {"run": str(run), "failed": str(error)}
        return {"run": str(run)}

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

    def _evaluate(self, task: str) -> dict[str, Any]:
        from flowprox.reproduce_evaluation import evaluate_task

        return evaluate_task(self, task)

    def _report(self) -> dict[str, Any]:
        from flowprox.report import write_report

        path = write_report(self)
        return {"results": str(path)}


def reproduce(
    preset: str,
    data: str | Path,
    out: str | Path,
    device: str = "cpu",
    tasks: tuple[str, ...] = TASKS,
    overrides: tuple[str, ...] = (),
) -> Path:
    """Run (or resume) the whole reproduction; returns the path of ``results.md``."""
    started = time.monotonic()
    pipeline = Pipeline(preset, data, out, device, tasks, overrides)
    path = pipeline.run()
    minutes = (time.monotonic() - started) / 60
    print(f"reproduction ({preset}) finished in {minutes:.1f} min this call; see {path}")
    return path


def machine_description() -> str:
    """CPU/GPU, core count and versions, for the report."""
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return (
        f"{platform.machine()}, {os.cpu_count()} CPU cores, {gpu}; Python "
        f"{platform.python_version()}, torch {torch.__version__}; {date.today().isoformat()}"
    )
