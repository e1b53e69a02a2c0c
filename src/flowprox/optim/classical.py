"""Classical reference reconstructions shown beside the learned methods.

One method per forward operator, all taking and returning batches ``(B, C, H, W)`` and clamping
the result to ``[0, 1]``:

* denoising (:class:`~flowprox.physics.operators.Identity`): total-variation denoising by
  Chambolle's algorithm (:func:`tv_denoise`, scikit-image), parameter: the TV weight;
* inpainting (:class:`~flowprox.physics.operators.Mask`): biharmonic inpainting
  (:func:`inpaint_biharmonic`, scikit-image), no parameter; :func:`inpaint_harmonic` is a fast
  batched pure-torch alternative (Laplace equation);
* deblurring (:class:`~flowprox.physics.operators.GaussianBlur`): the Wiener / Tikhonov filter
  (:func:`wiener_deconvolution`, FFT), parameter: the balance (noise-to-signal ratio);
* super-resolution, compressed sensing and MRI (the operators with a pseudo-inverse ``A^+``):
  TV-regularised reconstruction (:func:`~flowprox.optim.tv.tv_reconstruction`, primal-dual),
  parameter: the TV weight. Their zero-filled ``A^+ y`` is the measurement's own row.

:func:`classical_reconstruction` dispatches on the operator and :func:`tune_classical_parameter`
picks the parameter maximising the mean PSNR on validation images. The methods run without
gradients; the scikit-image ones go through NumPy on the CPU, one image at a time, and return
the result on the input's device and dtype.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from skimage.restoration import denoise_tv_chambolle
from skimage.restoration import inpaint_biharmonic as _sk_inpaint_biharmonic
from torch import Tensor

from flowprox.metrics.quality import psnr
from flowprox.optim.tv import tv_reconstruction
from flowprox.physics.operators import GaussianBlur, Identity, LinearOperator, Mask
from flowprox.utils.validation import check_image_batch

__all__ = [
    "wiener_deconvolution",
    "inpaint_biharmonic",
    "inpaint_harmonic",
    "tv_denoise",
    "classical_reconstruction",
    "classical_name",
    "classical_candidates",
    "tune_classical_parameter",
]


def _positive(value: float, name: str, example: str) -> float:
    value = float(value)
    if not (math.isfinite(value) and value > 0.0):
        raise ValueError(f"{name} must be finite and positive, got {value!r}; pass e.g. {example}.")
    return value


def _to_numpy(image: Tensor) -> np.ndarray:
    """``(C, H, W)`` tensor -> ``(H, W, C)`` float64 array."""
    return image.detach().to(device="cpu", dtype=torch.float64).permute(1, 2, 0).numpy()


def _from_numpy(array: np.ndarray, like: Tensor) -> Tensor:
    """``(H, W, C)`` array -> ``(C, H, W)`` tensor on ``like``'s device and dtype."""
    return torch.from_numpy(np.ascontiguousarray(array)).permute(2, 0, 1).to(like)


def _observed(y: Tensor, mask: Mask | Tensor) -> Tensor:
    """The mask broadcast to ``y``'s shape ``(B, C, H, W)``, as a bool tensor (True: observed)."""
    op = mask if isinstance(mask, Mask) else Mask(mask)
    observed = op.A(torch.ones_like(y)) > 0.5
    n_observed = observed.flatten(1).sum(dim=1)
    if bool((n_observed == 0).any()):
        raise ValueError(
            "the mask observes no pixel, so there is nothing to inpaint from; use a mask with "
            "at least one 1 (observed pixel)."
        )
    return observed


@torch.no_grad()
def wiener_deconvolution(y: Tensor, op: GaussianBlur, balance: float) -> Tensor:
    """Wiener (Tikhonov) deconvolution ``x = F^-1(conj(K) . F y / (|K|^2 + balance))``.

    ``K`` is the transfer function of the blur kernel on the image grid
    (:meth:`GaussianBlur.transfer_function`). It minimises ``||k * x - y||^2 + balance ||x||^2``
    exactly for the circular boundary. For ``boundary="zero"`` the same periodic filter is
    applied, which is only an approximation: it ignores the dark border of zero-padded
    measurements, and the ringing this causes can leave the result below the blurred input in
    PSNR (an exact solution would need an iterative solver of ``(A^T A + balance) x = A^T y``).

    Args:
        y: Blurred (noisy) images, ``(B, C, H, W)``.
        op: The blur operator that produced ``y``.
        balance: Regularisation weight, finite and positive (about ``sigma_n^2`` divided by the
            signal power; small for little noise).

    Returns:
        Deblurred images clamped to ``[0, 1]``, same shape, dtype and device as ``y``.
    """
    check_image_batch(y, "y")
    if not isinstance(op, GaussianBlur):
        raise ValueError(
            f"wiener_deconvolution needs a GaussianBlur operator, got {type(op).__name__}; use "
            "classical_reconstruction(y, op, parameter) to pick the method for the operator."
        )
    balance = _positive(balance, "balance", "balance=1e-3")
    height, width = y.shape[-2:]
    compute = torch.float64 if y.dtype == torch.float64 else torch.float32
    transfer = op.transfer_function(height, width, dtype=compute, device=y.device)
    spectrum = torch.fft.fft2(y.to(compute))
    filtered = transfer.conj() * spectrum / (transfer.abs() ** 2 + balance)
    return torch.fft.ifft2(filtered).real.clamp(0.0, 1.0).to(y.dtype)


