"""The unrolled proximal gradient network (paper section III-B, Fig. 1).

For folds ``k = 1..K``, with learned positive step parameters:

    x~_k = x_{k-1} - mu_k A^T (A x_{k-1} - y)                       # "gradient" (paper eq. 8)
    x~_k = argmin_x 1/2 ||A x - y||^2 + rho_k/2 ||x - x_{k-1}||^2    # or "proximal" (HQS)
    x_k  = prox_k(x~_k, lambda_k)                   # e.g. g_k(f_k(x~_k) / (1 + lambda_k))

The proximal data step is the operator's exact data prox (``LinearOperator.prox_data``: closed
form for identity, masks and circular blur, conjugate gradients otherwise), as in half-quadratic
splitting (USRNet, DPIR). Its first application is already a Wiener-type filter.

The last fold: the paper's eq. (12) outputs ``g_K(f_K(x~_K))`` without shrinkage; since
``g_K = f_K^-1`` that is ``x~_K`` whatever the flow's weights, so a flow there could never learn.
Two readings, honoured identically by every prox kind (``models.unrolled.build_unrolled``): the
output is the last data step (the last fold holds an ``IdentityProx``), or the last fold has a
learned prox of its own (for flows: one that shrinks, ``shrink_last_fold=True``).

Readings of the paper fixed here (DESIGN.md section 1): eq. (8) prints ``x + mu A^T(A x - y)``,
a step *up* the data-fidelity loss; we take the descent step above. ``mu_k`` and ``lambda_k``
are kept positive by a softplus, ``rho_k`` by ``exp`` (so it moves over decades).

The operator is passed at call time, ``model(y, op)``, so a model trained for one operator can be
evaluated with another. The loop follows fastMRI's VarNet: one module per fold, an explicit loop.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Sequence
from typing import Literal, get_args

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from flowprox.flows.glow import Glow
from flowprox.optim.prox import FlowProx, IdentityProx, Prox, Shrinkage
from flowprox.physics.operators import LinearOperator
from flowprox.utils.validation import check_image_batch

InitialEstimate = Literal["prior_mode", "adjoint", "zeros"]
DataStep = Literal["gradient", "proximal"]
DATA_STEPS: tuple[str, ...] = get_args(DataStep)


def _inverse_softplus(value: float) -> float:
    if not value > 0 or not math.isfinite(value):
        raise ValueError(f"initial step sizes and weights must be finite and > 0, got {value}.")
    return value + math.log(-math.expm1(-value))


class UnrolledProximalGradient(nn.Module):
    """K folds of proximal gradient descent with a learned prox per fold.

    Args:
        proxes: one prox module per fold (the same module repeated ties the folds).
        mu_init: initial step size of every gradient data step, typically ``1 / ||A||^2``.
        lambda_init: initial shrinkage weight of every fold that shrinks.
        data_step: ``"gradient"`` (paper eq. 8) or ``"proximal"`` (the exact data prox).
        rho_init: initial weight ``rho_k > 0`` of every proximal data step.
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
        data_step: DataStep = "gradient",
        rho_init: float = 1.0,
    ) -> None:
        super().__init__()
        if data_step not in DATA_STEPS:
            raise ValueError(f"unknown data_step {data_step!r}; choose one of {DATA_STEPS}.")
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
        self.data_step = data_step
        if data_step == "gradient":
            raw_mu = _inverse_softplus(mu_init)
            self.mu_raw = nn.Parameter(torch.full((self.num_folds,), raw_mu))
            self.register_parameter("log_rho", None)
        else:
            if not (math.isfinite(rho_init) and rho_init > 0):
                raise ValueError(f"rho_init must be finite and > 0, got {rho_init}.")
            self.register_parameter("mu_raw", None)
            self.log_rho = nn.Parameter(torch.full((self.num_folds,), math.log(rho_init)))
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
            self.register_buffer("x0", prior_mode(prior))
        else:
            self.register_buffer("x0", None)

    def _shrinks(self, k: int) -> bool:
        last = k == self.num_folds - 1
        return self.proxes[k].uses_lambda and (self.shrink_last_fold or not last)

    @property
    def mu(self) -> Tensor:
        """Step sizes ``mu_k > 0`` of the gradient data steps, shape ``(K,)`` (empty when the
        data step is proximal)."""
        if self.mu_raw is None:
            return self.log_rho.new_zeros(0)
        return F.softplus(self.mu_raw)

    @property
    def rho(self) -> Tensor:
        """Weights ``rho_k > 0`` of the proximal data steps, shape ``(K,)`` (empty when the data
        step is a gradient step)."""
        if self.log_rho is None:
            return self.mu_raw.new_zeros(0)
        return self.log_rho.exp()

    @property
    def lambda_(self) -> Tensor:
        """Shrinkage weights ``lambda_k > 0`` of the folds that shrink, shape ``(#shrinking,)``."""
        if self.lambda_raw is None:
            return self.step_parameters()[0].new_zeros(0)
        return F.softplus(self.lambda_raw)

    def step_parameters(self) -> list[nn.Parameter]:
        """The learned step parameters in use (``mu_k`` or ``rho_k``, and ``lambda_k``)."""
        found = (self.mu_raw, self.log_rho, self.lambda_raw)
        return [p for p in found if p is not None]

    def step_summary(self) -> dict[str, float]:
        """Every step parameter by name (``mu_1``, ``rho_1``, ``lambda_1``, ...), for logs."""
        values: dict[str, float] = {}
        for name, tensor in (("mu", self.mu), ("rho", self.rho), ("lambda", self.lambda_)):
            for k, value in enumerate(tensor.detach().tolist(), start=1):
                values[f"{name}_{k}"] = float(value)
        return values

    def data_step_at(self, k: int, x: Tensor, y: Tensor, op: LinearOperator) -> Tensor:
        """The data step of fold ``k`` (0-based) from the iterate ``x``."""
        if self.data_step == "gradient":
            return x - self.mu[k] * op.A_adjoint(op.A(x) - y)
        return op.prox_data(x, y, self.rho[k])

    def initial(self, y: Tensor, op: LinearOperator, x0: Tensor | None = None) -> Tensor:
        """``x_0`` for measurements ``y``; ``x0`` replaces the stored prior mode (e.g. the
        prior's mode at another image size, ``prior_mode(prior, (H, W))``)."""
        if self.initial_estimate == "adjoint":
            return op.A_adjoint(y)
        x_shape = op.A_adjoint(y[:1]).shape
        if self.initial_estimate == "zeros":
            return y.new_zeros((y.shape[0], *x_shape[1:]))
        start = self.x0 if x0 is None else x0
        if tuple(start.shape[1:]) != tuple(x_shape[1:]):
            raise ValueError(
                f"the measurements belong to images of shape {tuple(x_shape[1:])} but x_0 has "
                f"shape {tuple(start.shape[1:])}; pass x0=prior_mode(prior, (H, W)) for this "
                "size, or resize the images to the prior's size."
            )
        return start.to(y.dtype).expand(y.shape[0], *x_shape[1:])

    def fold(self, k: int, x: Tensor, y: Tensor, op: LinearOperator) -> Tensor:
        """Fold ``k`` (0-based): data step then prox (whose shrinkage the last fold may skip)."""
        x_tilde = self.data_step_at(k, x, y, op)
        lambda_ = self.lambda_[self._lambda_index[k]] if self._shrinks(k) else None
        return self.proxes[k](x_tilde, lambda_)

    def forward(
        self,
        y: Tensor,
        op: LinearOperator,
        return_all: bool = False,
        x0: Tensor | None = None,
    ):
        """Reconstruct images from measurements ``y = A x + n``.

        Args:
            y: measurements ``(B, C, H, W)``.
            op: the forward operator ``A``.
            return_all: also return ``[x_0, x_1, ..., x_K]``.
            x0: ``(1, C, H, W)``, the prior's mode at the images' size when it is not the size
                the network was built for (``initial_estimate="prior_mode"`` only).

        Returns:
            ``x^`` of shape ``(B, C, H, W)``, and the list of iterates if ``return_all``.
        """
        check_image_batch(y, "y")
        x = self.initial(y, op, x0)
        iterates = [x]
        for k in range(self.num_folds):
            x = self.fold(k, x, y, op)
            iterates.append(x)
        return (x, iterates) if return_all else x


