"""Does a prior's inverse stay bounded on the images the unrolled network feeds it?

The GLOW prox maps an intermediate image ``v`` to its latent, shrinks and inverts:
``g(f(v) / (1 + lambda))``. Intermediate images are not clean faces: early folds see noise,
blur and holes. For validation images ``x`` (at the prior's resolution) and each input family
``v`` below, printed per prior (several priors side by side, on the same images and noise):

* the largest latent entry ``max |f(v)|``;
* the round-trip error ``max_i ||g(f(v_i)) - v_i|| / ||v_i||``;
* the fraction of images whose shrunk output is not finite, over every lambda;
* the MSE of ``g(f(v) / (1 + lambda))`` against the clean ``x``, beside the MSE of ``v``
  itself, for each lambda (``inf``/``nan`` where the inverse overflowed).

Input families: ``clean``; Gaussian noise at each sigma; the full-support blur of the preset's
deblurring task, in and out of distribution; a centre hole (the inpainting task's window)
filled with 0, with 0.5 and with the prior's mode ``g(0)``; and the first fold's data-step
output of each task (denoise, inpaint, deblur) under the current defaults, from ``x_0 = g(0)``
(``models.unrolled.build_unrolled``).

Usage::

    python bench/inverse_stability.py PRIOR.pt [PRIOR.pt ...] --data ../shared/data
                                      [--images 64] [--sigmas 0.05,0.1,0.2,0.3]
                                      [--lambdas 0.05,0.2,1] [--markdown OUT.md]
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from collections.abc import Iterator
from pathlib import Path

import torch
from torch import Tensor

from flowprox.config import DataConfig, GlowConfig, config_from_dict
from flowprox.data.datasets import load_splits
from flowprox.flows import Glow
from flowprox.models.prior import load_prior
from flowprox.models.unrolled import build_unrolled
from flowprox.physics.noise import measure_fixed
from flowprox.physics.operators import Mask
from flowprox.physics.tasks import build_operator, ood_task, task_preset
from flowprox.training.configs import unrolled_config

PRESET_BY_RESOLUTION = {8: "tiny", 32: "small", 64: "paper"}
MEASUREMENT_SEED = 2022


def input_families(
    flow: Glow, model: GlowConfig, x: Tensor, sigmas: list[float], seed: int
) -> Iterator[tuple[str, Tensor]]:
    """``(name, v)`` for every input family of the module docstring."""
    resolution = x.shape[-1]
    preset = PRESET_BY_RESOLUTION.get(resolution, "small")
    yield "clean", x
    generator = torch.Generator().manual_seed(seed)
    noise = torch.randn(x.shape, generator=generator)
    for sigma in sigmas:
        yield f"noise sigma {sigma:g}", x + sigma * noise
    deblur = task_preset(preset, "deblur")
    for label, task in (("", deblur), (" (OOD)", ood_task(deblur))):
        blurred = build_operator(task, resolution).A(x)
        yield f"blur sigma_b {task.sigma_b:g}{label}", blurred
    window = task_preset(preset, "inpaint").window
    mask = Mask.center_square(resolution, resolution, window).mask
    mode = flow.inverse(torch.zeros(1, flow.latent_dim()))
    for label, fill in (("0", torch.zeros_like(x)), ("0.5", torch.full_like(x, 0.5))):
        yield f"hole {window}x{window} filled with {label}", mask * x + (1 - mask) * fill
    yield f"hole {window}x{window} filled with g(0)", mask * x + (1 - mask) * mode
    for kind in ("denoise", "inpaint", "deblur"):
        config = unrolled_config(kind, "glow", preset)
        config = dataclasses.replace(
            config,
            prior_model=model,
            data=dataclasses.replace(config.data, resolution=resolution),
        )
        op = build_operator(config.task, resolution)
        network = build_unrolled(config, op, flow)
        y = measure_fixed(op, x, config.task.sigma_n, MEASUREMENT_SEED)
        x0 = network.initial(y, op)
        step = config.model.data_step
        yield f"first {step} data step, {kind}", network.data_step_at(0, x0, y, op)


def mse(a: Tensor, b: Tensor) -> float:
    return float((a - b).pow(2).mean())


@torch.no_grad()
def measure_prior(
    path: str,
    flow: Glow,
    config: dict,
    x: Tensor,
    sigmas: list[float],
    lambdas: list[float],
    seed: int,
) -> list[list[str]]:
    """One table row per input family for the prior ``flow`` (its checkpoint ``path`` and
    experiment ``config``)."""
    model = config_from_dict(GlowConfig, config["model"])
    rows = []
    for name, v in input_families(flow, model, x, sigmas, seed):
        z, _ = flow(v)
        round_trip = (flow.inverse(z) - v).flatten(1).norm(dim=1) / v.flatten(1).norm(dim=1)
        outputs = [flow.inverse(z / (1 + lam)) for lam in lambdas]
        finite = torch.stack([o.flatten(1).isfinite().all(dim=1) for o in outputs])
        rows.append(
            [
                Path(path).parent.parent.name or path,
                str(config["train"]["n_bits"]),
                name,
                f"{float(z.abs().max()):.3g}",
                f"{float(round_trip.max()):.2e}",
                f"{float((~finite).double().mean()):.3g}",
                f"{mse(v, x):.4f}",
                *[f"{mse(o, x):.4f}" for o in outputs],
            ]
        )
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("priors", nargs="+", help="prior checkpoints (best.pt)")
    parser.add_argument("--data", required=True, help="data folder or .npz (val split is used)")
    parser.add_argument("--images", type=int, default=64, help="validation images")
    parser.add_argument("--sigmas", default="0.05,0.1,0.2,0.3", help="noise levels")
    parser.add_argument("--lambdas", default="0.05,0.2,1", help="shrinkage weights")
    parser.add_argument("--seed", type=int, default=0, help="seed of the noise")
    parser.add_argument("--markdown", default="", help="also write the table to this file")
    args = parser.parse_args()
    sigmas = [float(v) for v in args.sigmas.split(",")]
    lambdas = [float(v) for v in args.lambdas.split(",")]

    header = ["prior", "bits", "input", "max abs z", "round trip (rel.)", "non-finite",
              "MSE of input", *[f"MSE, lambda {lam:g}" for lam in lambdas]]  # fmt: skip
    separator = "| --- | ---: | --- |" + " ---: |" * (4 + len(lambdas))
    lines = ["| " + " | ".join(header) + " |", separator]
    print("\n".join(lines), flush=True)
    clean: dict[int, Tensor] = {}  # validation images by resolution, read once
    for path in args.priors:
        flow, config = load_prior(path)
        resolution = flow.image_size[0]
        if resolution not in clean:
            images = load_splits(DataConfig(path=args.data, resolution=resolution))["val"]
            count = min(args.images, len(images))
            clean[resolution] = torch.stack([images[i] for i in range(count)])
        rows = measure_prior(path, flow, config, clean[resolution], sigmas, lambdas, args.seed)
        for row in rows:
            lines.append("| " + " | ".join(row) + " |")
            print(lines[-1], flush=True)
    if args.markdown:
        Path(args.markdown).write_text("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
