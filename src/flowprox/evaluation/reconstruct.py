"""Batched reconstruction: a network over a whole set of measurements, and images stacked."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from flowprox.data.datasets import ImageDataset
from flowprox.physics.operators import LinearOperator


@torch.inference_mode()
def reconstruct_all(
    network: nn.Module,
    y: Tensor,
    op: LinearOperator,
    batch_size: int,
    device: torch.device | str = "cpu",
) -> Tensor:
    """``network(y, op)`` over ``y`` in batches (on ``device``), returned on the CPU."""
    outputs = [
        network(y[start : start + batch_size].to(device), op).cpu()
        for start in range(0, y.shape[0], batch_size)
    ]
    return torch.cat(outputs)


def stack_images(dataset: ImageDataset, count: int = 0) -> Tensor:
    """The first ``count`` images of ``dataset`` (all when 0) as one ``(N, C, H, W)`` tensor."""
    n = len(dataset) if count <= 0 else min(count, len(dataset))
    return torch.stack([dataset[i] for i in range(n)])
