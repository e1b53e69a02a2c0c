"""``flowprox sample-posterior``: posterior samples and uncertainty maps for test images.

For the first ``images`` images of a split, measured with the fixed evaluation seed, the trained
unrolled network gives ``x^``; Langevin dynamics in the pre-trained prior's latent space
(``optim.posterior``), started at ``z_0 = f(x^)``, draws samples of ``p(x | y)``. Reported:
the PSNR of the posterior mean and of ``x^``, the coverage of the per-pixel central 50% and 90%
intervals (everywhere, and inside and outside the hole for inpainting), the correlation between
per-pixel error and standard deviation, the step size, acceptance rate and effective sample
size (its median over all pixels, and inside and outside the hole); a figure (truth,
measurement, ``x^``, mean, standard deviation, ``|mean - x|``) and the mean and
standard-deviation images are written.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

from flowprox.evaluation.evaluate import load_evaluation_set
from flowprox.evaluation.figures import comparison_figure
from flowprox.metrics.calibration import (
    error_std_correlation,
    interval_coverage,
    region_median,
)
from flowprox.metrics.quality import psnr
from flowprox.models.prior import load_prior
from flowprox.models.unrolled import load_unrolled
from flowprox.optim.posterior import (
    PosteriorSamples,
    diagonal_curvature,
    gauss_newton_curvature,
    hamiltonian_posterior,
    langevin_posterior,
)
from flowprox.physics.operators import LinearOperator, Mask
from flowprox.physics.tasks import task_label

#: HMC's mass matrix: the identity, the diagonal of the Gauss-Newton curvature at ``f(x^)``
#: (``optim.posterior.diagonal_curvature``) or all of it (``gauss_newton_curvature``)
PRECONDITIONERS = ("none", "diagonal", "dense")


@dataclass(frozen=True)
class SamplerSettings:
    """The sampler's settings: Langevin (``optim.posterior.langevin_posterior``; ``burn_in``
    and ``thin`` count steps) or, with ``leapfrog_steps > 0``, Hamiltonian Monte Carlo
    (``hamiltonian_posterior``; one trajectory per sample, ``burn_in`` counts trajectories,
    ``thin`` and ``metropolis`` unused)."""

    samples: int = 100
    burn_in: int = 100
    thin: int = 2
    step_size: float = 1e-4
    metropolis: bool = False
    sigma_floor: float = 0.01
    seed: int = 0
    leapfrog_steps: int = 0
    precondition: str = "none"

    def __post_init__(self) -> None:
        if self.precondition not in PRECONDITIONERS:
            raise ValueError(
                f"precondition must be one of {', '.join(PRECONDITIONERS)}; got "
                f"{self.precondition!r}."
            )

    def describe(self) -> str:
        """The sampler in words."""
        if self.leapfrog_steps > 0:
            mass = {
                "none": "",
                "diagonal": ", mass diag(curvature at f(x^))",
                "dense": ", mass = Gauss-Newton curvature at f(x^) (dense)",
            }[self.precondition]
            return f"HMC, {self.leapfrog_steps} leapfrog steps of {self.step_size:g}{mass}"
        return f"{'MALA' if self.metropolis else 'ULA'}, step {self.step_size:g}"


def draw_samples(
    decode: Callable[[Tensor], Tensor],
    y: Tensor,
    op: LinearOperator,
    sigma_n: float,
    z0: Tensor,
    settings: SamplerSettings,
    seed: int,
) -> PosteriorSamples:
    """Samples of ``p(z | y)`` from ``z0`` by the sampler ``settings`` names."""
    generator = torch.Generator().manual_seed(seed)
    if settings.precondition != "none" and settings.leapfrog_steps <= 0:
        raise ValueError(
            "precondition (a curvature mass matrix) is for Hamiltonian Monte Carlo: pass "
            "--leapfrog-steps L as well, or drop --precondition."
        )
    if settings.leapfrog_steps > 0:
        mass = None
        if settings.precondition == "diagonal":
            mass = diagonal_curvature(z0, decode, op, sigma_n, generator=generator)
        elif settings.precondition == "dense":
            mass = gauss_newton_curvature(z0, decode, op, sigma_n)
        return hamiltonian_posterior(
            decode, y, op, sigma_n, z0, samples=settings.samples,
            step_size=settings.step_size, leapfrog_steps=settings.leapfrog_steps,
            burn_in=settings.burn_in, mass=mass, generator=generator, progress=True,
        )  # fmt: skip
    return langevin_posterior(
        decode, y, op, sigma_n, z0, steps=settings.samples * settings.thin,
        step_size=settings.step_size, burn_in=settings.burn_in, thin=settings.thin,
        metropolis=settings.metropolis, generator=generator, progress=True,
    )  # fmt: skip


def sample_posterior(
    model: str | Path,
    data: str | Path,
    out: str | Path,
    images: int = 16,
    settings: SamplerSettings = SamplerSettings(),
    prior: str | Path | None = None,
    split: str = "test",
) -> dict[str, float]:
    """Sample the posterior of ``images`` images of ``split``; write the report in ``out``
    (which must not hold a report already: nothing is overwritten).

    ``split="prior"`` is the sampler's own calibration check: the true images are drawn from
    the prior itself, ``x = g(z)``, ``z ~ N(0, I)``, and measured with noise of the level the
    sampler assumes, so that the posterior it targets is exactly right; its central intervals
    then cover the truth at their nominal rate (averaged over the draws) if the chains mix,
    and a shortfall on real images that is absent here is the prior's, not the sampler's."""
    if (Path(out) / "report.json").exists():
        raise ValueError(
            f"{out} already holds a posterior report; choose another --out (nothing is "
            "overwritten)."
        )
    network, config = load_unrolled(model)
    prior_path = prior or config.prior
    if not prior_path or not Path(prior_path).is_file():
        raise FileNotFoundError(
            f"the prior {prior_path!r} of this run is not there; pass --prior PRIOR.pt (the "
            "pre-trained prior the run started from)."
        )
    flow, _ = load_prior(prior_path)
    flow.requires_grad_(False)
    evaluation = load_evaluation_set(
        config.task,
        "in-distribution",
        data,
        config.data.resolution,
        images,
        split="val" if split == "prior" else split,
    )
    x, y, op = evaluation.x, evaluation.y, evaluation.op
    size = tuple(x.shape[-2:])
    sigma = max(config.task.sigma_n, settings.sigma_floor)
    if split == "prior":
        x, y = prior_draws(flow, op, x, sigma, settings.seed)
    with torch.no_grad():
        x_hat = network(y, op).clamp(0, 1)
        z0, _ = flow(x_hat)
    decode = lambda z: flow.inverse(z, image_size=size)  # noqa: E731
    result = draw_samples(decode, y, op, sigma, z0, settings, settings.seed)
    samples = result.samples.clamp(0, 1)
    mean, std = samples.mean(0), samples.std(0)
    report = {
        "task": task_label(config.task),
        "truth": "prior draws (the sampler's check)" if split == "prior" else f"{split} split",
        "images": len(x),
        "samples": len(samples),
        "burn_in": settings.burn_in,
        "sigma_n_used": sigma,
        "sampler": settings.describe(),
        "step_size": result.step_size,
        "acceptance": result.acceptance,
        "non_finite_proposals": result.non_finite,
        "ess_median": float(result.ess.median()),
        "ess_min": float(result.ess.min()),
        "psnr_network": float(psnr(x_hat, x).mean()),
        "psnr_posterior_mean": float(psnr(mean, x).mean()),
        "error_std_correlation": error_std_correlation(mean, std, x),
    }
    regions: dict[str, Tensor | None] = {"": None}
    if isinstance(op, Mask):
        observed = op.mask.to(x)
        regions |= {"_hole": (1 - observed).expand_as(x[0]), "_observed": observed.expand_as(x[0])}
    for name, region in regions.items():
        if name:  # the chains' mixing where the uncertainty is (the hole), and elsewhere
            report[f"ess_median{name}"] = region_median(result.ess, region)
        for level in (50, 90):
            for positions, suffix in (("linear", ""), ("rank", "_rank")):
                report[f"coverage_{level}{name}{suffix}"] = interval_coverage(
                    samples, x, level / 100, region, positions
                )
    _write(Path(out), report, x, y, op, x_hat, mean, std)
    return report


def prior_draws(
    flow: nn.Module, op: LinearOperator, like: Tensor, sigma_n: float, seed: int
) -> tuple[Tensor, Tensor]:
    """Images ``x = g(z)``, ``z ~ N(0, I)``, as many and as large as ``like``, and their
    measurements ``y = A x + sigma_n n``, seeded. ``x`` is clamped to [0, 1] after it is
    measured: the reports score clamped samples, and clamping is monotone, so a clamped
    interval covers the clamped truth exactly when the unclamped one covers the truth."""
    generator = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        latent, _ = flow(like)
        z = torch.randn(latent.shape, generator=generator, dtype=latent.dtype)
        x = flow.inverse(z.to(latent.device), image_size=tuple(like.shape[-2:]))
        measured = op.A(x)
        noise = torch.randn(measured.shape, generator=generator, dtype=measured.dtype)
        y = measured + sigma_n * noise.to(measured.device)
    if not bool(torch.isfinite(x).all()):
        raise ValueError(
            "a draw from the prior overflowed the flow's inverse; pass another --seed."
        )
    return x.clamp(0, 1), y


def _write(out: Path, report: dict, x: Tensor, y: Tensor, op, x_hat, mean, std) -> None:
    """``report.json``, ``report.md`` and ``uncertainty.png`` (first four images) in ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    lines = ["| quantity | value |", "| --- | --- |"]
    lines += [
        f"| {key} | {value:.4g} |" if isinstance(value, float) else f"| {key} | {value} |"
        for key, value in report.items()
    ]
    (out / "report.md").write_text("\n".join(lines) + "\n")
    shown = slice(0, min(4, len(x)))
    measured = y if y.shape == x.shape else op.A_adjoint(y)
    scale = float(std[shown].max()) or 1.0
    columns = [
        ("measurement", measured[shown].clamp(0, 1)),
        ("network", x_hat[shown]),
        ("posterior mean", mean[shown]),
        (f"std (x{1 / scale:.0f})", (std[shown] / scale).clamp(0, 1)),
        ("|mean - x| (same scale)", ((mean[shown] - x[shown]).abs() / scale).clamp(0, 1)),
    ]
    comparison_figure(
        x[shown], columns, out / "uncertainty.png", title=report["task"],
        unscored=[name for name, _ in columns[3:]],
    )  # fmt: skip
