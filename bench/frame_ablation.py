"""Ablation of the unrolled frame on val: data step x final fold, for the GLOW and U-Net proxes.

For each task of the ``small`` preset (denoise, inpaint, deblur) and each prox (``glow``,
``unet``) the network is trained with ``model.data_step`` in {gradient, proximal} and
``model.final`` in {data-step, prox}, every run for the same ``--steps`` steps of 16 images
through the real ``flowprox train`` code, with the learning rates of ``flowprox reproduce
--preset small`` (flows 1e-4, CNNs 1e-3) and no early stopping. The table gives the best val
PSNR (at the lowest val loss, on the first ``train.val_images`` validation images with fixed
noise), the step it was reached at, the last evaluation's PSNR and the wall time. Nothing here
touches the test split.

On deblurring it also reports linear filters of the same family: ``K`` proximal data steps with
an identity prox (``x_k = argmin ||A x - y||^2 + rho_k ||x - x_{k-1}||^2`` from the prior's mode),
at the initial ``rho_k`` and with ``rho_k`` trained on the training split for ``--steps`` steps,
for K = 1 and K = 4, against the Wiener filter tuned on the same val images.

Runs already finished in ``--out`` (a ``summary.json``) are read, not run again;
``--finished-only`` tabulates those and trains nothing.

Usage::

    python bench/frame_ablation.py --data ../shared/data --prior PRIOR.pt --out runs/ablation
                                   [--steps 200] [--tasks denoise,inpaint,deblur]
                                   [--proxes glow,unet] [--markdown docs/results/ablation.md]
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from flowprox.config import DataConfig, UnrolledExperiment, load_config, preset_path
from flowprox.data.datasets import load_splits
from flowprox.evaluation.reconstruct import stack_images
from flowprox.metrics.quality import psnr
from flowprox.models.prior import load_prior
from flowprox.models.unrolled import initial_rho
from flowprox.optim.classical import tune_classical_parameter
from flowprox.optim.prox import IdentityProx
from flowprox.optim.unrolled import UnrolledProximalGradient
from flowprox.physics.noise import measure_fixed
from flowprox.physics.tasks import build_operator, task_preset
from flowprox.training.task import train_unrolled
from flowprox.training.trainer import StepBatchSampler, step_generator

DATA_STEPS = ("gradient", "proximal")
FINALS = ("data-step", "prox")
LEARNING_RATES = {"glow": 1e-4, "unet": 1e-3, "resnet": 1e-3}


def run_config(args: argparse.Namespace, task: str, prox: str, data_step: str, final: str):
    """The experiment of one ablation run."""
    settings = [
        f"data.path={args.data}", f"prior={args.prior}", f"model.prox={prox}",
        f"model.data_step={data_step}", f"model.final={final}", f"train.lr={LEARNING_RATES[prox]}",
        f"train.max_steps={args.steps}", "train.time_limit_minutes=0",
        "train.early_stopping_patience=0", f"train.eval_every={args.eval_every}",
        f"train.checkpoint_every={args.eval_every}",
    ]  # fmt: skip
    config = load_config(UnrolledExperiment, preset_path("unrolled", "small"), settings)
    return dataclasses.replace(config, task=task_preset("small", task))


def read_run(run: Path) -> dict[str, float]:
    """Best val PSNR (at the lowest val loss), its step, the last val PSNR, steps and time."""
    with (run / "metrics.csv").open() as handle:
        rows = [r for r in csv.DictReader(handle) if r["val_loss"]]
    summary = json.loads((run / "summary.json").read_text())
    best = min(rows, key=lambda r: float(r["val_loss"]))
    return {
        "best_psnr": float(best["val_psnr"]),
        "best_step": int(best["step"]),
        "last_psnr": float(rows[-1]["val_psnr"]),
        "steps": summary["steps"],
        "minutes": summary["elapsed_s"] / 60,
        "bad_steps": summary["bad_steps"],
    }


def linear_filters(args: argparse.Namespace) -> list[tuple[str, float]]:
    """Val PSNR of K proximal data steps with an identity prox, and of the Wiener filter."""
    config = run_config(args, "deblur", "glow", "proximal", "prox")
    prior, _ = load_prior(args.prior)
    splits = load_splits(DataConfig(args.data, config.data.resolution))
    op = build_operator(config.task, config.data.resolution, 3)
    x_val = stack_images(splits["val"], config.train.val_images)
    sigma_n = config.task.sigma_n
    y_val = measure_fixed(op, x_val, sigma_n, config.train.measurement_seed)
    results = []
    for folds in (1, 4):
        network = UnrolledProximalGradient(
            [IdentityProx()] * folds, data_step="proximal", rho_init=initial_rho(config),
            initial_estimate="prior_mode", prior=prior,
        )  # fmt: skip
        with torch.no_grad():
            start = float(psnr(network(y_val, op), x_val).mean())
        results.append((f"{folds} proximal step(s), identity prox, initial rho", start))
        optimizer = torch.optim.Adam(network.step_parameters(), lr=config.train.lr_step)
        sampler = StepBatchSampler(len(splits["train"]), 16, config.seed)
        train = splits["train"]
        for step in range(args.steps):
            x = torch.stack([train[i] for i in sampler.global_indices(step).tolist()])
            noise = torch.randn(x.shape, generator=step_generator(config.seed, step))
            loss = F.mse_loss(network(op.A(x) + sigma_n * noise, op), x)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        with torch.no_grad():
            trained = float(psnr(network(y_val, op), x_val).mean())
        rhos = ", ".join(f"{r:.2e}" for r in network.rho.tolist())
        label = f"{folds} proximal step(s), identity prox, rho trained ({rhos})"
        results.append((label, trained))
    balance, wiener = tune_classical_parameter(y_val, x_val, op)
    results.append((f"Wiener filter (balance {balance:.1e}, tuned on val)", wiener))
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", required=True)
    parser.add_argument("--prior", required=True, help="a small-preset prior checkpoint")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--eval-every", type=int, default=50)
    parser.add_argument("--tasks", default="denoise,inpaint,deblur")
    parser.add_argument("--proxes", default="glow,unet")
    parser.add_argument("--markdown", type=Path)
    parser.add_argument(
        "--finished-only", action="store_true", help="tabulate the finished runs, train none"
    )
    args = parser.parse_args()
    rows = []
    for task in args.tasks.split(","):
        for prox in args.proxes.split(","):
            for data_step in DATA_STEPS:
                for final in FINALS:
                    run = args.out / f"{task}-{prox}-{data_step}-{final}"
                    if not (run / "summary.json").is_file():
                        if args.finished_only:
                            continue
                        started = time.monotonic()
                        train_unrolled(run_config(args, task, prox, data_step, final), run)
                        print(f"{run.name}: {(time.monotonic() - started) / 60:.1f} min")
                    rows.append((task, prox, data_step, final, read_run(run)))
    lines = [
        f"Val PSNR (dB) after {args.steps} training steps of 16 images, `small` preset "
        f"(`python bench/frame_ablation.py --steps {args.steps}`); best = at the lowest val "
        "loss (evaluated every "
        f"{args.eval_every} steps), last = at the last step.",
        "",
        "| task | prox | data step | final | best val PSNR | at step | last val PSNR "
        "| minutes | skipped steps |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for task, prox, data_step, final, r in rows:
        lines.append(
            f"| {task} | {prox} | {data_step} | {final} | {r['best_psnr']:.2f} | "
            f"{r['best_step']} | {r['last_psnr']:.2f} | {r['minutes']:.1f} | {r['bad_steps']} |"
        )
    if "deblur" in args.tasks.split(",") and not args.finished_only:
        lines += ["", "Linear filters on the same val images (deblurring):", "",
                  "| filter | val PSNR |", "|---|---|"]  # fmt: skip
        lines += [f"| {label} | {value:.2f} |" for label, value in linear_filters(args)]
    text = "\n".join(lines)
    print(text)
    if args.markdown:
        args.markdown.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
