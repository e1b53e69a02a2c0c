"""The GPU path of training (issue 11): training images held on the device when they fit, with
the same batches as the DataLoader path, and TF32 off on every CUDA device flowprox resolves."""

from __future__ import annotations

import pytest
import torch
from conftest import smooth_uint8_images

from flowprox.data.datasets import ImageDataset
from flowprox.training import trainer
from flowprox.training.distributed import resolve_device
from flowprox.training.resident import RESIDENT_SHARE, fits_on_device, resident_batches
from flowprox.training.trainer import StepBatchSampler, batches


def _dataset_and_sampler() -> tuple[ImageDataset, StepBatchSampler]:
    dataset = ImageDataset(smooth_uint8_images(40, 8, seed=3))
    return dataset, StepBatchSampler(len(dataset), 6, seed=5, start_step=4)


def _first(iterator, count: int) -> list[torch.Tensor]:
    return [next(iterator) for _ in range(count)]


def test_resident_batches_equal_the_dataloader_batches() -> None:
    """Gathered from the uint8 images (over an epoch boundary: 40 // 6 = 6 steps per epoch),
    the batches equal the DataLoader's bit for bit: same images, same order, same scaling."""
    dataset, sampler = _dataset_and_sampler()
    loaded = _first(batches(dataset, sampler, 0, torch.device("cpu")), 9)
    gathered = _first(resident_batches(dataset.tensor, sampler), 9)
    for want, got in zip(loaded, gathered, strict=True):
        assert got.dtype == torch.float32 and got.shape == (6, 3, 8, 8)
        assert torch.equal(got, want)
    assert not torch.equal(gathered[0], gathered[1])


def test_batches_take_the_resident_path_when_the_images_fit(monkeypatch) -> None:
    dataset, sampler = _dataset_and_sampler()
    loaded = _first(batches(dataset, sampler, 0, torch.device("cpu")), 3)
    asked = []

    def fits(nbytes: int, device: torch.device) -> bool:
        asked.append(nbytes)
        return True

    monkeypatch.setattr(trainer, "fits_on_device", fits)
    monkeypatch.setattr(trainer, "DataLoader", None)  # the resident path needs no loader
    resident = _first(batches(dataset, sampler, 0, torch.device("cpu")), 3)
    assert asked == [dataset.tensor.nbytes]
    assert all(torch.equal(a, b) for a, b in zip(loaded, resident, strict=True))


def test_images_fit_on_cuda_within_a_share_of_its_free_memory(monkeypatch) -> None:
    assert not fits_on_device(1, torch.device("cpu"))  # on the CPU they are in memory already
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (4000, 8000))
    limit = int(RESIDENT_SHARE * 4000)
    assert fits_on_device(limit, torch.device("cuda", 0))
    assert not fits_on_device(limit + 1, torch.device("cuda", 0))


def test_a_cuda_device_runs_float32_without_tf32(monkeypatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    flags = (torch.backends.cuda.matmul, torch.backends.cudnn)  # not monkeypatch-able
    saved = [flag.allow_tf32 for flag in flags]
    try:
        for flag in flags:
            flag.allow_tf32 = True
        assert resolve_device("cuda:1") == torch.device("cuda", 1)
        assert [flag.allow_tf32 for flag in flags] == [False, False]
    finally:
        for flag, value in zip(flags, saved, strict=True):
            flag.allow_tf32 = value


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA is not available")
def test_training_batches_are_gathered_on_the_gpu() -> None:
    dataset, sampler = _dataset_and_sampler()
    device = resolve_device("cuda")
    loaded = _first(batches(dataset, sampler, 0, torch.device("cpu")), 3)
    on_gpu = _first(batches(dataset, sampler, 0, device), 3)
    assert all(batch.device.type == "cuda" for batch in on_gpu)
    assert all(torch.equal(a, b.cpu()) for a, b in zip(loaded, on_gpu, strict=True))
