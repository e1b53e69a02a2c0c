"""PyTorch DDP plumbing for runs launched by ``torchrun`` (one process per device).

Nothing here is home-made communication: ``torch.distributed`` with NCCL on GPUs and gloo on
CPUs, ``DistributedDataParallel`` for gradient averaging.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

from flowprox.config import check_device
from flowprox.utils.precision import exact_float32_on_cuda


@dataclass(frozen=True)
class DistributedContext:
    """Where this process sits: ``rank`` of ``world_size``, and its device."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        """Rank 0 alone writes logs and checkpoints."""
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def check_global_batch(batch_size: int, context: DistributedContext) -> None:
    """Raise unless the global ``train.batch_size`` splits evenly over the processes."""
    if batch_size % context.world_size:
        raise ValueError(
            f"train.batch_size = {batch_size} is not divisible by the "
            f"{context.world_size} processes; use a multiple of {context.world_size}."
        )


def setup_distributed(device: str = "cpu") -> DistributedContext:
    """Join the process group when launched by ``torchrun`` (``WORLD_SIZE > 1``).

    Args:
        device: ``"cpu"`` (gloo backend), ``"cuda"`` or ``"cuda:N"`` (NCCL; under ``torchrun``
            each process takes ``cuda:LOCAL_RANK``, a single process ``cuda:N``, default 0).
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    torch_device = resolve_device(device, local_rank if world_size > 1 else None)
    if torch_device.type == "cuda":
        torch.cuda.set_device(torch_device)
    if world_size > 1 and not dist.is_initialized():
        backend = "nccl" if torch_device.type == "cuda" else "gloo"
        dist.init_process_group(backend=backend)
    return DistributedContext(rank, world_size, local_rank, torch_device)


def resolve_device(name: str, local_rank: int | None = None) -> torch.device:
    """The torch device of ``name`` (``cpu``, ``cuda`` or ``cuda:N``), checked to exist.

    ``local_rank`` (under ``torchrun``) picks the process's GPU instead of ``N``. On CUDA, TF32
    is turned off (``utils.precision.exact_float32_on_cuda``): the flows' inverse needs float32.

    Raises:
        ValueError: a malformed name, no CUDA, or no GPU of that index (each names the fix).
    """
    check_device(name)
    if name == "cpu":
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise ValueError(f"device {name!r} was requested but CUDA is not available; use cpu.")
    index = local_rank if local_rank is not None else torch.device(name).index or 0
    count = torch.cuda.device_count()
    if index >= count:
        raise ValueError(
            f"device {name!r}: this machine has {count} GPU(s), cuda:0 to cuda:{count - 1}."
        )
    exact_float32_on_cuda()
    return torch.device("cuda", index)


def cleanup_distributed() -> None:
    """Leave the process group if one was joined."""
    if dist.is_initialized():
        dist.destroy_process_group()


def wrap_model(model: nn.Module, context: DistributedContext) -> nn.Module:
    """``DistributedDataParallel`` around ``model`` under DDP (it broadcasts rank 0's state)."""
    if not context.enabled:
        return model
    device_ids = [context.device.index] if context.device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(model, device_ids=device_ids)


def unwrap_model(model: nn.Module) -> nn.Module:
    """The module inside a DDP wrapper (or the module itself)."""
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


def broadcast_object(value: object, context: DistributedContext) -> object:
    """Rank 0's ``value`` on every rank."""
    if not context.enabled:
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def all_reduce_max(value: float, context: DistributedContext) -> float:
    """The maximum of ``value`` over ranks (e.g. a bad-step flag)."""
    if not context.enabled:
        return value
    tensor = torch.tensor([value], dtype=torch.float64, device=context.device)
    dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
    return float(tensor.item())


def replica_divergence(model: nn.Module, context: DistributedContext) -> float:
    """Largest difference between ranks of per-parameter checksums (0.0 when in sync).

    Each rank sums every parameter and its square in float64; the vectors are all-gathered and
    compared with rank 0's. Identical weights give exactly 0.
    """
    if not context.enabled:
        return 0.0
    with torch.no_grad():
        sums = [
            torch.stack([p.double().sum(), p.double().square().sum()]) for p in model.parameters()
        ]
        local = torch.cat(sums).to(context.device)
    gathered = [torch.empty_like(local) for _ in range(context.world_size)]
    dist.all_gather(gathered, local)
    return max(float((g - gathered[0]).abs().max()) for g in gathered)
