"""Bits/dim under the prior of a network's restorations: what the typicality warning scores."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor

from flowprox.config import UnrolledExperiment
from flowprox.evaluation.evaluate import EvaluationSet, load_evaluation_set
from flowprox.evaluation.reconstruct import reconstruct_all
from flowprox.metrics.typicality import image_bits_per_dim


def restored_bits_per_dim(
    network: torch.nn.Module,
    evaluation: EvaluationSet,
    prior: torch.nn.Module,
    n_bits: int,
    batch_size: int,
) -> Tensor:
    """Bits/dim under ``prior`` (at its ``n_bits``) of ``network``'s restorations of an
    evaluation set's measurements, shape ``(N,)``."""

    restored = reconstruct_all(network, evaluation.y, evaluation.op, batch_size)
    return image_bits_per_dim(prior, restored, n_bits)  # type: ignore[arg-type]


def restored_val_bits_per_dim(
    network: torch.nn.Module,
    config: UnrolledExperiment,
    prior: torch.nn.Module,
    data: str | Path,
    n_bits: int,
    images: int = 512,
    batch_size: int = 64,
    strict: bool = False,
) -> Tensor:
    """``restored_bits_per_dim`` of the first ``images`` validation images of ``data``, measured
    with the run's task and measurement seed: what the typicality threshold is calibrated on."""

    validation = load_evaluation_set(
        config.task, "in-distribution", data, config.data.resolution, images,
        seed=config.train.measurement_seed, split="val", strict=strict,
    )  # fmt: skip
    return restored_bits_per_dim(network, validation, prior, n_bits, batch_size)
