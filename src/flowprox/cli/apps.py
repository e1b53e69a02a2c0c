"""The ``restore`` and ``demo`` subcommands: a user's own images, and a first offline run."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import torch

from flowprox.apps.demo import run_demo
from flowprox.apps.posterior import PRECONDITIONERS, SamplerSettings, sample_posterior
from flowprox.apps.restore import (
    DEFAULT_MODE,
    MODES,
    InitialEstimates,
    Restorer,
    calibrate_restorer,
    load_image,
    output_names,
    read_mask,
    restore_task,
    save_image,
)
from flowprox.cli.options import (
    add_strict_argument,
    non_negative_int,
    positive_float,
    positive_int,
)
from flowprox.metrics.quality import psnr
from flowprox.metrics.typicality import TypicalRange
from flowprox.models.prior import load_prior
from flowprox.models.unrolled import load_unrolled
from flowprox.physics.tasks import task_label
from flowprox.utils.images import ALPHA_CHOICES, read_image

DEFAULT_FALSE_ALARM = 0.05


def _check_restore_flags(args: argparse.Namespace) -> float:
    """Refuse the flags that would otherwise be ignored; the false-alarm rate to use."""
    if args.noise is not None and not args.simulate:
        raise ValueError(
            "--noise sets the noise --simulate adds to clean inputs; your images already hold "
            "their noise: leave --noise out, or add --simulate."
        )
    false_alarm = DEFAULT_FALSE_ALARM if args.false_alarm is None else args.false_alarm
    if not 0 < false_alarm < 0.5:
        raise ValueError(
            f"--false-alarm must be in (0, 0.5), got {args.false_alarm:g}; 0.05 flags 5% of "
            "restored validation images."
        )
    if args.false_alarm is not None and not args.calibration_data:
        raise ValueError(
            "--false-alarm is used when calibrating: add --calibration-data DATA (a saved "
            "threshold keeps the rate it was calibrated with)."
        )
    if args.samples and args.mode == "tiles":
        raise ValueError(
            "--samples draws one chain over the whole image, which --mode tiles never sees at "
            "once; use --mode native (or resize)."
        )
    if args.prior and not Path(args.prior).is_file():
        raise FileNotFoundError(
            f"--prior {args.prior} not found; pass a prior checkpoint (e.g. "
            "runs/prior/checkpoints/best.pt), or leave --prior out to use the run's."
        )
    return false_alarm


def command_restore(args: argparse.Namespace) -> int:
    """Restore (or, with --simulate, degrade then restore) image files at their own size."""

    false_alarm = _check_restore_flags(args)
    network, config = load_unrolled(args.checkpoint)
    channels = config.prior_model.in_channels
    task = restore_task(config, args.window, args.sigma_b, args.noise)
    paths = [Path(p) for p in args.images]
    names = output_names(paths)
    images = [load_image(path, channels, args.alpha) for path in paths]
    mask = read_mask(args.mask) if args.mask else None
    initial = InitialEstimates(network, config, args.prior) if args.mode == "native" else None
    restorer = Restorer(
        network, config, args.mode, task,
        in_input_pixels=args.window is not None or args.sigma_b is not None,
        mask=mask, initial=initial,
    )  # fmt: skip
    for (image, _), path in zip(images, paths, strict=True):
        try:
            restorer.check((image.shape[-2], image.shape[-1]), args.simulate)
        except ValueError as error:
            raise ValueError(f"{path}: {error}") from error

    prior_path = args.prior or config.prior
    prior, n_bits = None, 8
    if prior_path and Path(prior_path).is_file():
        prior, prior_config = load_prior(prior_path)
        n_bits = prior_config["train"]["n_bits"]
    typical: TypicalRange | None = None
    cache = Path(str(args.checkpoint) + ".typicality.json")
    if args.calibration_data and prior is None:
        raise ValueError(
            f"--calibration-data needs the prior to score with, but the run's prior "
            f"{config.prior or '(none)'} is not there; pass --prior PRIOR.pt."
        )
    if prior is not None and args.calibration_data:
        typical = calibrate_restorer(
            network,
            config,
            prior,
            args.calibration_data,
            n_bits,
            false_alarm,
            strict=args.strict,
        )
        typical.save(cache)
        print(
            f"typicality threshold: {typical.high:.3f} bits/dim, exceeded by "
            f"{100 * typical.false_alarm:g}% of {typical.source}; saved to {cache}"
        )
    elif prior is not None and cache.is_file():
        typical = TypicalRange.load(cache)
    if args.samples and prior is None:
        raise ValueError(
            f"--samples draws from the posterior under the prior, but the run's prior "
            f"{config.prior or '(none)'} is not there; pass --prior PRIOR.pt."
        )
    sampler = SamplerSettings(
        samples=args.samples,
        step_size=args.sample_step,
        seed=args.seed,
        leapfrog_steps=args.sample_leapfrog_steps,
        precondition=args.sample_precondition if args.sample_leapfrog_steps > 0 else "none",
    )

    described = "mask " + str(args.mask) if args.mask else task_label(task)
    print(
        f"{config.model.prox} network for {task_label(config.task)}; operator: {described}; "
        f"mode {args.mode}"
    )
    if args.samples:
        print(f"posterior samples: {args.samples} per image by {sampler.describe()}")
    out = Path(args.out)
    rows: list[dict[str, Any]] = []
    written = 0
    for index, (path, name, (image, image_format)) in enumerate(
        zip(paths, names, images, strict=True)
    ):
        result = restorer.restore(image, path, args.simulate, args.seed, index)
        target = save_image(result.restored, out / f"{name}_restored.png", image_format)
        written += 1
        size = result.restored.shape[-2:]
        row: dict[str, Any] = {"image": str(path), "size": f"{size[1]}x{size[0]}"}
        if result.measurement is not None:
            measured = save_image(result.measurement, out / f"{name}_measurement.png", image_format)
            original, _ = read_image(path, args.alpha)
            row["PSNR measurement"] = f"{_psnr_of_file(measured, original):.2f}"
            row["PSNR restored"] = f"{_psnr_of_file(target, original):.2f}"
        if args.samples:
            posterior = restorer.sample_posterior(prior, result, sampler, index)  # type: ignore[arg-type]
            save_image(posterior.mean, out / f"{name}_posterior_mean.png", image_format)
            scale = float(posterior.std.max()) or 1.0
            save_image(posterior.std / scale, out / f"{name}_posterior_std.png", image_format)
            row["std max"] = f"{scale:.3f}"
            row["ESS"] = f"{posterior.ess_median:.0f}/{posterior.samples}"
        if prior is not None:
            value = restorer.score(prior, result, n_bits)
            row["bits/dim"] = f"{value:.3f}"
            if typical is not None:
                row["typical"] = "yes" if typical.is_typical(value) else "NO"
        row["output"] = target.name
        rows.append(row)
    _print_rows(rows)
    flagged = [r["image"] for r in rows if r.get("typical") == "NO"]
    if flagged:
        print(
            f"warning: {len(flagged)} image(s) score above the prior's typicality threshold "
            f"{typical.high:.3f} bits/dim ({', '.join(flagged)}): they look unlike the "  # type: ignore[union-attr]
            f"training images, so the restoration may be unreliable (the threshold also flags "
            f"{100 * typical.false_alarm:g}% of validation images)."
        )
    if prior is not None and typical is None:
        print("(no typicality threshold yet: pass --calibration-data DATA once to calibrate it)")
    if prior is None:
        where = f"the run's prior {config.prior} is not there; " if config.prior else ""
        print(f"(no likelihood score: {where}pass --prior PRIOR.pt)")
    print(f"wrote {written} restored image(s) to {out}")
    return 0


def _psnr_of_file(path: Path, original: Any) -> float:
    """PSNR of the image file ``path`` against ``original`` pixels ``(H, W, C)``."""
    pixels, _ = read_image(path)
    as_batch = [torch.from_numpy(a).permute(2, 0, 1)[None].double() for a in (pixels, original)]
    return float(psnr(*as_batch)[0])


def _print_rows(rows: list[dict[str, Any]]) -> None:
    columns = list(dict.fromkeys(key for row in rows for key in row))
    widths = {c: max(len(c), *(len(str(r.get(c, ""))) for r in rows)) for c in columns}
    print("  ".join(c.ljust(widths[c]) for c in columns))
    for row in rows:
        print("  ".join(str(row.get(c, "")).ljust(widths[c]) for c in columns))


def add_restore_command(commands: Any) -> None:
    """Register ``restore`` on the subparsers ``commands``."""
    restore = commands.add_parser(
        "restore",
        help="restore your own degraded images",
        description="Restore image files at their own resolution with a trained network.",
    )
    restore.add_argument("images", nargs="+", help="image files (the measurements)")
    restore.add_argument("--checkpoint", required=True, help="a trained unrolled network")
    restore.add_argument("--out", required=True, help="folder for the restored images")
    restore.add_argument(
        "--mode",
        choices=MODES,
        default=DEFAULT_MODE,
        help=(
            "native: the whole image in one pass, padded to a multiple of 2^levels, from x_0 "
            "computed for its size (no seams, all the context; needs the run's prior and memory "
            "for the whole image); tiles: overlapping tiles of the model's size blended with a "
            "smooth window (bounded memory, no prior needed); resize: shrink to the model's "
            f"size and back (loses detail) (default: {DEFAULT_MODE})"
        ),
    )
    change = restore.add_mutually_exclusive_group()
    change.add_argument(
        "--window", type=int, help="inpaint a centre hole of this size, in the input's pixels"
    )
    change.add_argument(
        "--mask",
        help="inpaint with this mask image (white = observed), of the input's size",
    )
    change.add_argument(
        "--sigma-b", type=float, help="deblur a Gaussian blur of this std, in the input's pixels"
    )
    restore.add_argument(
        "--noise", type=float, help="measurement noise std that --simulate adds (--simulate only)"
    )
    restore.add_argument(
        "--simulate",
        action="store_true",
        help="inputs are clean: degrade, restore, print the PSNR of the written files",
    )
    restore.add_argument(
        "--alpha",
        choices=ALPHA_CHOICES,
        default="white",
        help="drop an alpha channel by compositing on white or black, or refuse transparent "
        "images (default: white)",
    )
    restore.add_argument("--prior", help="prior for the likelihood score (default: the run's)")
    restore.add_argument(
        "--calibration-data", help="calibrate the typicality threshold on this data's val split"
    )
    restore.add_argument(
        "--false-alarm",
        type=float,
        default=None,
        help="fraction of validation images the calibrated threshold flags, in (0, 0.5), with "
        f"--calibration-data (default: {DEFAULT_FALSE_ALARM})",
    )
    restore.add_argument(
        "--seed", type=int, default=2022, help="noise seed for --simulate and --samples"
    )
    restore.add_argument(
        "--samples",
        type=non_negative_int,
        default=0,
        help="draw this many posterior samples per image (Langevin in the prior's latent space, "
        "from the restoration) and write NAME_posterior_mean.png and NAME_posterior_std.png "
        "(the per-pixel standard deviation, scaled so its maximum is white; the table gives "
        "the maximum) (default: 0, none)",
    )
    restore.add_argument(
        "--sample-step",
        type=positive_float,
        default=SamplerSettings().step_size,
        help=f"Langevin step size for --samples (default: {SamplerSettings().step_size:g}); "
        "with --sample-leapfrog-steps the leapfrog step (e.g. 0.05)",
    )
    restore.add_argument(
        "--sample-leapfrog-steps",
        type=non_negative_int,
        default=0,
        help="draw --samples by Hamiltonian Monte Carlo with this many leapfrog steps per "
        "sample and a curvature mass matrix (--sample-precondition) instead of "
        "Langevin (default: 0, Langevin)",
    )
    restore.add_argument(
        "--sample-precondition",
        choices=[mass for mass in PRECONDITIONERS if mass != "none"],
        default="diagonal",
        help="HMC's mass matrix, as sample-posterior --precondition (default: diagonal)",
    )
    add_strict_argument(restore)
    restore.set_defaults(handler=command_restore)


def command_demo(args: argparse.Namespace) -> int:
    """The method end to end on scikit-image's bundled faces, offline, in minutes."""

    run_demo(args.out, minutes=args.minutes, redo=args.redo or ())
    return 0


