"""Calibration of the flow posterior's uncertainty on CelebA (``flowprox sample-posterior``).

For each task, the trained GLOW prox of a reproduction (``RUN/train/TASK/glow``) gives ``x^``;
Langevin dynamics or Hamiltonian Monte Carlo (``--leapfrog-steps``, with ``--precondition`` a
diagonal curvature mass matrix, ``--precondition dense`` the whole Gauss-Newton curvature) in
the prior's latent space (the run's prior, or ``--prior``),
started at ``f(x^)``, samples ``p(x | y)``. The step size (and the number of leapfrog steps)
is chosen on ``--val-images`` images of the val split (the setting whose central 90%
per-pixel intervals cover the true pixels closest to 90%: inside the hole for inpainting,
everywhere otherwise); the test split is then sampled once with it. The table gives, on
test: the PSNR of the network and of the posterior mean, the coverage of the 50% and 90%
intervals (inside and outside the hole for inpainting; the 90% one also with its ends at the
rank positions of ``metrics.calibration``, in the hole), the correlation between per-pixel
error and standard deviation, the median ESS and the acceptance rate. The figure stacks each
task's ``uncertainty.png`` (truth, measurement, network, posterior mean, standard deviation,
``|mean - x|``).

Runs already in ``--out`` (a ``report.json``) are read, not sampled again, if they were made
with the same sampler, samples, burn-in and number of images (a run of other settings is an
error, never read as this one).

Usage::

    python bench/posterior_calibration.py --run runs/repro-small --data ../shared/data
        --out runs/posterior [--tasks inpaint,deblur] [--step-sizes 1e-5,3e-5,1e-4,3e-4,1e-3,3e-3]
        [--leapfrog-steps 40,120 --precondition [dense]] [--prior PRIOR.pt] [--images 16]
        [--val-images 16] [--samples 100] [--burn-in 100] [--markdown OUT.md] [--figure OUT.png]
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import numpy as np
from PIL import Image

from flowprox.apps.posterior import PRECONDITIONERS, SamplerSettings, sample_posterior

Setting = tuple[float, int]  # (step size, leapfrog steps; 0: Langevin)


def _sample(args: argparse.Namespace, task: str, split: str, setting: Setting) -> dict:
    step, leapfrog = setting
    out = _folder(args, task, split, setting)
    settings = SamplerSettings(
        samples=args.samples, burn_in=args.burn_in, step_size=step,
        metropolis=args.metropolis, leapfrog_steps=leapfrog, precondition=args.precondition,
    )  # fmt: skip
    images = args.images if split == "test" else args.val_images or args.images
    if (out / "report.json").is_file():
        return _reuse(out, settings, images)
    model = args.run / "train" / task / "glow" / "checkpoints" / "best.pt"
    report = sample_posterior(model, args.data, out, images, settings, args.prior, split)
    print(f"{task} {split} {_name(setting)}: coverage_90 {_target(report):.3f}", flush=True)
    return report


def _reuse(out: Path, settings: SamplerSettings, images: int) -> dict:
    """The report already in ``out``, if it was made with these settings; an error otherwise
    (a run of other settings is never read as this one)."""
    report = json.loads((out / "report.json").read_text())
    made = (report.get("sampler"), report.get("samples"), report.get("burn_in"), report["images"])
    asked = (settings.describe(), settings.samples, settings.burn_in, images)
    if made != asked:
        raise SystemExit(
            f"{out} holds a run of (sampler, samples, burn-in, images) = {made}, not {asked}; "
            "pass another --out (or remove that folder to sample it again)."
        )
    return report


def _folder(args: argparse.Namespace, task: str, split: str, setting: Setting) -> Path:
    """Where one sampler's run on one split is kept (read again instead of sampled again)."""
    mass = _mass_suffix(args.precondition)
    return args.out / task / f"{split}-{_name(setting)}{mass}-S{args.samples}-B{args.burn_in}"


def _mass_suffix(precondition: str) -> str:
    """Folder suffix of a mass matrix (none for the diagonal, as in earlier runs' folders)."""
    return {"none": "-identity", "diagonal": "", "dense": "-dense"}[precondition]


def _name(setting: Setting) -> str:
    step, leapfrog = setting
    return f"h{step:g}" + (f"-L{leapfrog}" if leapfrog else "")


def _target(report: dict) -> float:
    """The 90% coverage the step size is chosen by: in the hole for inpainting."""
    return report.get("coverage_90_hole", report["coverage_90"])


