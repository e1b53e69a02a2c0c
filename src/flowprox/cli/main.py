"""The ``flowprox`` command line: thin subcommands over the library."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

from flowprox._version import __version__
from flowprox.cli.apps import add_demo_command, add_restore_command, add_sample_posterior_command
from flowprox.cli.options import (
    FlowproxParser,
    add_device_argument,
    add_strict_argument,
    fraction,
    non_negative_float,
    non_negative_int,
    positive_int,
)
from flowprox.cli.tasks import add_task_commands
from flowprox.config import DataConfig, PriorExperiment, load_config, preset_path
from flowprox.data.datasets import load_splits
from flowprox.flows import Glow
from flowprox.models.prior import load_prior
from flowprox.physics.operators import GaussianBlur, Identity, LinearOperator, Mask
from flowprox.training.pretrain import evaluate_bits_per_dim, pretrain_prior
from flowprox.utils.images import save_grid
from flowprox.utils.runlock import RunLock


def _count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


def build_operator(args: argparse.Namespace) -> LinearOperator:
    """The operator named by ``--operator`` with its settings."""
    if args.operator == "identity":
        return Identity()
    if args.operator == "center-mask":
        return Mask.center_square(args.size, args.size, args.window)
    if args.operator == "random-mask":
        generator = torch.Generator().manual_seed(args.seed)
        return Mask.random_pixels(args.size, args.size, args.fraction_missing, generator)
    return GaussianBlur(args.sigma_b, kernel_size=args.kernel_size, boundary=args.boundary)


def command_info(args: argparse.Namespace) -> int:
    """Print versions and the compute devices torch sees."""
    print(f"flowprox {__version__}")
    print(f"torch {torch.__version__}; CUDA available: {torch.cuda.is_available()}")
    for index in range(torch.cuda.device_count()):
        print(f"  cuda:{index} {torch.cuda.get_device_name(index)}")
    print(f"CPU threads: {torch.get_num_threads()}")
    return 0


def command_glow_summary(args: argparse.Namespace) -> int:
    """Parameter count and latent layout of a Glow, and of the K-fold unrolled network."""
    glow = Glow(args.channels, args.levels, args.steps, args.hidden, image_size=args.size)
    per_flow = _count(glow)
    folds_with_flow = args.folds - 1
    print(
        f"Glow: {args.levels} levels x {args.steps} steps, hidden {args.hidden}, "
        f"{args.channels}x{args.size}x{args.size} images"
    )
    print(f"  parameters per flow: {per_flow:,} ({per_flow / 1e6:.2f} M)")
    for level, shape in enumerate(glow.latent_shapes(), start=1):
        print(f"  level {level} latent: {shape}")
    print(f"  latent dimension D = {glow.latent_dim():,}")
    total = folds_with_flow * per_flow + args.folds + folds_with_flow
    print(
        f"Unrolled network, K = {args.folds}: {folds_with_flow} fine-tuned flows "
        f"(the last fold is the gradient step, paper eq. 12) + {args.folds} mu + "
        f"{folds_with_flow} lambda = {total:,} trainable parameters ({total / 1e6:.2f} M)"
    )
    return 0


def command_check_operator(args: argparse.Namespace) -> int:
    """Adjoint identity <A x, y> = <x, A^T y> in float64 and the squared norm ||A||^2."""
    op = build_operator(args)
    generator = torch.Generator().manual_seed(args.seed)
    shape = (2, args.channels, args.size, args.size)
    x = torch.rand(shape, generator=generator, dtype=torch.float64)
    y = torch.rand(shape, generator=generator, dtype=torch.float64)
    lhs = float((op.A(x) * y).sum())
    rhs = float((x * op.A_adjoint(y)).sum())
    relative = abs(lhs - rhs) / max(abs(lhs), abs(rhs))
    norm_squared = op.norm_squared(shape[1:])
    print(f"operator: {op}")
    print(f"<A x, y> = {lhs:.12g}, <x, A^T y> = {rhs:.12g}, relative difference {relative:.2e}")
    print(
        f"||A||^2 (power method) = {norm_squared:.8g}; step size 1/||A||^2 = {1 / norm_squared:.8g}"
    )
    passed = relative < 1e-10
    print("adjoint test: " + ("passed" if passed else "FAILED"))
    return 0 if passed else 1


def _prior_config(args: argparse.Namespace) -> PriorExperiment:
    overrides = list(args.set or [])
    if args.data:
        overrides.append(f"data.path={json.dumps(str(args.data))}")
    if getattr(args, "strict", False):
        overrides.append("data.strict=true")
    if getattr(args, "device", None):
        overrides.append(f"train.device={json.dumps(args.device)}")
    path = args.config or preset_path("prior", getattr(args, "preset", "small"))
    return load_config(PriorExperiment, path, overrides)


def command_pretrain(args: argparse.Namespace) -> int:
    """Pre-train a Glow prior by maximum likelihood."""

    config = _prior_config(args)
    if not config.data.path:
        raise ValueError("no data given; pass --data PATH (an .npz file or an image folder).")
    out = pretrain_prior(config, args.out, resume=args.resume, argv=sys.argv[1:])
    print(f"run directory: {out}")
    return 0


def command_sample(args: argparse.Namespace) -> int:
    """Draw samples from a pre-trained prior and save them as an image grid."""

    glow, _ = load_prior(args.checkpoint)
    generator = torch.Generator().manual_seed(args.seed)
    samples = glow.sample(args.n, temperature=args.temperature, generator=generator)
    save_grid(samples.clamp(0, 1), args.out, columns=args.columns)
    print(f"wrote {args.n} samples at temperature {args.temperature} to {args.out}")
    return 0


def command_evaluate_prior(args: argparse.Namespace) -> int:
    """Bits per dimension of a pre-trained prior on a data split."""

    glow, saved = load_prior(args.checkpoint)
    data_config = DataConfig(
        path=str(args.data),
        resolution=glow.image_size[0],
        split_sizes=tuple(saved["data"]["split_sizes"]),
        split_seed=saved["data"]["split_seed"],
        strict=args.strict,
    )
    splits = load_splits(data_config)
    if args.split not in splits:
        raise ValueError(f"{args.data} has no {args.split!r} split; it has {sorted(splits)}.")
    n_bits = args.n_bits or saved["train"]["n_bits"]
    bpd = evaluate_bits_per_dim(glow, splits[args.split], n_bits, max_images=args.max_images)
    count = len(splits[args.split]) if args.max_images <= 0 else args.max_images
    print(
        f"{args.split} bits/dim: {bpd:.4f} ({n_bits}-bit, {count} images at "
        f"{glow.image_size[0]}x{glow.image_size[1]}, bin midpoints)"
    )
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with one subparser per subcommand (every flag with help and its
    default; errors on one line, exit code 2)."""
    parser = FlowproxParser(
        prog="flowprox",
        description=(
            "Deep-unfolded proximal gradient networks with normalizing-flow (Glow) priors "
            "for linear inverse problems in imaging."
        ),
    )
    parser.add_argument(
        "--version",
        action="version",
        version=f"flowprox {__version__}",
        help="print the version and exit",
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    info = commands.add_parser("info", help="versions and available devices")
    info.set_defaults(handler=command_info)

    summary = commands.add_parser(
        "glow-summary", help="parameter count and latent layout of a Glow prior"
    )
    summary.add_argument("--channels", type=positive_int, default=3, help="image channels")
    summary.add_argument("--levels", type=positive_int, default=4, help="multi-scale levels")
    summary.add_argument("--steps", type=positive_int, default=18, help="flow steps per level")
    summary.add_argument("--hidden", type=positive_int, default=512, help="coupling width")
    summary.add_argument(
        "--size",
        type=positive_int,
        default=64,
        help="image height and width (a multiple of 2**levels)",
    )
    summary.add_argument(
        "--folds", type=positive_int, default=4, help="folds K of the unrolled network"
    )
    summary.set_defaults(handler=command_glow_summary)

    check = commands.add_parser(
        "check-operator", help="adjoint test and power-method norm of a forward operator"
    )
    check.add_argument(
        "--operator",
        choices=["identity", "center-mask", "random-mask", "blur"],
        default="blur",
        help="the forward operator",
    )
    check.add_argument("--size", type=positive_int, default=64, help="image height and width")
    check.add_argument("--channels", type=positive_int, default=3, help="image channels")
    check.add_argument(
        "--window", type=positive_int, default=19, help="side of the centre hole (center-mask)"
    )
    check.add_argument(
        "--fraction-missing",
        type=fraction,
        default=0.5,
        help="fraction of missing pixels (random-mask)",
    )
    check.add_argument(
        "--sigma-b", type=float, default=5.0, help="blur standard deviation in pixels (blur)"
    )
    check.add_argument(
        "--kernel-size",
        type=positive_int,
        default=None,
        help="blur kernel side (None: 2*ceil(3 sigma_b)+1)",
    )
    check.add_argument(
        "--boundary",
        choices=["circular", "zero"],
        default="circular",
        help="blur boundary condition",
    )
    check.add_argument(
        "--seed",
        type=non_negative_int,
        default=0,
        help="seed of the random mask and the test vectors",
    )
    check.set_defaults(handler=command_check_operator)

    pretrain = commands.add_parser("pretrain", help="pre-train a Glow prior by maximum likelihood")
    pretrain.add_argument(
        "--preset",
        choices=["tiny", "small", "paper"],
        default="small",
        help="the packaged config to start from",
    )
    pretrain.add_argument("--config", type=Path, help="your own TOML file instead of the preset")
    pretrain.add_argument("--data", help="an .npz file (or several, comma-separated) or a folder")
    pretrain.add_argument(
        "--out", type=Path, required=True, help="the run directory (locked while the run lasts)"
    )
    pretrain.add_argument("--resume", action="store_true", help="continue the run in --out")
    add_strict_argument(pretrain)
    add_device_argument(pretrain, None, "overrides train.device (None: the config's)")
    pretrain.add_argument(
        "--set",
        action="append",
        metavar="KEY=VALUE",
        help="override a config value, e.g. train.lr=1e-4 (repeatable)",
    )
    pretrain.set_defaults(handler=command_pretrain)

    sample = commands.add_parser("sample", help="sample images from a pre-trained prior")
    sample.add_argument(
        "--checkpoint", type=Path, required=True, help="the prior (best.pt of a pretrain run)"
    )
    sample.add_argument("--n", type=positive_int, default=64, help="number of samples")
    sample.add_argument(
        "--temperature",
        type=non_negative_float,
        default=0.7,
        help="latent standard deviation (1: the model's)",
    )
    sample.add_argument("--columns", type=positive_int, default=8, help="columns of the grid")
    sample.add_argument("--seed", type=non_negative_int, default=0, help="sampling seed")
    sample.add_argument("--out", type=Path, required=True, help="the PNG file to write")
    sample.set_defaults(handler=command_sample)

    evaluate_prior = commands.add_parser(
        "evaluate-prior", help="bits/dim of a pre-trained prior on a data split"
    )
    evaluate_prior.add_argument(
        "--checkpoint", type=Path, required=True, help="the prior (best.pt of a pretrain run)"
    )
    evaluate_prior.add_argument(
        "--data", type=Path, required=True, help="an .npz file, a data directory or an image folder"
    )
    evaluate_prior.add_argument(
        "--split", choices=["train", "val", "test"], default="test", help="the split to score"
    )
    evaluate_prior.add_argument(
        "--n-bits", type=non_negative_int, default=0, help="bits per colour channel (0: the run's)"
    )
    evaluate_prior.add_argument(
        "--max-images",
        type=non_negative_int,
        default=0,
        help="score only this many images (0: all)",
    )
    add_strict_argument(evaluate_prior)
    evaluate_prior.set_defaults(handler=command_evaluate_prior)

    add_task_commands(commands)
    add_restore_command(commands)
    add_demo_command(commands)
    add_sample_posterior_command(commands)
    return parser


#: commands whose --out folder is locked while they write into it (pretrain, train, reproduce
#: and demo lock their run directories themselves)
LOCKED_OUTPUTS = ("evaluate", "solve-latent", "restore")


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``flowprox`` console script."""
    parser = build_parser()
    args = parser.parse_args(argv)
    handler: Callable[[argparse.Namespace], int] | None = getattr(args, "handler", None)
    if handler is None:
        parser.print_help()
        return 0
    try:
        out = getattr(args, "out", None)
        if args.command in LOCKED_OUTPUTS and out:
            with RunLock(out):
                return handler(args)
        return handler(args)
    except (ValueError, FileNotFoundError) as error:
        print(f"flowprox {args.command}: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
