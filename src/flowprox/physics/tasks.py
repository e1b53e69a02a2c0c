"""Inverse-problem tasks: presets of the paper's settings and the operators they define.

The paper's settings at 64x64 (``paper``) and the same geometry at half the resolution
(``small``, 32x32: the 19x19 hole becomes 10x10, the 16x16 one 8x8, sigma_b 5 and 8 become 2.5
and 4; noise levels unchanged), plus ``tiny`` (8x8) for tests:

    | preset | denoise (OOD) | inpaint window (OOD) | deblur sigma_b (OOD) |
    | paper  | 0.2 (0.25)    | 19 (16)              | 5 (8)                |
    | small  | 0.2 (0.25)    | 10 (8)               | 2.5 (4)              |
    | tiny   | 0.2 (0.25)    | 3 (2)                | 0.6 (1.0)            |

Beyond the paper (``physics.subsampling``), with the same values at every preset except the
super-resolution factor:

    | preset | super-resolution (OOD) | compressed sensing (OOD) | MRI acceleration (OOD) |
    | paper  | x4 (x8)                | 25 % (15 %), sigma_n 0.01 | 4x (8x), sigma_n 0.01  |
    | small  | x2 (x4)                | 25 % (15 %), sigma_n 0.01 | 4x (8x), sigma_n 0.01  |
    | tiny   | x2 (x4)                | 25 % (15 %), sigma_n 0.01 | 4x (8x), sigma_n 0.01  |
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import torch

from flowprox.config import TaskConfig, load_config
from flowprox.physics.operators import GaussianBlur, Identity, LinearOperator, Mask
from flowprox.physics.subsampling import CartesianMRI, SubsampledDCT, SuperResolution

TASK_KINDS = (
    "denoise",
    "inpaint",
    "inpaint-random",
    "deblur",
    "super-resolution",
    "compressed-sensing",
    "mri",
)
#: the tasks beyond the paper's (measurements with fewer numbers than the image)
SUBSAMPLING_KINDS = ("super-resolution", "compressed-sensing", "mri")
#: super-resolution factor (and its out-of-distribution value) per preset
_SR_FACTOR = {"tiny": (2, 4), "small": (2, 4), "paper": (4, 8)}
PRESET_NAMES = ("tiny", "small", "paper")

_GEOMETRY = {  # preset: (window, ood_window, sigma_b, ood_sigma_b)
    "tiny": (3, 2, 0.6, 1.0),
    "small": (10, 8, 2.5, 4.0),
    "paper": (19, 16, 5.0, 8.0),
}


def task_preset(preset: str, kind: str) -> TaskConfig:
    """The task ``kind`` at ``preset``'s resolution (table in the module docstring)."""
    if preset not in _GEOMETRY:
        raise ValueError(f"unknown preset {preset!r}; choose one of {PRESET_NAMES}.")
    window, ood_window, sigma_b, ood_sigma_b = _GEOMETRY[preset]
    if kind == "denoise":
        return TaskConfig(kind="denoise", sigma_n=0.2, ood_sigma_n=0.25)
    if kind == "inpaint":
        return TaskConfig(kind="inpaint", window=window, ood_window=ood_window)
    if kind == "inpaint-random":
        return TaskConfig(kind="inpaint-random", fraction_missing=0.5)
    if kind == "deblur":
        return TaskConfig(kind="deblur", sigma_b=sigma_b, ood_sigma_b=ood_sigma_b)
    if kind == "super-resolution":
        factor, ood_factor = _SR_FACTOR[preset]
        return TaskConfig(kind=kind, factor=factor, ood_factor=ood_factor)
    if kind == "compressed-sensing":  # a little measurement noise, as real sensors have
        return TaskConfig(kind=kind, ratio=0.25, ood_ratio=0.15, sigma_n=0.01)
    if kind == "mri":
        return TaskConfig(kind=kind, acceleration=4.0, ood_acceleration=8.0, sigma_n=0.01)
    raise ValueError(f"unknown task {kind!r}; choose one of {TASK_KINDS} or a task TOML file.")


def resolve_task(spec: str, preset: str) -> TaskConfig:
    """``spec`` is a task name (taken at ``preset``) or a TOML file with a ``[task]`` table."""
    if spec in TASK_KINDS:
        return task_preset(preset, spec)
    path = Path(spec)
    if path.suffix == ".toml" or path.exists():
        values = load_config(_TaskFile, path)
        return validate_task(values.task)
    raise ValueError(
        f"--task {spec!r} is neither a task name ({', '.join(TASK_KINDS)}) nor a TOML file."
    )


@dataclasses.dataclass(frozen=True)
class _TaskFile:
    task: TaskConfig = dataclasses.field(default_factory=TaskConfig)