@torch.no_grad()
def inpaint_biharmonic(y: Tensor, mask: Mask | Tensor) -> Tensor:
    """Fill the missing pixels by solving the biharmonic equation ``Δ² x = 0`` there.

    Uses ``skimage.restoration.inpaint_biharmonic`` per image (``channel_axis=-1`` when the mask
    is shared by the channels, channel by channel otherwise); observed pixels are kept.

    Args:
        y: Masked images, ``(B, C, H, W)``.
        mask: A :class:`~flowprox.physics.operators.Mask`, or a 0/1 tensor accepted by it
            (1: observed).

    Returns:
        Inpainted images clamped to ``[0, 1]``, same shape, dtype and device as ``y``.
    """
    check_image_batch(y, "y")
    observed = _observed(y, mask)
    out = y.clone()
    for b in range(y.shape[0]):
        missing = ~observed[b].cpu().numpy()  # (C, H, W), True where skimage fills in
        if not missing.any():
            continue
        image = _to_numpy(y[b])
        if (missing == missing[:1]).all():
            filled = _sk_inpaint_biharmonic(image, missing[0], channel_axis=-1)
        else:
            filled = np.stack(
                [
                    _sk_inpaint_biharmonic(image[..., c], missing[c])
                    if missing[c].any()
                    else image[..., c]
                    for c in range(image.shape[-1])
                ],
                axis=-1,
            )
        out[b] = _from_numpy(filled, y)
    return torch.where(observed, y, out).clamp(0.0, 1.0)


@torch.no_grad()
def inpaint_harmonic(y: Tensor, mask: Mask | Tensor, iterations: int = 500) -> Tensor:
    """Fill the missing pixels by solving the Laplace equation ``Δ x = 0`` there (Jacobi).

    Each iteration replaces every missing pixel by the mean of its 4 neighbours (Neumann
    boundary: the image edge is replicated) while observed pixels stay fixed; missing pixels
    start at the mean of the observed ones (per image and channel). Batched pure torch, on the
    input's device. Jacobi converges in about ``(hole size)^2`` iterations: raise
    ``iterations`` for large holes.

    Args:
        y: Masked images, ``(B, C, H, W)``.
        mask: A :class:`~flowprox.physics.operators.Mask`, or a 0/1 tensor accepted by it
            (1: observed).
        iterations: Number of Jacobi iterations (non-negative).

    Returns:
        Inpainted images clamped to ``[0, 1]``, same shape, dtype and device as ``y``.
    """
    check_image_batch(y, "y")
    if isinstance(iterations, bool) or not isinstance(iterations, int) or iterations < 0:
        raise ValueError(
            f"iterations must be a non-negative int, got {iterations!r}; pass e.g. 500."
        )
    observed = _observed(y, mask)
    weights = observed.to(y.dtype)
    # Channels with no observed pixel (per-channel masks) start at 0.
    fill = (y * weights).sum(dim=(2, 3), keepdim=True) / weights.sum(
        dim=(2, 3), keepdim=True
    ).clamp_min(1.0)
    x = torch.where(observed, y, fill.expand_as(y))
    for _ in range(iterations):
        p = F.pad(x, (1, 1, 1, 1), mode="replicate")
        neighbours = p[..., :-2, 1:-1] + p[..., 2:, 1:-1] + p[..., 1:-1, :-2] + p[..., 1:-1, 2:]
        x = torch.where(observed, y, 0.25 * neighbours)
    return x.clamp(0.0, 1.0)


@torch.no_grad()
def tv_denoise(y: Tensor, weight: float) -> Tensor:
    """Total-variation denoising ``argmin_x ||x - y||^2 / 2 + weight TV(x)`` (Chambolle 2004).

    Uses ``skimage.restoration.denoise_tv_chambolle(..., weight=weight, channel_axis=-1)`` per
    image (channels are denoised independently).

    Args:
        y: Noisy images, ``(B, C, H, W)``.
        weight: TV weight, finite and positive (larger: smoother; about the noise level).

    Returns:
        Denoised images clamped to ``[0, 1]``, same shape, dtype and device as ``y``.
    """
    check_image_batch(y, "y")
    weight = _positive(weight, "weight", "weight=0.1")
    out = torch.empty_like(y)
    for b in range(y.shape[0]):
        denoised = denoise_tv_chambolle(_to_numpy(y[b]), weight=weight, channel_axis=-1)
        out[b] = _from_numpy(denoised, y)
    return out.clamp(0.0, 1.0)


def _has_pseudo_inverse(op: LinearOperator) -> bool:
    """Operators with an exact ``A^+`` (super-resolution, compressed sensing, MRI)."""
    return callable(getattr(op, "pseudo_inverse", None))


