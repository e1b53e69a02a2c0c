"""Saving images: batches as PNG grids (Pillow), for samples and figures."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from PIL import Image
from torch import Tensor


def to_uint8(images: Tensor) -> np.ndarray:
    """``(B, C, H, W)`` floats in [0, 1] to ``(B, H, W, C)`` uint8 (clamped, rounded)."""
    array = images.detach().clamp(0, 1).mul(255).round().byte().cpu().numpy()
    return array.transpose(0, 2, 3, 1)


def save_grid(images: Tensor, path: str | Path, columns: int = 8, padding: int = 2) -> None:
    """Save a batch ``(B, C, H, W)`` in [0, 1] as one PNG grid, white-padded."""
    if images.dim() != 4 or images.shape[1] not in (1, 3):
        raise ValueError(f"save_grid needs (B, 1|3, H, W) images, got {tuple(images.shape)}.")
    array = to_uint8(images)
    count, height, width, channels = array.shape
    columns = max(1, min(columns, count))
    rows = math.ceil(count / columns)
    grid = np.full(
        (rows * (height + padding) + padding, columns * (width + padding) + padding, channels),
        255,
        dtype=np.uint8,
    )
    for index in range(count):
        row, column = divmod(index, columns)
        top = padding + row * (height + padding)
        left = padding + column * (width + padding)
        grid[top : top + height, left : left + width] = array[index]
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(grid.squeeze(-1) if channels == 1 else grid).save(path)
