"""Memory of one training step of the unrolled Glow network: memory-saving vs plain autograd.

The network is ``flow_unrolled_network`` with K = 4 folds, each fold's prox a Glow with 3 levels,
hidden width 128 and S steps per level, on a batch of 16 RGB images of 32x32 (Gaussian blur,
sigma_b = 1, noise 0.05). For every S (4, 8, 16, 32 by default) and both backprop modes
(``memory_saving=False``: plain autograd; ``memory_saving=True``: activations recomputed by
inversion, ``flowprox.flows.memory``) a fresh subprocess builds the model and an Adam optimizer,
runs one full warm-up training step (so gradients and optimizer state are allocated, and kept
allocated by ``zero_grad(set_to_none=False)``), then measures:

(a) *saved for backward*: the bytes of every tensor autograd keeps for the backward pass, counted
    exactly with ``torch.autograd.graph.saved_tensors_hooks`` around the forward pass (loss
    included). The pack hook returns the tensor itself (nothing is copied) and records its
    storage; storages are counted once (``untyped_storage().nbytes()``, deduplicated by
    ``data_ptr``), and only those still alive when the forward pass ends (tensors saved by graph
    branches that are discarded during the forward pass, e.g. the unused log-determinants, are
    not held for backward). Storages of model parameters and buffers and of the input batch are
    held anyway and are reported separately, not counted.
(b) *peak above baseline*: the peak memory of one full training step (forward, backward,
    ``optimizer.step()``) above what the process held just before it (model, gradients and
    optimizer state already allocated). On CPU: peak RSS, with the kernel's high-water mark reset
    by writing ``5`` to ``/proc/self/clear_refs`` and the baseline read from ``VmRSS`` just
    before the step, peak from ``VmHWM`` after it. The worker runs with
    ``MALLOC_MMAP_THRESHOLD_=65536`` and ``MALLOC_TRIM_THRESHOLD_=0`` so that freed tensors are
    returned to the OS and RSS follows live memory. On CUDA: ``torch.cuda.max_memory_allocated``
    above ``torch.cuda.memory_allocated`` after ``reset_peak_memory_stats``.

(a) is measured in the second training step (with the hooks installed); (b) in a third step
without hooks (the peak of the hooked step is recorded too, as a check that the hooks do not
change it). The step time printed is the faster of these two steps; it is taken under the malloc
settings above (every large tensor is a fresh ``mmap``), so it is slower than a training run's.

Floors checked at the end: at 16 steps per level memory-saving's (a) <= 0.1x autograd's and its
(b) <= 0.35x; memory-saving's (a) grows <= 1.1x from 4 to 32 steps per level (autograd's growth
and a linear fit are printed for comparison). ``--check`` makes a failed floor exit with 1; a
failed worker always exits with 2.

Usage::

    python bench/memory.py [--steps 4 8 16 32] [--batch 16] [--device cpu|cuda]
                           [--markdown PATH] [--check]
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import random
import subprocess
import sys
import time
import weakref
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from flowprox.utils.profiling import PeakMeter

MODES = ("autograd", "memory-saving")
MIB = 1024.0 * 1024.0
FLOOR_SAVED_RATIO = 0.1
FLOOR_PEAK_RATIO = 0.35
FLOOR_SAVED_GROWTH = 1.1
FLOOR_STEPS = 16

# --------------------------------------------------------------------------------------- worker


class SavedTensorCounter:
    """Pack/unpack hooks recording the storages autograd saves for backward (no copies made)."""

    def __init__(self, held_anyway: set[int]) -> None:
        self.held_anyway = held_anyway
        self.num_packed = 0
        self.held_bytes: dict[int, int] = {}
        # data_ptr -> (nbytes, weak references to the saved tensors viewing that storage)
        self.saved: dict[int, tuple[int, list[weakref.ref]]] = {}

    def pack(self, tensor: Any) -> Any:
        self.num_packed += 1
        storage = tensor.untyped_storage()
        ptr, nbytes = storage.data_ptr(), storage.nbytes()
        if nbytes == 0:
            return tensor
        if ptr in self.held_anyway:
            self.held_bytes[ptr] = nbytes
            return tensor
        entry = self.saved.get(ptr)
        if entry is None or not any(ref() is not None for ref in entry[1]):
            # New storage, or an earlier one at this address that has been freed meanwhile.
            entry = (nbytes, [])
            self.saved[ptr] = entry
        entry[1].append(weakref.ref(tensor))
        return tensor

    @staticmethod
    def unpack(tensor: Any) -> Any:
        return tensor

    def live_bytes(self) -> tuple[int, int]:
        """``(bytes, storages)`` of the saved storages still alive now."""
        live = [n for n, refs in self.saved.values() if any(r() is not None for r in refs)]
        return sum(live), len(live)

    def packed_bytes(self) -> int:
        """Bytes of every distinct storage packed, alive or not (an upper bound)."""
        return sum(n for n, _ in self.saved.values())


def _storage_ptrs(tensors: Any) -> set[int]:
    return {t.untyped_storage().data_ptr() for t in tensors if t is not None}


def run_worker(
    steps_per_level: int,
    mode: str,
    batch: int,
    device: str,
    seed: int,
    prior_path: str | None = None,
    data: str | None = None,
) -> dict:
    """One configuration: build, warm up, measure (a) and (b); returns the JSON-able result."""
    import numpy as np
    import torch
    import torch.nn.functional as F

    from flowprox.flows import Glow
    from flowprox.optim.unrolled import flow_unrolled_network
    from flowprox.physics.noise import measure
    from flowprox.physics.operators import GaussianBlur

    setup_start = time.perf_counter()
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    dev = torch.device(device)
    generator = torch.Generator(device=dev).manual_seed(seed)

    def smooth_images(n: int) -> torch.Tensor:
        """Bilinearly upsampled uniform noise in [0, 1], ``(n, 3, 32, 32)``."""
        coarse = torch.rand(n, 3, 8, 8, generator=generator, device=dev)
        return F.interpolate(coarse, size=(32, 32), mode="bilinear", align_corners=False)

    if prior_path is not None:
        # One real training step of the small preset: its prior, its deblurring task and
        # network (flowprox.models.unrolled.build_unrolled), its optimizer, real validation images.
        model, optimizer, op, x = _small_preset_step(prior_path, data, mode, batch, dev)
        steps_per_level = next(m for m in model.modules() if isinstance(m, Glow)).steps_per_level
        y = measure(op, x, 0.0, generator)
    else:
        prior = Glow(in_channels=3, levels=3, steps_per_level=steps_per_level, hidden=128,
                     image_size=32).to(dev)  # fmt: skip
        prior.train()
        with torch.no_grad():
            prior(smooth_images(batch))  # data-dependent ActNorm initialisation
        model = flow_unrolled_network(prior, num_folds=4, memory_saving=(mode == "memory-saving"))
        model = model.to(dev).train()
        del prior
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
        op = GaussianBlur(1.0).to(dev)
        x = smooth_images(batch)
        y = measure(op, x, 0.05, generator)

    def train_step(counter: SavedTensorCounter | None = None) -> tuple[float, dict]:
        optimizer.zero_grad(set_to_none=False)
        extra: dict[str, Any] = {}
        if counter is None:
            loss = F.mse_loss(model(y, op), x)
        else:
            with torch.autograd.graph.saved_tensors_hooks(counter.pack, counter.unpack):
                loss = F.mse_loss(model(y, op), x)
            gc.collect()
            extra["live_bytes"], extra["live_storages"] = counter.live_bytes()
        loss.backward()
        optimizer.step()
        return float(loss.detach()), extra

    # Step 1: warm-up (allocates gradients and Adam state, ActNorm already initialised).
    t0 = time.perf_counter()
    setup_time = t0 - setup_start
    train_step()
    warmup_time = time.perf_counter() - t0

    # Step 2: (a) with saved-tensor hooks; the peak is recorded as a check.
    held = _storage_ptrs(model.parameters()) | _storage_ptrs(model.buffers())
    held |= _storage_ptrs((x, y))
    counter = SavedTensorCounter(held)
    meter = PeakMeter(device)
    meter.start()
    t0 = time.perf_counter()
    loss_hooked, extra = train_step(counter)
    if device == "cuda":
        torch.cuda.synchronize()
    time_hooked = time.perf_counter() - t0
    peak_hooked = meter.stop()

    # Step 3: (b) and the wall time, no hooks.
    meter = PeakMeter(device)
    meter.start()
    baseline = meter.baseline
    t0 = time.perf_counter()
    loss, _ = train_step()
    if device == "cuda":
        torch.cuda.synchronize()
    step_time = time.perf_counter() - t0
    peak = meter.stop()

    params = list(model.parameters())
    return {
        "steps_per_level": steps_per_level,
        "mode": mode,
        "batch": batch,
        "device": device,
        "saved_bytes": extra["live_bytes"],
        "saved_storages": extra["live_storages"],
        "saved_bytes_packed": counter.packed_bytes(),
        "saved_tensors_packed": counter.num_packed,
        "held_anyway_bytes": sum(counter.held_bytes.values()),
        "peak_above_bytes": peak,
        "peak_above_bytes_hooked_step": peak_hooked,
        "baseline_bytes": baseline,
        "peak_method": meter.method,
        "step_time_s": min(step_time, time_hooked),
        "step_time_plain_s": step_time,
        "step_time_hooked_s": time_hooked,
        "setup_time_s": setup_time,
        "warmup_time_s": warmup_time,
        "loss": loss,
        "loss_hooked_step": loss_hooked,
        "num_flows": len({id(m) for m in model.modules() if isinstance(m, Glow)}),
        "num_parameters": sum(p.numel() for p in params),
        "parameter_bytes": sum(p.numel() * p.element_size() for p in params),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
    }


def _small_preset_step(prior_path: str, data: str | None, mode: str, batch: int, dev: Any):
    """Model, optimizer, operator and images of one training step of the small preset."""
    import dataclasses

    from flowprox.data.datasets import load_splits
    from flowprox.evaluation.reconstruct import stack_images
    from flowprox.models.prior import load_prior
    from flowprox.models.unrolled import build_unrolled
    from flowprox.physics.tasks import build_operator
    from flowprox.training.configs import unrolled_config
    from flowprox.training.task import make_unrolled_optimizer, with_prior_model

    prior, saved = load_prior(prior_path)
    config = unrolled_config("deblur", "glow", "small", data=data, prior=prior_path)
    config = with_prior_model(config, saved["model"])
    config = dataclasses.replace(
        config, model=dataclasses.replace(config.model, memory_saving=mode == "memory-saving")
    )
    op = build_operator(config.task, config.data.resolution).to(dev)
    model = build_unrolled(config, op, prior).to(dev).train()
    optimizer = make_unrolled_optimizer(model, config)
    x = stack_images(load_splits(config.data)["val"], batch).to(dev)
    return model, optimizer, op, x


# --------------------------------------------------------------------------------------- parent


@dataclass
class Config:
    steps_per_level: int
    mode: str
    prior: str | None = None


def launch(config: Config, args: argparse.Namespace) -> dict | None:
    """Run one configuration in its own subprocess; its last stdout line is the JSON result."""
    env = dict(os.environ)
    env["MALLOC_MMAP_THRESHOLD_"] = "65536"
    env["MALLOC_TRIM_THRESHOLD_"] = "0"
    command = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--worker",
        "--steps-per-level",
        str(config.steps_per_level),
        "--mode",
        config.mode,
        "--batch",
        str(args.batch),
        "--device",
        args.device,
        "--seed",
        str(args.seed),
    ]
    if config.prior:
        command += ["--prior", config.prior, "--data", args.data]
    start = time.perf_counter()
    proc = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    elapsed = time.perf_counter() - start
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if proc.returncode != 0 or not lines:
        print(
            f"  worker {config.mode} S={config.steps_per_level} failed (exit {proc.returncode}):\n"
            f"{proc.stderr[-4000:]}",
            file=sys.stderr,
        )
        return None
    result = json.loads(lines[-1])
    result["subprocess_s"] = elapsed
    return result


def _mib(value: float | None) -> str:
    return "n/a" if value is None else f"{value / MIB:.1f}"


def _ratio(num: float | None, den: float | None) -> float | None:
    if num is None or den is None or den == 0:
        return None
    return num / den


def _fmt_ratio(value: float | None, digits: int = 3) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}x"


def _linear_fit(xs: list[float], ys: list[float]) -> tuple[float, float, float]:
    """Least-squares ``y = a + b x``; returns ``(a, b, max |residual| / y)``."""
    n = len(xs)
    mean_x, mean_y = sum(xs) / n, sum(ys) / n
    sxx = sum((x - mean_x) ** 2 for x in xs)
    b = sum((x - mean_x) * (y - mean_y) for x, y in zip(xs, ys, strict=True)) / sxx
    a = mean_y - b * mean_x
    worst = max(abs(y - (a + b * x)) / y for x, y in zip(xs, ys, strict=True))
    return a, b, worst


def report(results: dict[tuple[int, str], dict], args: argparse.Namespace) -> tuple[str, bool]:
    """The Markdown report and whether every floor that could be checked passed."""
    steps = sorted(args.steps)

    def get(s: int, mode: str, key: str) -> float | None:
        result = results.get((s, mode))
        return None if result is None else result[key]

    any_result = results[min(results)] if results else None
    lines = []
    if any_result is not None:
        lines.append(
            f"Unrolled Glow, K=4 folds ({any_result['num_flows']} distinct Glow priors, "
            f"{any_result['num_parameters']:,} parameters at "
            f"{any_result['steps_per_level']} steps/level), 3 levels, "
            f"hidden 128, batch {args.batch}, 32x32 RGB, "
            f"Gaussian blur; one training step (forward, backward, Adam step) on "
            f"{args.device} (torch {any_result['torch']}, {any_result['threads']} threads, "
            f"{platform.machine()})."
        )
        lines.append("")
    lines += [
        "| steps/level | saved for backward (MiB) autograd | memory-saving | ratio "
        "| peak above baseline (MiB) autograd | memory-saving | ratio "
        "| step time (s) autograd / memory-saving |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for s in steps:
        sa, sm = get(s, "autograd", "saved_bytes"), get(s, "memory-saving", "saved_bytes")
        pa, pm = get(s, "autograd", "peak_above_bytes"), get(s, "memory-saving", "peak_above_bytes")
        ta, tm = get(s, "autograd", "step_time_s"), get(s, "memory-saving", "step_time_s")
        times = " / ".join("n/a" if t is None else f"{t:.2f}" for t in (ta, tm))
        lines.append(
            f"| {s} | {_mib(sa)} | {_mib(sm)} | {_fmt_ratio(_ratio(sm, sa), 4)} "
            f"| {_mib(pa)} | {_mib(pm)} | {_fmt_ratio(_ratio(pm, pa))} | {times} |"
        )
    lines.append("")

    # Growth of (a) from the smallest to the largest depth.
    lo, hi = steps[0], steps[-1]
    for mode in MODES:
        growth = _ratio(get(hi, mode, "saved_bytes"), get(lo, mode, "saved_bytes"))
        text = f"- {mode} (a) growth {lo} -> {hi} steps/level: {_fmt_ratio(growth, 2)}"
        if mode == "autograd":
            points = [(s, get(s, mode, "saved_bytes")) for s in steps]
            points = [(s, v) for s, v in points if v is not None]
            if len(points) >= 3:
                a, b, worst = _linear_fit([p[0] for p in points], [p[1] for p in points])
                text += (
                    f" (steps grow {hi / lo:.0f}x; fit {a / MIB:.1f} MiB + {b / MIB:.2f} MiB per "
                    f"step/level, largest deviation from the line {100 * worst:.1f}%)"
                )
        lines.append(text)
    lines.append("")

    # Floors.
    floors: list[tuple[str, float | None, float]] = [
        (
            f"(a) memory-saving / autograd at {FLOOR_STEPS} steps/level",
            _ratio(
                get(FLOOR_STEPS, "memory-saving", "saved_bytes"),
                get(FLOOR_STEPS, "autograd", "saved_bytes"),
            ),
            FLOOR_SAVED_RATIO,
        ),
        (
            f"(b) memory-saving / autograd at {FLOOR_STEPS} steps/level",
            _ratio(
                get(FLOOR_STEPS, "memory-saving", "peak_above_bytes"),
                get(FLOOR_STEPS, "autograd", "peak_above_bytes"),
            ),
            FLOOR_PEAK_RATIO,
        ),
        (
            "(a) memory-saving growth 4 -> 32 steps/level",
            _ratio(get(32, "memory-saving", "saved_bytes"), get(4, "memory-saving", "saved_bytes")),
            FLOOR_SAVED_GROWTH,
        ),
    ]
    all_passed = True
    for name, value, limit in floors:
        if value is None:
            verdict = "SKIP (configuration not run or failed)"
        elif value <= limit:
            verdict = "PASS"
        else:
            verdict = "FAIL"
            all_passed = False
        lines.append(f"- {verdict}: {name} = {_fmt_ratio(value, 4)} (floor <= {limit}x)")
    lines.append("")

    # Notes.
    if any_result is not None:
        methods = sorted({r["peak_method"] for r in results.values()})
        lines.append("Notes:")
        lines.append(
            "- (a): bytes of the distinct storages saved for backward (saved_tensors_hooks around "
            "the forward pass and loss), alive when the forward pass ends; parameters, buffers "
            "and the input batch excluded (held anyway). Measured in the 2nd training step."
        )
        lines.append(
            f"- (b): {'; '.join(methods)}; measured in the 3rd training step (no hooks), after "
            "a warm-up step, with gradients and Adam state allocated."
        )
        lines.append(
            "- step time: wall time of one training step, the faster of the 2nd and 3rd steps, "
            "under the worker's malloc settings (each large tensor freshly mmap'd), so slower "
            "than in training."
        )
        drift = [
            abs(r["peak_above_bytes_hooked_step"] - r["peak_above_bytes"])
            / max(r["peak_above_bytes"], 1)
            for r in results.values()
        ]
        lines.append(
            f"- peak of the hooked 2nd step vs the 3rd step: largest relative difference "
            f"{100 * max(drift):.1f}%."
        )
        for mode in MODES:
            held = [r["held_anyway_bytes"] for (s, m), r in sorted(results.items()) if m == mode]
            if held:
                lines.append(
                    f"- {mode}: saved tensors that are parameters/buffers/inputs (not counted): "
                    + ", ".join(_mib(h) for h in held)
                    + " MiB."
                )
    return "\n".join(lines), all_passed


def small_preset_report(args: argparse.Namespace) -> str:
    """One real training step of the small preset, autograd against memory-saving."""
    if not args.data:
        raise SystemExit("--small-preset-prior needs --data (e.g. ../shared/data)")
    found = {}
    for mode in MODES:
        print(f"running {mode}, small preset step ...", file=sys.stderr, flush=True)
        found[mode] = launch(Config(0, mode, args.small_preset_prior), args)
    a, m = found["autograd"], found["memory-saving"]
    if a is None or m is None:
        return "Small preset step: a worker failed (see stderr)."
    return "\n".join([
        f"One real training step of the small preset (GLOW prox, K = 4, deblurring, batch "
        f"{args.batch} of 32x32 validation images, its prior with {a['steps_per_level']} "
        f"steps/level, {a['num_parameters']:,} parameters):",
        "",
        "| | autograd | memory-saving | ratio |",
        "| --- | ---: | ---: | ---: |",
        f"| saved for backward (MiB) | {_mib(a['saved_bytes'])} | {_mib(m['saved_bytes'])} | "
        f"{_fmt_ratio(_ratio(m['saved_bytes'], a['saved_bytes']), 4)} |",
        f"| peak above baseline (MiB) | {_mib(a['peak_above_bytes'])} | "
        f"{_mib(m['peak_above_bytes'])} | "
        f"{_fmt_ratio(_ratio(m['peak_above_bytes'], a['peak_above_bytes']))} |",
        f"| step time (s) | {a['step_time_s']:.2f} | {m['step_time_s']:.2f} | "
        f"{_fmt_ratio(_ratio(m['step_time_s'], a['step_time_s']), 2)} |",
    ])  # fmt: skip


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, nargs="+", default=[4, 8, 16, 32])
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--markdown", type=Path, default=None, help="also write the report here")
    parser.add_argument("--check", action="store_true", help="exit nonzero on a failed floor")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--small-preset-prior",
        help="also measure one real training step of the small preset with this prior "
        "(e.g. runs/repro-small/prior/checkpoints/best.pt); needs --data",
    )
    parser.add_argument("--data", help="the data directory for --small-preset-prior")
    parser.add_argument("--prior", help=argparse.SUPPRESS)
    parser.add_argument("--json", type=Path, default=None, help="write the raw results here")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--steps-per-level", type=int, default=16, help=argparse.SUPPRESS)
    parser.add_argument("--mode", choices=MODES, default="autograd", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.worker:
        result = run_worker(
            args.steps_per_level, args.mode, args.batch, args.device, args.seed,
            args.prior, args.data,
        )  # fmt: skip
        print(json.dumps(result), flush=True)
        return 0

    start = time.perf_counter()
    results: dict[tuple[int, str], dict] = {}
    failed = False
    for s in sorted(args.steps):
        for mode in MODES:
            print(f"running {mode}, {s} steps/level ...", file=sys.stderr, flush=True)
            result = launch(Config(s, mode), args)
            if result is None:
                failed = True
                continue
            results[(s, mode)] = result
            saved, peak = _mib(result["saved_bytes"]), _mib(result["peak_above_bytes"])
            print(
                f"  saved {saved} MiB, peak +{peak} MiB, step {result['step_time_s']:.2f} s, "
                f"subprocess {result['subprocess_s']:.0f} s",
                file=sys.stderr,
                flush=True,
            )
    text, passed = report(results, args)
    if args.small_preset_prior:
        text += "\n" + small_preset_report(args) + "\n"
    text += f"\n- total wall time {time.perf_counter() - start:.0f} s.\n"
    print(text)
    if args.markdown is not None:
        args.markdown.write_text(text)
    if args.json is not None:
        args.json.write_text(json.dumps([results[k] for k in sorted(results)], indent=1))
    if failed:
        return 2
    return 1 if args.check and not passed else 0


if __name__ == "__main__":
    sys.exit(main())
