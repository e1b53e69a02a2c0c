"""TV-regularised reconstruction by primal-dual iterations, the classical reference of the
operators with a pseudo-inverse (super-resolution, compressed sensing, MRI)."""

from __future__ import annotations

import pytest
import torch
from conftest import smooth_images

from flowprox.metrics.quality import psnr
from flowprox.optim.classical import classical_candidates, classical_name, classical_reconstruction
from flowprox.optim.tv import (
    image_gradient,
    image_gradient_adjoint,
    total_variation,
    tv_reconstruction,
)
from flowprox.physics.operators import Identity, LinearOperator
from flowprox.physics.subsampling import CartesianMRI, SubsampledDCT, SuperResolution


def _objective(x: torch.Tensor, y: torch.Tensor, op: LinearOperator, weight: float) -> float:
    return float(0.5 * (op.A(x) - y).pow(2).sum() + weight * total_variation(x).sum())


def _operators(size: int) -> list[LinearOperator]:
    return [
        SuperResolution(2),
        SubsampledDCT(size, size, ratio=0.3, seed=1),
        CartesianMRI(size, acceleration=4, seed=2),
    ]


def test_the_gradient_adjoint_is_exact_in_float64() -> None:
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, 7, 9, generator=generator, dtype=torch.float64)
    q = torch.randn(2, 3, 2, 7, 9, generator=generator, dtype=torch.float64)
    lhs = (image_gradient(x) * q).sum()
    rhs = (x * image_gradient_adjoint(q)).sum()
    assert abs(float(lhs - rhs)) < 1e-10 * float(lhs.abs() + rhs.abs())
    assert float(total_variation(torch.ones(1, 1, 5, 5))[0]) == 0.0


@pytest.mark.parametrize("op_index", [0, 1, 2])
def test_the_solution_is_a_minimiser_and_beats_zero_filling(op_index: int) -> None:
    x = smooth_images(2, 3, 16, seed=3).double()
    op = _operators(16)[op_index].double()
    y = op.A(x) + 0.02 * torch.randn(
        op.A(x).shape, generator=torch.Generator().manual_seed(4), dtype=torch.float64
    )
    weight = 0.02
    x_tv = tv_reconstruction(y, op, weight, iterations=1000)
    value = _objective(x_tv, y, op, weight)
    # no feasible point nearby is better: random and structured perturbations inside the box
    generator = torch.Generator().manual_seed(5)
    for scale in (1e-2, 1e-3):
        for _ in range(5):
            other = x_tv + scale * torch.randn(x.shape, generator=generator, dtype=x.dtype)
            assert _objective(other.clamp(0, 1), y, op, weight) >= value - 1e-6
    zero_filled = op.pseudo_inverse(y).clamp(0, 1)
    assert value <= _objective(zero_filled, y, op, weight)
    if not isinstance(op, SuperResolution):  # aliasing, which TV removes
        assert float(psnr(x_tv, x).mean()) > float(psnr(zero_filled, x).mean()) + 0.5


def test_with_the_identity_it_is_tv_denoising() -> None:
    x = smooth_images(1, 3, 16, seed=6).double()
    y = x + 0.05 * torch.randn(x.shape, generator=torch.Generator().manual_seed(7)).double()
    weight = 0.05
    x_tv = tv_reconstruction(y, Identity(), weight, iterations=1500)
    x_long = tv_reconstruction(y, Identity(), weight, iterations=3000)
    assert float((x_tv - x_long).abs().max()) < 1e-3  # converged
    assert float(psnr(x_tv, x)[0]) > float(psnr(y.clamp(0, 1), x)[0]) + 3.0


def test_it_is_the_classical_reference_of_the_operators_with_a_pseudo_inverse() -> None:
    x = smooth_images(1, 3, 16, seed=8)
    for op in _operators(16):
        assert classical_name(op) == "TV-regularised reconstruction (primal-dual)"
        grid = classical_candidates(op)
        assert grid is not None and min(grid) > 0
        torch.testing.assert_close(
            classical_reconstruction(op.A(x), op, 0.01), tv_reconstruction(op.A(x), op, 0.01)
        )


def test_bad_settings_are_clear_errors() -> None:
    y = torch.zeros(1, 3, 8, 8)
    for weight in (0.0, -1.0, float("nan")):
        with pytest.raises(ValueError, match="weight must be finite and positive"):
            tv_reconstruction(y, Identity(), weight)
    with pytest.raises(ValueError, match="iterations must be a whole number"):
        tv_reconstruction(y, Identity(), 0.1, iterations=0)