@torch.no_grad()
def prior_mode(prior: Glow, image_size: tuple[int, int] | None = None) -> Tensor:
    """``x_0 = g_0(0)``, the pre-trained flow's image of the zero latent, ``(1, C, H, W)``.

    ``image_size`` ``(H, W)`` (multiples of ``2**levels``) defaults to the flow's own size; the
    flow is convolutional, so its mode at another size is the same computation on a larger
    latent (what restoring an image at its own resolution starts from).
    """
    dtype = next(prior.parameters()).dtype
    device = next(prior.parameters()).device
    z = torch.zeros(1, prior.latent_dim(image_size), dtype=dtype, device=device)
    return prior.inverse(z, image_size)


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
    data_step: DataStep = "gradient",
    rho_init: float = 1.0,
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
            default (paper eq. 12) the last fold is the data step alone (see module docs).
        data_step: ``"gradient"`` (eq. 8) or ``"proximal"`` (the exact data prox).
        rho_init: initial ``rho_k`` of the proximal data steps.
    """
    if num_folds < 1:
        raise ValueError(f"num_folds must be >= 1, got {num_folds}.")

    def make_prox() -> FlowProx:
        prox = FlowProx(copy.deepcopy(prior), shrinkage, memory_saving)
        if freeze_flow:
            prox.flow.requires_grad_(False)
        return prox

    return UnrolledProximalGradient(
        fold_proxes(make_prox, num_folds, final_prox=shrink_last_fold, tied=tied or freeze_flow),
        mu_init,
        lambda_init,
        initial_estimate="prior_mode",
        prior=prior,
        shrink_last_fold=shrink_last_fold,
        data_step=data_step,
        rho_init=rho_init,
    )


def fold_proxes(
    make_prox: Callable[[], Prox], num_folds: int, final_prox: bool, tied: bool
) -> list[Prox]:
    """The proxes of ``num_folds`` folds: a learned prox in every fold (one module repeated when
    ``tied``), except the last one, which holds an ``IdentityProx`` unless ``final_prox`` (the
    output is then the last data step)."""
    learned = num_folds if final_prox else num_folds - 1
    if tied and learned > 0:
        shared = make_prox()
        proxes = [shared] * learned
    else:
        proxes = [make_prox() for _ in range(learned)]
    return proxes + [IdentityProx()] * (num_folds - learned)


def step_size_from_operator(op: LinearOperator, image_shape: Sequence[int]) -> float:
    """``1 / ||A||^2`` by the power method on images of ``image_shape`` ``(C, H, W)``."""
    return 1.0 / op.norm_squared(tuple(image_shape))
