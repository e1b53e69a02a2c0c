"""Subcommands for tasks: ``train``, ``evaluate``, ``solve-latent`` and ``reproduce``."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from flowprox.cli.options import (
    add_device_argument,
    add_strict_argument,
    non_negative_float,
    non_negative_int,
    positive_float,
    positive_int,
)
from flowprox.config import (
    ProxKind,
    TaskConfig,
    UnrolledExperiment,
)
from flowprox.evaluation.evaluate import (
    SETTINGS,
    classical_method_name,
    classical_reconstructor,
    latent_reconstructor,
    load_evaluation_set,
    markdown_table,
    measurement_reconstructor,
    run_method,
    tune_classical,
    tune_latent,
    write_results,
)
from flowprox.experiments.pipeline import reproduce
from flowprox.experiments.plan import resolve_tasks
from flowprox.models.prior import load_prior
from flowprox.models.unrolled import PROX_KINDS, load_unrolled
from flowprox.physics.tasks import PRESET_NAMES, TASK_KINDS, resolve_task
from flowprox.training.configs import unrolled_config
from flowprox.training.distributed import resolve_device
from flowprox.training.task import train_unrolled


def command_train(args: argparse.Namespace) -> int:
    """Train the unrolled network (or a CNN baseline) for a task."""

    config = unrolled_config(
        args.task,
        args.prox,
        args.preset,
        args.config,
        args.data,
        args.prior,
        args.init_from,
        args.device,
        [*(args.set or []), *(["data.strict=true"] if args.strict else [])],
    )
    if not config.data.path:
        raise ValueError("no data given; pass --data PATH (an .npz file or an image folder).")
    out = train_unrolled(config, args.out, resume=args.resume, argv=sys.argv[1:])
    print(f"run directory: {out}")
    return 0


def _print_results(results: list[Any], evaluation: Any, out: Path | None, stem: str) -> None:

    print(f"\n{evaluation.label}\n")
    print(markdown_table(results))
    if out is not None:
        json_path, csv_path = write_results(results, evaluation, out, stem)
        print(f"\nwrote {json_path} and {csv_path}")


def command_evaluate(args: argparse.Namespace) -> int:
    """PSNR/SSIM of trained networks, the classical reference and the measurement."""

    device = resolve_device(args.device)
    networks = []
    for path in args.checkpoint or []:
        network, config = load_unrolled(path, map_location=device)
        networks.append((Path(path), network, config))
    if networks:
        task, resolution = networks[0][2].task, networks[0][2].data.resolution
        measurement_seed = networks[0][2].train.measurement_seed
        for path, _, config in networks[1:]:
            if config.task != task:
                raise ValueError(
                    f"{path} was trained for another task than {networks[0][0]}; evaluate "
                    "checkpoints of one task together."
                )
    elif args.task:
        task, resolution = resolve_task(args.task, args.preset), args.resolution
        measurement_seed = UnrolledExperiment().train.measurement_seed
    else:
        raise ValueError("pass --checkpoint (one or more) or --task for the reference methods.")

    evaluation = load_evaluation_set(
        task, args.setting, args.data, resolution, args.max_images, args.ood_data, args.seed,
        strict=args.strict,
    )  # fmt: skip
    print(evaluation.label)
    results = [run_method("measurement", measurement_reconstructor, evaluation, args.batch_size)]
    if not args.no_classical:
        validation = _validation_set(task, args, resolution, measurement_seed)
        parameter, val_psnr = tune_classical(validation)
        print(f"classical parameter tuned on val: {parameter} (val PSNR {val_psnr:.2f} dB)")
        results.append(
            run_method(
                classical_method_name(evaluation.op),
                classical_reconstructor(parameter),
                evaluation,
                args.batch_size,
                details={"parameter": "" if parameter is None else parameter},
            )
        )
    if args.latent_prior:
        flow, _ = load_prior(args.latent_prior)
        flow.to(device)
        gamma, lr = args.latent_gamma, args.latent_lr
        if gamma is None or lr is None:
            validation = _validation_set(task, args, resolution, measurement_seed, count=32)
            gamma, lr, val_psnr = tune_latent(flow, validation, args.latent_steps)
            print(f"latent optimisation tuned on val: gamma {gamma}, lr {lr} ({val_psnr:.2f} dB)")
        results.append(
            run_method(
                f"latent optimisation (T={args.latent_steps})",
                latent_reconstructor(flow, args.latent_steps, gamma, lr),
                evaluation,
                args.batch_size,
                device,
                details={"gamma": gamma, "lr": lr, "steps": args.latent_steps},
            )
        )
    for _, network, config in networks:
        results.append(
            run_method(_method_name(config), network, evaluation, args.batch_size, device)
        )
    _print_results(results, evaluation, args.out, args.setting)
    return 0


def _method_name(config: UnrolledExperiment) -> str:
    label = ProxKind(config.model.prox).label
    if config.init_from:
        label += " (pre-trained as denoiser)"
    return label


def _validation_set(
    task: TaskConfig, args: argparse.Namespace, resolution: int, seed: int, count: int = 64
) -> Any:
    """In-distribution validation measurements, for tuning (never the test split): the
    reference methods keep these parameters in the out-of-distribution settings, as the
    trained networks keep their weights."""

    return load_evaluation_set(
        task, "in-distribution", args.data, resolution, count, seed=seed, split="val",
        strict=args.strict,
    )  # fmt: skip


def command_solve_latent(args: argparse.Namespace) -> int:
    """Latent optimisation with a pre-trained flow on a task's test measurements."""

    flow, prior_config = load_prior(args.prior)
    device = resolve_device(args.device)
    flow.to(device)
    resolution = prior_config["model"]["image_size"]
    task = resolve_task(args.task, args.preset)
    evaluation = load_evaluation_set(
        task, args.setting, args.data, resolution, args.max_images, args.ood_data, args.seed,
        strict=args.strict,
    )  # fmt: skip
    gamma, lr = args.gamma, args.lr
    if gamma is None or lr is None:
        seed = UnrolledExperiment().train.measurement_seed
        validation = _validation_set(task, args, resolution, seed, count=32)
        gamma, lr, val_psnr = tune_latent(flow, validation, args.steps)
        print(f"tuned on val: gamma {gamma}, lr {lr} (val PSNR {val_psnr:.2f} dB)")
    result = run_method(
        f"latent optimisation (T={args.steps})",
        latent_reconstructor(flow, args.steps, gamma, lr),
        evaluation,
        args.batch_size,
        device,
        details={"gamma": gamma, "lr": lr, "steps": args.steps},
    )
    _print_results([result], evaluation, args.out, f"latent-{args.setting}")
    return 0


