"""Restoring a user's own images with a trained unrolled network (``flowprox restore``).

Each input image is the measurement ``y``; the operator is the checkpoint's task, optionally
changed by the caller (another hole size, a mask image, another blur). Images of another size
are resized (bicubic, antialiased) to the model's square resolution, restored, and resized back
to their own size, so the output has the input's size (a non-square image is stretched to the
square and back). ``simulate=True`` instead treats the inputs as clean images: they are
degraded by the operator (and noise), restored, and scored by PSNR.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, UnidentifiedImageError
from torch import Tensor

from flowprox.config import TaskConfig, UnrolledExperiment
from flowprox.evaluation.restored import restored_val_bits_per_dim
from flowprox.metrics.typicality import TypicalRange, calibrate
from flowprox.physics.noise import measure_fixed
from flowprox.physics.operators import LinearOperator, Mask
from flowprox.physics.tasks import build_operator
from flowprox.utils.images import to_uint8


def read_image(path: str | Path) -> Tensor:
    """An image file as a float tensor ``(3, H, W)`` in [0, 1] (grey and RGBA become RGB)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"image {path} not found; check the path.")
    try:
        with Image.open(path) as image:
            array = np.asarray(image.convert("RGB"), dtype=np.uint8)
    except (UnidentifiedImageError, OSError) as error:
        raise ValueError(
            f"{path} is not a readable image ({error}); pass PNG, JPEG or another format "
            "that Pillow reads."
        ) from error
    return torch.from_numpy(array.copy()).permute(2, 0, 1).float() / 255


def write_image(x: Tensor, path: str | Path) -> None:
    """Save one image ``(3, H, W)`` in [0, 1] as PNG."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(to_uint8(x[None])[0]).save(path)


def resize(x: Tensor, size: tuple[int, int]) -> Tensor:
    """Bicubic, antialiased resize of ``(B, C, H, W)`` images to ``size``, clamped to [0, 1]."""
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    return F.interpolate(x, size=size, mode="bicubic", antialias=True, align_corners=False).clamp(
        0, 1
    )


def read_mask(path: str | Path, resolution: int) -> Mask:
    """A mask image (white = observed, black = missing) at the model's resolution."""
    path = Path(path)
    try:
        with Image.open(path) as image:
            grey = image.convert("L").resize((resolution, resolution), Image.NEAREST)
    except (FileNotFoundError, UnidentifiedImageError, OSError) as error:
        raise ValueError(f"mask {path} could not be read ({error}); pass a PNG.") from error
    return Mask(torch.from_numpy((np.asarray(grey) >= 128).astype(np.float32)))


def restore_task(
    config: UnrolledExperiment,
    window: int | None = None,
    sigma_b: float | None = None,
    noise: float | None = None,
) -> TaskConfig:
    """The checkpoint's task with the caller's changes."""
    task = config.task
    changes: dict[str, float | int | str] = {}
    if window is not None:
        changes.update(kind="inpaint", window=window)
    if sigma_b is not None:
        changes.update(kind="deblur", sigma_b=sigma_b)
    if noise is not None:
        changes["sigma_n"] = noise
    return dataclasses.replace(task, **changes)


@dataclass
class Restored:
    """One restored image and its scores."""

    source: Path
    output: Path
    bits_per_dim: float | None = None
    typical: bool | None = None
    psnr_measurement: float | None = None
    psnr_restored: float | None = None


def prepare_measurements(
    paths: list[Path],
    resolution: int,
    task: TaskConfig,
    op: LinearOperator,
    simulate: bool,
    seed: int,
) -> tuple[Tensor, Tensor | None, list[tuple[int, int]]]:
    """Measurements at the model's resolution, the clean images when simulating, and sizes."""
    images = [read_image(path) for path in paths]
    sizes = [tuple(image.shape[-2:]) for image in images]
    square = torch.stack([resize(image[None], (resolution, resolution))[0] for image in images])
    if simulate:
        return measure_fixed(op, square, task.sigma_n, seed), square, sizes  # type: ignore[return-value]
    return square, None, sizes  # type: ignore[return-value]


def operator_for(task: TaskConfig, resolution: int, mask: str | Path | None) -> LinearOperator:
    """The operator of ``task``, or the mask image's when given."""
    if mask is not None:
        return read_mask(mask, resolution)
    return build_operator(task, resolution)


def calibrate_restorer(
    network: torch.nn.Module,
    config: UnrolledExperiment,
    prior: torch.nn.Module,
    data: str | Path,
    n_bits: int,
    false_alarm: float = 0.05,
    images: int = 512,
) -> TypicalRange:
    """The bits/dim threshold of this restorer's outputs on validation measurements, at the
    prior's ``n_bits``."""
    bpd = restored_val_bits_per_dim(network, config, prior, data, n_bits, images)
    return calibrate(bpd, false_alarm, source=f"{len(bpd)} restored val images of {data}")