def validate_task(task: TaskConfig) -> TaskConfig:
    """Check that ``task`` has the settings its kind needs."""
    if task.kind not in TASK_KINDS:
        raise ValueError(f"unknown task kind {task.kind!r}; choose one of {TASK_KINDS}.")
    if task.sigma_n < 0:
        raise ValueError(f"task.sigma_n must be >= 0, got {task.sigma_n}.")
    if task.kind == "inpaint" and task.window <= 0:
        raise ValueError("an inpainting task needs task.window > 0 (the side of the centre hole).")
    if task.kind == "deblur" and task.sigma_b <= 0:
        raise ValueError("a deblurring task needs task.sigma_b > 0 (the blur's std in pixels).")
    if task.kind == "super-resolution" and task.factor < 2:
        raise ValueError("a super-resolution task needs task.factor >= 2 (e.g. 2 or 4).")
    if task.kind == "compressed-sensing" and not 0 < task.ratio <= 1:
        raise ValueError("a compressed-sensing task needs 0 < task.ratio <= 1 (e.g. 0.25).")
    if task.kind == "mri" and task.acceleration < 1:
        raise ValueError("an MRI task needs task.acceleration >= 1 (e.g. 4 or 8).")
    return task


def ood_task(task: TaskConfig) -> TaskConfig:
    """The out-of-distribution measurement setting of ``task`` (paper Table III)."""
    changes: dict[str, float | int] = {}
    if task.ood_sigma_n > 0:
        changes["sigma_n"] = task.ood_sigma_n
    if task.kind == "inpaint" and task.ood_window > 0:
        changes["window"] = task.ood_window
    if task.kind == "deblur" and task.ood_sigma_b > 0:
        changes["sigma_b"] = task.ood_sigma_b
    if task.kind == "super-resolution" and task.ood_factor > 0:
        changes["factor"] = task.ood_factor
    if task.kind == "compressed-sensing" and task.ood_ratio > 0:
        changes["ratio"] = task.ood_ratio
    if task.kind == "mri" and task.ood_acceleration > 0:
        changes["acceleration"] = task.ood_acceleration
    if not changes:
        raise ValueError(
            f"task {task_label(task)} defines no out-of-distribution measurement; set "
            "task.ood_sigma_n, task.ood_window (inpaint), task.ood_sigma_b (deblur), "
            "task.ood_factor, task.ood_ratio or task.ood_acceleration."
        )
    return dataclasses.replace(task, **changes)


def build_operator(
    task: TaskConfig, image_size: int | tuple[int, int], channels: int = 3
) -> LinearOperator:
    """The forward operator ``A`` of ``task`` for ``channels x H x W`` images.

    ``image_size`` is ``(H, W)``, or an int for square images; the task's window, blur and
    random mask are in the pixels of that grid.
    """
    validate_task(task)
    height, width = (image_size, image_size) if isinstance(image_size, int) else image_size
    if task.kind == "denoise":
        return Identity()
    if task.kind == "inpaint":
        if task.window >= min(height, width):
            raise ValueError(
                f"task.window = {task.window} leaves nothing observed in {width}x{height} "
                "images; use a smaller window."
            )
        return Mask.center_square(height, width, task.window)
    if task.kind == "inpaint-random":
        generator = torch.Generator().manual_seed(task.mask_seed)
        return Mask.random_pixels(height, width, task.fraction_missing, generator)
    if task.kind == "super-resolution":
        return SuperResolution(task.factor)
    if task.kind == "compressed-sensing":
        return SubsampledDCT(height, width, task.ratio, seed=task.seed)
    if task.kind == "mri":
        return CartesianMRI(height, task.acceleration, task.center_fraction, seed=task.seed)
    kernel_size = task.kernel_size if task.kernel_size > 0 else None
    return GaussianBlur(task.sigma_b, kernel_size=kernel_size, boundary=task.boundary)


def task_label(task: TaskConfig) -> str:
    """A short human-readable description, e.g. ``inpaint 10x10`` or ``deblur sigma_b=2.5``."""
    noise = f", sigma_n={task.sigma_n:g}" if task.sigma_n > 0 and task.kind != "denoise" else ""
    if task.kind == "denoise":
        return f"denoise sigma_n={task.sigma_n:g}"
    if task.kind == "inpaint":
        return f"inpaint {task.window}x{task.window}{noise}"
    if task.kind == "inpaint-random":
        return f"inpaint random {task.fraction_missing:.0%}{noise}"
    if task.kind == "super-resolution":
        return f"super-resolution x{task.factor}{noise}"
    if task.kind == "compressed-sensing":
        return f"compressed sensing {task.ratio:.0%}{noise}"
    if task.kind == "mri":
        return f"MRI {task.acceleration:g}x{noise}"
    support = f" {task.kernel_size}x{task.kernel_size}" if task.kernel_size > 0 else ""
    return f"deblur sigma_b={task.sigma_b:g}{support}{noise}"
