"""Forward models that measure fewer numbers than the image has: super-resolution, compressed
sensing and single-coil Cartesian MRI (beyond the paper's three tasks).

Each is a real-linear :class:`~flowprox.physics.operators.LinearOperator` on image batches
``(B, C, H, W)`` with an exact adjoint. Measurements keep a 4-D layout so that every tool that
handles images handles them: a low-resolution image for super-resolution; for compressed sensing
and MRI the full coefficient grid with zeros where nothing is measured (as a mask's missing
pixels are 0), MRI's complex k-space as real and imaginary channels. Where ``A A^T`` is a
multiple of a projection the data prox has a closed form,

    prox(x) = argmin_u 1/2 ||A u - y||^2 + rho/2 ||u - x||^2 = x + A^T W (y - A x),

with ``W = (A A^T + rho)^-1`` on the measured coordinates (super-resolution by block averaging:
``A A^T = I / f^2``; compressed sensing and MRI: ``A A^T = M``, the sampling mask). The dense
Gaussian matrix (a reference for tiny images) uses conjugate gradients.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from flowprox.physics.operators import LinearOperator, _positive_int

__all__ = [
    "SuperResolution",
    "SubsampledDCT",
    "CartesianMRI",
    "DenseGaussian",
    "dct_matrix",
    "variable_density_lines",
]


def _divisible(x: Tensor, factor: int) -> None:
    height, width = x.shape[-2:]
    if height % factor or width % factor:
        raise ValueError(
            f"super-resolution by {factor} needs image sides divisible by {factor}, got "
            f"{height}x{width}; crop or resize the images first."
        )


class SuperResolution(LinearOperator):
    """``A x``: the mean of each ``factor x factor`` block (a box anti-aliasing kernel, then
    decimation by ``factor``); ``y`` has ``H / factor x W / factor`` pixels.

    ``A^T y`` spreads each low-resolution pixel over its block divided by ``factor^2``, so
    ``A A^T = I / factor^2`` and ``||A||^2 = 1 / factor^2``; the data prox is
    ``x + A^T (y - A x) / (rho + 1 / factor^2)``.
    """

    def __init__(self, factor: int) -> None:
        super().__init__()
        self.factor = _positive_int(factor, "factor")

    def measurement_shape(self, x_shape: Sequence[int]) -> tuple[int, ...]:
        *leading, height, width = (int(s) for s in x_shape)
        return (*leading, height // self.factor, width // self.factor)

    def _A(self, x: Tensor) -> Tensor:
        _divisible(x, self.factor)
        return F.avg_pool2d(x, self.factor)

    def _A_adjoint(self, y: Tensor) -> Tensor:
        f = self.factor
        return y.repeat_interleave(f, dim=-2).repeat_interleave(f, dim=-1) / f**2

    def _prox_data(self, x: Tensor, y: Tensor, rho: Tensor | float, max_iter: int) -> Tensor:
        return x + self._A_adjoint(y - self._A(x)) / (rho + 1.0 / self.factor**2)

    def pseudo_inverse(self, y: Tensor) -> Tensor:
        """``A^+ y = A^T (A A^T)^-1 y``: each low-resolution pixel repeated over its block."""
        return self.factor**2 * self._A_adjoint(y)


def dct_matrix(n: int, dtype: torch.dtype = torch.float64) -> Tensor:
    """The orthonormal DCT-II matrix ``D`` (``n x n``, ``D D^T = I``): ``(D v)_k = sum_j
    D[k, j] v_j`` with ``D[k, j] = s_k cos(pi (j + 1/2) k / n)``."""
    j = torch.arange(n, dtype=torch.float64)
    k = j[:, None]
    matrix = torch.cos(math.pi * (j + 0.5) * k / n) * math.sqrt(2.0 / n)
    matrix[0] /= math.sqrt(2.0)
    return matrix.to(dtype)


class SubsampledDCT(LinearOperator):
    """Compressed sensing by a structurally random matrix: random signs, the orthonormal 2-D DCT,
    then a seeded random subset of ``ratio`` of the coefficients (per channel, the same subset).

    ``T x = D_H (s * x) D_W^T`` is orthonormal, ``A x = M * T x`` keeps the measured
    coefficients (others 0), ``A^T y = s * (D_H^T (M * y) D_W)`` and ``A A^T = M``: the rows of
    ``A`` are orthonormal, ``||A||^2 = 1``, and the data prox is
    ``x + T^T (M (y - A x) / (1 + rho))``.

    Args:
        height, width: the image size.
        ratio: the share of coefficients measured, in (0, 1].
        seed: seeds the signs and the subset.
    """

    mask: Tensor
    signs: Tensor

    def __init__(self, height: int, width: int, ratio: float, seed: int = 0) -> None:
        super().__init__()
        _positive_int(height, "height")
        _positive_int(width, "width")
        if not 0 < ratio <= 1:
            raise ValueError(f"ratio must be in (0, 1], got {ratio}; e.g. 0.25 measures a quarter.")
        generator = torch.Generator().manual_seed(seed)
        signs = torch.randint(0, 2, (height, width), generator=generator) * 2 - 1
        count = max(1, round(ratio * height * width))
        chosen = torch.randperm(height * width, generator=generator)[:count]
        mask = torch.zeros(height * width)
        mask[chosen] = 1
        self.ratio = ratio
        self.register_buffer("signs", signs.to(torch.float32))
        self.register_buffer("mask", mask.view(height, width))
        self.register_buffer("dct_h", dct_matrix(height))  # float64: orthonormal to round-off
        self.register_buffer("dct_w", dct_matrix(width))

    def _check_size(self, x: Tensor) -> None:
        if tuple(x.shape[-2:]) != tuple(self.mask.shape):
            raise ValueError(
                f"this operator was built for {tuple(self.mask.shape)} images, got "
                f"{tuple(x.shape[-2:])}; build it for the images' size."
            )

    def _transform(self, x: Tensor) -> Tensor:
        d_h, d_w = self.dct_h.to(x), self.dct_w.to(x)
        return d_h @ (self.signs.to(x) * x) @ d_w.T

    def _transform_adjoint(self, c: Tensor) -> Tensor:
        d_h, d_w = self.dct_h.to(c), self.dct_w.to(c)
        return self.signs.to(c) * (d_h.T @ c @ d_w)

    def _A(self, x: Tensor) -> Tensor:
        self._check_size(x)
        return self.mask.to(x) * self._transform(x)

    def _A_adjoint(self, y: Tensor) -> Tensor:
        self._check_size(y)
        return self._transform_adjoint(self.mask.to(y) * y)

    def _prox_data(self, x: Tensor, y: Tensor, rho: Tensor | float, max_iter: int) -> Tensor:
        return x + self._A_adjoint(y - self._A(x)) / (1 + rho)

    def pseudo_inverse(self, y: Tensor) -> Tensor:
        """``A^+ y = A^T y`` (orthonormal rows): the unmeasured coefficients set to zero."""
        return self._A_adjoint(y)


def variable_density_lines(
    height: int, acceleration: float, center_fraction: float, seed: int = 0
) -> Tensor:
    """A ``(height,)`` 0/1 mask of phase-encoding lines (rows of k-space, FFT order): about
    ``height / acceleration`` lines, every line within ``center_fraction * height / 2`` of the
    centre, the rest drawn with a density that falls as ``1 / (1 + |k|)``; symmetric under
    ``k -> -k`` (so that ``A^T A`` maps real images to real images).
    """
    if acceleration < 1:
        raise ValueError(f"acceleration must be >= 1, got {acceleration}; e.g. 4 or 8.")
    if not 0 <= center_fraction <= 1:
        raise ValueError(f"center_fraction must be in [0, 1], got {center_fraction}.")
    generator = torch.Generator().manual_seed(seed)
    budget = max(1, round(height / acceleration))
    half = height // 2
    mask = torch.zeros(height)

    def take(k: int) -> None:
        mask[k] = 1
        mask[(-k) % height] = 1

    center = max(0, math.floor(center_fraction * height / 2))
    for k in range(center + 1):
        take(k)
    rest = torch.arange(center + 1, half + 1)
    if len(rest) and mask.sum() < budget:
        weights = 1.0 / (1.0 + rest.double())
        order = rest[torch.multinomial(weights, len(rest), generator=generator)]
        for k in order.tolist():
            if mask.sum() >= budget:
                break
            take(k)
    return mask


class CartesianMRI(LinearOperator):
    """Single-coil Cartesian MRI of real images: ``A x = M * F x``, the orthonormal 2-D FFT
    keeping the sampled phase-encoding lines (rows), the complex result stored as
    ``(B, 2C, H, W)``: real parts in the first ``C`` channels, imaginary parts in the last.

    The adjoint of this real-linear map is ``A^T y = Re(F^H (M * (y_re + i y_im)))``. The mask
    is symmetric under ``k -> -k``, so ``F^H M F`` maps real images to real images, ``A^T A``
    is a projection (``||A||^2 = 1``) and the data prox is
    ``x + Re(F^H (M (y - F x) / (1 + rho)))``.

    Args:
        height: the image height (the number of phase-encoding lines).
        acceleration: ``height / (lines sampled)``, e.g. 4 or 8.
        center_fraction: the share of lines around the centre always sampled.
        seed: seeds the other lines.
    """

    lines: Tensor

    def __init__(
        self, height: int, acceleration: float, center_fraction: float = 0.08, seed: int = 0
    ) -> None:
        super().__init__()
        _positive_int(height, "height")
        self.acceleration = acceleration
        mask = variable_density_lines(height, acceleration, center_fraction, seed)
        self.register_buffer("lines", mask[:, None])

    def measurement_shape(self, x_shape: Sequence[int]) -> tuple[int, ...]:
        batch, channels, height, width = (int(s) for s in x_shape)
        return (batch, 2 * channels, height, width)

    def _check_height(self, x: Tensor) -> None:
        if x.shape[-2] != self.lines.shape[0]:
            raise ValueError(
                f"this operator samples {self.lines.shape[0]} lines but the images have "
                f"{x.shape[-2]} rows; build it for the images' height."
            )

    def _kspace(self, x: Tensor) -> Tensor:
        return torch.fft.fft2(x, norm="ortho")

    def _A(self, x: Tensor) -> Tensor:
        self._check_height(x)
        k = self.lines.to(x) * self._kspace(x)
        return torch.cat([k.real, k.imag], dim=1)

    def _complex(self, y: Tensor) -> Tensor:
        if y.shape[1] % 2:
            raise ValueError(
                f"MRI measurements hold real and imaginary channels (2C), got {y.shape[1]} "
                "channels; pass the output of A."
            )
        channels = y.shape[1] // 2
        return torch.complex(y[:, :channels], y[:, channels:])

    def _A_adjoint(self, y: Tensor) -> Tensor:
        self._check_height(y)
        k = self.lines.to(y) * self._complex(y)
        return torch.fft.ifft2(k, norm="ortho").real

    def _prox_data(self, x: Tensor, y: Tensor, rho: Tensor | float, max_iter: int) -> Tensor:
        self._check_height(x)
        residual = self.lines.to(x) * (self._complex(y) - self._kspace(x))
        return x + torch.fft.ifft2(residual, norm="ortho").real / (1 + rho)

    def pseudo_inverse(self, y: Tensor) -> Tensor:
        """``A^+ y = A^T y`` (``A^T A`` a projection): the zero-filled inverse FFT."""
        return self._A_adjoint(y)


class DenseGaussian(LinearOperator):
    """A dense Gaussian matrix ``G`` (``m x C H W``, entries ``N(0, 1/m)``, seeded): the
    textbook compressed-sensing operator, for tiny images only (it stores ``m C H W`` numbers).
    ``y`` has shape ``(B, 1, 1, m)``; the data prox uses conjugate gradients.
    """

    matrix: Tensor

    def __init__(self, image_shape: Sequence[int], measurements: int, seed: int = 0) -> None:
        super().__init__()
        channels, height, width = (int(s) for s in image_shape)
        size = channels * height * width
        _positive_int(measurements, "measurements")
        if size * measurements > 2**24:
            raise ValueError(
                f"a dense {measurements} x {size} matrix is too large; use SubsampledDCT for "
                "images bigger than a few hundred pixels."
            )
        generator = torch.Generator().manual_seed(seed)
        matrix = torch.randn(measurements, size, generator=generator) / math.sqrt(measurements)
        self.image_shape = (channels, height, width)
        self.register_buffer("matrix", matrix)

    def measurement_shape(self, x_shape: Sequence[int]) -> tuple[int, ...]:
        return (int(x_shape[0]), 1, 1, self.matrix.shape[0])

    def _A(self, x: Tensor) -> Tensor:
        if tuple(x.shape[1:]) != self.image_shape:
            raise ValueError(
                f"this matrix acts on images of shape {self.image_shape}, got {tuple(x.shape[1:])}."
            )
        y = x.flatten(1) @ self.matrix.to(x).T
        return y[:, None, None, :]

    def _A_adjoint(self, y: Tensor) -> Tensor:
        x = y.reshape(y.shape[0], -1) @ self.matrix.to(y)
        return x.view(y.shape[0], *self.image_shape)