def _miss(report: dict) -> float:
    """How far the 90% coverage is from 90% (inf for a chain that diverged)."""
    if report.get("non_finite_proposals", 0.0) > 0.01:
        return math.inf  # the step is too large for this flow: its inverse overflowed
    miss = abs(_target(report) - 0.9)
    return (
        miss if math.isfinite(miss) and math.isfinite(report["psnr_posterior_mean"]) else math.inf
    )


def _row(task: str, setting: Setting, val: dict, test: dict) -> str:
    hole = "coverage_90_hole" in test
    cov = (
        f"{test['coverage_50_hole']:.3f} / {test['coverage_50_observed']:.3f} | "
        f"{test['coverage_90_hole']:.3f} / {test['coverage_90_observed']:.3f}"
        if hole
        else f"{test['coverage_50']:.3f} | {test['coverage_90']:.3f}"
    )
    rank = test.get("coverage_90_hole_rank", test.get("coverage_90_rank"))
    rank = "-" if rank is None else f"{rank:.3f}"  # reports before the rank ends lack it
    ess = f"{test['ess_median']:.0f}"
    if "ess_median_hole" in test:  # reports before the hole's ESS lack it
        ess += f" (hole {test['ess_median_hole']:.0f})"
    return (
        f"| {test['task']} | {test.get('sampler', _name(setting))} | {_target(val):.3f} | "
        f"{test['psnr_network']:.2f} | "
        f"{test['psnr_posterior_mean']:.2f} | {cov} | {rank} | "
        f"{test['error_std_correlation']:.3f} | "
        f"{ess} / {test['samples']} | {test['acceptance']:.2f} | "
        f"{test.get('non_finite_proposals', 0.0):.3f} |"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", type=Path, required=True, help="a reproduction's folder")
    parser.add_argument("--data", required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--tasks", default="inpaint,deblur")
    parser.add_argument("--step-sizes", default="1e-5,3e-5,1e-4,3e-4,1e-3,3e-3")
    parser.add_argument("--leapfrog-steps", default="0", help="0: Langevin; L > 0: HMC")
    parser.add_argument(
        "--precondition", nargs="?", const="diagonal", default="none", choices=PRECONDITIONERS
    )
    parser.add_argument("--prior", type=Path, help="the sampler's prior (default: the run's)")
    parser.add_argument("--images", type=int, default=16, help="test images")
    parser.add_argument("--val-images", type=int, default=0, help="val images (0: --images)")
    parser.add_argument("--samples", type=int, default=100)
    parser.add_argument("--burn-in", type=int, default=100)
    parser.add_argument("--metropolis", action="store_true")
    parser.add_argument("--markdown", type=Path)
    parser.add_argument("--figure", type=Path)
    args = parser.parse_args()
    settings = [
        (float(step), int(leapfrog))
        for step in args.step_sizes.split(",")
        for leapfrog in args.leapfrog_steps.split(",")
    ]
    lines = [
        f"Test split, {args.images} images, {args.samples} samples each after "
        f"{args.burn_in} dropped; the sampler chosen on {args.val_images or args.images} val "
        "images by the 90% coverage (in the hole for inpainting) among "
        + ", ".join(_name(s) for s in settings)
        + ". Coverage: share of true pixels inside the per-pixel central interval (hole / "
        "observed for inpainting).",
        "",
        "| task | sampler | val 90% coverage | PSNR network | PSNR posterior mean | "
        "50% coverage | 90% coverage | 90% coverage, rank ends | corr(error, std) | "
        "ESS (median) | acceptance | non-finite proposals |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    figures = []
    for task in args.tasks.split(","):
        val = {setting: _sample(args, task, "val", setting) for setting in settings}
        best = min(settings, key=lambda setting: _miss(val[setting]))
        test = _sample(args, task, "test", best)
        lines.append(_row(task, best, val[best], test))
        figures.append(_folder(args, task, "test", best) / "uncertainty.png")
    text = "\n".join(lines)
    print(text)
    if args.markdown:
        args.markdown.write_text(text + "\n")
    if args.figure:
        images = [np.asarray(Image.open(path).convert("RGB")) for path in figures]
        width = max(image.shape[1] for image in images)
        padded = [np.pad(i, ((0, 0), (0, width - i.shape[1]), (0, 0)), constant_values=255)
                  for i in images]  # fmt: skip
        Image.fromarray(np.concatenate(padded)).save(args.figure)
    return 0


if __name__ == "__main__":
    sys.exit(main())
