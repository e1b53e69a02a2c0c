"""Langevin posterior sampling in the latent space, against a closed-form Gaussian posterior.

With a linear "flow" ``x = g(z) = L z + m`` (``z`` standard normal) and a linear ``A``, the
posterior of ``z`` given ``y = A x + n`` is Gaussian with precision
``P = I + (A L)^T (A L) / sigma^2`` and mean ``P^-1 (A L)^T (y - A m) / sigma^2``, so that of
``x`` has mean ``L mu + m`` and covariance ``L P^-1 L^T``.
"""

from __future__ import annotations

import math

import pytest
import torch

from flowprox.metrics.calibration import (
    error_std_correlation,
    interval_coverage,
    region_median,
)
from flowprox.optim.posterior import (
    diagonal_curvature,
    effective_sample_size,
    gauss_newton_curvature,
    hamiltonian_posterior,
    langevin_posterior,
)
from flowprox.physics.subsampling import DenseGaussian

IMAGE = (3, 2, 2)
SIGMA = 0.5


def _problem(chains: int):
    generator = torch.Generator().manual_seed(0)
    size = 12
    lower = torch.eye(size, dtype=torch.float64) + 0.3 * torch.randn(
        size, size, generator=generator, dtype=torch.float64
    )
    shift = 0.5 + 0.1 * torch.randn(size, generator=generator, dtype=torch.float64)
    op = DenseGaussian(IMAGE, 6, seed=1).double()

    def decode(z: torch.Tensor) -> torch.Tensor:
        return (z @ lower.T + shift).view(-1, *IMAGE)

    x_true = decode(torch.randn(1, size, generator=generator, dtype=torch.float64))
    y = op.A(x_true) + SIGMA * torch.randn(1, 1, 1, 6, generator=generator, dtype=torch.float64)
    matrix = op.matrix.double() @ lower  # A L
    precision = torch.eye(size, dtype=torch.float64) + matrix.T @ matrix / SIGMA**2
    covariance_z = torch.linalg.inv(precision)
    residual = y.flatten() - op.matrix.double() @ shift
    mean_z = covariance_z @ matrix.T @ residual / SIGMA**2
    mean_x = lower @ mean_z + shift
    variance_x = torch.diagonal(lower @ covariance_z @ lower.T)
    return decode, y.expand(chains, -1, -1, -1), op, mean_x, variance_x


def _pooled(result):
    """Mean and variance over every sample of every chain, and their Monte Carlo standard
    errors from the summed effective sample sizes."""
    samples = result.samples.flatten(2)  # (S, chains, 12)
    mean = samples.mean((0, 1))
    variance = samples.var((0, 1))
    ess = result.ess.flatten(1).sum(0)  # over chains
    return mean, variance, (variance / ess).sqrt(), variance * (2 / ess).sqrt()


def _assert_within_three_standard_errors(
    mean, variance, mean_error, variance_error, mean_x, variance_x
) -> None:
    """The pooled mean and variance against the closed form, within 3 Monte Carlo errors."""
    assert bool(((mean - mean_x).abs() <= 3 * mean_error).all()), (mean - mean_x) / mean_error
    assert bool(((variance - variance_x).abs() <= 3 * variance_error).all()), (
        variance - variance_x
    ) / variance_error


def test_mala_matches_the_closed_form_posterior_within_three_standard_errors() -> None:
    decode, y, op, mean_x, variance_x = _problem(chains=100)
    z0 = torch.zeros(100, 12, dtype=torch.float64)
    result = langevin_posterior(
        decode, y, op, SIGMA, z0, steps=600, step_size=0.02, burn_in=200, metropolis=True,
        generator=torch.Generator().manual_seed(2),
    )  # fmt: skip
    mean, variance, mean_error, variance_error = _pooled(result)
    assert 0.4 < result.acceptance < 0.99
    _assert_within_three_standard_errors(
        mean, variance, mean_error, variance_error, mean_x, variance_x
    )


