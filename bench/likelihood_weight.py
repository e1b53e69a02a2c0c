"""Fine-tuning that keeps each flow a density (``train.likelihood_weight``, issue 12).

For each weight ``beta`` the GLOW prox of one ``small`` task is trained for the same
``--steps`` steps of 16 images (the real ``flowprox train`` code, with the learning rate of
``flowprox reproduce --preset small``) with the loss ``MSE + beta * mean bits/dim of each
fold's flow on the clean batch``. The table gives, per beta: the best val PSNR (chosen on val,
at the lowest val loss) and the test PSNR of that checkpoint, then each fold's bits/dim on the
clean test images (5 bits, dequantised at the bin midpoint), beside the pre-trained prior's.
beta = 0 is the paper's loss.

Runs already finished in ``--out`` (a ``summary.json``) are read, not trained again.

Usage::

    python bench/likelihood_weight.py --data ../shared/data --prior PRIOR.pt --out runs/beta
        [--task denoise] [--betas 0,0.001,0.01,0.1] [--steps 400] [--images 200]
        [--markdown docs/results/likelihood_weight.md]
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

import torch
from frame_ablation import LEARNING_RATES, read_run

from flowprox.config import UnrolledExperiment, load_config, preset_path
from flowprox.evaluation.evaluate import load_evaluation_set
from flowprox.evaluation.reconstruct import reconstruct_all
from flowprox.metrics.quality import psnr
from flowprox.models.prior import load_prior
from flowprox.models.unrolled import load_unrolled
from flowprox.physics.tasks import task_preset
from flowprox.training.task import train_unrolled


def run_config(args: argparse.Namespace, beta: float) -> UnrolledExperiment:
    """The experiment of the run with weight ``beta``."""
    settings = [
        f"data.path={args.data}", f"prior={args.prior}", "model.prox=glow",
        f"train.lr={LEARNING_RATES['glow']}", f"train.max_steps={args.steps}",
        "train.time_limit_minutes=0", "train.early_stopping_patience=0",
        "train.stop_when_flat=false", f"train.eval_every={args.eval_every}",
        f"train.checkpoint_every={args.eval_every}", f"train.likelihood_weight={beta}",
    ]  # fmt: skip
    config = load_config(UnrolledExperiment, preset_path("unrolled", "small"), settings)
    return dataclasses.replace(config, task=task_preset("small", args.task))


@torch.no_grad()
def test_scores(run: Path, args: argparse.Namespace, n_bits: int) -> tuple[float, list[float]]:
    """Test PSNR of the run's best checkpoint and each fold's test bits/dim."""
    network, config = load_unrolled(run / "checkpoints" / "best.pt")
    network.eval()
    test = load_evaluation_set(
        config.task, "in-distribution", args.data, config.data.resolution, args.images
    )
    x_hat = reconstruct_all(network, test.y, test.op, 50, torch.device("cpu"))
    folds = [prox.flow for prox in network.proxes if hasattr(prox, "flow")]
    return float(psnr(x_hat, test.x).mean()), [_bits(flow, test.x, n_bits) for flow in folds]


def _bits(flow: torch.nn.Module, x: torch.Tensor, n_bits: int) -> float:
    """Mean bits/dim of ``x`` (bin midpoints, batches of 50)."""
    bits = [flow.bits_per_dim(part, n_bits, dequantize_noise=False) for part in x.split(50)]
    return float(torch.cat(bits).mean())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", required=True)
    parser.add_argument("--prior", required=True, help="a small-preset prior checkpoint")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--task", default="denoise")
    parser.add_argument("--betas", default="0,0.001,0.01,0.1")
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--eval-every", type=int, default=50)
    parser.add_argument("--images", type=int, default=200, help="test images")
    parser.add_argument("--markdown", type=Path)
    args = parser.parse_args()
    prior, prior_config = load_prior(args.prior)
    n_bits = int(prior_config["train"]["n_bits"])
    betas = [float(b) for b in args.betas.split(",")]
    rows = []
    for beta in betas:
        run = args.out / f"beta-{beta:g}"
        if not (run / "summary.json").is_file():
            train_unrolled(run_config(args, beta), run)
        test_psnr, fold_bits = test_scores(run, args, n_bits)
        rows.append((beta, read_run(run), test_psnr, fold_bits))
        print(f"beta {beta:g}: test PSNR {test_psnr:.2f}, fold bits/dim {fold_bits}", flush=True)
    test = load_evaluation_set(task_preset("small", args.task), "in-distribution", args.data,
                               prior_config["data"]["resolution"], args.images)  # fmt: skip
    prior_bits = _bits(prior.eval(), test.x, n_bits)
    folds = len(rows[0][3])
    lines = [
        f"{args.task}, GLOW prox, `small` preset, {args.steps} steps of 16 images for every "
        f"beta (`python bench/likelihood_weight.py --task {args.task} --steps {args.steps}`); "
        f"PSNR chosen on val (best val loss), then on the first {args.images} test images; "
        f"bits/dim of each fold's flow on those clean test images ({n_bits} bits, bin "
        f"midpoints). The pre-trained prior gives {prior_bits:.4f} bits/dim.",
        "",
        "| beta | best val PSNR | at step | test PSNR | "
        + " | ".join(f"fold {k + 1} bits/dim" for k in range(folds))
        + " | skipped steps |",
        "|---|---|---|---|" + "---|" * folds + "---|",
    ]
    for beta, r, test_psnr, fold_bits in rows:
        lines.append(
            f"| {beta:g} | {r['best_psnr']:.2f} | {r['best_step']} | {test_psnr:.2f} | "
            + " | ".join(f"{b:.4f}" for b in fold_bits)
            + f" | {r['bad_steps']} |"
        )
    text = "\n".join(lines)
    print(text)
    if args.markdown:
        args.markdown.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
