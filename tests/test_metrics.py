"""Tests of flowprox.metrics.quality: PSNR, SSIM (against scikit-image) and mean ± std."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from conftest import smooth_images
from skimage.metrics import structural_similarity

from flowprox.metrics.quality import mean_and_std, psnr, ssim


def _skimage_ssim(a: torch.Tensor, b: torch.Tensor) -> list[float]:
    values = []
    for i in range(a.shape[0]):
        values.append(
            structural_similarity(
                a[i].clamp(0, 1).permute(1, 2, 0).double().numpy(),
                b[i].permute(1, 2, 0).double().numpy(),
                gaussian_weights=True,
                sigma=1.5,
                use_sample_covariance=False,
                data_range=1.0,
                channel_axis=-1,
            )
        )
    return values


def test_psnr_matches_formula() -> None:
    x = smooth_images(3, 3, 16, seed=0)
    noise = 0.05 * torch.randn(x.shape, generator=torch.Generator().manual_seed(1))
    x_hat = x + noise
    mse = ((x_hat.clamp(0, 1) - x) ** 2).double().mean(dim=(1, 2, 3))
    expected = 10 * torch.log10(1.0 / mse)
    value = psnr(x_hat, x)
    assert value.shape == (3,)
    assert value.dtype == torch.float64
    torch.testing.assert_close(value, expected, rtol=1e-6, atol=1e-6)


def test_psnr_clamps_reconstruction_and_uses_peak() -> None:
    x = torch.full((1, 1, 4, 4), 1.0)
    # Values above 1 are clamped to 1: a perfect reconstruction.
    assert math.isinf(float(psnr(x + 0.5, x)[0]))
    x = torch.full((1, 1, 4, 4), 100.0)
    x_hat = x + 10.0
    expected = 10 * math.log10(255**2 / 100)
    assert float(psnr(x_hat - 20.0, x, peak=255.0)[0]) == pytest.approx(expected)


def test_psnr_shape_mismatch() -> None:
    with pytest.raises(ValueError, match="same batch"):
        psnr(torch.zeros(1, 3, 8, 8), torch.zeros(1, 3, 8, 9))
    with pytest.raises(ValueError, match="peak"):
        psnr(torch.zeros(1, 3, 8, 8), torch.zeros(1, 3, 8, 8), peak=0.0)
    with pytest.raises(ValueError, match="4-D"):
        psnr(torch.zeros(3, 8, 8), torch.zeros(3, 8, 8))


@pytest.mark.parametrize("size", [32, 64])
@pytest.mark.parametrize("kind", ["random", "smooth"])
def test_ssim_matches_skimage(size: int, kind: str) -> None:
    generator = torch.Generator().manual_seed(size)
    if kind == "random":
        x = torch.rand(2, 3, size, size, generator=generator)
        x_hat = x + 0.3 * torch.randn(x.shape, generator=generator)
    else:
        x = smooth_images(2, 3, size, seed=1)
        x_hat = smooth_images(2, 3, size, seed=2) * 0.5 + 0.5 * x
    x, x_hat = x.float(), x_hat.float()
    value = ssim(x_hat, x)
    assert value.shape == (2,)
    np.testing.assert_allclose(value.numpy(), _skimage_ssim(x_hat, x), rtol=0, atol=1e-8)


def test_ssim_identical_and_grayscale() -> None:
    x = smooth_images(2, 1, 16, seed=3)
    torch.testing.assert_close(ssim(x, x), torch.ones(2, dtype=torch.float64))
    other = smooth_images(2, 1, 16, seed=4)
    np.testing.assert_allclose(ssim(other, x).numpy(), _skimage_ssim(other, x), rtol=0, atol=1e-8)


def test_ssim_errors() -> None:
    with pytest.raises(ValueError, match="same batch"):
        ssim(torch.zeros(2, 3, 16, 16), torch.zeros(1, 3, 16, 16))
    with pytest.raises(ValueError, match="at least 3x3"):
        ssim(torch.zeros(1, 3, 2, 16), torch.zeros(1, 3, 2, 16))


def test_ssim_of_images_smaller_than_the_window_uses_a_truncated_window() -> None:
    x = smooth_images(2, 3, 8, seed=3)
    assert torch.allclose(ssim(x, x), torch.ones(2, dtype=torch.float64))
    noisy = (x + 0.2 * torch.randn(x.shape, generator=torch.Generator().manual_seed(0))).clamp(0, 1)
    values = ssim(noisy, x)
    assert torch.all(values < 0.99) and torch.all(values > -1)


def test_mean_and_std() -> None:
    mean, std = mean_and_std(torch.tensor([1.0, 2.0, 3.0, 4.0]))
    assert mean == pytest.approx(2.5)
    assert std == pytest.approx(float(np.std([1.0, 2.0, 3.0, 4.0])))  # population (ddof=0)
    assert mean_and_std(torch.tensor([5.0])) == (5.0, 0.0)
    assert mean_and_std([1.0, 3.0]) == (2.0, 1.0)
    with pytest.raises(ValueError, match="empty"):
        mean_and_std(torch.tensor([]))