def command_reproduce(args: argparse.Namespace) -> int:
    """The whole pipeline: prior, every method and task, evaluation, results.md."""

    tasks = resolve_tasks(args.tasks)
    reproduce(
        args.preset, args.data, args.out, args.device, tasks, tuple(args.set or ()),
        ood_data=args.ood_data, redo=tuple(args.redo or ()), strict=args.strict,
        budget_scale=args.budget_scale,
    )  # fmt: skip
    return 0


def _add_data_arguments(parser: argparse.ArgumentParser) -> None:

    parser.add_argument(
        "--data", required=True, help="the CelebA data (e.g. ../shared/data) or an image folder"
    )
    parser.add_argument(
        "--setting",
        choices=SETTINGS,
        default="in-distribution",
        help="which test images and measurements",
    )
    parser.add_argument(
        "--max-images",
        type=non_negative_int,
        default=0,
        help="score only this many images (0: the whole test split)",
    )
    parser.add_argument(
        "--ood-data",
        help="images for ood-images (None: DATA/anime64.npz, beside the CelebA data)",
    )
    parser.add_argument(
        "--seed", type=non_negative_int, default=2022, help="seed of the test measurements"
    )
    parser.add_argument(
        "--batch-size", type=positive_int, default=64, help="images per reconstruction batch"
    )
    add_device_argument(parser, "cpu", "where the methods run")
    add_strict_argument(parser)
    parser.add_argument(
        "--out", type=Path, help="write SETTING.json and SETTING.csv into this folder (locked)"
    )


