"""Image quality metrics: per-image PSNR and SSIM of a batch, and mean ± std summaries.

Both metrics take a reconstruction ``x_hat`` and the ground truth ``x`` of the same shape
``(B, C, H, W)`` and return one value per image, shape ``(B,)``, computed in float64 (so that the
reported numbers do not depend on the model's precision). The reconstruction is clamped to the
valid range first, as a saved image would be; the ground truth is used as is.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from flowprox.utils.validation import check_image_batch

__all__ = ["psnr", "ssim", "mean_and_std"]

# SSIM of Wang et al. (2004) as in skimage.metrics.structural_similarity(gaussian_weights=True).
SSIM_SIGMA = 1.5
SSIM_TRUNCATE = 3.5
SSIM_K1 = 0.01
SSIM_K2 = 0.03


def _check_pair(x_hat: Tensor, x: Tensor) -> None:
    check_image_batch(x_hat, "x_hat")
    check_image_batch(x, "x")
    if x_hat.shape != x.shape:
        raise ValueError(
            f"x_hat has shape {tuple(x_hat.shape)} but x has {tuple(x.shape)}; compare a "
            "reconstruction with the ground truth of the same batch, channels and size."
        )


def _positive(value: float, name: str) -> float:
    value = float(value)
    if not (math.isfinite(value) and value > 0.0):
        raise ValueError(
            f"{name} must be finite and positive, got {value!r}; pass {name}=1.0 for images "
            "in [0, 1] (255.0 for 8-bit values)."
        )
    return value


def psnr(x_hat: Tensor, x: Tensor, peak: float = 1.0) -> Tensor:
    """Per-image peak signal-to-noise ratio ``10 log10(peak^2 / mse)`` in dB.

    ``mse = mean_{c,h,w} (clamp(x_hat, 0, peak) - x)^2``; a perfect reconstruction
    (``mse = 0``) gives ``inf``.

    Args:
        x_hat: Reconstructions, ``(B, C, H, W)``.
        x: Ground truth, same shape.
        peak: Maximum pixel value (1.0 for images in ``[0, 1]``).

    Returns:
        float64 tensor of shape ``(B,)``.

    Raises:
        ValueError: On a shape mismatch, a non-image input, NaN/Inf values or ``peak <= 0``.
    """
    _check_pair(x_hat, x)
    peak = _positive(peak, "peak")
    x_hat = x_hat.detach().to(torch.float64).clamp(0.0, peak)
    x = x.detach().to(device=x_hat.device, dtype=torch.float64)
    mse = (x_hat - x).square().mean(dim=(1, 2, 3))
    return 10.0 * torch.log10(peak**2 / mse)  # peak^2 / 0 = inf -> inf dB


def _gaussian_window(
    sigma: float,
    truncate: float,
    dtype: torch.dtype,
    device: torch.device,
    max_radius: int | None = None,
) -> Tensor:
    """Normalised 1-D Gaussian of radius ``int(truncate * sigma + 0.5)`` (as scipy.ndimage),
    at most ``max_radius``."""
    radius = int(truncate * sigma + 0.5)
    if max_radius is not None:
        radius = min(radius, max_radius)
    t = torch.arange(-radius, radius + 1, dtype=dtype, device=device)
    window = torch.exp(-0.5 * (t / sigma) ** 2)
    return window / window.sum()


def ssim(x_hat: Tensor, x: Tensor, data_range: float = 1.0) -> Tensor:
    """Per-image structural similarity (Wang et al. 2004), Gaussian-weighted.

    With ``mu``, ``sigma^2`` and ``sigma_xy`` the local means, (population) variances and
    covariance under an 11 x 11 Gaussian window of standard deviation 1.5,

    ``SSIM = (2 mu_a mu_b + C1)(2 sigma_ab + C2) / ((mu_a^2 + mu_b^2 + C1)(sigma_a^2 +
    sigma_b^2 + C2))``, ``C1 = (0.01 R)^2``, ``C2 = (0.03 R)^2``, ``R = data_range``,

    averaged over the pixels whose window lies inside the image (a 5-pixel border is cropped)
    and over channels. This matches ``skimage.metrics.structural_similarity(a, b,
    gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=R,
    channel_axis=-1)`` on each ``(H, W, C)`` image. Images smaller than 11 x 11 (tests, the
    tiny preset; skimage refuses them) use the same Gaussian truncated to the largest odd
    window that fits.

    Args:
        x_hat: Reconstructions, ``(B, C, H, W)``, clamped to ``[0, data_range]`` first.
        x: Ground truth, same shape.
        data_range: Dynamic range ``R`` of the images (1.0 for ``[0, 1]``).

    Returns:
        float64 tensor of shape ``(B,)``.

    Raises:
        ValueError: On a shape mismatch, images smaller than 3 x 3, a non-image input,
            NaN/Inf values or ``data_range <= 0``.
    """
    _check_pair(x_hat, x)
    data_range = _positive(data_range, "data_range")
    height, width = x.shape[-2:]
    if min(height, width) < 3:
        raise ValueError(
            f"ssim needs images of at least 3x3 pixels, got {height}x{width}; use psnr."
        )
    max_radius = (min(height, width) - 1) // 2
    window = _gaussian_window(SSIM_SIGMA, SSIM_TRUNCATE, torch.float64, x_hat.device, max_radius)
    size = window.numel()
    a = x_hat.detach().to(torch.float64).clamp(0.0, data_range)
    b = x.detach().to(device=a.device, dtype=torch.float64)
    batch, channels = a.shape[:2]
    # Local statistics by a separable "valid" convolution: the output is exactly the region
    # that skimage keeps after cropping (win_size - 1) // 2 pixels on each side.
    stack = torch.cat([a, b, a * a, b * b, a * b], dim=1).reshape(-1, 1, height, width)
    stack = F.conv2d(stack, window.view(1, 1, size, 1))
    stack = F.conv2d(stack, window.view(1, 1, 1, size))
    mu_a, mu_b, e_aa, e_bb, e_ab = stack.reshape(batch, 5, channels, *stack.shape[-2:]).unbind(1)
    var_a = e_aa - mu_a**2
    var_b = e_bb - mu_b**2
    cov = e_ab - mu_a * mu_b
    c1 = (SSIM_K1 * data_range) ** 2
    c2 = (SSIM_K2 * data_range) ** 2
    numerator = (2.0 * mu_a * mu_b + c1) * (2.0 * cov + c2)
    denominator = (mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2)
    return (numerator / denominator).mean(dim=(1, 2, 3))


def mean_and_std(values: Tensor | Sequence[float]) -> tuple[float, float]:
    """Mean and population standard deviation ``sqrt(mean((v - mean)^2))`` of the values.

    The population (``ddof = 0``, ``numpy.std``'s default) form describes the spread of the
    evaluated images themselves; it is 0 for a single value.

    Args:
        values: Per-image metric values, any shape (flattened), e.g. the output of :func:`psnr`.

    Returns:
        ``(mean, std)`` as Python floats.

    Raises:
        ValueError: If there are no values.
    """
    values = torch.as_tensor(values).detach().to(torch.float64).reshape(-1)
    if values.numel() == 0:
        raise ValueError("values is empty; evaluate at least one image before summarising.")
    mean = values.mean()
    return float(mean), float(torch.sqrt(((values - mean) ** 2).mean()))
