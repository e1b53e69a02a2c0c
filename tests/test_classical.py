"""Tests of flowprox.optim.classical and of GaussianBlur.transfer_function."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import smooth_images
from skimage.restoration import denoise_tv_chambolle

from flowprox.metrics.quality import psnr
from flowprox.optim.classical import (
    classical_candidates,
    classical_name,
    classical_reconstruction,
    inpaint_biharmonic,
    inpaint_harmonic,
    tune_classical_parameter,
    tv_denoise,
    wiener_deconvolution,
)
from flowprox.physics.operators import GaussianBlur, Identity, LinearOperator, Mask


def _noise(shape: tuple[int, ...], sigma: float, seed: int) -> torch.Tensor:
    return sigma * torch.randn(shape, generator=torch.Generator().manual_seed(seed))


# --- GaussianBlur.transfer_function --------------------------------------------------------


@pytest.mark.parametrize(
    "sigma_b, kernel_size, height, width",
    [(1.0, None, 16, 16), (2.5, 7, 13, 10), (8.0, None, 9, 12)],  # last: kernel > image
)
def test_transfer_function_diagonalises_circular_blur(
    sigma_b: float, kernel_size: int | None, height: int, width: int
) -> None:
    op = GaussianBlur(sigma_b, kernel_size=kernel_size)
    x = torch.rand(2, 3, height, width, dtype=torch.float64, generator=torch.Generator())
    transfer = op.transfer_function(height, width)
    assert transfer.shape == (height, width) and transfer.is_complex()
    expected = torch.fft.ifft2(transfer * torch.fft.fft2(x))
    torch.testing.assert_close(op.A(x), expected.real, rtol=1e-12, atol=1e-12)
    assert expected.imag.abs().max() < 1e-12
    assert abs(complex(transfer[0, 0]) - 1.0) < 1e-12  # the kernel sums to 1
    torch.testing.assert_close(
        op.A_adjoint(x), torch.fft.ifft2(transfer.conj() * torch.fft.fft2(x)).real
    )


def test_transfer_function_dtype_and_validation() -> None:
    op = GaussianBlur(1.5)
    assert op.transfer_function(8, 8, dtype=torch.float32).dtype == torch.complex64
    with pytest.raises(ValueError, match="height"):
        op.transfer_function(0, 8)


# --- Wiener deconvolution ------------------------------------------------------------------


def test_wiener_inverts_noise_free_circular_blur() -> None:
    x = smooth_images(2, 3, 32, seed=0)
    op = GaussianBlur(1.5)
    y = op.A(x)
    x_hat = wiener_deconvolution(y, op, balance=1e-7)
    assert x_hat.shape == x.shape and x_hat.dtype == x.dtype
    assert psnr(x_hat, x).min() > 35.0
    assert psnr(x_hat, x).min() > psnr(y, x).max() + 5.0


def test_wiener_on_noisy_circular_blur_beats_blurred() -> None:
    x = smooth_images(2, 3, 32, seed=1)
    op = GaussianBlur(1.5)
    y = op.A(x) + _noise(x.shape, 0.01, seed=2)
    x_hat = wiener_deconvolution(y, op, balance=1e-2)
    assert (x_hat >= 0).all() and (x_hat <= 1).all()
    assert psnr(x_hat, x).mean() > psnr(y, x).mean() + 3.0


def test_wiener_zero_boundary_applies_the_periodic_filter() -> None:
    x = smooth_images(2, 3, 16, seed=1)
    zero = GaussianBlur(1.5, boundary="zero")
    y = zero.A(x)
    x_hat = wiener_deconvolution(y, zero, balance=1e-2)
    torch.testing.assert_close(x_hat, wiener_deconvolution(y, GaussianBlur(1.5), balance=1e-2))
    assert torch.isfinite(x_hat).all() and (x_hat >= 0).all() and (x_hat <= 1).all()


def test_wiener_validation() -> None:
    y = torch.rand(1, 3, 8, 8)
    with pytest.raises(ValueError, match="GaussianBlur"):
        wiener_deconvolution(y, Identity(), balance=0.1)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="balance"):
        wiener_deconvolution(y, GaussianBlur(1.0), balance=0.0)


# --- inpainting ----------------------------------------------------------------------------


def _masks(size: int) -> dict[str, Mask]:
    return {
        "center": Mask.center_square(size, size, size // 3),
        "random": Mask.random_pixels(size, size, 0.6, generator=torch.Generator().manual_seed(3)),
        "per_channel": Mask.random_pixels(
            size, size, 0.5, generator=torch.Generator().manual_seed(4), channels=3
        ),
    }


@pytest.mark.parametrize("mask_name", ["center", "random", "per_channel"])
@pytest.mark.parametrize("method", ["biharmonic", "harmonic"])
def test_inpainting_keeps_known_pixels_and_beats_zero_fill(method: str, mask_name: str) -> None:
    x = smooth_images(2, 3, 32, seed=5)
    op = _masks(32)[mask_name]
    y = op.A(x)
    if method == "biharmonic":
        x_hat = inpaint_biharmonic(y, op)
    else:
        x_hat = inpaint_harmonic(y, op, iterations=300)
    assert x_hat.shape == x.shape and x_hat.dtype == x.dtype
    observed = op.A(torch.ones_like(x)).bool()
    assert torch.equal(x_hat[observed], y[observed])
    assert psnr(x_hat, x).min() > psnr(y, x).max() + 5.0


def test_inpainting_accepts_mask_tensor_and_matches_skimage() -> None:
    from skimage.restoration import inpaint_biharmonic as sk_inpaint

    x = smooth_images(1, 3, 16, seed=6)
    mask = Mask.center_square(16, 16, 6).mask  # (1, H, W) tensor
    y = x * mask
    x_hat = inpaint_biharmonic(y, mask)
    expected = sk_inpaint(
        y[0].permute(1, 2, 0).double().numpy(), mask[0].numpy() == 0, channel_axis=-1
    )
    np.testing.assert_allclose(
        x_hat[0].permute(1, 2, 0).numpy(), np.clip(expected, 0, 1), atol=1e-6
    )


def test_harmonic_converges_to_discrete_laplace_solution() -> None:
    # A linear ramp is harmonic: Jacobi recovers it inside a hole of the ramp.
    ramp = torch.linspace(0.1, 0.9, 16).expand(1, 1, 16, 16).clone()
    op = Mask.center_square(16, 16, 6)
    x_hat = inpaint_harmonic(op.A(ramp), op, iterations=2000)
    torch.testing.assert_close(x_hat, ramp, rtol=0, atol=1e-5)


def test_inpainting_validation() -> None:
    y = torch.rand(1, 3, 8, 8)
    with pytest.raises(ValueError, match="observes no pixel"):
        inpaint_harmonic(y, torch.zeros(8, 8))
    with pytest.raises(ValueError, match="observes no pixel"):
        inpaint_biharmonic(y, torch.zeros(8, 8))
    with pytest.raises(ValueError, match="iterations"):
        inpaint_harmonic(y, torch.ones(8, 8), iterations=-1)
    with pytest.raises(ValueError, match="spatial shape"):
        inpaint_harmonic(y, torch.ones(4, 4))


# --- TV denoising --------------------------------------------------------------------------


def test_tv_denoise_beats_noisy_input_and_matches_skimage() -> None:
    x = smooth_images(2, 3, 32, seed=7)
    y = x + _noise(x.shape, 0.1, seed=8)
    x_hat = tv_denoise(y, weight=0.1)
    assert x_hat.shape == x.shape and x_hat.dtype == x.dtype
    assert (psnr(x_hat, x) > psnr(y, x) + 3.0).all()
    expected = denoise_tv_chambolle(
        y[1].permute(1, 2, 0).double().numpy(), weight=0.1, channel_axis=-1
    )
    np.testing.assert_allclose(
        x_hat[1].permute(1, 2, 0).numpy(), np.clip(expected, 0, 1), atol=1e-6
    )
    with pytest.raises(ValueError, match="weight"):
        tv_denoise(y, weight=-1.0)


# --- dispatch and tuning -------------------------------------------------------------------


def test_classical_reconstruction_dispatch() -> None:
    x = smooth_images(1, 3, 16, seed=9)
    blur = GaussianBlur(1.0)
    torch.testing.assert_close(
        classical_reconstruction(blur.A(x), blur, 1e-3),
        wiener_deconvolution(blur.A(x), blur, 1e-3),
    )
    mask = Mask.center_square(16, 16, 4)
    torch.testing.assert_close(
        classical_reconstruction(mask.A(x), mask), inpaint_biharmonic(mask.A(x), mask)
    )
    torch.testing.assert_close(classical_reconstruction(x, Identity(), 0.05), tv_denoise(x, 0.05))
    assert classical_name(Identity()) == "TV denoising (Chambolle)"
    assert classical_name(mask) == "biharmonic inpainting"
    assert classical_name(blur) == "Wiener deconvolution"
    with pytest.raises(ValueError, match="needs a parameter"):
        classical_reconstruction(x, Identity())
    with pytest.raises(ValueError, match="no classical reconstruction"):
        classical_reconstruction(x, LinearOperator(), 0.1)
    with pytest.raises(ValueError, match="no classical reconstruction"):
        classical_name(LinearOperator())


def test_default_candidates() -> None:
    assert classical_candidates(Mask.center_square(8, 8, 2)) is None
    for op in (Identity(), GaussianBlur(1.0)):
        grid = classical_candidates(op)
        assert grid is not None and len(grid) >= 10
        assert all(b > a > 0 for a, b in zip(grid[:-1], grid[1:], strict=True))


@pytest.mark.parametrize("problem", ["denoise", "deblur"])
def test_tuning_picks_the_best_candidate(problem: str) -> None:
    x = smooth_images(2, 3, 16, seed=10)
    if problem == "denoise":
        op: LinearOperator = Identity()
        candidates = [0.003, 0.03, 0.1, 0.3]
    else:
        op = GaussianBlur(1.0)
        candidates = [1e-6, 1e-3, 1e-2, 1e-1]
    y = op.A(x) + _noise(x.shape, 0.05, seed=11)
    best, best_psnr = tune_classical_parameter(y, x, op, candidates)
    assert best in candidates
    scores = [float(psnr(classical_reconstruction(y, op, c), x).mean()) for c in candidates]
    assert best_psnr == pytest.approx(max(scores))
    assert all(best_psnr >= s for s in scores)
    assert best != candidates[0]  # the smallest parameter under-regularises the noise


def test_tuning_default_grid_and_parameter_free_method() -> None:
    x = smooth_images(1, 3, 16, seed=12)
    y = x + _noise(x.shape, 0.05, seed=13)
    best, best_psnr = tune_classical_parameter(y, x, Identity())
    assert best in classical_candidates(Identity())
    assert best_psnr > float(psnr(y, x)[0])
    mask = Mask.center_square(16, 16, 4)
    best, best_psnr = tune_classical_parameter(mask.A(x), x, mask)
    assert best is None
    assert best_psnr == pytest.approx(float(psnr(inpaint_biharmonic(mask.A(x), mask), x)[0]))
    with pytest.raises(ValueError, match="same validation images"):
        tune_classical_parameter(y[:, :1], x, Identity())
    with pytest.raises(ValueError, match="empty"):
        tune_classical_parameter(y, x, Identity(), candidates=[])
