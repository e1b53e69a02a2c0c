"""Measurement noise of the model ``y = A x + n`` with ``n ~ N(0, sigma_n^2 I)``.

Every draw comes from an explicit :class:`torch.Generator`, so that the same seed gives the same
noisy measurements (evaluation uses a fixed seed so that every method sees the same inputs).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from flowprox.physics.operators import LinearOperator

__all__ = ["gaussian_noise", "measure"]


def _check_sigma(sigma: float, name: str) -> float:
    value = float(sigma)
    if not (math.isfinite(value) and value >= 0.0):
        raise ValueError(
            f"{name} must be finite and >= 0, got {sigma!r}; pass the noise standard deviation "
            "in image units (images in [0, 1]), e.g. 0.2, or 0.0 for no noise."
        )
    return value


def _same_device(a: torch.device, b: torch.device) -> bool:
    if a.type != b.type:
        return False
    return a.index is None or b.index is None or a.index == b.index


def gaussian_noise(
    shape_or_like: Tensor | Sequence[int],
    sigma: float,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Draw white Gaussian noise ``n ~ N(0, sigma^2 I)``.

    Args:
        shape_or_like: A tensor, whose shape, dtype and device the noise takes, or a shape; a
            shape gives noise of the default dtype on the generator's device (CPU when
            ``generator`` is None).
        sigma: Standard deviation, finite and ``>= 0``. For ``sigma == 0`` zeros are returned
            and the generator is not advanced.
        generator: Source of randomness; its device must be the noise's device (a CPU generator
            for CPU tensors, ``torch.Generator(device="cuda")`` for CUDA tensors). The global
            RNG when None.

    Returns:
        Noise ``n`` of the requested shape.

    Raises:
        ValueError: For a negative or non-finite ``sigma``, or a generator on another device.
    """
    sigma = _check_sigma(sigma, "sigma")
    if isinstance(shape_or_like, Tensor):
        shape = tuple(shape_or_like.shape)
        dtype = shape_or_like.dtype
        device = shape_or_like.device
        if not dtype.is_floating_point:
            raise ValueError(
                f"noise needs a floating-point reference tensor, got dtype {dtype}; "
                "convert it with .float() first."
            )
    else:
        shape = tuple(int(s) for s in shape_or_like)
        dtype = torch.get_default_dtype()
        device = generator.device if generator is not None else torch.device("cpu")
    if generator is not None and not _same_device(generator.device, device):
        raise ValueError(
            f"the generator is on {generator.device} but the noise is drawn on {device}; "
            f"create the generator there, e.g. torch.Generator(device='{device.type}')."
        )
    if sigma == 0.0:
        return torch.zeros(shape, dtype=dtype, device=device)
    return sigma * torch.randn(shape, generator=generator, dtype=dtype, device=device)


def measure(
    op: LinearOperator,
    x: Tensor,
    sigma_n: float = 0.0,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Simulate measurements ``y = A x + n`` with ``n ~ N(0, sigma_n^2 I)``.

    Args:
        op: The forward operator ``A``.
        x: Clean images of shape ``(B, C, H, W)``, values in ``[0, 1]``.
        sigma_n: Noise standard deviation, finite and ``>= 0`` (0 gives noiseless ``A x``).
        generator: Source of the noise, on ``x``'s device (see :func:`gaussian_noise`).

    Returns:
        Measurements ``y`` of shape ``op.measurement_shape(x.shape)``.
    """
    sigma_n = _check_sigma(sigma_n, "sigma_n")
    y = op.A(x)
    if sigma_n == 0.0:
        return y
    return y + gaussian_noise(y, sigma_n, generator)


def image_generator(seed: int, index: int) -> torch.Generator:
    """A CPU generator for image number ``index`` of an evaluation set, fixed by ``seed``."""
    return torch.Generator().manual_seed((seed * 1_000_003 + 7919 * index + 17) % (2**63))


def measure_fixed(
    op: LinearOperator,
    x: Tensor,
    sigma_n: float,
    seed: int,
    first_index: int = 0,
) -> Tensor:
    """Measurements whose noise depends only on ``(seed, image index)``, not on the batching.

    Image ``i`` of the batch is image ``first_index + i`` of its set, so every method, batch
    size and device sees exactly the same measurements of a validation or test split.
    """
    sigma_n = _check_sigma(sigma_n, "sigma_n")
    y = op.A(x)
    if sigma_n == 0.0:
        return y
    noise = torch.stack(
        [
            torch.randn(y.shape[1:], generator=image_generator(seed, first_index + i))
            for i in range(y.shape[0])
        ]
    )
    return y + sigma_n * noise.to(dtype=y.dtype, device=y.device)
