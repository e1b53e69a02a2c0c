"""The proximal operator of the data term, by conjugate gradients where no closed form exists.

For an operator ``A``, measurements ``y``, a point ``x`` and a weight ``rho > 0``,

    prox(x) = argmin_u 1/2 ||A u - y||^2 + rho/2 ||u - x||^2 = (A^T A + rho I)^-1 (A^T y + rho x).

``M = A^T A + rho I`` is symmetric positive definite, so conjugate gradients solve it with the
exact adjoint alone. Differentiating through the solver's iterations would store every iterate
and give the gradient of the truncated solve; instead ``DataProxCG`` differentiates the solution
itself (implicit differentiation): with ``g = M^-1 dL/du``,

    dL/dx = rho g,    dL/dy = A g,    dL/drho = <g, x - u>   (summed over each sample),

one more conjugate-gradient solve in backward.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

#: relative residual at which conjugate gradients stop, by dtype
DEFAULT_TOLERANCE = {torch.float64: 1e-12, torch.float32: 1e-6, torch.float16: 1e-3}


def check_rho(rho: Tensor | float, batch: int) -> Tensor | float:
    """``rho`` as a positive finite number or a tensor broadcastable to ``(B, 1, 1, 1)``."""
    if isinstance(rho, Tensor):
        if rho.numel() not in (1, batch):
            raise ValueError(
                f"rho must be a number or hold one value per image ({batch}), got shape "
                f"{tuple(rho.shape)}; pass e.g. rho=0.1."
            )
        if not bool(torch.isfinite(rho).all()) or not bool((rho > 0).all()):
            raise ValueError(
                f"rho must be finite and > 0, got {rho.detach().flatten()[:4].tolist()}; the "
                "data prox's weight is the inverse of a variance ratio, e.g. rho=0.1."
            )
        return rho.reshape(-1, 1, 1, 1) if rho.numel() == batch else rho.reshape(())
    value = float(rho)
    if not (math.isfinite(value) and value > 0):
        raise ValueError(
            f"rho must be finite and > 0, got {rho!r}; the data prox's weight is the inverse "
            "of a variance ratio, e.g. rho=0.1."
        )
    return value


def _dot(a: Tensor, b: Tensor) -> Tensor:
    """Per-sample inner products, shape ``(B, 1, 1, 1)``."""
    return (a * b).sum(dim=tuple(range(1, a.dim())), keepdim=True)


def conjugate_gradient(
    apply: Callable[[Tensor], Tensor],
    b: Tensor,
    x0: Tensor | None = None,
    tol: float | None = None,
    max_iter: int = 500,
) -> Tensor:
    """Solve ``M u = b`` for symmetric positive definite ``M`` (``apply(u) = M u``), one system
    per sample of the batch, until every relative residual ``||b - M u|| / ||b||`` is below
    ``tol`` (by default 1e-12 in float64, 1e-6 in float32) or after ``max_iter`` iterations."""
    tol = DEFAULT_TOLERANCE.get(b.dtype, 1e-6) if tol is None else tol
    u = torch.zeros_like(b) if x0 is None else x0.clone()
    r = b - apply(u) if x0 is not None else b.clone()
    p = r.clone()
    rr = _dot(r, r)
    b_norm = _dot(b, b).sqrt().clamp_min(torch.finfo(b.dtype).tiny)
    for _ in range(max_iter):
        if bool((rr.sqrt() <= tol * b_norm).all()):
            break
        mp = apply(p)
        curvature = _dot(p, mp)
        alpha = torch.where(curvature > 0, rr / curvature.clamp_min(torch.finfo(b.dtype).tiny), 0)
        u = u + alpha * p
        r = r - alpha * mp
        rr_new = _dot(r, r)
        beta = torch.where(rr > 0, rr_new / rr.clamp_min(torch.finfo(b.dtype).tiny), 0)
        p = r + beta * p
        rr = rr_new
    return u


class DataProxCG(torch.autograd.Function):
    """``(A^T A + rho I)^-1 (A^T y + rho x)`` by conjugate gradients, differentiated implicitly."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, y: Tensor, rho: Tensor, op: Any, max_iter: int) -> Tensor:
        def normal_plus_rho(u: Tensor) -> Tensor:
            return op._A_adjoint(op._A(u)) + rho * u

        with torch.no_grad():
            u = conjugate_gradient(normal_plus_rho, op._A_adjoint(y) + rho * x, x, None, max_iter)
        ctx.op, ctx.max_iter = op, max_iter
        ctx.save_for_backward(x, u, rho)
        return u

    @staticmethod
    def backward(ctx: Any, grad_u: Tensor) -> tuple[Tensor | None, ...]:
        x, u, rho = ctx.saved_tensors
        op = ctx.op

        def normal_plus_rho(v: Tensor) -> Tensor:
            return op._A_adjoint(op._A(v)) + rho * v

        with torch.no_grad():
            g = conjugate_gradient(normal_plus_rho, grad_u, None, None, ctx.max_iter)
            grad_x = rho * g if ctx.needs_input_grad[0] else None
            grad_y = op._A(g) if ctx.needs_input_grad[1] else None
            grad_rho = None
            if ctx.needs_input_grad[2]:
                per_sample = _dot(g, x - u)
                grad_rho = per_sample.sum().reshape(rho.shape) if rho.numel() == 1 else per_sample
                grad_rho = grad_rho.reshape(rho.shape)
        return grad_x, grad_y, grad_rho, None, None
