"""The plan of ``flowprox reproduce``: its tasks, its methods, and the budgets of each preset.

Budgets (training steps or minutes, learning rates, evaluation sizes) are kept apart from the
per-task model settings a preset changes (a kernel support, a step size to start from).
"""

from __future__ import annotations

import os
import platform
from dataclasses import dataclass, field
from datetime import date

import torch

from flowprox.config import ProxKind

#: the paper's tasks (Tables I-IV and the small-support deblurring column): the default
PAPER_TASKS = ("denoise", "inpaint", "deblur", "deblur-small-support")
#: the forward models beyond the paper, with their own table
BEYOND_TASKS = ("super-resolution", "compressed-sensing", "mri")
TASKS = PAPER_TASKS
ALL_TASKS = PAPER_TASKS + BEYOND_TASKS
#: names ``--tasks`` accepts for groups of tasks
TASK_GROUPS = {"paper": PAPER_TASKS, "beyond": BEYOND_TASKS, "all": ALL_TASKS}


@dataclass(frozen=True)
class Method:
    """One learned method of the tables."""

    key: str
    prox: ProxKind
    label: str
    from_denoiser: bool = False


METHODS = (
    Method("resnet", ProxKind.RESNET, "ResNet prox"),
    Method("resnet-denoiser", ProxKind.RESNET, "ResNet prox, pre-trained as denoiser", True),
    Method("unet", ProxKind.UNET, "U-Net prox"),
    Method("unet-denoiser", ProxKind.UNET, "U-Net prox, pre-trained as denoiser", True),
    Method("glow", ProxKind.GLOW, "GLOW prox (proposed)"),
    Method("pnp-glow", ProxKind.PNP_GLOW, "GLOW plug-and-play"),
)


@dataclass(frozen=True)
class TrainingBudget:
    """How long each training stage runs, in steps (0 = the training preset's ``max_steps``),
    so that the same command trains the same models on any machine; early stopping on val may
    end a run sooner. ``safety_minutes`` is only a cap against runaway runs (0 = none): a run
    that hits it is marked in the report. ``patience_steps`` (0 = the training preset's
    patience) stops a run after that many steps without a better val loss; ``stop_when_flat``
    stops it, once ``flat_min_steps`` are done, when its best val PSNR gained less than 0.1 dB
    over the last 20% of its steps (``training.plateau``)."""

    glow_steps: int = 0
    pnp_steps: int = 0
    cnn_steps: int = 0
    safety_minutes: float = 0.0
    patience_steps: int = 0
    stop_when_flat: bool = False
    flat_min_steps: int = 0
    flow_lr: float = 1e-5
    cnn_lr: float = 1e-5

    def steps(self, prox: ProxKind) -> int:
        """The step budget of a run of ``prox``."""
        if prox is ProxKind.GLOW:
            return self.glow_steps
        if prox is ProxKind.PNP_GLOW:
            return self.pnp_steps
        return self.cnn_steps

    def lr(self, prox: ProxKind) -> float:
        """The learning rate of a run of ``prox``."""
        return self.flow_lr if prox in ProxKind.flows() else self.cnn_lr


@dataclass(frozen=True)
class EvaluationBudget:
    """How many images the evaluation stages score, and how long latent optimisation runs."""

    eval_images: int = 0
    anime_images: int = 100
    anime_all: bool = True
    latent_steps: int = 50
    latent_val_images: int = 16
    figure_rows: int = 4


@dataclass(frozen=True)
class TaskSettings:
    """The per-task model settings of a preset."""

    small_support_kernel: int = 5


@dataclass(frozen=True)
class ReproducePreset:
    """One reproduction preset: training and evaluation budgets, and per-task settings."""

    training: TrainingBudget = field(default_factory=TrainingBudget)
    evaluation: EvaluationBudget = field(default_factory=EvaluationBudget)
    tasks: TaskSettings = field(default_factory=TaskSettings)


