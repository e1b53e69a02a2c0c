"""Calibration of per-pixel uncertainty from posterior samples.

For samples ``(S, B, C, H, W)`` of the posterior and the true images ``(B, C, H, W)``: the share
of true pixels inside each pixel's central interval of the samples (a calibrated 90% interval
covers about 90%), and the correlation between each pixel's error and its standard deviation
(does the uncertainty map point at the errors?).
"""

from __future__ import annotations

import torch
from torch import Tensor


def interval_coverage(
    samples: Tensor, x: Tensor, level: float, region: Tensor | None = None
) -> float:
    """The share of the pixels of ``x`` (within ``region``, a 0/1 tensor broadcastable to
    ``x``, when given) inside the central ``level`` interval of ``samples`` per pixel."""
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level}; e.g. 0.9.")
    if samples.shape[1:] != x.shape:
        raise ValueError(
            f"samples {tuple(samples.shape)} must be (S, *x.shape) with x {tuple(x.shape)}."
        )
    tail = (1 - level) / 2
    low = torch.quantile(samples.double(), tail, dim=0)
    high = torch.quantile(samples.double(), 1 - tail, dim=0)
    inside = ((x.double() >= low) & (x.double() <= high)).double()
    if region is None:
        return float(inside.mean())
    weight = region.double().expand_as(inside)
    if float(weight.sum()) == 0:
        raise ValueError("the region holds no pixel; pass a region with at least one 1.")
    return float((inside * weight).sum() / weight.sum())


def error_std_correlation(mean: Tensor, std: Tensor, x: Tensor) -> float:
    """Pearson correlation over all pixels between ``|mean - x|`` and ``std``."""
    error = (mean.double() - x.double()).abs().flatten()
    spread = std.double().flatten()
    error, spread = error - error.mean(), spread - spread.mean()
    denominator = error.norm() * spread.norm()
    return float((error * spread).sum() / denominator) if float(denominator) > 0 else 0.0
