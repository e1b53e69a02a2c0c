"""One GLOW prox training step of the ``small`` preset under variants of its arithmetic.

Times a plain training step (forward through the four folds, MSE, backward, gradient clip, Adam)
of the GLOW prox on full-support deblurring, batches of 16 at 32x32, for:

- ``float32``: ``model.network_precision = "float32"``;
- ``bfloat16``: the coupling networks in bfloat16 autocast (``models.precision``);
- ``float32-channels-last``: float32 with every coupling network fed channels-last tensors;
- ``bfloat16-looped-adam``: ``bfloat16`` with Adam and the gradient clip looping over the
  tensors (torch's choice on CPU; flowprox asks for the multi-tensor ``foreach`` path);
- ``bfloat16-fused-adam``: ``bfloat16`` with Adam's fused CPU kernel;
- ``float32-compiled-steps`` (with ``--compile``): every flow step's forward and inverse under
  ``torch.compile`` (compilation time reported apart).

and, for the 1x1 convolution alone, ``conv2d`` against ``flows.layers.channel_mix`` (forward
and backward) at the three levels' shapes. Variants run one after another in this process;
compare ratios from one run, never across runs. No evaluation, no checkpoints, no data loading:
this isolates the arithmetic (``bench/train_speed.py`` times whole runs).

Usage::

    python bench/step_variants.py [--prior PRIOR.pt] [--steps 10] [--compile]
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F

from flowprox.config import UnrolledExperiment, load_config, preset_path
from flowprox.flows import layers
from flowprox.models.prior import build_glow, load_prior
from flowprox.models.unrolled import build_unrolled
from flowprox.physics.tasks import build_operator, task_preset
from flowprox.training.task import make_unrolled_optimizer


def seconds_per_call(fn: Callable[[], object], calls: int, warmup: int = 3) -> float:
    """Mean wall time of ``fn`` over ``calls`` calls after ``warmup``."""
    for _ in range(warmup):
        fn()
    start = time.perf_counter()
    for _ in range(calls):
        fn()
    return (time.perf_counter() - start) / calls


def training_step(variant: str, prior_path: str | None, steps: int) -> tuple[float, float]:
    """Seconds per training step of ``variant``, and the seconds its warm-up took."""
    precision = "bfloat16" if variant.startswith("bfloat16") else "float32"
    overrides = ["model.prox=glow", "data.path=unused", f"model.network_precision={precision}"]
    config = load_config(UnrolledExperiment, preset_path("unrolled", "small"), overrides)
    config = UnrolledExperiment(**{**config.__dict__, "task": task_preset("small", "deblur")})
    prior = load_prior(prior_path)[0] if prior_path else build_glow(config.prior_model)
    op = build_operator(config.task, 32, 3)
    torch.manual_seed(0)
    network = build_unrolled(config, op, prior).train()
    if variant == "float32-channels-last":
        for module in network.modules():
            if isinstance(module, layers.AffineCoupling):
                net = module.net
                module.net = torch.nn.Sequential(_ChannelsLast(), net)
    looped = variant.endswith("looped-adam")
    if variant.endswith("fused-adam"):
        optimizer = torch.optim.Adam(network.parameters(), lr=config.train.lr, fused=True)
    elif looped:
        optimizer = torch.optim.Adam(network.parameters(), lr=config.train.lr, foreach=False)
    else:
        optimizer = make_unrolled_optimizer(network, config)  # what flowprox train uses
    coarse = torch.rand(16, 3, 4, 4, generator=torch.Generator().manual_seed(0))
    x = F.interpolate(coarse, size=(32, 32), mode="bilinear")  # smooth images in [0, 1]
    y = op.A(x) + config.task.sigma_n * torch.randn_like(op.A(x))

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        loss = (network(y, op) - x).pow(2).mean()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(network.parameters(), 1.0, foreach=not looped)
        optimizer.step()

    start = time.perf_counter()
    step()
    warmup = time.perf_counter() - start
    return seconds_per_call(step, steps, warmup=2), warmup


class _ChannelsLast(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.contiguous(memory_format=torch.channels_last)


def one_by_one(calls: int = 200) -> list[tuple[str, float, float]]:
    """Microseconds of a 1x1 convolution's forward and backward: conv2d, channel_mix."""
    rows = []
    for channels, size in ((12, 16), (24, 8), (48, 4)):
        w = torch.randn(channels, channels, requires_grad=True)
        x = torch.randn(16, channels, size, size, requires_grad=True)
        conv = seconds_per_call(
            lambda w=w, x=x: F.conv2d(x, w[:, :, None, None]).sum().backward(), calls, 10
        )
        mix = seconds_per_call(
            lambda w=w, x=x: layers.channel_mix(x, w).sum().backward(), calls, 10
        )
        rows.append((f"16x{channels}x{size}x{size}", 1e6 * conv, 1e6 * mix))
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--prior", help="a prior checkpoint of the small preset (default: new)")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--compile", action="store_true", help="also time compiled flow steps")
    args = parser.parse_args()
    variants = [
        "float32",
        "bfloat16",
        "float32-channels-last",
        "bfloat16-looped-adam",
        "bfloat16-fused-adam",
    ]
    results = {v: training_step(v, args.prior, args.steps) for v in variants}
    if args.compile:
        forward, inverse = layers.FlowStep.forward, layers.FlowStep.inverse
        layers.FlowStep.forward = torch.compile(forward, dynamic=False)  # type: ignore[method-assign]
        layers.FlowStep.inverse = torch.compile(inverse, dynamic=False)  # type: ignore[method-assign]
        try:
            results["float32-compiled-steps"] = training_step("float32", args.prior, args.steps)
        finally:
            layers.FlowStep.forward, layers.FlowStep.inverse = forward, inverse
    base = results["float32"][0]
    print(
        f"GLOW prox training step, small preset, deblur, batches of 16, {args.steps} steps "
        f"(`python bench/step_variants.py --steps {args.steps}"
        f"{' --compile' if args.compile else ''}`); {torch.get_num_threads()} threads, "
        f"torch {torch.__version__}\n"
    )
    print("| variant | s/step | float32 / variant | first step (s) |\n|---|---|---|---|")
    for name, (seconds, warmup) in results.items():
        print(f"| {name} | {seconds:.3f} | {base / seconds:.2f}x | {warmup:.1f} |")
    print("\n1x1 convolution, forward and backward (microseconds)\n")
    print("| input | conv2d | channel_mix | ratio |\n|---|---|---|---|")
    for shape, conv, mix in one_by_one():
        print(f"| {shape} | {conv:.0f} | {mix:.0f} | {conv / mix:.2f}x |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
