"""Speed and quality: the trained unrolled GLOW prox against latent optimisation, side by side.

On the same test images and measurements (``flowprox.evaluation.evaluate``, fixed seed) of
one task, the
4-fold GLOW prox network of a reproduction (``flowprox reproduce``) is compared with latent
optimisation (Asim et al.) using the same pre-trained prior: ``x = g(z)``, Adam on
``||y - A g(z)||^2 + gamma ||z||^2`` from ``z = 0``, with gamma and the learning rate the ones
the reproduction tuned on val, at ``T = 50`` (the paper's comparison) and at a large ``T``
(``--long-steps``) where the objective has levelled off (its relative change over the last 10%
of the iterations is printed). Every method runs in this process, one after the other, in
batches of ``--batch`` images; images/s is wall time. Floor checked: the unrolled network is at
least 10x faster than latent optimisation at T = 50 and has the higher PSNR (``--check`` makes a
failed floor exit with 1).

Usage::

    python bench/speed.py --run runs/repro-small --data ../shared/data [--task inpaint]
                          [--images 100] [--long-steps 400] [--markdown PATH] [--check]
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import torch

from flowprox.evaluation.evaluate import load_evaluation_set
from flowprox.metrics.quality import psnr
from flowprox.models.prior import load_prior
from flowprox.models.unrolled import load_unrolled
from flowprox.optim.latent import solve_latent


def timed(function, evaluation, batch: int) -> tuple[torch.Tensor, float, list[float]]:
    """Outputs, images per second and the mean objective history (latent only)."""
    outputs, histories = [], []
    started = time.perf_counter()
    for start in range(0, len(evaluation.y), batch):
        x_hat, history = function(evaluation.y[start : start + batch], evaluation.op)
        outputs.append(x_hat)
        histories.append(history)
    seconds = time.perf_counter() - started
    history = [sum(h[i] for h in histories) / len(histories) for i in range(len(histories[0]))]
    return torch.cat(outputs), len(evaluation.y) / seconds, history


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", type=Path, required=True, help="a reproduction directory")
    parser.add_argument("--data", required=True)
    parser.add_argument("--task", default="inpaint", choices=["denoise", "inpaint", "deblur"])
    parser.add_argument("--images", type=int, default=100)
    parser.add_argument("--batch", type=int, default=50)
    parser.add_argument("--long-steps", type=int, default=400)
    parser.add_argument("--markdown", type=Path)
    parser.add_argument("--check", action="store_true")
    args = parser.parse_args()

    network, config = load_unrolled(
        args.run / "train" / args.task / "glow" / "checkpoints" / "best.pt"
    )
    flow, _ = load_prior(args.run / "prior" / "checkpoints" / "best.pt")
    tuned = json.loads((args.run / "eval" / args.task / "tuned.json").read_text())
    gamma, lr = tuned["latent_gamma"], tuned["latent_lr"]
    evaluation = load_evaluation_set(
        config.task, "in-distribution", args.data, config.data.resolution, args.images
    )

    def unrolled(y, op):
        with torch.no_grad():
            return network(y, op), [0.0]

    def latent(steps):
        def solve(y, op):
            result = solve_latent(flow, y, op, steps=steps, gamma=gamma, lr=lr)
            return result.x, result.objective

        return solve

    rows = []
    for name, function in (
        ("GLOW prox, 4 folds (unrolled)", unrolled),
        ("latent optimisation, T = 50", latent(50)),
        (f"latent optimisation, T = {args.long_steps}", latent(args.long_steps)),
    ):
        x_hat, rate, history = timed(function, evaluation, args.batch)
        value = float(psnr(x_hat.float(), evaluation.x).mean())
        change = float("nan")
        if len(history) > 2:
            tail = max(1, len(history) // 10)
            change = (history[-tail - 1] - history[-1]) / max(abs(history[-1]), 1e-12)
        rows.append((name, value, rate, change))
        print(f"{name}: PSNR {value:.2f} dB, {rate:.1f} images/s", flush=True)

    base_rate, base_psnr = rows[0][2], rows[0][1]
    lines = [
        f"Task: {config.task.kind} ({len(evaluation.x)} test images, batch {args.batch}); "
        f"{platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}",
        "",
        "| method | PSNR (dB) | images/s | speed of the unrolled network relative to it | "
        "objective change over the last 10% of iterations |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for name, value, rate, change in rows:
        ratio = base_rate / rate
        changed = "" if change != change else f"{100 * change:.2f}%"
        lines.append(f"| {name} | {value:.2f} | {rate:.1f} | {ratio:.1f}x | {changed} |")
    speedup = base_rate / rows[1][2]
    passed = speedup >= 10 and base_psnr > rows[1][1]
    lines += [
        "",
        f"Floor (unrolled >= 10x faster than latent optimisation at T = 50, with higher PSNR): "
        f"{speedup:.1f}x, {base_psnr:.2f} vs {rows[1][1]:.2f} dB: {'PASS' if passed else 'FAIL'}",
    ]
    text = "\n".join(lines)
    print("\n" + text)
    if args.markdown:
        args.markdown.write_text(text + "\n")
    return 1 if args.check and not passed else 0


if __name__ == "__main__":
    sys.exit(main())
