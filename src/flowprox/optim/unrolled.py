"""The unrolled proximal gradient network (paper section III-B, Fig. 1).

For folds ``k = 1..K``, with positive learnable step sizes ``mu_k`` and weights ``lambda_k``:

    x~_k = x_{k-1} - mu_k A^T (A x_{k-1} - y)      # gradient step on 1/2 ||y - A x||^2
    x_k  = prox_k(x~_k, lambda_k)                   # e.g. g_k(f_k(x~_k) / (1 + lambda_k))

and the last fold's prox runs without shrinkage (paper eq. 12, ``x^ = g_K(f_K(x~_K))``).
Since ``g_K = f_K^-1``, that last prox is the identity whatever the flow's weights: the output is
the last gradient step ``x~_K``, and a flow in that fold could never learn anything (its gradient
is exactly zero). ``flow_unrolled_network`` therefore gives the last fold no flow unless
``shrink_last_fold=True``, saving a ``1/K`` share of compute and memory at no change in output.

Reading of the paper fixed here (DESIGN.md section 1): eq. (8) prints ``x + mu A^T(A x - y)``,
a step *up* the data-fidelity loss; we take the descent step above. ``mu_k`` and ``lambda_k`` are
kept positive by a softplus parametrisation; ``mu_k`` starts at ``1 / ||A||^2``.

The operator is passed at call time, ``model(y, op)``, so a model trained for one operator can be
evaluated with another. The loop follows fastMRI's VarNet: one module per fold, an explicit loop.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from flowprox.flows.glow import Glow
from flowprox.optim.prox import FlowProx, IdentityProx, Prox, Shrinkage
from flowprox.physics.operators import LinearOperator
from flowprox.utils.validation import check_image_batch

InitialEstimate = Literal["prior_mode", "adjoint", "zeros"]


def _inverse_softplus(value: float) -> float:
    if not value > 0 or not math.isfinite(value):
        raise ValueError(f"initial step sizes and weights must be finite and > 0, got {value}.")
    return value + math.log(-math.expm1(-value))


class UnrolledProximalGradient(nn.Module):
    """K folds of proximal gradient descent with a learned prox per fold.

    Args:
        proxes: one prox module per fold (the same module repeated ties the folds).
        mu_init: initial step size for every fold, typically ``1 / ||A||^2``.
        lambda_init: initial shrinkage weight of every fold that shrinks.
        initial_estimate: ``x_0``: ``"prior_mode"`` (``g_0(0)`` of ``prior``, the paper's
            choice), ``"adjoint"`` (``A^T y``) or ``"zeros"``.
        prior: the pre-trained flow used for ``x_0 = g_0(0)`` (required for ``"prior_mode"``).
        shrink_last_fold: also shrink in the last fold (the paper does not: eq. 12).
    """

    def __init__(
        self,
        proxes: Sequence[Prox],
        mu_init: float = 1.0,
        lambda_init: float = 0.1,
        initial_estimate: InitialEstimate = "adjoint",
        prior: Glow | None = None,
        shrink_last_fold: bool = False,
    ) -> None:
        super().__init__()
        if len(proxes) < 1:
            raise ValueError("the unrolled network needs at least one fold (one prox module).")
        if initial_estimate not in ("prior_mode", "adjoint", "zeros"):
            raise ValueError(
                f"unknown initial_estimate {initial_estimate!r}; "
                "choose 'prior_mode', 'adjoint' or 'zeros'."
            )
        self.proxes = nn.ModuleList(proxes)
        self.num_folds = len(proxes)
        self.shrink_last_fold = shrink_last_fold
        self.initial_estimate = initial_estimate
        self.mu_raw = nn.Parameter(torch.full((self.num_folds,), _inverse_softplus(mu_init)))
        shrinking = [k for k in range(self.num_folds) if self._shrinks(k)]
        self._lambda_index = {k: i for i, k in enumerate(shrinking)}
        if shrinking:
            raw = _inverse_softplus(lambda_init)
            self.lambda_raw = nn.Parameter(torch.full((len(shrinking),), raw))
        else:  # CNN proxes: no shrinkage weight to learn
            self.register_parameter("lambda_raw", None)
        if initial_estimate == "prior_mode":
            if prior is None:
                raise ValueError("initial_estimate='prior_mode' needs the pre-trained prior.")
            with torch.no_grad():
                dtype = next(prior.parameters()).dtype
                x0 = prior.inverse(torch.zeros(1, prior.latent_dim(), dtype=dtype))
            self.register_buffer("x0", x0)
        else:
            self.register_buffer("x0", None)

    def _shrinks(self, k: int) -> bool:
        last = k == self.num_folds - 1
        return self.proxes[k].uses_lambda and (self.shrink_last_fold or not last)

    @property
    def mu(self) -> Tensor:
        """Step sizes ``mu_k > 0``, shape ``(K,)``."""
        return F.softplus(self.mu_raw)

    @property
    def lambda_(self) -> Tensor:
        """Shrinkage weights ``lambda_k > 0`` of the folds that shrink, shape ``(#shrinking,)``."""
        if self.lambda_raw is None:
            return self.mu_raw.new_zeros(0)
        return F.softplus(self.lambda_raw)

    def initial(self, y: Tensor, op: LinearOperator) -> Tensor:
        """``x_0`` for measurements ``y``."""
        if self.initial_estimate == "adjoint":
            return op.A_adjoint(y)
        x_shape = op.A_adjoint(y[:1]).shape
        if self.initial_estimate == "zeros":
            return y.new_zeros((y.shape[0], *x_shape[1:]))
        if tuple(self.x0.shape[1:]) != tuple(x_shape[1:]):
            raise ValueError(
                f"the measurements belong to images of shape {tuple(x_shape[1:])} but the prior "
                f"was built for {tuple(self.x0.shape[1:])}; resize the images to the prior's size."
            )
        return self.x0.to(y.dtype).expand(y.shape[0], *x_shape[1:])

    def fold(self, k: int, x: Tensor, y: Tensor, op: LinearOperator) -> Tensor:
        """Fold ``k`` (0-based): gradient step then prox (shrinkage skipped in the last fold)."""
        x_tilde = x - self.mu[k] * op.A_adjoint(op.A(x) - y)
        lambda_ = self.lambda_[self._lambda_index[k]] if self._shrinks(k) else None
        return self.proxes[k](x_tilde, lambda_)

    def forward(self, y: Tensor, op: LinearOperator, return_all: bool = False):
        """Reconstruct images from measurements ``y = A x + n``.

        Args:
            y: measurements ``(B, C, H, W)``.
            op: the forward operator ``A``.
            return_all: also return ``[x_0, x_1, ..., x_K]``.

        Returns:
            ``x^`` of shape ``(B, C, H, W)``, and the list of iterates if ``return_all``.
        """
        check_image_batch(y, "y")
        x = self.initial(y, op)
        iterates = [x]
        for k in range(self.num_folds):
            x = self.fold(k, x, y, op)
            iterates.append(x)
        return (x, iterates) if return_all else x


def flow_unrolled_network(
    prior: Glow,
    num_folds: int = 4,
    mu_init: float = 1.0,
    lambda_init: float = 0.1,
    shrinkage: Shrinkage = "gaussian",
    tied: bool = False,
    freeze_flow: bool = False,
    memory_saving: bool = True,
    shrink_last_fold: bool = False,
) -> UnrolledProximalGradient:
    """The paper's network: every fold's prox a ``FlowProx`` around a copy of ``prior``.

    Args:
        prior: the pre-trained Glow (not modified; copied).
        num_folds: ``K`` (the paper uses 4).
        mu_init: initial step size, ``1 / ||A||^2`` (see ``LinearOperator.norm_squared``).
        lambda_init: initial shrinkage weight.
        shrinkage: ``"gaussian"`` or ``"laplace"``.
        tied: one flow shared by all folds instead of an untied copy per fold.
        freeze_flow: keep the flow's weights fixed (plug-and-play: only ``mu_k``, ``lambda_k``
            train). Implies a shared flow.
        memory_saving: memory-saving backprop through the flows during training.
        shrink_last_fold: shrink in the last fold too, which then gets a flow of its own; by
            default (paper eq. 12) the last fold is the gradient step alone (see module docs).
    """
    if num_folds < 1:
        raise ValueError(f"num_folds must be >= 1, got {num_folds}.")
    with_flow = num_folds if shrink_last_fold else num_folds - 1
    if freeze_flow or tied:
        shared = FlowProx(copy.deepcopy(prior), shrinkage, memory_saving)
        if freeze_flow:
            shared.flow.requires_grad_(False)
        proxes: list[Prox] = [shared] * with_flow
    else:
        proxes = [
            FlowProx(copy.deepcopy(prior), shrinkage, memory_saving) for _ in range(with_flow)
        ]
    proxes += [IdentityProx()] * (num_folds - with_flow)
    return UnrolledProximalGradient(
        proxes,
        mu_init,
        lambda_init,
        initial_estimate="prior_mode",
        prior=prior,
        shrink_last_fold=shrink_last_fold,
    )


def step_size_from_operator(op: LinearOperator, image_shape: Sequence[int]) -> float:
    """``1 / ||A||^2`` by the power method on images of ``image_shape`` ``(C, H, W)``."""
    return 1.0 / op.norm_squared(tuple(image_shape))
