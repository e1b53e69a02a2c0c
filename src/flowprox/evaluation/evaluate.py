"""Evaluation of reconstruction methods on identical measurements, in three settings.

Settings (paper Tables I-IV): ``in-distribution`` (the task a model was trained for, on the
test split), ``ood-measurement`` (the task's out-of-distribution operator or noise level,
``tasks.ood_task``, same images) and ``ood-images`` (the trained task on the anime faces).
Measurements come from ``noise.measure_fixed`` with one seed, so every method sees the same
inputs. Per method: mean and standard deviation of PSNR (peak 1, outputs clamped to [0, 1]) and
SSIM over the images, wall time per image and peak memory of inference.
"""

from __future__ import annotations

import csv
import functools
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import Tensor

from flowprox.config import DataConfig, TaskConfig
from flowprox.data.datasets import load_splits
from flowprox.flows.glow import Glow
from flowprox.metrics.quality import mean_and_std, psnr, ssim
from flowprox.optim.classical import (
    classical_name,
    classical_reconstruction,
    tune_classical_parameter,
)
from flowprox.optim.latent import solve_latent
from flowprox.physics.noise import measure_fixed
from flowprox.physics.operators import LinearOperator
from flowprox.physics.tasks import build_operator, ood_task, task_label
from flowprox.utils.profiling import PeakMeter
from flowprox.utils.validation import NonFiniteError

SETTINGS = ("in-distribution", "ood-measurement", "ood-images")
#: seed of the test measurements (validation measurements use the training config's seed)
TEST_SEED = 2022

Reconstructor = Callable[[Tensor, LinearOperator], Tensor]


@dataclass
class EvaluationSet:
    """Clean images, their measurements and the operator of one setting."""

    setting: str
    task: TaskConfig
    op: LinearOperator
    x: Tensor
    y: Tensor
    indices: list[int]
    source: str

    @property
    def label(self) -> str:
        return f"{self.setting}: {task_label(self.task)}, {len(self.x)} images of {self.source}"


@dataclass
class MethodResult:
    """Per-image metrics and costs of one method on one evaluation set."""

    method: str
    psnr: list[float]
    ssim: list[float]
    seconds_per_image: float
    peak_memory_mib: float
    details: dict[str, float | str] = field(default_factory=dict)
    examples: Tensor | None = None  # the first reconstructions, for figures

    def summary(self) -> dict[str, float | str]:
        psnr_mean, psnr_std = mean_and_std(torch.tensor(self.psnr))
        ssim_mean, ssim_std = mean_and_std(torch.tensor(self.ssim))
        return {
            "method": self.method,
            "psnr_mean": round(psnr_mean, 3),
            "psnr_std": round(psnr_std, 3),
            "ssim_mean": round(ssim_mean, 4),
            "ssim_std": round(ssim_std, 4),
            "images": len(self.psnr),
            "seconds_per_image": round(self.seconds_per_image, 5),
            "peak_memory_mib": round(self.peak_memory_mib, 1),
            **self.details,
        }


#: every setting and validation set of a task reads the same files: load them once
_load_splits_cached = functools.lru_cache(maxsize=4)(load_splits)


def evaluation_task(task: TaskConfig, setting: str) -> TaskConfig:
    """The task of ``setting`` for a model trained on ``task``."""
    if setting not in SETTINGS:
        raise ValueError(f"unknown setting {setting!r}; choose one of {SETTINGS}.")
    return ood_task(task) if setting == "ood-measurement" else task


def anime_path(data: str | Path) -> Path:
    """The anime faces beside the CelebA data (``DIR/anime64.npz``), or ``data`` itself."""
    path = Path(data)
    candidate = path / "anime64.npz" if path.is_dir() else path.parent / "anime64.npz"
    if not candidate.is_file():
        raise FileNotFoundError(
            f"no out-of-distribution images: {candidate.absolute()} (anime64.npz beside the data) "
            "not found; pass --ood-data with them (an .npz with a test array or an image folder)."
        )
    return candidate


