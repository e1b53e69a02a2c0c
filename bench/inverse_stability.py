"""Does a prior's inverse stay finite on noisy images? The measurement behind the presets'
5-bit data and coupling scale floor.

For validation images ``x`` (reduced to the prior's resolution) and noise levels ``sigma``,
``y = x + sigma n`` is mapped to its latent ``z = f(y)``; printed per prior and noise level:
the largest and RMS latent entry, the round-trip error ``max |g(f(y)) - y|``, and the MSE to the
clean images after Gaussian shrinkage ``g(f(y) / (1 + lambda))``, the GLOW prox's operation.
NaN means the inverse overflowed. Several priors are measured on the same noisy images.

Usage::

    python bench/inverse_stability.py PRIOR.pt [PRIOR.pt ...] --data ../shared/data
                                      [--images 64] [--sigmas 0,0.05,0.1,0.2]
"""

from __future__ import annotations

import argparse
import sys

import torch

from flowprox.config import DataConfig
from flowprox.data.datasets import load_splits
from flowprox.models.prior import load_prior


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("priors", nargs="+", help="prior checkpoints (best.pt)")
    parser.add_argument("--data", required=True)
    parser.add_argument("--images", type=int, default=64)
    parser.add_argument("--sigmas", default="0,0.05,0.1,0.2")
    parser.add_argument("--lambdas", default="0.05,0.2")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    sigmas = [float(v) for v in args.sigmas.split(",")]
    lambdas = [float(v) for v in args.lambdas.split(",")]

    columns = "prior | bits | scale floor | sigma | max abs z | rms z | round-trip error"
    shrinkage = " | ".join(f"MSE after shrinkage, lambda {lam:g}" for lam in lambdas)
    print(f"| {columns} | {shrinkage} |")
    print(
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | "
        + " | ".join("---:" for _ in lambdas)
        + " |"
    )
    clean: dict[int, torch.Tensor] = {}  # validation images by resolution, read once
    for path in args.priors:
        flow, config = load_prior(path)
        resolution = flow.image_size[0]
        if resolution not in clean:
            images = load_splits(DataConfig(path=args.data, resolution=resolution))["val"]
            clean[resolution] = torch.stack(
                [images[i] for i in range(min(args.images, len(images)))]
            )
        x = clean[resolution]
        generator = torch.Generator().manual_seed(args.seed)
        noise = torch.randn(x.shape, generator=generator)
        with torch.no_grad():
            for sigma in sigmas:
                y = x + sigma * noise
                z, _ = flow(y)
                round_trip = float((flow.inverse(z) - y).abs().max())
                shrunk = [float((flow.inverse(z / (1 + lam)) - x).pow(2).mean()) for lam in lambdas]
                print(
                    f"| {path} | {config['train']['n_bits']} | {flow.scale_floor:g} | {sigma:g} | "
                    f"{float(z.abs().max()):.3g} | {float(z.pow(2).mean().sqrt()):.3g} | "
                    f"{round_trip:.3g} | " + " | ".join(f"{v:.3g}" for v in shrunk) + " |",
                    flush=True,
                )
    return 0


if __name__ == "__main__":
    sys.exit(main())
