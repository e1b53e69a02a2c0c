"""Calibration of per-pixel uncertainty from posterior samples.

For samples ``(S, B, C, H, W)`` of the posterior and the true images ``(B, C, H, W)``: the share
of true pixels inside each pixel's central interval of the samples (a calibrated 90% interval
covers about 90%), and the correlation between each pixel's error and its standard deviation
(does the uncertainty map point at the errors?).

The interval's ends are quantiles of a finite number ``n`` of samples. ``positions="linear"``
(``torch.quantile``, Hyndman and Fan's type 7) puts the ``p`` quantile at order statistic
``1 + p (n - 1)``, which sits inside the true quantile: 50 independent draws of the truth's own
distribution cover it 86.7% of the time at 90%. ``positions="rank"`` (type 6, Weibull) puts it
at ``p (n + 1)``: the ``k``-th smallest of ``n`` draws has expected CDF ``k / (n + 1)``, so a
truth exchangeable with the draws falls between the ``j``-th and ``(n + 1 - j)``-th with
probability exactly ``(n + 1 - 2 j) / (n + 1)``, the nominal level, whatever ``n``.
"""

from __future__ import annotations

import torch
from torch import Tensor

POSITIONS = ("linear", "rank")


def interval_coverage(
    samples: Tensor,
    x: Tensor,
    level: float,
    region: Tensor | None = None,
    positions: str = "linear",
) -> float:
    """The share of the pixels of ``x`` (within ``region``, a 0/1 tensor broadcastable to
    ``x``, when given) inside the central ``level`` interval of ``samples`` per pixel, its ends
    at the plotting ``positions`` of the module's docstring."""
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level}; e.g. 0.9.")
    if positions not in POSITIONS:
        raise ValueError(f"positions must be one of {POSITIONS}, got {positions!r}.")
    if samples.shape[1:] != x.shape:
        raise ValueError(
            f"samples {tuple(samples.shape)} must be (S, *x.shape) with x {tuple(x.shape)}."
        )
    tail = (1 - level) / 2
    quantile = _rank_quantile if positions == "rank" else _linear_quantile
    low, high = quantile(samples.double(), tail), quantile(samples.double(), 1 - tail)
    inside = ((x.double() >= low) & (x.double() <= high)).double()
    if region is None:
        return float(inside.mean())
    weight = region.double().expand_as(inside)
    if float(weight.sum()) == 0:
        raise ValueError("the region holds no pixel; pass a region with at least one 1.")
    return float((inside * weight).sum() / weight.sum())


def _linear_quantile(samples: Tensor, p: float) -> Tensor:
    return torch.quantile(samples, p, dim=0)


def _rank_quantile(samples: Tensor, p: float) -> Tensor:
    """The ``p`` quantile at order statistic ``p (n + 1)`` (1-based), interpolated linearly
    and held within the smallest and the largest sample."""
    ordered = samples.sort(dim=0).values
    position = min(max(p * (len(samples) + 1), 1.0), float(len(samples))) - 1
    below = int(position)
    above = min(below + 1, len(samples) - 1)
    return torch.lerp(ordered[below], ordered[above], position - below)


def region_median(values: Tensor, region: Tensor | None = None) -> float:
    """The median of ``values`` over the pixels where ``region`` (0/1, broadcastable to
    ``values``) is 1, or over all pixels; e.g. the effective sample size inside a hole."""
    if region is None:
        return float(values.median())
    inside = region.expand_as(values) > 0
    if not bool(inside.any()):
        raise ValueError("the region holds no pixel; pass a region with at least one 1.")
    return float(values[inside].median())


def error_std_correlation(mean: Tensor, std: Tensor, x: Tensor) -> float:
    """Pearson correlation over all pixels between ``|mean - x|`` and ``std``."""
    error = (mean.double() - x.double()).abs().flatten()
    spread = std.double().flatten()
    error, spread = error - error.mean(), spread - spread.mean()
    denominator = error.norm() * spread.norm()
    return float((error * spread).sum() / denominator) if float(denominator) > 0 else 0.0