def test_hmc_matches_the_closed_form_posterior_within_three_standard_errors() -> None:
    decode, y, op, mean_x, variance_x = _problem(chains=100)
    z0 = torch.zeros(100, 12, dtype=torch.float64)
    result = hamiltonian_posterior(
        decode, y, op, SIGMA, z0, samples=300, step_size=0.1, leapfrog_steps=8, burn_in=30,
        generator=torch.Generator().manual_seed(5),
    )  # fmt: skip
    mean, variance, mean_error, variance_error = _pooled(result)
    assert 0.6 < result.acceptance < 1.0 and result.non_finite == 0.0
    _assert_within_three_standard_errors(
        mean, variance, mean_error, variance_error, mean_x, variance_x
    )


def test_the_diagonal_curvature_is_that_of_the_gauss_newton_matrix() -> None:
    decode, y, op, _, _ = _problem(chains=1)
    z = torch.zeros(1, 12, dtype=torch.float64)
    estimate = diagonal_curvature(z, decode, op, SIGMA, probes=4000,
                                  generator=torch.Generator().manual_seed(6))  # fmt: skip
    lower = decode(torch.eye(12, dtype=torch.float64)).flatten(1).T - decode(z).flatten(1).T
    matrix = op.matrix.double() @ lower  # A J
    exact = 1 + torch.diagonal(matrix.T @ matrix) / SIGMA**2
    torch.testing.assert_close(estimate[0], exact, rtol=0.1, atol=0.0)


def test_hmc_with_the_curvature_as_mass_matches_the_closed_form_posterior() -> None:
    decode, y, op, mean_x, variance_x = _problem(chains=100)
    z0 = torch.zeros(100, 12, dtype=torch.float64)
    mass = diagonal_curvature(z0, decode, op, SIGMA, generator=torch.Generator().manual_seed(7))
    assert float(mass.min()) >= 1 and float(mass.max()) > 5  # not the identity
    result = hamiltonian_posterior(
        decode, y, op, SIGMA, z0, samples=300, step_size=0.3, leapfrog_steps=8, burn_in=30,
        mass=mass, generator=torch.Generator().manual_seed(8),
    )  # fmt: skip
    mean, variance, mean_error, variance_error = _pooled(result)
    assert 0.6 < result.acceptance < 1.0
    _assert_within_three_standard_errors(
        mean, variance, mean_error, variance_error, mean_x, variance_x
    )


