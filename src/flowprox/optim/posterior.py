"""Posterior samples in the flow's latent space: Langevin dynamics (unadjusted or MALA) or
Hamiltonian Monte Carlo.

With a flow ``x = g(z)`` whose base density is exactly standard normal and measurements
``y = A x + n``, ``n ~ N(0, sigma_n^2 I)``, the posterior over the latent is known up to a
constant (no log-determinant: the density is the base one, ``z`` the variable):

    log p(z | y) = -||y - A g(z)||^2 / (2 sigma_n^2) - ||z||^2 / 2 + const.

Unadjusted Langevin (ULA) steps ``z' = z + h grad log p(z) + sqrt(2 h) xi``; the
Metropolis-adjusted variant (MALA) accepts ``z'`` with probability
``min(1, p(z') q(z | z') / (p(z) q(z' | z)))``, ``q(a | b) = N(a; b + h grad log p(b), 2 h I)``,
which removes ULA's bias of order ``h``. Every row of ``y`` is its own chain; run several
chains of one measurement by repeating its row. Started from the unrolled network's
reconstruction, ``z_0 = f(x^)``, the chains begin near the posterior's bulk. For noise-free
measurements ``sigma_n`` must be given a small floor (the posterior is otherwise degenerate).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor
from tqdm import tqdm

from flowprox.physics.operators import LinearOperator

Decoder = Callable[[Tensor], Tensor]


@dataclass
class PosteriorSamples:
    """Kept samples ``(S, B, ...)`` (images), their mean and standard deviation ``(B, ...)``,
    the step size, the acceptance rate (MALA; for ULA 1 less the non-finite share), the
    effective sample size of every pixel's chain ``(B, ...)`` and the share of proposals whose
    image was not finite (rejected, the chain stays put: a sign the step size is too large)."""

    samples: Tensor
    mean: Tensor
    std: Tensor
    step_size: float
    acceptance: float
    ess: Tensor
    non_finite: float = 0.0


def log_posterior(z: Tensor, decode: Decoder, y: Tensor, op: LinearOperator, sigma_n: float):
    """``log p(z | y)`` up to a constant, per chain ``(B,)``, and its gradient in ``z``.

    A chain whose image ``g(z)``, value or gradient is not finite (the flow's inverse
    overflowed) gets ``-inf`` and a zero gradient, so that the samplers reject the move instead
    of failing."""
    with torch.enable_grad():
        z = z.detach().requires_grad_(True)
        x = decode(z)
        finite = torch.isfinite(x).flatten(1).all(1)
        shape = (-1, *([1] * (x.dim() - 1)))
        x = torch.where(finite.view(shape), x, torch.zeros_like(x))
        residual = (op.A(x) - y).flatten(1).pow(2).sum(1)
        value = -residual / (2 * sigma_n**2) - 0.5 * z.flatten(1).pow(2).sum(1)
        (gradient,) = torch.autograd.grad(value[finite].sum(), z)
    finite = finite & torch.isfinite(value) & torch.isfinite(gradient).flatten(1).all(1)
    value = torch.where(finite, value.detach(), torch.full_like(value, -math.inf))
    gradient = torch.where(finite.view((-1, *([1] * (z.dim() - 1)))), gradient, 0.0)
    return value, gradient


def _check_noise_level(sigma_n: float) -> None:
    if not (sigma_n > 0 and math.isfinite(sigma_n)):
        raise ValueError(
            f"sigma_n must be > 0, got {sigma_n}; for noise-free measurements pass a small "
            "floor (e.g. 0.01): the posterior is otherwise concentrated on A x = y."
        )


def _log_proposal(to: Tensor, start: Tensor, gradient: Tensor, step: float) -> Tensor:
    """``log q(to | start)`` up to a constant, per chain."""
    return -(to - start - step * gradient).flatten(1).pow(2).sum(1) / (4 * step)


def langevin_posterior(
    decode: Decoder,
    y: Tensor,
    op: LinearOperator,
    sigma_n: float,
    z0: Tensor,
    steps: int = 1000,
    step_size: float = 1e-3,
    burn_in: int = 200,
    thin: int = 1,
    metropolis: bool = False,
    generator: torch.Generator | None = None,
    progress: bool = False,
) -> PosteriorSamples:
    """Sample ``p(z | y)`` from ``z0`` and return statistics of the images ``decode(z)``.

    Args:
        decode: the flow's inverse ``g`` from latents ``(B, ...)`` to images.
        y: measurements, one chain per row.
        op: the forward operator.
        sigma_n: the noise level (> 0; a floor for noise-free measurements).
        z0: the chains' starting latents, e.g. ``f(x^)``.
        steps: Langevin steps after burn-in.
        step_size: ``h``.
        burn_in: steps discarded first.
        thin: keep every ``thin``-th step.
        metropolis: MALA (accept/reject) instead of ULA.
        generator: the noise's source (on ``z0``'s device).
        progress: show a progress bar (tqdm) over the steps.
    """
    _check_noise_level(sigma_n)
    if not (step_size > 0 and steps >= 1 and burn_in >= 0 and thin >= 1):
        raise ValueError(
            f"need step_size > 0, steps >= 1, burn_in >= 0 and thin >= 1; got {step_size}, "
            f"{steps}, {burn_in}, {thin}."
        )
    z = z0.detach().clone()
    value, gradient = log_posterior(z, decode, y, op, sigma_n)
    kept, accepted, proposed, non_finite = [], 0.0, 0, 0.0
    for step in tqdm(range(burn_in + steps), "Langevin", unit="step", disable=not progress):
        noise = torch.randn(z.shape, generator=generator, dtype=z.dtype, device=z.device)
        proposal = z + step_size * gradient + math.sqrt(2 * step_size) * noise
        new_value, new_gradient = log_posterior(proposal, decode, y, op, sigma_n)
        if metropolis:
            log_ratio = (
                new_value
                - value
                + _log_proposal(z, proposal, new_gradient, step_size)
                - _log_proposal(proposal, z, gradient, step_size)
            )
            uniform = torch.rand(log_ratio.shape, generator=generator, dtype=z.dtype)
            accept = (uniform.to(z.device).log() < log_ratio) & torch.isfinite(new_value)
        else:
            accept = torch.isfinite(new_value)
        shape = (-1, *([1] * (z.dim() - 1)))
        z = torch.where(accept.view(shape), proposal, z)
        value = torch.where(accept, new_value, value)
        gradient = torch.where(accept.view(shape), new_gradient, gradient)
        if step >= burn_in:
            accepted += float(accept.float().mean())
            non_finite += float((~torch.isfinite(new_value)).float().mean())
            proposed += 1
            if (step - burn_in) % thin == 0:
                with torch.no_grad():
                    kept.append(decode(z).detach())
    return _statistics(kept, step_size, accepted / max(proposed, 1), non_finite / max(proposed, 1))


def hamiltonian_posterior(
    decode: Decoder,
    y: Tensor,
    op: LinearOperator,
    sigma_n: float,
    z0: Tensor,
    samples: int = 100,
    step_size: float = 1e-2,
    leapfrog_steps: int = 20,
    burn_in: int = 20,
    jitter: float = 0.2,
    mass: Tensor | None = None,
    generator: torch.Generator | None = None,
    progress: bool = False,
) -> PosteriorSamples:
    """Sample ``p(z | y)`` by Hamiltonian Monte Carlo from ``z0``; statistics of ``decode(z)``.

    Each sample is one trajectory: momentum ``p ~ N(0, M)``, ``leapfrog_steps`` leapfrog steps
    of size ``eps`` (drawn per trajectory uniformly in ``step_size * [1 - jitter, 1 + jitter]``,
    against periodic orbits), accepted with ``min(1, exp(H(z, p) - H(z', p')))``,
    ``H = -log p(z | y) + p^T M^-1 p / 2``. ``mass`` is a fixed ``M``: diagonal (``z``'s
    shape; ``None``: the identity), e.g. :func:`diagonal_curvature` at ``z0``, so that each
    coordinate moves on the scale of its own posterior width; or, for flat latents ``(B, D)``,
    dense ``(B, D, D)``, e.g. :func:`gauss_newton_curvature` at ``z0``, so that the chain moves
    in the coordinates that whiten the posterior's local Gaussian (correlated directions too).
    With noise-free measurements the posterior is stiff (curvature ``~||A J||^2 / sigma_n^2``
    along the measured directions, ``~1`` along the others): Langevin's step must stay below
    the stiff scale and then crosses the soft directions in ``~1 / h`` steps, a trajectory of
    ``L`` leapfrog steps in ``~1 / (L eps)``.
    A trajectory that meets a non-finite image is rejected and counted. ``progress`` shows a
    progress bar (tqdm) over the trajectories with the acceptance rate so far.
    """
    _check_noise_level(sigma_n)
    if not (step_size > 0 and samples >= 1 and leapfrog_steps >= 1 and burn_in >= 0
            and 0 <= jitter < 1):  # fmt: skip
        raise ValueError(
            "need step_size > 0, samples >= 1, leapfrog_steps >= 1, burn_in >= 0 and "
            f"0 <= jitter < 1; got {step_size}, {samples}, {leapfrog_steps}, {burn_in}, {jitter}."
        )
    z = z0.detach().clone()
    kinetic = _Kinetic(z, mass)
    value, gradient = log_posterior(z, decode, y, op, sigma_n)
    shape = (-1, *([1] * (z.dim() - 1)))
    kept, accepted, non_finite = [], 0.0, 0.0
    bar = tqdm(range(burn_in + samples), "HMC", unit="trajectory", disable=not progress)
    tried = 0.0  # acceptances over every trajectory so far, burn-in included (the bar's)
    for trajectory in bar:
        unit = float(torch.rand((), generator=generator))
        eps = step_size * (1 + jitter * (2 * unit - 1))
        noise = torch.randn(z.shape, generator=generator, dtype=z.dtype, device=z.device)
        momentum = kinetic.momentum(noise)
        start_energy = -value + 0.5 * noise.flatten(1).pow(2).sum(1)
        position, new_gradient = z, gradient
        broken = torch.zeros_like(value, dtype=torch.bool)
        momentum = momentum + 0.5 * eps * new_gradient
        for step in range(leapfrog_steps):
            position = position + eps * kinetic.velocity(momentum)
            new_value, new_gradient = log_posterior(position, decode, y, op, sigma_n)
            broken |= ~torch.isfinite(new_value)
            scale = eps if step < leapfrog_steps - 1 else 0.5 * eps
            momentum = momentum + scale * new_gradient
        energy = -new_value + kinetic.energy(momentum)
        log_ratio = torch.where(broken, -math.inf, start_energy - energy)
        uniform = torch.rand(log_ratio.shape, generator=generator, dtype=z.dtype)
        accept = uniform.to(z.device).log() < log_ratio
        z = torch.where(accept.view(shape), position, z)
        value = torch.where(accept, new_value, value)
        gradient = torch.where(accept.view(shape), new_gradient, gradient)
        if trajectory >= burn_in:
            accepted += float(accept.float().mean())
            non_finite += float(broken.float().mean())
            with torch.no_grad():
                kept.append(decode(z).detach())
        tried += float(accept.float().mean())
        bar.set_postfix(acceptance=f"{tried / (trajectory + 1):.2f}")
    return _statistics(kept, step_size, accepted / samples, non_finite / samples)


class _Kinetic:
    """The kinetic energy ``p^T M^-1 p / 2`` of a fixed mass matrix ``M``: diagonal (``z``'s
    shape) or dense ``(B, D, D)`` for flat ``z`` ``(B, D)`` (through its float64 Cholesky factor
    ``M = C C^T``: ``p = C xi`` and ``M^-1 p`` by two triangular solves)."""

    def __init__(self, z: Tensor, mass: Tensor | None) -> None:
        self.dense = mass is not None and z.dim() == 2 and mass.shape == (*z.shape, z.shape[1])
        if mass is None:
            mass = torch.ones_like(z)
        if self.dense:
            factor, info = torch.linalg.cholesky_ex(mass.double())
            if bool((info != 0).any()) or not bool(torch.isfinite(factor).all()):
                raise ValueError("a dense mass matrix must be symmetric positive definite.")
            self.factor = factor
        elif mass.shape != z.shape or not bool((mass > 0).all()):
            raise ValueError(
                f"mass must be positive with z's shape {tuple(z.shape)}, or (for flat z) a "
                f"dense (B, D, D) matrix; got {tuple(mass.shape)}."
            )
        else:
            self.mass = mass.to(z)

    def momentum(self, noise: Tensor) -> Tensor:
        """``p ~ N(0, M)`` from ``noise ~ N(0, I)``."""
        if self.dense:
            return (self.factor @ noise.double().unsqueeze(-1)).squeeze(-1).to(noise.dtype)
        return self.mass.sqrt() * noise

    def velocity(self, momentum: Tensor) -> Tensor:
        """``M^-1 p``."""
        if self.dense:
            solved = torch.cholesky_solve(momentum.double().unsqueeze(-1), self.factor)
            return solved.squeeze(-1).to(momentum.dtype)
        return momentum / self.mass

    def energy(self, momentum: Tensor) -> Tensor:
        """``p^T M^-1 p / 2`` per chain."""
        return 0.5 * (momentum * self.velocity(momentum)).flatten(1).sum(1)


def gauss_newton_curvature(
    z: Tensor, decode: Decoder, op: LinearOperator, sigma_n: float, chunk: int = 128
) -> Tensor:
    """``I + (A J)^T (A J) / sigma_n^2`` at flat latents ``z`` ``(B, D)``, dense ``(B, D, D)`` in
    float64: the Gauss-Newton curvature of ``-log p(z | y)`` (``J`` the Jacobian of ``decode``),
    a mass matrix for :func:`hamiltonian_posterior`. Exact: every row of ``A J`` is the
    vector-Jacobian product of a unit vector of the measurement space, ``chunk`` rows at a time
    on copies of one chain's ``z`` (so ``op`` must act on any batch, and ``decode`` on each
    image alone, as a flow does). Costs one backward pass per measured coordinate."""
    _check_noise_level(sigma_n)
    if z.dim() != 2 or chunk < 1:
        raise ValueError(
            f"the dense curvature needs flat latents (B, D) and chunk >= 1; got z of shape "
            f"{tuple(z.shape)} and chunk {chunk}."
        )
    batch, size = z.shape
    with torch.no_grad():
        count = op.A(decode(z[:1])).flatten(1).shape[1]  # measured values per image
    curvature = torch.empty(batch, size, size, dtype=torch.float64)
    for chain in range(batch):
        rows = []
        with torch.enable_grad():
            for start in range(0, count, chunk):
                index = torch.arange(start, min(start + chunk, count))
                copies = z[chain].detach().expand(len(index), size).clone().requires_grad_(True)
                outputs = op.A(decode(copies)).flatten(1)
                unit = torch.zeros_like(outputs)
                unit[torch.arange(len(index)), index.to(unit.device)] = 1.0
                (row,) = torch.autograd.grad(outputs, copies, unit)
                rows.append(row.detach().double().cpu())
        jacobian = torch.cat(rows)  # A J, (measurements, D)
        curvature[chain] = jacobian.T @ jacobian / sigma_n**2
        curvature[chain].diagonal().add_(1.0)
    return curvature.to(z.device)


def diagonal_curvature(
    z: Tensor,
    decode: Decoder,
    op: LinearOperator,
    sigma_n: float,
    probes: int = 8,
    generator: torch.Generator | None = None,
) -> Tensor:
    """``1 + diag(J^T A^T A J) / sigma_n^2`` at ``z`` (``J`` the Jacobian of ``decode``): the
    Gauss-Newton curvature of ``-log p(z | y)`` on the diagonal, estimated with ``probes``
    Rademacher vectors ``v`` of the measurement space as the mean of ``(J^T A^T v)^2``
    (unbiased: ``E[(B^T v)_i^2] = sum_j B_ji^2``); a mass matrix for
    :func:`hamiltonian_posterior`."""
    if probes < 1:
        raise ValueError(f"probes must be >= 1, got {probes}.")
    with torch.enable_grad():
        z = z.detach().requires_grad_(True)
        x = decode(z)
        measured = op.A(x)
        total = torch.zeros_like(z)
        for probe in range(probes):
            sign = torch.randint(0, 2, measured.shape, generator=generator, dtype=z.dtype)
            sign = (2 * sign - 1).to(measured.device)
            (row,) = torch.autograd.grad(measured, z, sign, retain_graph=probe < probes - 1)
            total += row.pow(2)
    curvature = 1 + total / probes / sigma_n**2
    return torch.where(torch.isfinite(curvature), curvature, torch.ones_like(curvature)).detach()


def _statistics(
    kept: list[Tensor], step_size: float, acceptance: float, non_finite: float
) -> PosteriorSamples:
    """Mean, standard deviation and effective sample size of the kept images."""
    samples = torch.stack(kept)
    return PosteriorSamples(
        samples=samples,
        mean=samples.mean(0),
        std=samples.std(0, unbiased=True) if len(kept) > 1 else torch.zeros_like(samples[0]),
        step_size=step_size,
        acceptance=acceptance,
        ess=effective_sample_size(samples),
        non_finite=non_finite,
    )


def effective_sample_size(chain: Tensor) -> Tensor:
    """ESS of every coordinate of a chain ``(S, ...)``: ``S / tau`` with the integrated
    autocorrelation time ``tau = -1 + 2 sum_k (rho_2k + rho_2k+1)``, summed while the pair sums
    stay positive (Geyer's initial positive sequence)."""
    samples = chain.shape[0]
    if samples < 4:
        return torch.full(chain.shape[1:], float(samples), dtype=chain.dtype)
    flat = chain.reshape(samples, -1).double()
    centred = flat - flat.mean(0)
    size = 2 ** math.ceil(math.log2(2 * samples))
    spectrum = torch.fft.rfft(centred, n=size, dim=0)
    autocovariance = torch.fft.irfft(spectrum * spectrum.conj(), n=size, dim=0)[:samples]
    variance = autocovariance[0].clamp_min(1e-300)
    rho = autocovariance / variance
    half = samples // 2
    pairs = rho[0 : 2 * half : 2] + rho[1 : 2 * half : 2]  # Gamma_k = rho_2k + rho_2k+1
    positive = torch.cumprod((pairs > 0).double(), dim=0)  # up to the first Gamma_k <= 0
    tau = -1 + 2 * (pairs * positive).sum(0)
    tau = tau.clamp_min(1e-3)
    ess = (samples / tau).clamp(max=samples).to(chain.dtype)
    constant = autocovariance[0] <= 0
    ess[constant] = samples
    return ess.view(chain.shape[1:])