REPRODUCE_PRESETS = {
    "tiny": ReproducePreset(
        TrainingBudget(glow_steps=10, pnp_steps=10, cnn_steps=10, flow_lr=1e-3, cnn_lr=3e-3),
        EvaluationBudget(
            eval_images=16,
            anime_images=8,
            anime_all=False,
            latent_steps=5,
            latent_val_images=4,
            figure_rows=2,
        ),
        TaskSettings(small_support_kernel=3),
    ),
    "small": ReproducePreset(
        # Step budgets from the learning curves (issue 11): at 200 steps every GLOW run of the
        # frame ablation (docs/results/ablation.md) was still rising, and a 1,000-step probe
        # (GLOW and U-Net on full-support deblurring) was still gaining, so the flows and CNNs
        # get 1,000 steps of 16 images and stop sooner only once their best val PSNR gains
        # < 0.1 dB over the last 20% of steps, judged from step 600 on (a first run judged from
        # step 300 stopped the U-Net denoiser at step 400 on val noise of +-0.3 dB, with a
        # window of only 80 steps). Plug-and-play GLOW trains only its
        # step parameters and gets 300. The curves of the committed run (one call, 116.5 min),
        # one line per run, are in docs/results/curves.png; its training table says which runs
        # flattened: every Table I run but the inpainting GLOW prox (+0.24 dB over its last
        # 20%) and the two deblurring U-Nets (+0.12, +0.10), which used their 1,000 steps.
        TrainingBudget(
            glow_steps=1000,
            pnp_steps=300,
            cnn_steps=1000,
            safety_minutes=40.0,
            patience_steps=250,
            stop_when_flat=True,
            flat_min_steps=600,
            flow_lr=1e-4,
            cnn_lr=1e-3,
        ),
        EvaluationBudget(eval_images=200, anime_images=100, anime_all=True),
        TaskSettings(small_support_kernel=3),
    ),
    "paper": ReproducePreset(),
}


def resolve_tasks(spec: str | None) -> tuple[str, ...]:
    """The tasks of ``--tasks``: comma-separated task names or groups (``paper``, the default;
    ``beyond``; ``all``), in the plan's order, each once."""
    if not spec:
        return TASKS
    chosen: set[str] = set()
    for name in (part.strip() for part in spec.split(",")):
        if name in TASK_GROUPS:
            chosen.update(TASK_GROUPS[name])
        elif name in ALL_TASKS:
            chosen.add(name)
        else:
            raise ValueError(
                f"unknown task {name!r} in --tasks; choose from {', '.join(ALL_TASKS)} or the "
                f"groups {', '.join(TASK_GROUPS)} (comma-separated)."
            )
    return tuple(task for task in ALL_TASKS if task in chosen)


def methods_for(task: str) -> list[Method]:
    """The methods trained for ``task`` (no denoiser variants for denoising itself; the extra
    small-support deblurring column has the three proxes of Table I; the tasks beyond the paper
    the GLOW and U-Net proxes)."""
    if task in BEYOND_TASKS:
        return [m for m in METHODS if m.key in ("unet", "glow")]
    if task == "denoise":
        return [m for m in METHODS if not m.from_denoiser]
    if task == "deblur-small-support":
        return [m for m in METHODS if m.key in ("resnet", "unet", "glow")]
    return list(METHODS)


def machine_description() -> str:
    """CPU/GPU, core count and versions, for the report."""
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return (
        f"{platform.machine()}, {os.cpu_count()} CPU cores, {gpu}; Python "
        f"{platform.python_version()}, torch {torch.__version__}; {date.today().isoformat()}"
    )


#: the pseudo-setting that scores Table IV's three proxes on every anime image (the
#: ``ood-images`` setting scores a random subset, with every method and the references)
ALL_ANIME = "ood-images-all"
#: the methods scored on every anime image
ALL_ANIME_METHODS = ("resnet", "unet", "glow")


@dataclass(frozen=True)
class EvaluationStage:
    """One results file of a task's evaluation: which images, which methods."""

    name: str  # the file stem under eval/TASK/ (a setting, or ALL_ANIME)
    setting: str  # the evaluation setting its images and measurements come from
    images: int  # 0 = all
    references: bool  # the measurement and the classical reference (and latent opt. in dist.)
    method_keys: tuple[str, ...] | None = None  # None = every trained method
    figure: bool = True

    def includes(self, key: str) -> bool:
        return self.method_keys is None or key in self.method_keys


def evaluation_stages(task: str, budget: EvaluationBudget) -> list[EvaluationStage]:
    """The results files of ``task``: in distribution; for the paper's three tasks also
    out-of-distribution measurements and images (and every anime image when asked); for the
    tasks beyond the paper out-of-distribution measurements."""
    stages = [EvaluationStage("in-distribution", "in-distribution", budget.eval_images, True)]
    if task == "deblur-small-support":
        return stages
    stages.append(EvaluationStage("ood-measurement", "ood-measurement", budget.eval_images, True))
    if task in BEYOND_TASKS:
        return stages
    stages.append(EvaluationStage("ood-images", "ood-images", budget.anime_images, True))
    if budget.anime_all:
        stages.append(
            EvaluationStage(ALL_ANIME, "ood-images", 0, False, ALL_ANIME_METHODS, figure=False)
        )
    return stages
