"""Shared test helpers: small flows with non-trivial weights."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from flowprox.flows import Glow


def perturb_parameters_(module: nn.Module, scale: float = 0.1, seed: int = 0) -> nn.Module:
    """Add seeded Gaussian noise to every parameter so zero-initialised layers are non-trivial."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in module.parameters():
            noise = torch.randn(param.shape, generator=generator, dtype=param.dtype)
            param.add_(scale * noise)
    return module


def smooth_images(batch: int, channels: int, size: int, seed: int = 0) -> torch.Tensor:
    """Images in [0, 1] with spatial correlation (upsampled noise), shape (B, C, size, size)."""
    generator = torch.Generator().manual_seed(seed)
    coarse = torch.rand(batch, channels, max(size // 4, 1), max(size // 4, 1), generator=generator)
    fine = torch.nn.functional.interpolate(coarse, size=(size, size), mode="bilinear")
    noise = 0.05 * torch.rand(batch, channels, size, size, generator=generator)
    return (0.9 * fine + noise).clamp(0, 1)


def smooth_uint8_images(n: int, size: int, seed: int) -> np.ndarray:
    """Correlated colour images, uint8 (n, size, size, 3): a learnable distribution."""
    rng = np.random.default_rng(seed)
    coarse = rng.uniform(0, 1, size=(n, 3, 2, 2)).astype(np.float32)
    fine = torch.nn.functional.interpolate(
        torch.from_numpy(coarse), size=(size, size), mode="bilinear", align_corners=True
    )
    noisy = fine.numpy() + rng.normal(0, 0.03, size=fine.shape)
    return (np.clip(noisy, 0, 1) * 255).round().astype(np.uint8).transpose(0, 2, 3, 1)


def write_face_data(root: Path, test: int, anime: int = 0) -> Path:
    """A CelebA-like data directory of 8x8 images: ``celeba64.npz`` (train 256, val 64,
    ``test``) and, when ``anime > 0``, an OOD set ``anime64.npz`` (inverted colours)."""
    np.savez(
        root / "celeba64.npz",
        train=smooth_uint8_images(256, 8, 0),
        val=smooth_uint8_images(64, 8, 1),
        test=smooth_uint8_images(test, 8, 2),
    )
    if anime > 0:
        np.savez(root / "anime64.npz", test=255 - smooth_uint8_images(anime, 8, 3))
    return root


def make_glow(
    channels: int = 3,
    levels: int = 2,
    steps: int = 2,
    hidden: int = 16,
    size: int = 8,
    dtype: torch.dtype = torch.float64,
    seed: int = 0,
) -> Glow:
    """A small Glow with ActNorm initialised on smooth images and perturbed weights."""
    glow = Glow(channels, levels, steps, hidden, image_size=size, seed=seed)
    glow.train()
    with torch.no_grad():
        glow(smooth_images(16, channels, size, seed=seed))
    perturb_parameters_(glow, 0.05, seed=seed)
    return glow.to(dtype)


@pytest.fixture
def glow64() -> Glow:
    return make_glow()


def write_png(path: Path, array: np.ndarray) -> Path:
    """Write ``array`` as a PNG by hand (neither Pillow nor flowprox): uint8 or uint16
    ``(H, W)`` or ``(H, W, C)`` with ``C`` = 1 (grey), 2 (grey + alpha), 3 (RGB) or 4 (RGBA).
    Row ``r`` uses PNG filter ``r % 5`` (None, Sub, Up, Average, Paeth), so a reader must undo
    all five."""
    import struct
    import zlib

    array = np.asarray(array)
    if array.ndim == 2:
        array = array[..., None]
    height, width, channels = array.shape
    depth = 16 if array.dtype == np.uint16 else 8
    colour_type = {1: 0, 2: 4, 3: 2, 4: 6}[channels]
    data = np.frombuffer(array.astype(">u2" if depth == 16 else np.uint8).tobytes(), np.uint8)
    rows = data.reshape(height, -1).astype(np.int64)
    bpp = channels * depth // 8
    previous = np.zeros_like(rows[0])
    lines = []
    for r, row in enumerate(rows):
        left = np.concatenate([np.zeros(bpp, np.int64), row[:-bpp]])
        upper_left = np.concatenate([np.zeros(bpp, np.int64), previous[:-bpp]])
        kind = r % 5
        if kind == 0:
            predicted = np.zeros_like(row)
        elif kind == 1:
            predicted = left
        elif kind == 2:
            predicted = previous
        elif kind == 3:
            predicted = (left + previous) // 2
        else:
            p = left + previous - upper_left
            pa, pb, pc = np.abs(p - left), np.abs(p - previous), np.abs(p - upper_left)
            predicted = np.where(
                (pa <= pb) & (pa <= pc), left, np.where(pb <= pc, previous, upper_left)
            )
        lines.append(bytes([kind]) + ((row - predicted) % 256).astype(np.uint8).tobytes())
        previous = row

    def chunk(name: bytes, body: bytes) -> bytes:
        crc = zlib.crc32(name + body) & 0xFFFFFFFF
        return struct.pack(">I", len(body)) + name + body + struct.pack(">I", crc)

    header = struct.pack(">IIBBBBB", width, height, depth, colour_type, 0, 0, 0)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(b"".join(lines)))
        + chunk(b"IEND", b"")
    )
    return path


def png_depth_and_colour_type(path: Path) -> tuple[int, int]:
    """The bit depth and colour type in a PNG file's header."""
    data = Path(path).read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR"
    return data[24], data[25]
