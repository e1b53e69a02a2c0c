"""Super-resolution, compressed sensing and Cartesian MRI: exact adjoints, the data prox's normal
equations, the known norms, and clear errors."""

from __future__ import annotations

import pytest
import torch

from flowprox.physics.operators import LinearOperator
from flowprox.physics.subsampling import (
    CartesianMRI,
    DenseGaussian,
    SubsampledDCT,
    SuperResolution,
    dct_matrix,
    variable_density_lines,
)

SHAPE = (2, 3, 8, 8)


def operators() -> dict[str, LinearOperator]:
    return {
        "sr2": SuperResolution(2),
        "sr4": SuperResolution(4),
        "cs": SubsampledDCT(8, 8, 0.3, seed=1),
        "mri4": CartesianMRI(8, 4, seed=2),
        "mri2": CartesianMRI(8, 2, center_fraction=0.25, seed=3),
        "dense": DenseGaussian((3, 8, 8), 50, seed=4),
    }


NORMS = {"sr2": 1 / 4, "sr4": 1 / 16, "cs": 1.0, "mri4": 1.0, "mri2": 1.0}


def _random(shape, seed: int) -> torch.Tensor:
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


@pytest.mark.parametrize("name", sorted(operators()))
def test_adjoint_identity_in_float64(name: str) -> None:
    op = operators()[name]
    x = _random(SHAPE, 0)
    y = _random(op.measurement_shape(SHAPE), 1)
    assert op.A(x).shape == y.shape
    left = float((op.A(x) * y).sum())
    right = float((x * op.A_adjoint(y)).sum())
    assert abs(left - right) <= 1e-10 * max(abs(left), 1.0)


def _matrix(function, shape) -> torch.Tensor:
    """The matrix of a linear map, column by column from the basis vectors."""
    size = int(torch.tensor(shape).prod())
    basis = torch.eye(size, dtype=torch.float64).view(size, *shape)
    return function(basis).reshape(size, -1).T


@pytest.mark.parametrize("name", sorted(operators()))
def test_adjoint_is_the_transpose_of_the_dense_matrix(name: str) -> None:
    op = operators()[name]
    image = (3, 8, 8)
    measured = op.measurement_shape((1, *image))[1:]
    forward = _matrix(op.A, image)
    adjoint = _matrix(op.A_adjoint, measured)
    assert torch.allclose(adjoint, forward.T, atol=1e-12)


@pytest.mark.parametrize("rho", [1e-6, 0.5, 20.0])
@pytest.mark.parametrize("name", sorted(operators()))
def test_data_prox_solves_the_normal_equations(name: str, rho: float) -> None:
    op = operators()[name]
    x = _random(SHAPE, 2)
    y = op.A(_random(SHAPE, 3)) + 0.1 * _random(op.measurement_shape(SHAPE), 4)
    u = op.prox_data(x, y, rho, max_iter=2000)
    residual = op.normal(u) + rho * u - (op.A_adjoint(y) + rho * x)
    scale = float((op.A_adjoint(y) + rho * x).norm())
    tolerance = 1e-8 if name == "dense" else 1e-10  # conjugate gradients against closed forms
    assert float(residual.norm()) <= tolerance * scale


@pytest.mark.parametrize("name", sorted(NORMS))
def test_known_norm(name: str) -> None:
    assert operators()[name].norm_squared((3, 8, 8)) == pytest.approx(NORMS[name], rel=1e-6)


def test_dense_gaussian_norm_is_its_largest_singular_value_squared() -> None:
    op = DenseGaussian((3, 8, 8), 50, seed=4)
    expected = float(torch.linalg.matrix_norm(op.matrix.double(), 2)) ** 2
    assert op.norm_squared((3, 8, 8)) == pytest.approx(expected, rel=1e-6)


def test_dct_matrix_is_orthonormal() -> None:
    d = dct_matrix(16)
    assert torch.allclose(d @ d.T, torch.eye(16, dtype=torch.float64), atol=1e-12)


def test_mri_lines_are_symmetric_centred_and_about_height_over_acceleration() -> None:
    for height, acceleration in ((32, 4), (64, 8), (64, 4)):
        lines = variable_density_lines(height, acceleration, 0.08, seed=0)
        assert torch.equal(lines, lines[(-torch.arange(height)) % height])
        assert lines[0] == 1 and lines[1] == 1 and lines[-1] == 1  # the centre (FFT order)
        assert abs(float(lines.sum()) - height / acceleration) <= 2


def test_clear_errors() -> None:
    with pytest.raises(ValueError, match="divisible by 3"):
        SuperResolution(3).A(torch.rand(1, 3, 8, 8))
    with pytest.raises(ValueError, match="ratio must be in"):
        SubsampledDCT(8, 8, 0.0)
    with pytest.raises(ValueError, match="built for"):
        SubsampledDCT(8, 8, 0.5).A(torch.rand(1, 3, 16, 16))
    with pytest.raises(ValueError, match="acceleration must be"):
        CartesianMRI(8, 0.5)
    with pytest.raises(ValueError, match="too large"):
        DenseGaussian((3, 64, 64), 4096)