def add_demo_command(commands: Any) -> None:
    """Register ``demo`` on the subparsers ``commands``."""
    demo = commands.add_parser("demo", help="a first run: offline, minutes, a figure and a table")
    demo.add_argument("--out", default="flowprox-demo", help="output folder")
    demo.add_argument(
        "--minutes",
        type=positive_float,
        default=1.5,
        help="training time of each of the two stages",
    )
    demo.add_argument(
        "--redo",
        action="append",
        choices=["prior", "train", "all"],
        help="train this stage again (and the ones after it) with these settings",
    )
    demo.set_defaults(handler=command_demo)


def command_sample_posterior(args: argparse.Namespace) -> int:
    """Posterior samples, uncertainty maps and their calibration for test images."""
    settings = SamplerSettings(
        samples=args.samples,
        burn_in=args.burn_in,
        thin=args.thin,
        step_size=args.step_size,
        metropolis=args.metropolis,
        sigma_floor=args.sigma_floor,
        seed=args.seed,
        leapfrog_steps=args.leapfrog_steps,
        precondition=args.precondition,
    )
    report = sample_posterior(
        args.model, args.data, args.out, args.images, settings, args.prior, args.split
    )
    for key, value in report.items():
        print(f"{key}: {value:.4g}" if isinstance(value, float) else f"{key}: {value}")
    print(f"report, images and uncertainty.png in {args.out}")
    return 0


