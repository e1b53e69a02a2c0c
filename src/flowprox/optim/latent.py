"""Latent-space optimisation with a pre-trained flow (Asim et al., the paper's baseline).

    z^ = argmin_z ||y - A g(z)||^2 + gamma ||z||^2,     x^ = g(z^)

by Adam for ``steps`` iterations from ``z = 0`` (the prior's mode). Each image has its own
objective; Adam's updates are per coordinate, so optimising the batch sum solves every image
independently.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

from flowprox.flows.glow import Glow
from flowprox.physics.operators import LinearOperator
from flowprox.utils.validation import check_finite, check_image_batch


@dataclass
class LatentResult:
    """The reconstruction and, per iteration, the batch-mean objective."""

    x: Tensor
    z: Tensor
    objective: list[float] = field(default_factory=list)


def latent_objective(
    flow: Glow,
    z: Tensor,
    y: Tensor,
    op: LinearOperator,
    gamma: float,
    image_size: tuple[int, int] | None = None,
) -> Tensor:
    """Per-image ``||y - A g(z)||^2 + gamma ||z||^2``, shape ``(B,)``; ``image_size`` is the
    images' ``(H, W)`` (default: that of ``A^T y``)."""
    size = image_size or _image_size(y, op)
    x = flow.inverse(z, image_size=size)
    residual = (op.A(x) - y).flatten(1).pow(2).sum(1)
    return residual + gamma * z.pow(2).sum(1)


def solve_latent(
    flow: Glow,
    y: Tensor,
    op: LinearOperator,
    steps: int = 50,
    gamma: float = 0.1,
    lr: float = 0.05,
    image_size: tuple[int, int] | None = None,
) -> LatentResult:
    """Reconstruct ``x = g(z)`` from ``y = A x + n`` by Adam on the latent ``z``.

    Args:
        flow: the pre-trained flow (its weights are not changed).
        y: measurements ``(B, C, H, W)``.
        op: the forward operator ``A``.
        steps: Adam iterations ``T`` (the paper compares at ``T = 50``).
        gamma: weight of the latent penalty ``||z||^2``.
        lr: Adam's learning rate.
        image_size: the images' ``(H, W)`` (by default that of ``A^T y``, which is ``y``'s
            where the measurement is an image).

    Returns:
        ``LatentResult`` with ``x = g(z_T)`` (detached) and the objective at every iteration.
    """
    check_image_batch(y, "y")
    check_finite(y, "y")
    if steps < 0 or gamma < 0 or lr <= 0:
        raise ValueError(
            f"solve_latent needs steps >= 0, gamma >= 0 and lr > 0; got {steps}, {gamma}, {lr}."
        )
    dtype = next(flow.parameters()).dtype
    y = y.to(dtype)
    requires_grad = [p.requires_grad for p in flow.parameters()]
    flow.requires_grad_(False)
    was_training = flow.training
    flow.eval()
    size = image_size or _image_size(y, op)
    try:
        z = torch.zeros(y.shape[0], flow.latent_dim(), dtype=dtype, device=y.device)
        z.requires_grad_(True)
        optimizer = torch.optim.Adam([z], lr=lr)
        history = []
        with torch.enable_grad():
            for _ in range(steps):
                objective = latent_objective(flow, z, y, op, gamma, size)
                history.append(float(objective.detach().mean()))
                optimizer.zero_grad(set_to_none=True)
                objective.sum().backward()
                optimizer.step()
        with torch.no_grad():
            history.append(float(latent_objective(flow, z, y, op, gamma, size).mean()))
            x = flow.inverse(z, image_size=size)
    finally:
        for param, flag in zip(flow.parameters(), requires_grad, strict=True):
            param.requires_grad_(flag)
        flow.train(was_training)
    return LatentResult(x=x.detach(), z=z.detach(), objective=history)


def _image_size(y: Tensor, op: LinearOperator) -> tuple[int, int]:
    """The images' ``(H, W)``: those of ``A^T y`` (not ``y``'s: a super-resolution, compressed
    sensing or MRI measurement is not an image of the reconstruction's size)."""
    with torch.no_grad():
        height, width = op.A_adjoint(y[:1]).shape[-2:]
    return int(height), int(width)