def classical_name(op: LinearOperator) -> str:
    """Display name of the operator's classical method (see :func:`classical_reconstruction`)."""
    if _has_pseudo_inverse(op):
        return "TV-regularised reconstruction (primal-dual)"
    if isinstance(op, GaussianBlur):
        return "Wiener deconvolution"
    if isinstance(op, Mask):
        return "biharmonic inpainting"
    if isinstance(op, Identity):
        return "TV denoising (Chambolle)"
    raise _unsupported(op)


def _unsupported(op: object) -> ValueError:
    return ValueError(
        f"no classical reconstruction for operator {type(op).__name__}; supported are "
        "Identity (TV denoising), Mask (biharmonic inpainting), GaussianBlur (Wiener) and "
        "the operators with a pseudo-inverse (super-resolution, compressed sensing, MRI: "
        "TV-regularised reconstruction)."
    )


def classical_candidates(op: LinearOperator) -> list[float] | None:
    """Default parameter grid for :func:`tune_classical_parameter` (None: no parameter).

    Identity: TV weights ``10^(k/4)``, ``k = -12 .. 0`` (1e-3 to 1). GaussianBlur: Wiener
    balances ``10^(k/2)``, ``k = -24 .. 0`` (1e-12 to 1: noise-free blur
    is nearly invertible in float32, and its best balance is about 1e-11). Operators with a
    pseudo-inverse: TV weights ``10^(k/4)``, ``k = -16 .. -4`` (1e-4 to 0.1). Mask: None.
    """
    if isinstance(op, GaussianBlur):
        return [10.0 ** (k / 2) for k in range(-24, 1)]
    if _has_pseudo_inverse(op):
        return [10.0 ** (k / 4) for k in range(-16, -3)]
    if isinstance(op, Mask):
        return None
    if isinstance(op, Identity):
        return [10.0 ** (k / 4) for k in range(-12, 1)]
    raise _unsupported(op)


def classical_reconstruction(
    y: Tensor, op: LinearOperator, parameter: float | None = None
) -> Tensor:
    """Classical reconstruction of ``y = A x + n`` for the operator ``A``.

    Identity: :func:`tv_denoise` with ``weight=parameter``; Mask: :func:`inpaint_biharmonic`
    (``parameter`` unused); GaussianBlur: :func:`wiener_deconvolution` with
    ``balance=parameter``; operators with a pseudo-inverse: :func:`tv_reconstruction` with
    ``weight=parameter``.

    Args:
        y: Measurements, ``(B, C, H, W)``.
        op: The forward operator.
        parameter: The method's parameter (see :func:`tune_classical_parameter`); required
            except for Mask.

    Returns:
        Reconstructions clamped to ``[0, 1]``, same shape as ``y``.
    """
    if isinstance(op, Mask):
        return inpaint_biharmonic(y, op)
    if not isinstance(op, (GaussianBlur, Identity)) and not _has_pseudo_inverse(op):
        raise _unsupported(op)
    if parameter is None:
        raise ValueError(
            f"{classical_name(op)} needs a parameter; pass one, e.g. the best of "
            "tune_classical_parameter(y_val, x_val, op)."
        )
    if isinstance(op, GaussianBlur):
        return wiener_deconvolution(y, op, balance=parameter)
    if isinstance(op, Identity):
        return tv_denoise(y, weight=parameter)
    return tv_reconstruction(y, op, weight=parameter).to(y.dtype)


def tune_classical_parameter(
    y_val: Tensor,
    x_val: Tensor,
    op: LinearOperator,
    candidates: Sequence[float] | None = None,
) -> tuple[float | None, float]:
    """Pick the parameter of :func:`classical_reconstruction` maximising the mean PSNR.

    Args:
        y_val: Validation measurements, ``(B, C, H, W)``.
        x_val: The matching ground-truth images.
        op: The forward operator.
        candidates: Parameters to try; :func:`classical_candidates` (``op``) when None. Ignored
            for methods without a parameter (Mask).

    Returns:
        ``(best_parameter, best_mean_psnr)``; ``best_parameter`` is None for a method without a
        parameter. Ties go to the earlier candidate.
    """
    check_image_batch(x_val, "x_val")
    if tuple(op.measurement_shape(x_val.shape)) != tuple(y_val.shape):
        raise ValueError(
            f"y_val has shape {tuple(y_val.shape)} but x_val has {tuple(x_val.shape)}; pass "
            "the measurements of the same validation images."
        )
    default = classical_candidates(op)
    if default is None:
        return None, float(psnr(classical_reconstruction(y_val, op), x_val).mean())
    candidates = default if candidates is None else [float(c) for c in candidates]
    if not candidates:
        raise ValueError("candidates is empty; pass at least one value, or None for the default.")
    best_parameter, best_psnr = candidates[0], -math.inf
    for parameter in candidates:
        score = float(psnr(classical_reconstruction(y_val, op, parameter), x_val).mean())
        if score > best_psnr:
            best_parameter, best_psnr = parameter, score
    return best_parameter, best_psnr