def load_evaluation_set(
    task: TaskConfig,
    setting: str,
    data: str | Path,
    resolution: int,
    max_images: int = 0,
    ood_data: str | Path | None = None,
    seed: int = TEST_SEED,
    split: str = "test",
    strict: bool = False,
) -> EvaluationSet:
    """Images and fixed-seed measurements of ``setting``.

    ``max_images > 0`` takes that many images: the first ones of the test split, or a seeded
    random subset of the anime faces (the paper's protocol is 100 random anime images).
    ``strict``: an unreadable file in an image folder is an error (else skipped with a warning).
    """
    eval_task = evaluation_task(task, setting)
    if setting == "ood-images":
        path = Path(ood_data) if ood_data else anime_path(data)
    else:
        path = Path(data)
    splits = _load_splits_cached(DataConfig(path=str(path), resolution=resolution, strict=strict))
    if split not in splits:
        raise ValueError(f"{path} has no {split!r} split; it has {sorted(splits)}.")
    dataset = splits[split]
    count = len(dataset) if max_images <= 0 else min(max_images, len(dataset))
    if setting == "ood-images" and count < len(dataset):
        generator = torch.Generator().manual_seed(seed)
        indices = sorted(torch.randperm(len(dataset), generator=generator)[:count].tolist())
    else:
        indices = list(range(count))
    x = torch.stack([dataset[i] for i in indices])
    op = build_operator(eval_task, resolution, x.shape[1])
    y = measure_fixed(op, x, eval_task.sigma_n, seed)
    return EvaluationSet(setting, eval_task, op, x, y, indices, f"{path.name} ({split})")


def run_method(
    name: str,
    reconstruct: Reconstructor,
    evaluation: EvaluationSet,
    batch_size: int = 64,
    device: torch.device | str = "cpu",
    details: dict[str, float | str] | None = None,
    keep: int = 0,
) -> MethodResult:
    """Reconstruct every image of ``evaluation`` and measure quality, time and peak memory.

    The first ``keep`` reconstructions are kept in ``MethodResult.examples`` (for figures).
    """
    device = torch.device(device)
    op = evaluation.op.to(device)
    meter = PeakMeter(device)
    outputs = []
    seconds = 0.0
    peak = 0
    for start in range(0, len(evaluation.y), batch_size):
        y = evaluation.y[start : start + batch_size].to(device)
        meter.start()
        began = time.perf_counter()
        try:
            with torch.no_grad():
                x_hat = reconstruct(y, op)
        except NonFiniteError:  # the method diverged on this batch: no estimate
            x_hat = torch.full_like(evaluation.x[start : start + batch_size], float("nan"))
        if device.type == "cuda":
            torch.cuda.synchronize()
        seconds += time.perf_counter() - began
        peak = max(peak, meter.stop())
        outputs.append(x_hat.detach().float().cpu())
    x_hat = torch.cat(outputs)
    if x_hat.shape != evaluation.x.shape:
        raise ValueError(f"{name} returned {tuple(x_hat.shape)}, expected {evaluation.x.shape}.")
    failed = ~torch.isfinite(x_hat).flatten(1).all(dim=1)
    if bool(failed.any()):
        # Images without a finite estimate are scored as a uniform grey image and counted.
        x_hat[failed] = 0.5
        details = {**(details or {}), "failed_images": int(failed.sum())}
    return MethodResult(
        method=name,
        psnr=psnr(x_hat, evaluation.x).tolist(),
        ssim=ssim(x_hat, evaluation.x).tolist(),
        seconds_per_image=seconds / len(evaluation.y),
        peak_memory_mib=peak / 2**20,
        details=dict(details or {}),
        examples=x_hat[:keep].clone() if keep > 0 else None,
    )


