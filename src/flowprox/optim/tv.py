"""Total-variation regularised reconstruction for any linear operator, by the primal-dual
hybrid gradient method (Chambolle and Pock 2011).

It solves ``argmin_{x in [0,1]^n} 1/2 ||A x - y||^2 + weight TV(x)``, with the isotropic TV of
each channel, ``TV(x) = sum_pixels sqrt((D_h x)^2 + (D_v x)^2)``, forward differences and a
Neumann (replicated) edge. Written as ``min_x F(K x) + G(x)`` with ``K = [A; D]``,
``F(u, v) = 1/2 ||u - y||^2 + weight ||v||_{2,1}`` and ``G`` the indicator of the box, each
iteration is

* ``p <- (p + sigma (A xbar - y)) / (1 + sigma)`` (the prox of ``F*`` in the data part),
* ``q <- proj_{|q| <= weight}(q + sigma D xbar)`` (pointwise over the two directions),
* ``x' <- clip(x - tau (A^T p + D^T q), 0, 1)``, ``xbar <- 2 x' - x``,

with ``tau = sigma = 0.99 / ||K||`` and ``||K||^2 <= ||A||^2 + 8``, so that it converges.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from flowprox.physics.operators import LinearOperator
from flowprox.utils.validation import check_image_batch

__all__ = ["image_gradient", "image_gradient_adjoint", "total_variation", "tv_reconstruction"]

#: ``||D||^2 <= 8`` for forward differences in two directions
GRADIENT_NORM_SQUARED = 8.0


def image_gradient(x: Tensor) -> Tensor:
    """Forward differences ``D x``: ``(B, C, H, W) -> (B, C, 2, H, W)`` (horizontal, vertical),
    zero across the last column and row (Neumann edge)."""
    horizontal = F.pad(x[..., :, 1:] - x[..., :, :-1], (0, 1))
    vertical = F.pad(x[..., 1:, :] - x[..., :-1, :], (0, 0, 0, 1))
    return torch.stack((horizontal, vertical), dim=2)


def image_gradient_adjoint(q: Tensor) -> Tensor:
    """The adjoint ``D^T q`` of :func:`image_gradient` (minus the discrete divergence)."""
    horizontal, vertical = q[:, :, 0, :, :-1], q[:, :, 1, :-1, :]
    return (
        F.pad(horizontal, (1, 0))
        - F.pad(horizontal, (0, 1))
        + F.pad(vertical, (0, 0, 1, 0))
        - F.pad(vertical, (0, 0, 0, 1))
    )


def total_variation(x: Tensor) -> Tensor:
    """Isotropic TV of each image of the batch, ``(B,)``."""
    return image_gradient(x).pow(2).sum(dim=2).sqrt().flatten(1).sum(dim=1)


@torch.no_grad()
def tv_reconstruction(
    y: Tensor,
    op: LinearOperator,
    weight: float,
    iterations: int = 300,
    x_init: Tensor | None = None,
) -> Tensor:
    """TV-regularised reconstruction ``argmin_{x in [0,1]} 1/2 ||A x - y||^2 + weight TV(x)``
    (module docstring) of a batch of measurements.

    Args:
        y: Measurements, the operator's measurement shape ``(B, ...)``.
        op: The forward operator; its images are ``op.A_adjoint(y)``'s shape.
        weight: The TV weight, finite and positive (about the noise level times a few).
        iterations: Primal-dual iterations (at least 1).
        x_init: Start (default ``A^+ y`` where the operator has one, else ``A^T y``, clipped).

    Returns:
        The reconstructions in ``[0, 1]``, ``(B, C, H, W)``, in ``y``'s dtype.
    """
    weight = float(weight)
    if not (math.isfinite(weight) and weight > 0):
        raise ValueError(f"weight must be finite and positive, got {weight!r}; pass e.g. 0.01.")
    if isinstance(iterations, bool) or not isinstance(iterations, int) or iterations < 1:
        raise ValueError(f"iterations must be a whole number >= 1, got {iterations!r}.")
    back = op.A_adjoint(y)
    check_image_batch(back, "A^T y")
    if x_init is None:
        pseudo_inverse = getattr(op, "pseudo_inverse", None)
        x_init = pseudo_inverse(y) if callable(pseudo_inverse) else back
    x = x_init.clamp(0.0, 1.0).to(back.dtype)
    norm_squared = 1.01 * op.norm_squared((1, *back.shape[1:]))  # the power method underestimates
    step = 0.99 / math.sqrt(norm_squared + GRADIENT_NORM_SQUARED)
    x_bar = x
    p = torch.zeros_like(y)
    q = torch.zeros_like(image_gradient(x))
    for _ in range(iterations):
        p = (p + step * (op.A(x_bar) - y)) / (1.0 + step)
        q = q + step * image_gradient(x_bar)
        q = q / (q.pow(2).sum(dim=2, keepdim=True).sqrt() / weight).clamp_min(1.0)
        x_next = (x - step * (op.A_adjoint(p) + image_gradient_adjoint(q))).clamp(0.0, 1.0)
        x_bar = 2.0 * x_next - x
        x = x_next
    return x
