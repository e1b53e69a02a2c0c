"""The data prox ``(A^T A + rho I)^-1 (A^T y + rho x)`` of every operator (flowprox.physics)."""

from __future__ import annotations

import math

import pytest
import torch

from flowprox.physics.data_prox import DataProxCG, conjugate_gradient
from flowprox.physics.operators import GaussianBlur, Identity, LinearOperator, Mask

SIZE = 12


def operators() -> dict[str, LinearOperator]:
    generator = torch.Generator().manual_seed(3)
    return {
        "identity": Identity(),
        "centre-mask": Mask.center_square(SIZE, SIZE, 5),
        "random-mask": Mask.random_pixels(SIZE, SIZE, 0.4, generator, channels=3),
        "blur-circular": GaussianBlur(1.5),
        "blur-zero": GaussianBlur(1.5, boundary="zero"),
    }


CLOSED_FORM = {"identity", "centre-mask", "random-mask", "blur-circular"}


def batch(seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    x = torch.rand(2, 3, SIZE, SIZE, generator=generator, dtype=torch.float64)
    y = torch.rand(2, 3, SIZE, SIZE, generator=generator, dtype=torch.float64)
    return x, y


@pytest.mark.parametrize("name", sorted(operators()))
@pytest.mark.parametrize("rho", [1e-4, 0.5, 20.0, "per-image"])
def test_prox_solves_the_normal_equations(name: str, rho: float | str) -> None:
    op = operators()[name]
    x, y = batch(0)
    weight = torch.tensor([0.05, 3.0], dtype=torch.float64) if rho == "per-image" else rho
    u = op.prox_data(x, y, weight)
    r = weight.view(-1, 1, 1, 1) if isinstance(weight, torch.Tensor) else weight
    lhs = op.A_adjoint(op.A(u)) + r * u
    rhs = op.A_adjoint(y) + r * x
    relative = float(torch.linalg.vector_norm(lhs - rhs) / torch.linalg.vector_norm(rhs))
    assert relative < (1e-10 if name in CLOSED_FORM else 1e-8)


def test_conjugate_gradients_equal_the_closed_form_on_a_circular_blur() -> None:
    op = GaussianBlur(2.0)
    x, y = batch(1)
    closed = op.prox_data(x, y, 0.01)
    iterative = DataProxCG.apply(x, y, torch.tensor(0.01, dtype=torch.float64), op, 1000)
    assert torch.allclose(closed, iterative, atol=1e-9, rtol=0)


def test_the_prox_is_the_minimiser_of_its_objective() -> None:
    # Independent of the normal equations: no random perturbation lowers the objective.
    op = GaussianBlur(1.5, boundary="zero")
    x, y = batch(2)
    rho = 0.3
    u = op.prox_data(x, y, rho)

    def objective(v: torch.Tensor) -> float:
        return float(0.5 * (op.A(v) - y).pow(2).sum() + 0.5 * rho * (v - x).pow(2).sum())

    generator = torch.Generator().manual_seed(0)
    best = objective(u)
    for _ in range(5):
        step = 1e-3 * torch.randn(u.shape, generator=generator, dtype=u.dtype)
        assert objective(u + step) > best


@pytest.mark.parametrize("name", sorted(operators()))
def test_gradients_in_x_y_and_rho_match_finite_differences(name: str) -> None:
    op = operators()[name]
    generator = torch.Generator().manual_seed(4)
    x = torch.rand(2, 3, 6, 6, generator=generator, dtype=torch.float64, requires_grad=True)
    y = torch.rand(2, 3, 6, 6, generator=generator, dtype=torch.float64, requires_grad=True)
    if isinstance(op, Mask):
        op = Mask(op.mask[:, :6, :6]) if op.mask.shape[0] == 1 else Mask(op.mask[:, 3:9, 3:9])
    log_rho = torch.tensor([-1.0, 0.5], dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(
        lambda a, b, c: op.prox_data(a, b, c.exp()), (x, y, log_rho), eps=1e-6, atol=1e-7
    )


def test_a_scalar_rho_tensor_gets_the_sum_of_the_per_image_gradients() -> None:
    op = GaussianBlur(1.5, boundary="zero")
    x, y = (v[:, :1, :6, :6] for v in batch(5))
    rho = torch.tensor(0.7, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda r: op.prox_data(x, y, r), (rho,), eps=1e-6, atol=1e-7)


@pytest.mark.parametrize("rho", [0.0, -1.0, math.nan, math.inf])
@pytest.mark.parametrize("as_tensor", [False, True])
def test_a_bad_rho_is_a_clear_error(rho: float, as_tensor: bool) -> None:
    x, y = batch(6)
    value = torch.tensor(rho, dtype=torch.float64) if as_tensor else rho
    with pytest.raises(ValueError, match="rho must be finite and > 0"):
        GaussianBlur(1.5).prox_data(x, y, value)


def test_rho_of_the_wrong_size_is_a_clear_error() -> None:
    x, y = batch(7)
    with pytest.raises(ValueError, match="one value per image"):
        Identity().prox_data(x, y, torch.ones(5, dtype=torch.float64))


def test_conjugate_gradient_solves_a_known_system() -> None:
    generator = torch.Generator().manual_seed(8)
    q = torch.linalg.qr(torch.randn(5, 5, generator=generator, dtype=torch.float64))[0]
    matrix = q @ torch.diag(torch.tensor([1.0, 2.0, 5.0, 10.0, 50.0], dtype=torch.float64)) @ q.T
    b = torch.randn(1, 5, 1, 1, generator=generator, dtype=torch.float64)

    def apply(v: torch.Tensor) -> torch.Tensor:
        return (matrix @ v.reshape(5)).reshape(1, 5, 1, 1)

    solution = conjugate_gradient(apply, b)
    expected = torch.linalg.solve(matrix, b.reshape(5)).reshape(1, 5, 1, 1)
    assert torch.allclose(solution, expected, atol=1e-12, rtol=0)