def add_sample_posterior_command(commands: Any) -> None:
    """Register ``sample-posterior`` on the subparsers ``commands``."""
    sampler = commands.add_parser(
        "sample-posterior",
        help="posterior samples and uncertainty maps from the flow prior",
        description="Langevin dynamics in the prior's latent space from the network's "
        "reconstruction: posterior mean, per-pixel standard deviation and their calibration.",
    )
    sampler.add_argument("--model", required=True, help="a trained unrolled network (best.pt)")
    sampler.add_argument("--data", required=True, help="the data with a test split")
    sampler.add_argument("--out", type=Path, required=True, help="a new output folder")
    sampler.add_argument("--prior", help="the pre-trained prior (None: the run's)")
    sampler.add_argument(
        "--split",
        default="test",
        choices=["test", "val", "prior"],
        help="the split whose images to use; 'prior': images drawn from the prior and measured "
        "at the noise level the sampler assumes, where the intervals must cover at their "
        "nominal rate if the chains mix (the sampler's own check)",
    )
    sampler.add_argument("--images", type=positive_int, default=16, help="images to sample")
    sampler.add_argument("--samples", type=positive_int, default=100, help="samples kept")
    sampler.add_argument("--burn-in", type=non_negative_int, default=100, help="steps dropped")
    sampler.add_argument("--thin", type=positive_int, default=2, help="keep every n-th step")
    sampler.add_argument(
        "--step-size", type=positive_float, default=1e-4, help="Langevin h (HMC: leapfrog step)"
    )
    sampler.add_argument(
        "--metropolis", action="store_true", help="Metropolis-adjusted (MALA) instead of ULA"
    )
    sampler.add_argument(
        "--leapfrog-steps",
        type=non_negative_int,
        default=0,
        help="Hamiltonian Monte Carlo with this many leapfrog steps of --step-size per sample "
        "(one trajectory per sample; --burn-in counts trajectories) instead of Langevin: far "
        "fewer gradient evaluations to cross a stiff posterior, e.g. a noise-free task's",
    )
    sampler.add_argument(
        "--precondition",
        nargs="?",
        const="diagonal",
        default="none",
        choices=list(PRECONDITIONERS),
        help="HMC's mass matrix from the Gauss-Newton curvature of -log p(z | y) at f(x^): "
        "'diagonal' (the flag alone; 8 random probes), so that each latent moves on its own "
        "posterior scale, or 'dense' (exact, one backward pass per measured value), so that "
        "correlated latents move together too",
    )
    sampler.add_argument(
        "--sigma-floor",
        type=positive_float,
        default=0.01,
        help="the noise level used when the task's is lower (noise-free tasks)",
    )
    sampler.add_argument(
        "--seed", type=non_negative_int, default=0, help="seeds the Langevin noise"
    )
    sampler.set_defaults(handler=command_sample_posterior)
