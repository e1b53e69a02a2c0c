"""Proximal operators for the unrolled network: the flow prox and an adapter for CNN priors.

Every prox module maps a gradient-step output ``v`` (``(B, C, H, W)``) to the next estimate and
takes the fold's regularisation weight ``lambda_`` (``None`` means "no shrinkage", as in the
last fold). ``uses_lambda`` tells the unrolled network whether to learn a ``lambda_k``.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor, nn

from flowprox.flows.glow import Glow
from flowprox.utils.precision import run_network

Shrinkage = Literal["gaussian", "laplace"]


def gaussian_shrinkage(z: Tensor, lambda_: Tensor | float) -> Tensor:
    """``prox`` of ``lambda/2 ||z||^2``: ``z / (1 + lambda)`` (standard-normal latent prior)."""
    return z / (1.0 + lambda_)


def laplace_shrinkage(z: Tensor, lambda_: Tensor | float) -> Tensor:
    """``prox`` of ``lambda ||z||_1``: soft thresholding ``sign(z) max(|z| - lambda, 0)``."""
    return torch.sign(z) * torch.relu(z.abs() - lambda_)


SHRINKAGES = {"gaussian": gaussian_shrinkage, "laplace": laplace_shrinkage}


class Prox(nn.Module):
    """Interface of a proximal module: ``x = prox(v, lambda_)``."""

    uses_lambda: bool = False

    def forward(self, v: Tensor, lambda_: Tensor | None = None) -> Tensor:  # pragma: no cover
        raise NotImplementedError


class FlowProx(Prox):
    """Latent shrinkage through a normalizing flow (paper eqs. 9-11): ``g(shrink(f(v), lambda))``.

    Every level's latent is standard normal (``Glow``), so shrinking the whole flat latent
    towards 0 moves ``v`` towards more likely images. With ``lambda_ = None`` the prox is
    ``g(f(v)) = v`` up to round-off (the flow is a bijection), which is what the last fold uses
    together with its own fine-tuned flow (paper eq. 12).

    Args:
        flow: the Glow prior (used as is: pass a copy to untie).
        shrinkage: ``"gaussian"`` (``z / (1 + lambda)``, default) or ``"laplace"``.
        memory_saving: recompute the flow's activations by inversion during backward.
    """

    uses_lambda = True

    def __init__(self, flow: Glow, shrinkage: Shrinkage = "gaussian", memory_saving: bool = True):
        super().__init__()
        if shrinkage not in SHRINKAGES:
            raise ValueError(
                f"unknown shrinkage {shrinkage!r}; choose one of {sorted(SHRINKAGES)}."
            )
        self.flow = flow
        self.shrinkage = shrinkage
        self.memory_saving = memory_saving

    def forward(self, v: Tensor, lambda_: Tensor | None = None) -> Tensor:
        save = self.memory_saving and torch.is_grad_enabled()
        z, _ = self.flow(v, memory_saving=save)
        if lambda_ is not None:
            z = SHRINKAGES[self.shrinkage](z, lambda_)
        return self.flow.inverse(z, image_size=tuple(v.shape[-2:]), memory_saving=save)


class IdentityProx(Prox):
    """``prox(v) = v``: the last fold of the flow network (``g_K(f_K(v)) = v``, paper eq. 12)."""

    def forward(self, v: Tensor, lambda_: Tensor | None = None) -> Tensor:
        return v


class NetworkProx(Prox):
    """Any image-to-image network used as the prox (ResNet, U-Net baselines); ignores lambda.

    At a ``network_precision`` that resolves to bfloat16 (``utils.precision``) the network runs
    in its autocast on a channels-last copy of ``v`` and its output is cast back to ``v``'s
    dtype.
    """

    uses_lambda = False

    def __init__(self, network: nn.Module) -> None:
        super().__init__()
        self.network = network
        self.network_precision = "float32"  # models.precision.set_network_precision

    def forward(self, v: Tensor, lambda_: Tensor | None = None) -> Tensor:
        return run_network(self.network, v, self.network_precision)