def test_the_dense_curvature_is_the_gauss_newton_matrix() -> None:
    decode, y, op, _, _ = _problem(chains=2)
    z = torch.randn(2, 12, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    curvature = gauss_newton_curvature(z, decode, op, SIGMA, chunk=4)  # 6 rows in 2 chunks
    lower = (
        decode(torch.eye(12, dtype=torch.float64)).flatten(1).T
        - decode(torch.zeros(1, 12, dtype=torch.float64)).flatten(1).T
    )
    matrix = op.matrix.double() @ lower  # A J, the same at every z for a linear flow
    exact = torch.eye(12, dtype=torch.float64) + matrix.T @ matrix / SIGMA**2
    for chain in range(2):
        torch.testing.assert_close(curvature[chain], exact, rtol=1e-12, atol=1e-12)


def test_hmc_with_the_dense_curvature_as_mass_matches_the_closed_form_posterior() -> None:
    decode, y, op, mean_x, variance_x = _problem(chains=100)
    z0 = torch.zeros(100, 12, dtype=torch.float64)
    mass = gauss_newton_curvature(z0, decode, op, SIGMA)
    result = hamiltonian_posterior(
        decode, y, op, SIGMA, z0, samples=300, step_size=0.5, leapfrog_steps=3, burn_in=30,
        mass=mass, generator=torch.Generator().manual_seed(9),
    )  # fmt: skip
    mean, variance, mean_error, variance_error = _pooled(result)
    # the mass is the posterior's precision: the whitened posterior is N(0, I), so three
    # leapfrog steps of 0.5 reach nearly independent samples, nearly always accepted
    assert result.acceptance > 0.85, result.acceptance
    assert float(result.ess.flatten(1).median()) > 150, result.ess.flatten(1).median()
    _assert_within_three_standard_errors(
        mean, variance, mean_error, variance_error, mean_x, variance_x
    )


def test_a_dense_mass_must_be_positive_definite() -> None:
    decode, y, op, _, _ = _problem(chains=2)
    z0 = torch.zeros(2, 12, dtype=torch.float64)
    singular = torch.zeros(2, 12, 12, dtype=torch.float64)
    with pytest.raises(ValueError, match="positive definite"):
        hamiltonian_posterior(decode, y, op, SIGMA, z0, samples=2, mass=singular)
    with pytest.raises(ValueError, match="flat latents"):
        gauss_newton_curvature(z0.view(2, 3, 2, 2), decode, op, SIGMA)


def test_unadjusted_langevin_is_close_at_a_small_step() -> None:
    decode, y, op, mean_x, variance_x = _problem(chains=100)
    z0 = torch.zeros(100, 12, dtype=torch.float64)
    result = langevin_posterior(
        decode, y, op, SIGMA, z0, steps=1500, step_size=0.005, burn_in=300,
        generator=torch.Generator().manual_seed(3),
    )  # fmt: skip
    mean, variance, mean_error, variance_error = _pooled(result)
    assert result.acceptance == 1.0
    # ULA's bias is O(h): at h * (largest posterior precision, 49) = 0.25 it stays within
    # four standard errors here
    assert bool(((mean - mean_x).abs() <= 4 * mean_error).all())
    assert bool(((variance - variance_x).abs() <= 4 * variance_error).all())


def test_effective_sample_size_of_independent_and_correlated_chains() -> None:
    generator = torch.Generator().manual_seed(4)
    independent = torch.randn(4000, 3, generator=generator, dtype=torch.float64)
    assert bool((effective_sample_size(independent) > 3000).all())
    ar = torch.zeros(4000, 3, dtype=torch.float64)  # AR(1) with phi = 0.9: tau = 19
    noise = torch.randn(4000, 3, generator=generator, dtype=torch.float64)
    for t in range(1, 4000):
        ar[t] = 0.9 * ar[t - 1] + noise[t]
    ess = effective_sample_size(ar)
    assert bool(((ess > 4000 / 19 / 1.6) & (ess < 4000 / 19 * 1.6)).all()), ess


def test_bad_settings_are_clear_errors() -> None:
    decode, y, op, _, _ = _problem(chains=2)
    z0 = torch.zeros(2, 12, dtype=torch.float64)
    with pytest.raises(ValueError, match="noise-free"):
        langevin_posterior(decode, y, op, 0.0, z0)
    with pytest.raises(ValueError, match="step_size > 0"):
        langevin_posterior(decode, y, op, SIGMA, z0, step_size=0.0)


def test_interval_coverage_of_calibrated_and_overconfident_samples() -> None:
    generator = torch.Generator().manual_seed(5)
    x = torch.randn(4, 1, 8, 8, generator=generator, dtype=torch.float64)
    # the truth is a draw from the same spread as the samples: x itself, samples around a
    # centre displaced by one more draw
    centre = x + torch.randn(x.shape, generator=generator, dtype=torch.float64)
    samples = centre + torch.randn(2000, 4, 1, 8, 8, generator=generator, dtype=torch.float64)
    coverage = interval_coverage(samples, x, 0.9)
    assert 0.8 < coverage < 0.99  # the truth is as far from the centre as one sample
    narrow = centre + 0.1 * torch.randn(2000, 4, 1, 8, 8, generator=generator, dtype=torch.float64)
    assert interval_coverage(narrow, x, 0.9) < 0.2  # over-confident
    region = torch.zeros(1, 1, 8, 8)
    region[..., :4, :] = 1
    assert 0.7 < interval_coverage(samples, x, 0.9, region) < 1.0
    with pytest.raises(ValueError, match="level"):
        interval_coverage(samples, x, 1.5)


def test_rank_positions_give_the_nominal_coverage_for_few_draws() -> None:
    # the truth and 50 samples per pixel are independent draws of one distribution: the rank
    # interval covers it at the nominal rate, (n + 1 - 2 j) / (n + 1), up to Monte Carlo error
    # (200,000 pixels: standard error below 0.001); torch.quantile's falls inside it
    generator = torch.Generator().manual_seed(7)
    x = torch.randn(1000, 1, 10, 20, generator=generator, dtype=torch.float64)
    samples = torch.randn(50, *x.shape, generator=generator, dtype=torch.float64)
    for level in (0.5, 0.9):
        assert abs(interval_coverage(samples, x, level, positions="rank") - level) < 0.005
    assert abs(interval_coverage(samples, x, 0.9) - 0.867) < 0.005  # type 7: inside
    assert abs(interval_coverage(samples[:49], x, 0.92, positions="rank") - 0.92) < 0.005
    with pytest.raises(ValueError, match="positions"):
        interval_coverage(samples, x, 0.9, positions="weibull")


def test_region_median_reads_the_mixing_inside_a_hole() -> None:
    # a chain of 400 images: inside a hole each pixel is AR(1) with rho = 0.8 (ESS about
    # n (1 - rho) / (1 + rho) = 44), outside it independent draws (ESS about n = 400)
    generator = torch.Generator().manual_seed(8)
    hole = torch.zeros(1, 1, 16, 16, dtype=torch.float64)
    hole[..., 4:12, 4:12] = 1
    steps = torch.randn(400, 2, 1, 16, 16, generator=generator, dtype=torch.float64)
    chain = steps.clone()
    for t in range(1, len(chain)):
        chain[t] = hole * (0.8 * chain[t - 1] + 0.6 * steps[t]) + (1 - hole) * steps[t]
    ess = effective_sample_size(chain)
    assert 30 < region_median(ess, hole) < 60
    assert region_median(ess, 1 - hole) > 300
    assert region_median(ess) == float(ess.median())
    with pytest.raises(ValueError, match="no pixel"):
        region_median(ess, torch.zeros_like(hole))


def test_error_std_correlation_sees_where_the_errors_are() -> None:
    generator = torch.Generator().manual_seed(6)
    x = torch.rand(2, 3, 8, 8, generator=generator, dtype=torch.float64)
    std = torch.rand(2, 3, 8, 8, generator=generator, dtype=torch.float64)
    mean = x + std * torch.randn(x.shape, generator=generator, dtype=torch.float64)
    assert error_std_correlation(mean, std, x) > 0.3
    assert abs(error_std_correlation(mean, torch.rand(x.shape, generator=generator), x)) < 0.2


@pytest.mark.parametrize("metropolis", [False, True])
def test_a_proposal_whose_image_overflows_is_rejected_and_counted(metropolis: bool) -> None:
    """A decoder that overflows off the data (as a flow's inverse can) stops neither sampler:
    those proposals are rejected, counted, and every kept sample is finite."""
    decode, y, op, _, _ = _problem(chains=20)

    def overflowing(z: torch.Tensor) -> torch.Tensor:
        x = decode(z)
        far = z.abs().amax(dim=1) > 1.0
        return torch.where(far.view(-1, 1, 1, 1), torch.full_like(x, math.inf), x)

    z0 = torch.zeros(20, 12, dtype=torch.float64)
    result = langevin_posterior(
        overflowing, y, op, SIGMA, z0, steps=200, step_size=0.05, burn_in=20,
        metropolis=metropolis, generator=torch.Generator().manual_seed(4),
    )  # fmt: skip
    assert 0.0 < result.non_finite < 1.0
    assert result.acceptance <= 1.0 - result.non_finite + 1e-12
    assert bool(torch.isfinite(result.samples).all())