def add_task_commands(commands: Any) -> None:
    """Register ``train``, ``evaluate``, ``solve-latent`` and ``reproduce`` on ``commands``."""

    task_help = f"{' | '.join(TASK_KINDS)} (at --preset) or a TOML file with a [task] table"
    train = commands.add_parser("train", help="train the unrolled network for a task")
    train.add_argument("--task", required=True, help=task_help)
    train.add_argument("--prox", choices=PROX_KINDS, default="glow", help="the prox network")
    train.add_argument(
        "--preset",
        choices=PRESET_NAMES,
        default="small",
        help="the packaged config (and task geometry) to start from",
    )
    train.add_argument("--config", type=Path, help="a TOML file instead of the preset")
    train.add_argument("--prior", type=Path, help="the pre-trained prior (best.pt)")
    train.add_argument("--init-from", type=Path, help="start the prox from this run (denoiser)")
    train.add_argument("--data", help="an .npz file, a data directory or an image folder")
    train.add_argument(
        "--out", type=Path, required=True, help="the run directory (locked while the run lasts)"
    )
    train.add_argument("--resume", action="store_true", help="continue the run in --out")
    add_device_argument(train, None, "overrides train.device (None: the config's)")
    add_strict_argument(train)
    train.add_argument(
        "--set",
        action="append",
        metavar="KEY=VALUE",
        help="override a config value, e.g. train.lr=1e-4 (repeatable)",
    )
    train.set_defaults(handler=command_train)

    evaluate = commands.add_parser(
        "evaluate", help="PSNR/SSIM of trained networks and reference methods"
    )
    evaluate.add_argument("--checkpoint", nargs="+", help="unrolled checkpoints of one task")
    evaluate.add_argument("--task", help="without checkpoints: " + task_help)
    evaluate.add_argument(
        "--preset", choices=PRESET_NAMES, default="small", help="task geometry of --task"
    )
    evaluate.add_argument(
        "--resolution",
        type=positive_int,
        default=32,
        help="image size without checkpoints (theirs otherwise)",
    )
    evaluate.add_argument("--no-classical", action="store_true", help="skip the classical method")
    evaluate.add_argument("--latent-prior", help="also run latent optimisation with this prior")
    evaluate.add_argument(
        "--latent-steps",
        type=positive_int,
        default=50,
        help="Adam iterations of latent optimisation",
    )
    evaluate.add_argument(
        "--latent-gamma", type=non_negative_float, help="weight of ||z||^2 (None: tuned on val)"
    )
    evaluate.add_argument(
        "--latent-lr", type=positive_float, help="Adam learning rate (None: tuned on val)"
    )
    _add_data_arguments(evaluate)
    evaluate.set_defaults(handler=command_evaluate)

    latent = commands.add_parser(
        "solve-latent", help="latent optimisation with a pre-trained flow (Asim et al.)"
    )
    latent.add_argument("--prior", required=True, help="the pre-trained prior (best.pt)")
    latent.add_argument("--task", required=True, help=task_help)
    latent.add_argument(
        "--preset", choices=PRESET_NAMES, default="small", help="task geometry of --task"
    )
    latent.add_argument("--steps", type=positive_int, default=50, help="Adam iterations T")
    latent.add_argument(
        "--gamma", type=non_negative_float, help="weight of ||z||^2 (None: tuned on val)"
    )
    latent.add_argument("--lr", type=positive_float, help="Adam learning rate (None: tuned on val)")
    _add_data_arguments(latent)
    latent.set_defaults(handler=command_solve_latent)

    repro = commands.add_parser(
        "reproduce", help="the paper's tables in one command (resumable, stage by stage)"
    )
    repro.add_argument(
        "--preset", choices=PRESET_NAMES, default="small", help="budgets and configs of every stage"
    )
    repro.add_argument(
        "--data", required=True, help="the data: a directory with celeba64.npz, an .npz or a folder"
    )
    repro.add_argument(
        "--ood-data",
        help="the out-of-distribution images of Table IV (None: anime64.npz beside --data)",
    )
    repro.add_argument(
        "--out", type=Path, required=True, help="the reproduction directory (locked while it runs)"
    )
    add_device_argument(repro, "cpu", "where every stage runs")
    add_strict_argument(repro)
    repro.add_argument(
        "--tasks",
        help="comma-separated tasks or groups: paper (the default: denoise, inpaint, deblur, "
        "deblur-small-support), beyond (super-resolution, compressed-sensing, mri), all",
    )
    repro.add_argument(
        "--budget-scale",
        type=float,
        default=1.0,
        help="multiply every training run's step budget (and safety cap) by this, for more "
        "time than the preset assumes",
    )
    repro.add_argument(
        "--set",
        action="append",
        metavar="KEY=VALUE",
        help="override a value of every training run's config (repeatable)",
    )
    repro.add_argument(
        "--redo",
        action="append",
        metavar="STAGE",
        help="run this finished stage again, and the stages that use it: a stage name "
        "(prior, train-TASK-METHOD, evaluate-TASK, report), a prefix (train, evaluate) or "
        "all (repeatable)",
    )
    repro.set_defaults(handler=command_reproduce)
