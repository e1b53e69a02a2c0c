"""Glow's elementary bijections (Kingma and Dhariwal, 2018) and the split standardisation.

Every layer follows ``flows.base``: ``forward(x) -> (y, logdet)`` (data to latent) and
``inverse(y) -> x``. Shapes are ``(B, C, H, W)``; log-determinants are ``(B,)``.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from flowprox.flows.base import InvertibleModule, zero_logdet
from flowprox.utils.precision import run_network

_data_init_suspended = False


@contextmanager
def data_init_suspended() -> Iterator[None]:
    """Within this context ``ActNorm`` never initialises itself (used by recomputation passes)."""
    global _data_init_suspended
    previous, _data_init_suspended = _data_init_suspended, True
    try:
        yield
    finally:
        _data_init_suspended = previous


class ActNorm(InvertibleModule):
    """Per-channel affine normalisation ``y = (x + loc) * exp(log_scale)``.

    ``logdet = H * W * sum(log_scale)``. On the first ``forward`` in training mode the layer
    initialises itself from the batch so that ``y`` has zero mean and unit standard deviation
    per channel (data-dependent initialisation). The ``initialized`` flag is a buffer, so a
    loaded checkpoint never re-initialises.
    """

    def __init__(self, channels: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.loc = nn.Parameter(torch.zeros(1, channels, 1, 1))
        self.log_scale = nn.Parameter(torch.zeros(1, channels, 1, 1))
        self.register_buffer("initialized", torch.tensor(False))
        self.eps = eps

    @torch.no_grad()
    def initialize(self, x: Tensor) -> None:
        """Set ``loc = -mean(x)`` and ``log_scale = -log(std(x))`` per channel, over ``x``."""
        flat = x.transpose(0, 1).reshape(x.shape[1], -1)
        mean = flat.mean(dim=1)
        std = flat.std(dim=1, unbiased=False)
        self.loc.copy_(-mean.view_as(self.loc))
        self.log_scale.copy_(-torch.log(std + self.eps).view_as(self.log_scale))
        self.initialized.fill_(True)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        if self.training and not _data_init_suspended and not bool(self.initialized):
            self.initialize(x)
        y = (x + self.loc) * torch.exp(self.log_scale)
        logdet = x.shape[2] * x.shape[3] * self.log_scale.sum()
        return y, logdet.expand(x.shape[0])

    def inverse(self, y: Tensor) -> Tensor:
        return y * torch.exp(-self.log_scale) - self.loc


def channel_mix(x: Tensor, weight: Tensor) -> Tensor:
    """The 1x1 convolution ``y[:, i] = sum_j W[i, j] x[:, j]`` as one matrix product over the
    channels-last view (on CPU 1.3x to 1.7x faster than ``conv2d`` with its backward at the
    ``small`` preset's shapes, bench/step_variants.py); the output is contiguous NCHW.
    """
    return F.linear(x.permute(0, 2, 3, 1), weight).permute(0, 3, 1, 2).contiguous()


class InvConv1x1(InvertibleModule):
    """Invertible 1x1 convolution with the LU parametrisation of Glow.

    ``W = P L (U + diag(sign_s * exp(log_s)))`` with ``P`` a fixed permutation, ``L`` unit lower-
    and ``U`` strictly upper-triangular; ``logdet = H * W * sum(log_s)`` needs no ``slogdet``.
    The inverse weight is computed in float64 and cached while the parameters are unchanged and
    no gradient through it is needed (evaluation, or the recomputation of memory-saving backprop).
    Both directions run in float32 (or the input's dtype) under autocast too.
    """

    def __init__(self, channels: int, generator: torch.Generator | None = None) -> None:
        super().__init__()
        q, _ = torch.linalg.qr(torch.randn(channels, channels, generator=generator))
        p, lower, upper = torch.linalg.lu(q)
        s = torch.diagonal(upper)
        self.register_buffer("permutation", p)
        self.register_buffer("sign_s", torch.sign(s))
        self.register_buffer("lower_mask", torch.tril(torch.ones(channels, channels), -1))
        self.register_buffer("identity", torch.eye(channels))
        self.lower = nn.Parameter(lower * self.lower_mask)
        self.upper = nn.Parameter(torch.triu(upper, 1))
        self.log_s = nn.Parameter(torch.log(torch.abs(s)))
        self._inverse_cache: tuple[tuple, Tensor] | None = None

    def weight(self, dtype: torch.dtype | None = None) -> Tensor:
        """The ``(C, C)`` matrix ``W``, optionally in another dtype (e.g. float64)."""
        cast = (lambda t: t.to(dtype)) if dtype is not None else (lambda t: t)
        lower = cast(self.lower) * cast(self.lower_mask) + cast(self.identity)
        upper = cast(self.upper) * cast(self.lower_mask).T
        diagonal = torch.diag(cast(self.sign_s) * torch.exp(cast(self.log_s)))
        return cast(self.permutation) @ lower @ (upper + diagonal)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        with torch.autocast(x.device.type, enabled=False):  # W and W x exact under autocast
            y = channel_mix(x, self.weight().to(x.dtype))
        logdet = x.shape[2] * x.shape[3] * self.log_s.sum().to(x.dtype)
        return y, logdet.expand(x.shape[0])

    def inverse_weight(self, dtype: torch.dtype) -> Tensor:
        """``W^-1`` computed in float64 and cast to ``dtype``."""
        needs_grad = torch.is_grad_enabled() and any(
            p.requires_grad for p in (self.lower, self.upper, self.log_s)
        )
        if needs_grad:
            return torch.linalg.inv(self.weight(torch.float64)).to(dtype)
        key = (
            self.lower._version,
            self.upper._version,
            self.log_s._version,
            self.lower.data_ptr(),
            self.upper.data_ptr(),
            self.log_s.data_ptr(),
            dtype,
        )
        if self._inverse_cache is None or self._inverse_cache[0] != key:
            with torch.no_grad():
                inverse = torch.linalg.inv(self.weight(torch.float64)).to(dtype)
            self._inverse_cache = (key, inverse)
        return self._inverse_cache[1]

    def inverse(self, y: Tensor) -> Tensor:
        with torch.autocast(y.device.type, enabled=False):
            return channel_mix(y, self.inverse_weight(y.dtype))


class ZeroConv2d(nn.Module):
    """3x3 convolution initialised to zero with a learned output scale ``exp(3 * scale)`` (Glow)."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        nn.init.zeros_(self.conv.weight)
        nn.init.zeros_(self.conv.bias)
        self.scale = nn.Parameter(torch.zeros(1, out_channels, 1, 1))

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(x) * torch.exp(3.0 * self.scale)


def coupling_network(in_channels: int, hidden: int, out_channels: int) -> nn.Sequential:
    """Glow's coupling network: conv3x3 - ReLU - conv1x1 - ReLU - zero-initialised conv3x3."""
    first = nn.Conv2d(in_channels, hidden, 3, padding=1)
    middle = nn.Conv2d(hidden, hidden, 1)
    for conv in (first, middle):
        nn.init.normal_(conv.weight, std=0.05)
        nn.init.zeros_(conv.bias)
    return nn.Sequential(first, nn.ReLU(), middle, nn.ReLU(), ZeroConv2d(hidden, out_channels))


class AffineCoupling(InvertibleModule):
    """Affine coupling ``y_b = (x_b + t) * s``, ``s = f + (1 - f) sigmoid(h + 2)``,
    ``(t, h) = NN(x_a)``, ``y_a = x_a``, with a scale floor ``f`` in [0, 1).

    ``logdet = sum log s``. The last convolution of ``NN`` starts at zero, so the layer starts
    near the identity (scale ``f + (1 - f) sigmoid(2)``). The floor bounds how much the inverse
    ``x_b = y_b / s - t`` can amplify, by ``1 / f``: without it, images far from the training
    data (noisy ones) drive ``s`` towards 0 and the inverse overflows. With ``additive=True``
    the layer is ``y_b = x_b + t`` with zero log-determinant.
    """

    def __init__(
        self, channels: int, hidden: int, additive: bool = False, scale_floor: float = 0.0
    ) -> None:
        super().__init__()
        if channels < 2:
            raise ValueError(
                f"AffineCoupling needs at least 2 channels to split, got {channels}; "
                "apply a Squeeze before the coupling."
            )
        if not 0.0 <= scale_floor < 1.0:
            raise ValueError(f"scale_floor must be in [0, 1), got {scale_floor}; 0 means none.")
        self.split = channels // 2
        self.network_precision = "float32"  # models.precision.set_network_precision
        self.additive = additive
        self.scale_floor = scale_floor
        passive = channels - self.split
        self.net = coupling_network(self.split, hidden, passive if additive else 2 * passive)

    def _shift_and_scale(self, x_a: Tensor) -> tuple[Tensor, Tensor | None]:
        h = run_network(self.net, x_a, self.network_precision)  # exact inverse at any precision
        if self.additive:
            return h, None
        shift, scale_logit = h.chunk(2, dim=1)
        scale = torch.sigmoid(scale_logit + 2.0)
        if self.scale_floor:
            scale = self.scale_floor + (1.0 - self.scale_floor) * scale
        return shift, scale

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        x_a, x_b = x[:, : self.split], x[:, self.split :]
        shift, scale = self._shift_and_scale(x_a)
        if scale is None:
            return torch.cat([x_a, x_b + shift], dim=1), zero_logdet(x)
        y_b = (x_b + shift) * scale
        logdet = torch.log(scale).flatten(1).sum(dim=1)
        return torch.cat([x_a, y_b], dim=1), logdet

    def inverse(self, y: Tensor) -> Tensor:
        y_a, y_b = y[:, : self.split], y[:, self.split :]
        shift, scale = self._shift_and_scale(y_a)
        x_b = y_b - shift if scale is None else y_b / scale - shift
        return torch.cat([y_a, x_b], dim=1)


class Squeeze(InvertibleModule):
    """Space-to-depth: ``(B, C, H, W) -> (B, 4C, H/2, W/2)``; volume preserving (logdet 0)."""

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        b, c, h, w = x.shape
        if h % 2 or w % 2:
            raise ValueError(
                f"Squeeze needs even height and width, got {h}x{w}; crop or resize the images "
                "to a multiple of 2**levels."
            )
        y = x.view(b, c, h // 2, 2, w // 2, 2).permute(0, 1, 3, 5, 2, 4)
        return y.reshape(b, 4 * c, h // 2, w // 2), zero_logdet(x)

    def inverse(self, y: Tensor) -> Tensor:
        b, c4, h, w = y.shape
        x = y.view(b, c4 // 4, 2, 2, h, w).permute(0, 1, 4, 2, 5, 3)
        return x.reshape(b, c4 // 4, 2 * h, 2 * w)


def _check_bound(bound: float) -> float:
    if not (math.isfinite(bound) and bound >= 0):
        raise ValueError(f"log_sd_bound must be a finite number >= 0 (0: none), got {bound!r}.")
    return float(bound)


def bounded(log_sd: Tensor, bound: float) -> Tensor:
    """``bound * tanh(log_sd / bound)``: a log standard deviation kept inside ``(-bound, bound)``
    (the identity near 0; unchanged when ``bound`` is 0). Each split prior's inverse then scales
    its latent by at most ``exp(bound)``, whatever the input, instead of ``exp`` of a linear
    function of it, which overflows on images far from the data."""
    return bound * torch.tanh(log_sd / bound) if bound > 0 else log_sd


class SplitStandardize(InvertibleModule):
    """Glow's learned split prior folded into the bijection.

    With ``x = (x_keep, x_out)`` and ``(m, log_sd) = ZeroConv(x_keep)`` the layer outputs
    ``(x_keep, (x_out - m) * exp(-log_sd))``, so the factored-out half is standard normal exactly
    when Glow's conditional prior ``N(m, exp(log_sd)^2)`` fits it; ``logdet = -sum(log_sd)``.
    """

    def __init__(self, channels: int, log_sd_bound: float = 0.0) -> None:
        super().__init__()
        self.keep = channels // 2
        self.log_sd_bound = _check_bound(log_sd_bound)
        self.prior = ZeroConv2d(self.keep, 2 * (channels - self.keep))

    def _mean_and_log_sd(self, x_keep: Tensor) -> tuple[Tensor, Tensor]:
        mean, log_sd = self.prior(x_keep).chunk(2, dim=1)
        return mean, bounded(log_sd, self.log_sd_bound)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        x_keep, x_out = x[:, : self.keep], x[:, self.keep :]
        mean, log_sd = self._mean_and_log_sd(x_keep)
        z_out = (x_out - mean) * torch.exp(-log_sd)
        return torch.cat([x_keep, z_out], dim=1), -log_sd.flatten(1).sum(dim=1)

    def inverse(self, y: Tensor) -> Tensor:
        y_keep, z_out = y[:, : self.keep], y[:, self.keep :]
        mean, log_sd = self._mean_and_log_sd(y_keep)
        return torch.cat([y_keep, z_out * torch.exp(log_sd) + mean], dim=1)


class TopStandardize(InvertibleModule):
    """The top level's learned prior ``N(m, exp(log_sd)^2)`` (per channel) as ``(x - m) / sd``.

    ``logdet = -H * W * sum(log_sd)``; both parameters start at zero (the identity).
    """

    def __init__(self, channels: int, log_sd_bound: float = 0.0) -> None:
        super().__init__()
        self.log_sd_bound = _check_bound(log_sd_bound)
        self.mean = nn.Parameter(torch.zeros(1, channels, 1, 1))
        self.log_sd = nn.Parameter(torch.zeros(1, channels, 1, 1))

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        log_sd = bounded(self.log_sd, self.log_sd_bound)
        y = (x - self.mean) * torch.exp(-log_sd)
        logdet = -x.shape[2] * x.shape[3] * log_sd.sum()
        return y, logdet.expand(x.shape[0])

    def inverse(self, y: Tensor) -> Tensor:
        return y * torch.exp(bounded(self.log_sd, self.log_sd_bound)) + self.mean


class FlowStep(InvertibleModule):
    """One step of flow: ActNorm, then invertible 1x1 convolution, then affine coupling."""

    def __init__(
        self,
        channels: int,
        hidden: int,
        additive: bool = False,
        generator: torch.Generator | None = None,
        scale_floor: float = 0.0,
    ) -> None:
        super().__init__()
        self.actnorm = ActNorm(channels)
        self.invconv = InvConv1x1(channels, generator=generator)
        self.coupling = AffineCoupling(channels, hidden, additive=additive, scale_floor=scale_floor)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        x, logdet_norm = self.actnorm(x)
        x, logdet_conv = self.invconv(x)
        x, logdet_coupling = self.coupling(x)
        return x, logdet_norm + logdet_conv + logdet_coupling

    def inverse(self, y: Tensor) -> Tensor:
        return self.actnorm.inverse(self.invconv.inverse(self.coupling.inverse(y)))

    def leaf_layers(self) -> Iterator[InvertibleModule]:
        yield self.actnorm
        yield self.invconv
        yield self.coupling