def measurement_reconstructor(y: Tensor, op: LinearOperator) -> Tensor:
    """The measurement itself as the estimate (the zero-filled image for inpainting); where the
    measurement is not an image (super-resolution, compressed sensing, MRI), its zero-filled
    pseudo-inverse ``A^+ y``."""
    pseudo_inverse = getattr(op, "pseudo_inverse", None)
    return pseudo_inverse(y) if callable(pseudo_inverse) else y


def classical_reconstructor(parameter: float | None) -> Reconstructor:
    """The classical reference for the operator, with its tuned parameter."""
    return lambda y, op: classical_reconstruction(y, op, parameter)


def latent_reconstructor(flow: Glow, steps: int, gamma: float, lr: float) -> Reconstructor:
    """Latent optimisation with the pre-trained flow (``latent.solve_latent``)."""
    return lambda y, op: solve_latent(flow, y, op, steps=steps, gamma=gamma, lr=lr).x


def tune_classical(validation: EvaluationSet) -> tuple[float | None, float]:
    """The classical method's parameter that maximises mean PSNR on validation measurements."""
    return tune_classical_parameter(validation.y, validation.x, validation.op)


def tune_latent(
    flow: Glow,
    validation: EvaluationSet,
    steps: int,
    gammas: Sequence[float] = (0.01, 0.1, 1.0),
    lrs: Sequence[float] = (0.02, 0.05, 0.1),
) -> tuple[float, float, float]:
    """``(gamma, lr, val PSNR)`` of latent optimisation, best mean PSNR over a grid, on val."""
    best = (gammas[0], lrs[0], -float("inf"))
    for gamma in gammas:
        for lr in lrs:
            x_hat = solve_latent(flow, validation.y, validation.op, steps, gamma, lr).x
            value = float(psnr(x_hat.float(), validation.x).mean())
            if value > best[2]:
                best = (gamma, lr, value)
    return best


def write_results(
    results: Sequence[MethodResult], evaluation: EvaluationSet, out: str | Path, stem: str
) -> tuple[Path, Path]:
    """``STEM.json`` (summary per method) and ``STEM.csv`` (per-image metrics) under ``out``."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    summary = {
        "setting": evaluation.setting,
        "task": asdict(evaluation.task),
        "task_label": task_label(evaluation.task),
        "images": len(evaluation.x),
        "source": evaluation.source,
        "methods": [r.summary() for r in results],
    }
    json_path = out / f"{stem}.json"
    json_path.write_text(json.dumps(summary, indent=2) + "\n")
    csv_path = out / f"{stem}.csv"
    with open(csv_path, "w", newline="") as file:
        writer = csv.writer(file)
        writer.writerow(["method", "image_index", "psnr", "ssim"])
        for result in results:
            for index, p, s in zip(evaluation.indices, result.psnr, result.ssim, strict=True):
                writer.writerow([result.method, index, f"{p:.4f}", f"{s:.5f}"])
    return json_path, csv_path


def markdown_table(results: Sequence[MethodResult]) -> str:
    """A Markdown table: method, PSNR mean ± std, SSIM mean ± std, time/image, peak memory."""
    lines = [
        "| method | PSNR (dB) | SSIM | time / image | peak memory |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for result in results:
        s = result.summary()
        failed = s.get("failed_images")
        note = f" ({failed} images diverged, scored as grey)" if failed else ""
        lines.append(
            f"| {s['method']}{note} | {s['psnr_mean']:.2f} ± {s['psnr_std']:.2f} | "
            f"{s['ssim_mean']:.3f} ± {s['ssim_std']:.3f} | "
            f"{1000 * float(s['seconds_per_image']):.2f} ms | {s['peak_memory_mib']:.0f} MiB |"
        )
    return "\n".join(lines)


def classical_method_name(op: LinearOperator) -> str:
    """The classical reference's name for ``op``."""
    return f"classical: {classical_name(op)}"
