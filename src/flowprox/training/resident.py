"""Training images held on the GPU: a step's batch is gathered there, with no host copy.

On CUDA the DataLoader path copies every batch from pinned host memory; when the whole
training split fits in a share of the device's free memory (a 32x32 uint8 CelebA train split is
about 39 MB), it is moved to the device once and each step's batch is one ``index_select``,
converted exactly as ``ImageDataset.__getitem__`` does (uint8 / 255 in float32), so the two
paths give the same batches.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import torch
from torch import Tensor

#: the largest share of the device's free memory the training images may take there
RESIDENT_SHARE = 0.25


def fits_on_device(nbytes: int, device: torch.device, share: float = RESIDENT_SHARE) -> bool:
    """Whether ``nbytes`` of training images may be held on ``device``: CUDA only, within
    ``share`` of its free memory (on the CPU the images are in memory already)."""
    if device.type != "cuda":
        return False
    free, _ = torch.cuda.mem_get_info(device)
    return nbytes <= share * free


def resident_batches(images: Tensor, sampler: Iterable[list[int]]) -> Iterator[Tensor]:
    """The batches of ``sampler`` (lists of indices) from uint8 ``images`` ``(N, 3, H, H)``
    already on their device, as float32 in ``[0, 1]``."""
    for indices in sampler:
        index = torch.as_tensor(indices, dtype=torch.long, device=images.device)
        yield images.index_select(0, index).to(torch.float32).div_(255.0)
