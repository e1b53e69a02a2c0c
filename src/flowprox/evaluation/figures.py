"""Figures in the manner of the paper's Figs. 2-4: rows of test images, one column per method."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from torch import Tensor  # noqa: E402

from flowprox.metrics.quality import psnr  # noqa: E402


def comparison_figure(
    x: Tensor,
    columns: Sequence[tuple[str, Tensor]],
    path: str | Path,
    title: str = "",
    unscored: Sequence[str] = (),
) -> Path:
    """Ground truth then each ``(name, images)`` column, with PSNR (dB) under every image of
    the columns not named in ``unscored`` (maps that are not reconstructions).

    Args:
        x: ground-truth images ``(N, C, H, W)`` in [0, 1], one row each.
        columns: ``(name, images)`` pairs, images of the same shape (measurement, methods).
        path: the PNG file to write.
        title: a title above the grid.
    """
    rows = x.shape[0]
    width = 1 + len(columns)
    figure, axes = plt.subplots(
        rows, width, figsize=(1.35 * width, 1.45 * rows + 0.6), squeeze=False
    )
    for row in range(rows):
        panels = [("ground truth", x[row], None)]
        for name, images in columns:
            score = psnr(images[row : row + 1], x[row : row + 1])[0]
            value = None if name in unscored else float(score)
            panels.append((name, images[row], value))
        for column, (name, image, value) in enumerate(panels):
            axis = axes[row][column]
            axis.imshow(image.detach().clamp(0, 1).permute(1, 2, 0).cpu().numpy())
            axis.set_xticks([])
            axis.set_yticks([])
            if row == 0:
                axis.set_title(name, fontsize=7)
            if value is not None:
                axis.set_xlabel(f"{value:.2f} dB", fontsize=7)
    if title:
        figure.suptitle(title, fontsize=9)
    return _save(figure, path)


def curves_figure(
    panels: dict[str, dict[str, Sequence[tuple[int, float]]]],
    path: str | Path,
    ylabel: str = "val PSNR (dB)",
) -> Path:
    """One panel per key of ``panels`` (a task), one line per ``(name, [(step, value), ...])``.

    Args:
        panels: ``{panel title: {line label: [(step, value), ...]}}``.
        path: the PNG file to write.
        ylabel: the vertical axis' label.
    """
    count = max(len(panels), 1)
    figure, axes = plt.subplots(1, count, figsize=(4.2 * count, 3.4), squeeze=False)
    for axis, (title, lines) in zip(axes[0], panels.items(), strict=False):
        for label, points in lines.items():
            if points:
                steps, values = zip(*points, strict=True)
                axis.plot(steps, values, marker=".", markersize=3, linewidth=1, label=label)
        axis.set_title(title, fontsize=9)
        axis.set_xlabel("training step", fontsize=8)
        axis.set_ylabel(ylabel, fontsize=8)
        axis.tick_params(labelsize=7)
        axis.grid(alpha=0.3)
        axis.legend(fontsize=6)
    return _save(figure, path)


def _save(figure: plt.Figure, path: str | Path) -> Path:
    """Lay out ``figure``, write it as a PNG at ``path`` (folders made) and close it."""
    figure.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=130)
    plt.close(figure)
    return path
