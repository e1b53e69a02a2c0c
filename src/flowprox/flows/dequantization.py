"""Quantisation, dequantisation and bits per dimension for discrete images.

Images are ``x`` in ``[0, 1]`` obtained from 8-bit data as ``uint8 / 255``. Reducing to ``n_bits``
keeps ``k = floor(255 x / 2^(8 - n_bits))`` in ``{0, ..., n_bins - 1}`` with ``n_bins = 2^n_bits``;
the flow models the continuous ``k / n_bins + u``, ``u ~ U(0, 1 / n_bins)`` (uniform
dequantisation). Since each bin has volume ``n_bins^-D``,

    -log P(k) <= -log p(k / n_bins + u) + D log(n_bins)    (in expectation over u),

and bits per dimension are ``(-log p + D log n_bins) / (D log 2)``.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor


def _check_n_bits(n_bits: int) -> None:
    if not isinstance(n_bits, int) or not 1 <= n_bits <= 8:
        raise ValueError(f"n_bits must be an integer in 1..8, got {n_bits!r}; use 8 or 5.")


def quantize(x: Tensor, n_bits: int = 8) -> Tensor:
    """Integer bin indices ``k`` in ``{0, ..., 2^n_bits - 1}`` (as floats) of images in [0, 1]."""
    _check_n_bits(n_bits)
    levels = torch.round(x.clamp(0.0, 1.0) * 255.0)
    return torch.floor(levels / 2 ** (8 - n_bits))


def dequantize(
    x: Tensor,
    n_bits: int = 8,
    noise: bool | Tensor = True,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Continuous images ``(k + u) / n_bins`` in ``[0, 1)`` for the flow to model.

    Args:
        x: images in [0, 1], ``(B, C, H, W)``.
        n_bits: bits per colour channel kept.
        noise: draw ``u ~ U(0, 1)`` (training); False uses the bin midpoint ``u = 1/2``, a
            deterministic choice for evaluation; a tensor of ``x``'s shape is ``u`` itself (for
            noise drawn elsewhere, e.g. from a per-step generator).
        generator: random source for ``u``.
    """
    n_bins = 2**n_bits
    k = quantize(x, n_bits)
    if isinstance(noise, Tensor):
        u = noise
    elif noise:
        u = torch.rand(x.shape, generator=generator, dtype=x.dtype, device=x.device)
    else:
        u = torch.full_like(x, 0.5)
    return (k + u) / n_bins


def bits_per_dim(log_prob: Tensor, num_dims: int, n_bits: int = 8) -> Tensor:
    """Bits per dimension ``(-log p + D log n_bins) / (D log 2)`` for each sample.

    Args:
        log_prob: ``(B,)`` log-density of the dequantised images in [0, 1] coordinates.
        num_dims: ``D = C * H * W``.
        n_bits: bits per colour channel of the data.
    """
    _check_n_bits(n_bits)
    return (-log_prob + num_dims * math.log(2**n_bits)) / (num_dims * math.log(2.0))
