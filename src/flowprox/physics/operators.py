"""Linear forward operators ``A`` of the measurement model ``y = A x + n``.

Every operator acts on a batch of images ``x`` of shape ``(B, C, H, W)`` (any ``C``, any ``H``
and ``W``, odd sizes included) and provides the forward map ``A``, its exact adjoint
``A_adjoint`` (``A^T``; all operators here are real), the normal operator ``A^T A`` and the
squared spectral norm ``||A||_2^2`` by the power method, which sets the initial gradient step
``mu = 1 / ||A||_2^2`` of the unrolled proximal-gradient network (DESIGN.md, section 1).

The operators:

* :class:`Identity` (denoising): ``A x = x``, ``A^T y = y``, ``||A||_2^2 = 1``.
* :class:`Mask` (inpainting): ``A x = m * x`` with a binary mask ``m`` in ``{0, 1}`` broadcast
  over the batch (and over channels when it has one channel). ``A`` is a diagonal projection, so
  ``A^T = A`` and ``||A||_2^2 = 1`` as soon as one pixel is observed. The measurement keeps the
  image's shape; masked pixels are 0.
* :class:`GaussianBlur` (deblurring): ``A x = k * x`` per channel, with the isotropic normalised
  Gaussian kernel ``k[i, j] ∝ exp(-(i^2 + j^2) / (2 sigma_b^2))`` on a ``k x k`` grid centred at
  0 (``sum k = 1``). Two boundary conditions:

  - ``"circular"`` (periodic): ``A x = F^-1(K . F x)`` where ``F`` is the 2-D DFT and ``K`` the
    DFT of the kernel zero-padded to ``(H, W)`` with its centre moved to index ``(0, 0)``. Taps
    that fall outside the image wrap around and are summed, so the result is the exact circular
    convolution even when the kernel is larger than the image. ``A^T y = F^-1(conj(K) . F y)``
    and ``||A||_2^2 = max |K|^2`` (``= 1`` for the positive Gaussian, attained at frequency 0).
  - ``"zero"``: the "same"-size convolution of the zero-padded image (padding ``k // 2``);
    ``A^T`` is the transposed convolution with the same kernel and padding (a correlation), which
    is its exact adjoint. ``||A||_2 < 1`` here because mass is lost at the border.

All operators cast their buffers to ``x.dtype`` and ``x.device`` at call time, so an operator
built on the CPU in float32 works on float64 or CUDA inputs; ``op.to(device)`` moves the buffers
once and for all. Inputs are validated: a 4-D, floating-point, finite tensor is required.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from flowprox.physics.data_prox import DataProxCG, check_rho
from flowprox.utils.validation import check_image_batch

__all__ = ["LinearOperator", "Identity", "Mask", "GaussianBlur", "gaussian_kernel"]


def _check_image(x: Tensor, name: str) -> Tensor:
    check_image_batch(x, name)
    return x


def _image_shape(shape: Sequence[int]) -> tuple[int, int, int, int]:
    """Turn a ``(C, H, W)`` or ``(B, C, H, W)`` shape into a 4-D shape, validating it."""
    shape = tuple(int(s) for s in shape)
    if len(shape) == 3:
        shape = (1, *shape)
    if len(shape) != 4 or any(s <= 0 for s in shape):
        raise ValueError(
            f"shape must be (C, H, W) or (B, C, H, W) with positive sizes, got {shape}; "
            "pass e.g. (3, 64, 64)."
        )
    return shape  # type: ignore[return-value]


def _positive_int(value: object, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"{name} must be a positive int, got {value!r}; pass e.g. {name}=64.")
    return value


class LinearOperator(torch.nn.Module):
    """Base class of the linear forward operators ``A`` of ``y = A x + n``.

    Subclasses implement :meth:`_A` and :meth:`_A_adjoint` on validated inputs; the public
    methods :meth:`A`, :meth:`A_adjoint` and :meth:`normal` validate their input first. Being a
    :class:`torch.nn.Module`, an operator moves its buffers with ``.to(device)``; buffers are also
    cast lazily to the input's dtype and device at call time.

    Shapes:
        x: ``(B, C, H, W)`` image batch, float32 or float64.
        y: ``measurement_shape(x.shape)`` (the same as ``x`` for every operator in this module).
    """

    def A(self, x: Tensor) -> Tensor:
        """Apply the forward operator.

        Args:
            x: Images of shape ``(B, C, H, W)``.

        Returns:
            Measurements ``y = A x`` of shape ``measurement_shape(x.shape)``.
        """
        return self._A(_check_image(x, "x"))

    def A_adjoint(self, y: Tensor) -> Tensor:
        """Apply the adjoint (transpose) operator ``A^T``.

        Args:
            y: Measurements of shape ``measurement_shape(x.shape)``.

        Returns:
            ``A^T y``, of the image shape ``(B, C, H, W)``.
        """
        return self._A_adjoint(_check_image(y, "y"))

    def normal(self, x: Tensor) -> Tensor:
        """Apply the normal operator ``A^T A`` (the Hessian of ``1/2 ||y - A x||^2``).

        Args:
            x: Images of shape ``(B, C, H, W)``.

        Returns:
            ``A^T A x`` of shape ``(B, C, H, W)``.
        """
        return self._A_adjoint(self._A(_check_image(x, "x")))

    def forward(self, x: Tensor) -> Tensor:
        """Same as :meth:`A`, so that ``op(x)`` works."""
        return self.A(x)

    def prox_data(self, x: Tensor, y: Tensor, rho: Tensor | float, max_iter: int = 500) -> Tensor:
        """The proximal operator of the data term, the data step of half-quadratic splitting:

            argmin_u 1/2 ||A u - y||^2 + rho/2 ||u - x||^2 = (A^T A + rho I)^-1 (A^T y + rho x).

        Closed form for ``Identity``, ``Mask`` and the circular ``GaussianBlur``; conjugate
        gradients with the exact adjoint (differentiated implicitly) for any other operator.
        Differentiable in ``x``, ``y`` and ``rho``.

        Args:
            x: Images ``(B, C, H, W)`` (the point the step stays close to).
            y: Measurements ``measurement_shape(x.shape)``.
            rho: Weight of the proximity term: a positive number, or a tensor with one value
                or one per image.
            max_iter: Iteration limit of conjugate gradients (operators without a closed form).

        Raises:
            ValueError: If ``rho`` is not finite and positive.
        """
        x = _check_image(x, "x")
        y = _check_image(y, "y")
        return self._prox_data(x, y, check_rho(rho, x.shape[0]), max_iter)

    def _prox_data(self, x: Tensor, y: Tensor, rho: Tensor | float, max_iter: int) -> Tensor:
        rho_tensor = rho if isinstance(rho, Tensor) else x.new_tensor(rho)
        return DataProxCG.apply(x, y, rho_tensor.to(x.dtype), self, max_iter)

    def measurement_shape(self, x_shape: Sequence[int]) -> tuple[int, ...]:
        """Shape of ``A x`` for an image batch of shape ``x_shape`` (here: the same shape)."""
        return tuple(int(s) for s in x_shape)

    def _A(self, x: Tensor) -> Tensor:
        raise NotImplementedError(f"{type(self).__name__} must implement _A(x).")

    def _A_adjoint(self, y: Tensor) -> Tensor:
        raise NotImplementedError(f"{type(self).__name__} must implement _A_adjoint(y).")

    def _default_device(self) -> torch.device:
        for buffer in self.buffers():
            return buffer.device
        return torch.device("cpu")

    @torch.no_grad()
    def norm_squared(
        self,
        shape: Sequence[int],
        n_iter: int = 200,
        tol: float = 1e-10,
        generator: torch.Generator | None = None,
        dtype: torch.dtype = torch.float64,
        device: torch.device | str | None = None,
    ) -> float:
        """Squared spectral norm ``||A||_2^2``, the largest eigenvalue of ``A^T A``.

        Power method: ``v <- A^T A v / ||A^T A v||`` from a random Gaussian start, with the
        Rayleigh quotient ``<v, A^T A v>`` as the estimate; stops when its relative change is
        below ``tol`` or after ``n_iter`` iterations. The starting vector is drawn on the
        generator's device (from a fresh CPU generator seeded with 0 when ``generator`` is
        None, so that the result is deterministic) and moved to ``device``.

        Args:
            shape: Image shape ``(C, H, W)`` or ``(B, C, H, W)``; the norm depends on it.
            n_iter: Maximum number of power iterations (positive).
            tol: Relative tolerance on the change of the estimate.
            generator: Source of the random starting vector.
            dtype: Floating-point dtype of the iteration (float64 by default for accuracy).
            device: Device of the iteration; defaults to the operator's buffers' device (CPU if
                it has none).

        Returns:
            The estimate of ``||A||_2^2`` (0.0 for the zero operator).
        """
        shape = _image_shape(shape)
        _positive_int(n_iter, "n_iter")
        device = torch.device(device) if device is not None else self._default_device()
        if generator is None:
            generator = torch.Generator().manual_seed(0)
        v = torch.randn(shape, generator=generator, dtype=dtype, device=generator.device)
        v = v.to(device)
        v = v / torch.linalg.vector_norm(v)
        estimate = 0.0
        for _ in range(n_iter):
            w = self._A_adjoint(self._A(v))
            new_estimate = float(torch.sum(v * w))
            w_norm = float(torch.linalg.vector_norm(w))
            if w_norm == 0.0:
                return 0.0
            v = w / w_norm
            if abs(new_estimate - estimate) <= tol * abs(new_estimate):
                return new_estimate
            estimate = new_estimate
        return estimate


class Identity(LinearOperator):
    """Identity operator for denoising: ``A x = x``, ``A^T y = y``.

    Shapes:
        x, y: ``(B, C, H, W)``.
    """

    def _A(self, x: Tensor) -> Tensor:
        return x

    def _A_adjoint(self, y: Tensor) -> Tensor:
        return y

    def _prox_data(self, x: Tensor, y: Tensor, rho: Tensor | float, max_iter: int) -> Tensor:
        # (y + rho x) / (1 + rho), written as a correction of x: its derivatives carry no
        # cancellation error.
        return x + (y - x) / (1 + rho)


class Mask(LinearOperator):
    """Inpainting by a binary mask: ``A x = m * x``, self-adjoint (``A^T = A``).

    ``m = 1`` marks an observed pixel, ``m = 0`` a missing one; missing pixels of ``y`` are 0.

    Args:
        mask: Binary tensor (bool, integer or float holding only 0 and 1) of shape ``(H, W)``,
            ``(1, H, W)`` (shared by all channels), ``(C, H, W)`` (one mask per channel) or
            ``(1, C, H, W)``. Stored as a float32 buffer of shape ``(1 or C, H, W)``.

    Shapes:
        x, y: ``(B, C, H, W)`` with ``(H, W)`` the mask's and ``C`` equal to the mask's channel
        count unless the mask has one channel.

    Raises:
        ValueError: If the mask has another shape or values other than 0 and 1.
    """

    mask: Tensor

    def __init__(self, mask: Tensor) -> None:
        super().__init__()
        if not isinstance(mask, Tensor):
            raise ValueError(
                f"mask must be a torch.Tensor, got {type(mask).__name__}; "
                "convert it with torch.as_tensor(mask)."
            )
        if mask.dim() == 4 and mask.shape[0] == 1:
            mask = mask[0]
        elif mask.dim() == 2:
            mask = mask.unsqueeze(0)
        if mask.dim() != 3:
            raise ValueError(
                f"mask must have shape (H, W), (1, H, W), (C, H, W) or (1, C, H, W), got "
                f"{tuple(mask.shape)}; drop any batch dimension (a mask is shared by the batch)."
            )
        if mask.is_complex():
            raise ValueError(f"mask must be real, got dtype {mask.dtype}; pass a 0/1 mask.")
        mask = mask.detach().to(torch.float32)
        if not bool(((mask == 0) | (mask == 1)).all()):
            raise ValueError(
                "mask values must be 0 (missing) or 1 (observed); binarise it first, "
                "e.g. mask = (mask > 0.5)."
            )
        self.register_buffer("mask", mask.contiguous())

    @classmethod
    def center_square(cls, height: int, width: int, window: int) -> Mask:
        """Mask with a centred ``window x window`` square hole (0) and 1 elsewhere.

        The hole covers rows ``top = (height - window) // 2`` to ``top + window - 1`` and the
        columns likewise; when ``height - window`` (or ``width - window``) is odd, the extra
        pixel of margin goes to the bottom (or right) side.

        Args:
            height: Image height ``H`` (positive).
            width: Image width ``W`` (positive).
            window: Side of the hole, ``1 <= window <= min(H, W)``.

        Returns:
            A :class:`Mask` of shape ``(1, H, W)``.
        """
        _positive_int(height, "height")
        _positive_int(width, "width")
        if isinstance(window, bool) or not isinstance(window, int):
            raise ValueError(f"window must be an int, got {window!r}; pass e.g. window=19.")
        if not 0 < window <= min(height, width):
            raise ValueError(
                f"window must satisfy 1 <= window <= min(height, width) = "
                f"{min(height, width)}, got {window}; choose a hole that fits in the image."
            )
        mask = torch.ones(1, height, width)
        top = (height - window) // 2
        left = (width - window) // 2
        mask[:, top : top + window, left : left + window] = 0.0
        return cls(mask)

    @classmethod
    def random_pixels(
        cls,
        height: int,
        width: int,
        fraction_missing: float,
        generator: torch.Generator | None = None,
        channels: int = 1,
    ) -> Mask:
        """Mask with exactly ``round(fraction_missing * H * W)`` missing pixels per channel.

        The missing pixels are a uniformly random subset (``torch.randperm``), drawn
        independently for each of the ``channels`` channels.

        Args:
            height: Image height ``H`` (positive).
            width: Image width ``W`` (positive).
            fraction_missing: Fraction of missing pixels, in ``[0, 1)``.
            generator: Source of randomness (the same seed gives the same mask); the global RNG
                when None.
            channels: 1 for a mask shared by all channels, ``C`` for one mask per channel.

        Returns:
            A :class:`Mask` of shape ``(channels, H, W)``.
        """
        _positive_int(height, "height")
        _positive_int(width, "width")
        _positive_int(channels, "channels")
        fraction = float(fraction_missing)
        if not (math.isfinite(fraction) and 0.0 <= fraction < 1.0):
            raise ValueError(
                f"fraction_missing must be in [0, 1), got {fraction_missing!r}; pass e.g. 0.5 "
                "(at least one pixel must stay observed)."
            )
        n_pixels = height * width
        n_missing = round(fraction * n_pixels)
        rng_device = generator.device if generator is not None else torch.device("cpu")
        mask = torch.ones(channels, n_pixels)
        for channel in range(channels):
            order = torch.randperm(n_pixels, generator=generator, device=rng_device).cpu()
            mask[channel, order[:n_missing]] = 0.0
        return cls(mask.reshape(channels, height, width))

    def _mask_for(self, x: Tensor) -> Tensor:
        if x.shape[-2:] != self.mask.shape[-2:]:
            raise ValueError(
                f"mask has spatial shape {tuple(self.mask.shape[-2:])} but the input has "
                f"{tuple(x.shape[-2:])} (input shape {tuple(x.shape)}); build the mask for "
                "the image size, e.g. Mask.center_square(H, W, window)."
            )
        n_mask_channels = self.mask.shape[0]
        if n_mask_channels not in (1, x.shape[1]):
            raise ValueError(
                f"mask has {n_mask_channels} channels but the input has {x.shape[1]} "
                f"(input shape {tuple(x.shape)}); use a (1, H, W) mask shared by all channels "
                "or one with the input's channel count."
            )
        return self.mask.to(dtype=x.dtype, device=x.device)

    def _A(self, x: Tensor) -> Tensor:
        return self._mask_for(x) * x

    def _A_adjoint(self, y: Tensor) -> Tensor:
        return self._mask_for(y) * y

    def _prox_data(self, x: Tensor, y: Tensor, rho: Tensor | float, max_iter: int) -> Tensor:
        # A^T A = diag(m) with m in {0, 1}: observed pixels average y and x, missing ones keep x
        # (exactly, and with an exactly zero derivative in rho there).
        mask = self._mask_for(x)
        return x + mask * (y - x) / (mask + rho)


def gaussian_kernel(sigma_b: float, kernel_size: int | None = None) -> Tensor:
    """Normalised isotropic Gaussian kernel ``k[i, j] ∝ exp(-(i^2 + j^2) / (2 sigma_b^2))``.

    Args:
        sigma_b: Standard deviation in pixels, finite and positive.
        kernel_size: Odd positive side length; ``2 * ceil(3 * sigma_b) + 1`` when None.

    Returns:
        Kernel of shape ``(kernel_size, kernel_size)``, float64, summing to 1.
    """
    sigma = float(sigma_b)
    if not (math.isfinite(sigma) and sigma > 0.0):
        raise ValueError(
            f"sigma_b must be positive, got {sigma_b!r}; pass the blur's standard deviation "
            "in pixels, e.g. sigma_b=5.0 (use Identity for no blur)."
        )
    if kernel_size is None:
        kernel_size = 2 * math.ceil(3.0 * sigma) + 1
    if (
        isinstance(kernel_size, bool)
        or not isinstance(kernel_size, int)
        or kernel_size <= 0
        or kernel_size % 2 == 0
    ):
        raise ValueError(
            f"kernel_size must be a positive odd int, got {kernel_size!r}; pass an odd size "
            "such as 2 * ceil(3 * sigma_b) + 1, or None for that default."
        )
    t = torch.arange(kernel_size, dtype=torch.float64) - kernel_size // 2
    g = torch.exp(-(t**2) / (2.0 * sigma**2))
    kernel = torch.outer(g, g)
    return kernel / kernel.sum()


class GaussianBlur(LinearOperator):
    """Per-channel convolution with a normalised isotropic Gaussian kernel (deblurring).

    Args:
        sigma_b: Standard deviation of the Gaussian in pixels, finite and positive.
        kernel_size: Odd positive side of the kernel; ``2 * ceil(3 * sigma_b) + 1`` when None.
        boundary: ``"circular"`` (periodic, via the FFT; the default) or ``"zero"`` (zero
            padding, "same"-size output).

    Shapes:
        x, y: ``(B, C, H, W)``; the kernel may be larger than the image (both boundaries).

    Raises:
        ValueError: For a non-positive ``sigma_b``, an even ``kernel_size`` or an unknown
            ``boundary``.
    """

    BOUNDARIES = ("circular", "zero")
    kernel: Tensor

    def __init__(
        self, sigma_b: float, kernel_size: int | None = None, boundary: str = "circular"
    ) -> None:
        super().__init__()
        if boundary not in self.BOUNDARIES:
            raise ValueError(
                f"boundary must be one of {self.BOUNDARIES}, got {boundary!r}; use 'circular' "
                "(periodic, FFT) or 'zero' (zero padding)."
            )
        kernel = gaussian_kernel(sigma_b, kernel_size)
        self.sigma_b = float(sigma_b)
        self.kernel_size = kernel.shape[-1]
        self.boundary = boundary
        self.register_buffer("kernel", kernel)
        self._spectrum_cache: dict[tuple, Tensor] = {}

    def extra_repr(self) -> str:
        return f"sigma_b={self.sigma_b}, kernel_size={self.kernel_size}, boundary={self.boundary!r}"

    def _apply(self, fn: Callable[[Tensor], Tensor], *args: Any, **kwargs: Any) -> GaussianBlur:
        self._spectrum_cache.clear()
        return super()._apply(fn, *args, **kwargs)

    def _spectrum(
        self, height: int, width: int, dtype: torch.dtype, device: torch.device
    ) -> Tensor:
        """rfft2 of the kernel wrapped onto the ``(H, W)`` torus with its centre at (0, 0)."""
        # The version counter catches in-place changes (load_state_dict); _apply clears the
        # cache when .to()/.double() replace the buffer.
        key = (height, width, dtype, device, self.kernel.data_ptr(), self.kernel._version)
        spectrum = self._spectrum_cache.get(key)
        if spectrum is None:
            kernel = self.kernel.detach().to(dtype=dtype, device=device)
            size = self.kernel_size
            offsets = torch.arange(size, device=device) - size // 2
            # One-hot maps from kernel taps to torus positions; the matrix products sum the taps
            # that alias onto the same pixel when the kernel is larger than the image.
            rows = F.one_hot(offsets % height, height).to(dtype).T  # (H, k)
            cols = F.one_hot(offsets % width, width).to(dtype).T  # (W, k)
            padded = rows @ kernel @ cols.T  # (H, W)
            spectrum = torch.fft.rfft2(padded)
            if len(self._spectrum_cache) >= 8:
                self._spectrum_cache.clear()
            self._spectrum_cache[key] = spectrum
        return spectrum

    def transfer_function(
        self,
        height: int,
        width: int,
        dtype: torch.dtype = torch.float64,
        device: torch.device | str | None = None,
    ) -> Tensor:
        """Transfer function ``K = F k`` of the kernel on the ``(H, W)`` grid (full ``fft2``).

        ``k`` is wrapped onto the ``(H, W)`` torus with its centre at index ``(0, 0)`` (aliased
        taps summed), so that the circular operator is exactly ``A x = F^-1(K . F x)``. For the
        zero boundary this is the periodic approximation of ``A``.

        Args:
            height: Image height ``H`` (positive).
            width: Image width ``W`` (positive).
            dtype: Real floating-point dtype of the computation (complex result of matching
                precision).
            device: Device of the result; the kernel buffer's device when None.

        Returns:
            Complex tensor of shape ``(H, W)``.
        """
        _positive_int(height, "height")
        _positive_int(width, "width")
        device = torch.device(device) if device is not None else self.kernel.device
        half = self._spectrum(height, width, dtype, device)  # rfft2: columns 0 .. W // 2
        # Hermitian symmetry of a real signal's DFT: K[u, v] = conj(K[-u mod H, -v mod W]).
        full = torch.empty(height, width, dtype=half.dtype, device=device)
        n_half = half.shape[-1]
        full[:, :n_half] = half
        if width > n_half:
            rows = (-torch.arange(height, device=device)) % height
            cols = width - torch.arange(n_half, width, device=device)
            full[:, n_half:] = half[rows][:, cols].conj()
        return full

    def _weight(self, x: Tensor) -> Tensor:
        # conv2d computes a correlation; flipping makes it the convolution with the kernel.
        kernel = torch.flip(self.kernel.to(dtype=x.dtype, device=x.device), dims=(0, 1))
        return kernel.expand(x.shape[1], 1, self.kernel_size, self.kernel_size)

    def _A(self, x: Tensor) -> Tensor:
        if self.boundary == "circular":
            height, width = x.shape[-2:]
            spectrum = self._spectrum(height, width, x.dtype, x.device)
            return torch.fft.irfft2(torch.fft.rfft2(x) * spectrum, s=(height, width))
        return F.conv2d(x, self._weight(x), padding=self.kernel_size // 2, groups=x.shape[1])

    def _A_adjoint(self, y: Tensor) -> Tensor:
        if self.boundary == "circular":
            height, width = y.shape[-2:]
            spectrum = self._spectrum(height, width, y.dtype, y.device)
            return torch.fft.irfft2(torch.fft.rfft2(y) * spectrum.conj(), s=(height, width))
        return F.conv_transpose2d(
            y, self._weight(y), padding=self.kernel_size // 2, groups=y.shape[1]
        )

    def _prox_data(self, x: Tensor, y: Tensor, rho: Tensor | float, max_iter: int) -> Tensor:
        if self.boundary != "circular":  # zero boundary: no diagonalising transform
            return super()._prox_data(x, y, rho, max_iter)
        # A = F^-1 diag(K) F, so A^T A + rho I = F^-1 diag(|K|^2 + rho) F; as a correction of
        # x: u = x + F^-1 [conj(K) F(y - A x) / (|K|^2 + rho)].
        height, width = x.shape[-2:]
        spectrum = self._spectrum(height, width, x.dtype, x.device)
        residual = (torch.fft.rfft2(y) - spectrum * torch.fft.rfft2(x)) * spectrum.conj()
        return x + torch.fft.irfft2(residual / (spectrum.abs() ** 2 + rho), s=(height, width))
