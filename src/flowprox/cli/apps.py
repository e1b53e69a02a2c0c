"""The ``restore`` and ``demo`` subcommands: a user's own images, and a first offline run."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from flowprox.apps.demo import run_demo
from flowprox.apps.restore import (
    calibrate_restorer,
    operator_for,
    prepare_measurements,
    resize,
    restore_task,
    write_image,
)
from flowprox.evaluation.reconstruct import reconstruct_all
from flowprox.metrics.quality import psnr
from flowprox.metrics.typicality import TypicalRange, image_bits_per_dim
from flowprox.models.prior import load_prior
from flowprox.models.unrolled import load_unrolled
from flowprox.physics.tasks import task_label


def command_restore(args: argparse.Namespace) -> int:
    """Restore (or, with --simulate, degrade then restore) image files."""

    network, config = load_unrolled(args.checkpoint)
    resolution = config.data.resolution
    task = restore_task(config, args.window, args.sigma_b, args.noise)
    op = operator_for(task, resolution, args.mask)
    paths = [Path(p) for p in args.images]
    y, clean, sizes = prepare_measurements(paths, resolution, task, op, args.simulate, args.seed)
    x_hat = reconstruct_all(network, y, op, batch_size=32)
    described = "mask " + str(args.mask) if args.mask else task_label(task)
    print(f"{config.model.prox} network for {task_label(config.task)}; operator: {described}")

    prior_path = args.prior or (config.prior if config.prior else None)
    prior, n_bits = None, 8
    if prior_path and Path(prior_path).is_file():
        prior, prior_config = load_prior(prior_path)
        n_bits = prior_config["train"]["n_bits"]
    typical: TypicalRange | None = None
    cache = Path(str(args.checkpoint) + ".typicality.json")
    if prior is not None and args.calibration_data:
        typical = calibrate_restorer(
            network, config, prior, args.calibration_data, n_bits, args.false_alarm
        )
        typical.save(cache)
        print(
            f"typicality threshold: {typical.high:.3f} bits/dim, exceeded by "
            f"{100 * typical.false_alarm:g}% of {typical.source}; saved to {cache}"
        )
    elif prior is not None and cache.is_file():
        typical = TypicalRange.load(cache)
    bpd = image_bits_per_dim(prior, x_hat, n_bits) if prior is not None else None

    out = Path(args.out)
    psnr_in = psnr_out = None
    if clean is not None:
        psnr_in, psnr_out = psnr(y, clean), psnr(x_hat, clean)
    rows: list[dict[str, Any]] = []
    for index, (path, size) in enumerate(zip(paths, sizes, strict=True)):
        restored = resize(x_hat[index : index + 1], size)[0]
        target = out / f"{path.stem}_restored.png"
        write_image(restored, target)
        if clean is not None:
            write_image(resize(y[index : index + 1].clamp(0, 1), size)[0],
                        out / f"{path.stem}_measurement.png")  # fmt: skip
        row: dict[str, Any] = {"image": path.name, "size": f"{size[1]}x{size[0]}"}
        if psnr_in is not None and psnr_out is not None:
            row["PSNR measurement"] = f"{float(psnr_in[index]):.2f}"
            row["PSNR restored"] = f"{float(psnr_out[index]):.2f}"
        if bpd is not None:
            value = float(bpd[index])
            row["bits/dim"] = f"{value:.3f}"
            if typical is not None:
                row["typical"] = "yes" if typical.is_typical(value) else "NO"
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
    if bpd is not None and typical is None:
        print("(no typicality threshold yet: pass --calibration-data DATA once to calibrate it)")
    if prior is None:
        print("(no likelihood score: pass --prior PRIOR.pt)")
    print(f"wrote {len(paths)} restored image(s) to {out}")
    return 0


def _print_rows(rows: list[dict[str, Any]]) -> None:
    columns = list(dict.fromkeys(key for row in rows for key in row))
    widths = {c: max(len(c), *(len(str(r.get(c, ""))) for r in rows)) for c in columns}
    print("  ".join(c.ljust(widths[c]) for c in columns))
    for row in rows:
        print("  ".join(str(row.get(c, "")).ljust(widths[c]) for c in columns))


def add_restore_command(commands: Any) -> None:
    """Register ``restore`` on the subparsers ``commands``."""
    restore = commands.add_parser("restore", help="restore your own degraded images")
    restore.add_argument("images", nargs="+", help="image files (the measurements)")
    restore.add_argument("--checkpoint", required=True, help="a trained unrolled network")
    restore.add_argument("--out", required=True, help="folder for the restored images")
    change = restore.add_mutually_exclusive_group()
    change.add_argument("--window", type=int, help="inpaint a centre hole of this size")
    change.add_argument("--mask", help="inpaint with this mask image (white = observed)")
    change.add_argument("--sigma-b", type=float, help="deblur a Gaussian blur of this std")
    restore.add_argument("--noise", type=float, help="measurement noise std (--simulate)")
    restore.add_argument(
        "--simulate", action="store_true", help="inputs are clean: degrade, restore, print PSNR"
    )
    restore.add_argument("--prior", help="prior for the likelihood score (default: the run's)")
    restore.add_argument(
        "--calibration-data", help="calibrate the typicality threshold on this data's val split"
    )
    restore.add_argument(
        "--false-alarm",
        type=float,
        default=0.05,
        help="fraction of validation images the calibrated threshold flags (default 0.05)",
    )
    restore.add_argument("--seed", type=int, default=2022, help="noise seed for --simulate")
    restore.set_defaults(handler=command_restore)


def command_demo(args: argparse.Namespace) -> int:
    """The method end to end on scikit-image's bundled faces, offline, in minutes."""

    run_demo(args.out, minutes=args.minutes)
    return 0


def add_demo_command(commands: Any) -> None:
    """Register ``demo`` on the subparsers ``commands``."""
    demo = commands.add_parser("demo", help="a first run: offline, minutes, a figure and a table")
    demo.add_argument("--out", default="flowprox-demo", help="output folder")
    demo.add_argument(
        "--minutes", type=float, default=1.5, help="training time of each of the two stages"
    )
    demo.set_defaults(handler=command_demo)
