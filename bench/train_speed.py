"""Training speed of ``flowprox train`` per prox kind: the previous default path and the new one.

For each prox kind (glow, pnp-glow, resnet, unet) at the ``small`` preset (32x32, batches of 16,
4 folds) one task is trained twice in this process, one run after the other, through the real
``flowprox train`` code (``train_unrolled``: data loading, the optimisation step, evaluation on
the validation images and checkpoints all included, so evaluation is amortised as in a run):

- ``previous``: the settings of the ``small`` preset before the speed work: memory-saving
  backprop always on for the flows, evaluation of 128 validation images and a checkpoint every 25
  steps;
- ``new``: the current ``small`` preset (``model.memory_saving = "auto"``, its own evaluation
  and checkpoint intervals) in float32;
- ``bf16``: the same with ``model.network_precision = "bfloat16"`` (the coupling networks and
  the CNN proxes in bfloat16 autocast, ``models.precision``: what the preset's ``"auto"`` picks
  where the hardware computes bfloat16 natively); left out with ``--no-bf16``.

``previous`` and ``new`` set ``model.network_precision = "float32"``.

The runs take ``--steps`` steps (a common multiple of the intervals, so each pays its share of
evaluations) from the same seed, prior and data; the time is the run's own ``elapsed_s``
(``summary.json``: steps, evaluations and checkpoints, not start-up). Code changes that need no
setting (evaluation under ``torch.inference_mode``, the 1x1 convolution as a matrix product)
are in all of them. The table gives seconds per step, images per second and the ratios
previous/new and previous/bf16. Timings are wall-clock on a machine that may be busy: compare
ratios from one run, never across runs.

Data: ``--data`` (a directory with ``celeba64.npz``, an ``.npz`` or a folder), else smooth random
images generated here (speed does not depend on the pictures). Prior: ``--prior``, else a
``small``-preset prior pre-trained for 2 steps here (its architecture, not its weights, sets the
cost).

Usage::

    python bench/train_speed.py [--data ../shared/data] [--prior PRIOR.pt] [--task deblur]
                                [--steps 100] [--proxes glow,unet] [--device cpu|cuda]
                                [--no-bf16] [--markdown PATH]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

from flowprox.config import (
    PriorExperiment,
    UnrolledExperiment,
    load_config,
    preset_path,
)
from flowprox.physics.tasks import task_preset
from flowprox.training.pretrain import pretrain_prior
from flowprox.training.task import train_unrolled

PROXES = ("glow", "pnp-glow", "resnet", "unet")

#: the ``small`` preset's settings before the speed work (model.memory_saving was a flag, on)
PREVIOUS = ("model.memory_saving=on", "train.eval_every=25", "train.checkpoint_every=25")
#: each path's settings on top of the preset
PATHS = {
    "previous": (*PREVIOUS, "model.network_precision=float32"),
    "new": ("model.network_precision=float32",),
    "bf16": ("model.network_precision=bfloat16",),
}


def smooth_images(n: int, size: int, seed: int) -> np.ndarray:
    """``n`` smooth random RGB images ``(n, size, size, 3)`` in uint8 (blurred noise)."""
    rng = np.random.default_rng(seed)
    coarse = rng.random((n, 3, size // 8, size // 8))
    images = coarse.repeat(8, axis=2).repeat(8, axis=3)
    return (255 * images.transpose(0, 2, 3, 1)).astype(np.uint8)


def generated_data(root: Path) -> str:
    """An ``.npz`` of generated train/val images at 32x32."""
    path = root / "generated.npz"
    np.savez(path, train=smooth_images(1024, 32, 0), val=smooth_images(256, 32, 1))
    return str(path)


def quick_prior(data: str, root: Path, device: str) -> str:
    """A ``small``-preset prior after 2 steps (ActNorm initialised on the data)."""
    overrides = [
        f"data.path={data}", "train.max_steps=2", "train.time_limit_minutes=0",
        "train.eval_every=2", "train.eval_batch_size=64", f"train.device={device}",
    ]  # fmt: skip
    config = load_config(PriorExperiment, preset_path("prior", "small"), overrides)
    run = pretrain_prior(config, root / "prior")
    return str(run / "checkpoints" / "best.pt")


def timed_run(
    prox: str, task: str, path: str, steps: int, common: list[str], out: Path
) -> tuple[float, dict]:
    """Seconds per step of one training run, and its summary."""
    settings = [*common, f"model.prox={prox}", f"train.max_steps={steps}",
                "train.time_limit_minutes=0", "train.early_stopping_patience=0"]  # fmt: skip
    settings += PATHS[path]
    config = load_config(UnrolledExperiment, preset_path("unrolled", "small"), settings)
    config = dataclasses.replace(config, task=task_preset("small", task))
    run = train_unrolled(config, out / f"{prox}-{path}")
    summary = json.loads((run / "summary.json").read_text())
    return summary["elapsed_s"] / summary["steps"], summary


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", help="training data (default: generated images)")
    parser.add_argument("--prior", help="a prior checkpoint of the small preset")
    parser.add_argument("--task", default="deblur", choices=["denoise", "inpaint", "deblur"])
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--proxes", default=",".join(PROXES))
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--no-bf16", action="store_true", help="skip the bfloat16 runs")
    parser.add_argument("--markdown", type=Path)
    args = parser.parse_args()
    proxes = [p for p in args.proxes.split(",") if p]
    unknown = sorted(set(proxes) - set(PROXES))
    if unknown:
        parser.error(f"unknown prox kind(s) {unknown}; choose from {PROXES}")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        data = args.data or generated_data(root)
        prior = args.prior or quick_prior(data, root, args.device)
        common = [f"data.path={data}", f"prior={prior}", f"train.device={args.device}"]
        paths = ["previous", "new"] if args.no_bf16 else list(PATHS)
        rows = []
        for prox in proxes:
            seconds = {p: timed_run(prox, args.task, p, args.steps, common, root)[0] for p in paths}
            rows.append((prox, seconds))
    device = torch.cuda.get_device_name(0) if args.device.startswith("cuda") else "CPU"
    command = f"python bench/train_speed.py --steps {args.steps} --task {args.task}"
    if args.no_bf16:
        command += " --no-bf16"
    header = [f"{p} s/step" for p in paths] + [f"{p} images/s" for p in paths]
    header += [f"speed-up {p}" for p in paths[1:]]
    lines = [
        f"Training speed, `small` preset, {args.task}, batches of 16, {args.steps} steps per run "
        f"(`{command}`); {device}, {torch.get_num_threads()} threads, torch "
        f"{torch.__version__}, {platform.machine()}. Speed-up: previous s/step over the path's.",
        "",
        "| prox | " + " | ".join(header) + " |",
        "|---" * (len(header) + 1) + "|",
    ]
    for prox, seconds in rows:
        cells = [f"{seconds[p]:.3f}" for p in paths] + [f"{16 / seconds[p]:.1f}" for p in paths]
        cells += [f"{seconds['previous'] / seconds[p]:.2f}x" for p in paths[1:]]
        lines.append(f"| {prox} | " + " | ".join(cells) + " |")
    text = "\n".join(lines)
    print(text)
    if args.markdown:
        args.markdown.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
