"""Input checks shared by the public entry points: each raises a ValueError that names the fix."""

from __future__ import annotations

import torch
from torch import Tensor


def check_image_batch(
    x: Tensor,
    name: str = "x",
    *,
    channels: int | None = None,
    divisible_by: int | None = None,
    size: tuple[int, int] | None = None,
) -> None:
    """Validate an image batch of shape ``(B, C, H, W)``.

    Args:
        x: the tensor to check.
        name: how the tensor is called in the error message.
        channels: the required number of channels ``C``, if any.
        divisible_by: ``H`` and ``W`` must be multiples of this (e.g. ``2**levels``).
        size: the required ``(H, W)``, if any.

    Raises:
        ValueError: on a wrong type, rank, channel count or size, or on NaN/Inf values.
    """
    if not isinstance(x, Tensor):
        raise ValueError(
            f"{name} must be a torch.Tensor of shape (B, C, H, W), got {type(x).__name__}; "
            "convert it with torch.as_tensor(...)."
        )
    if x.dim() != 4:
        raise ValueError(
            f"{name} must be 4-D, got shape {tuple(x.shape)}; pass a batch of shape "
            f"(B, C, H, W); add a batch dimension with {name}.unsqueeze(0) for a single image."
        )
    if not x.is_floating_point():
        raise ValueError(
            f"{name} must be a floating-point tensor, got dtype {x.dtype}; "
            f"convert it with {name}.float(), scaling uint8 images to [0, 1] (/ 255)."
        )
    if channels is not None and x.shape[1] != channels:
        raise ValueError(
            f"{name} has {x.shape[1]} channels but the model expects {channels}; "
            f"convert the images (e.g. to RGB) or build the model with in_channels={x.shape[1]}."
        )
    height, width = x.shape[-2:]
    if divisible_by is not None and (height % divisible_by or width % divisible_by):
        raise ValueError(
            f"{name} has spatial size {height}x{width}, which is not divisible by {divisible_by} "
            f"(2**levels of the flow); crop or resize the images to a multiple of {divisible_by}, "
            f"or use fewer levels."
        )
    if size is not None and (height, width) != tuple(size):
        raise ValueError(
            f"{name} has spatial size {height}x{width} but the model was built for "
            f"{size[0]}x{size[1]}; resize the images to {size[0]}x{size[1]}."
        )
    check_finite(x, name)


class NonFiniteError(ValueError):
    """A tensor holds NaN or Inf (bad input, or a diverging computation)."""


def check_finite(x: Tensor, name: str = "x") -> None:
    """Raise ``NonFiniteError`` (a ValueError) if ``x`` holds NaN or Inf."""
    with torch.no_grad():
        n_bad = int((~torch.isfinite(x)).sum())
    if n_bad:
        raise NonFiniteError(
            f"{name} contains {n_bad} NaN or Inf values; check the data or the previous step "
            "that produced it (e.g. a diverging iteration or a division by zero)."
        )
