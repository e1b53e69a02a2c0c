"""CNN proximal networks of the baselines: a ResNet (neural proximal gradient descent) and a U-Net.

Both map a gradient-step output ``v`` of shape ``(B, C, H, W)`` to the next estimate; the
unrolled network wraps them with :class:`flowprox.optim.prox.NetworkProx`. With ``residual=True``
(the default) they output ``v + net(v)`` and their last layer is zero-initialised, so that an
untrained network is the identity map and training learns a correction.

* :class:`ResNetProxNet` after Mardani et al., "Neural proximal gradient descent for compressive
  imaging" (NeurIPS 2018): 3x3 input conv, residual blocks of two 3x3 convs, 1x1 conv head.
* :class:`UNet`: the U-Net of Ronneberger et al. (2015) exactly as in milesial/Pytorch-UNet with
  ``bilinear=False`` (transposed-conv upsampling); 31.04 M parameters at ``base=64``,
  ``depth=4`` with 3 input and output channels.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from flowprox.utils.validation import check_image_batch

__all__ = ["ResNetProxNet", "UNet", "count_parameters"]


def count_parameters(module: nn.Module, trainable_only: bool = True) -> int:
    """Number of scalar parameters of ``module`` (only those with ``requires_grad`` by default).

    Args:
        module: Any module.
        trainable_only: Count only parameters with ``requires_grad=True``.

    Returns:
        The total number of elements of the (shared parameters counted once) parameters.
    """
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only)


def _positive_int(value: object, name: str, example: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(
            f"{name} must be a positive int, got {value!r}; pass e.g. {name}={example}."
        )
    return value


def _check_input(v: Tensor, channels: int, model: str) -> None:
    check_image_batch(v, "v")
    if v.shape[1] != channels:
        raise ValueError(
            f"v has {v.shape[1]} channels but the {model} was built for {channels}; convert "
            f"the images or build it with channels={v.shape[1]}."
        )


class _ResidualBlock(nn.Module):
    """``relu(x + BN(conv(relu(BN(conv(x))))))`` with 3x3 convs (ResNet basic block)."""

    def __init__(self, features: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(features, features, 3, padding=1, bias=False),
            nn.BatchNorm2d(features),
            nn.ReLU(inplace=True),
            nn.Conv2d(features, features, 3, padding=1, bias=False),
            nn.BatchNorm2d(features),
        )
        self.activation = nn.ReLU(inplace=True)

    def forward(self, x: Tensor) -> Tensor:
        return self.activation(x + self.body(x))


class ResNetProxNet(nn.Module):
    """ResNet proximal network of neural proximal gradient descent (Mardani et al. 2018).

    ``net = head o blocks o relu o conv3x3``: a 3x3 conv ``channels -> features`` and ReLU,
    ``blocks`` residual blocks ``h <- relu(h + BN(conv(relu(BN(conv(h))))))`` (3x3 convs, no
    bias since BatchNorm follows), then three 1x1 convs ``features -> head -> head -> channels``
    with ReLU between them. The output is ``v + net(v)`` when ``residual`` and ``net(v)``
    otherwise; with ``residual`` the last 1x1 conv is zero-initialised (identity at init).

    Args:
        channels: Image channels ``C`` (input and output).
        features: Feature maps of the 3x3 convs.
        blocks: Number of residual blocks (0 allowed).
        head_features: Width of the 1x1 head; ``features`` when None.
        residual: Learn a correction ``v + net(v)``.

    Shapes:
        v: ``(B, C, H, W)`` -> ``(B, C, H, W)``, any ``H`` and ``W``.
    """

    def __init__(
        self,
        channels: int = 3,
        features: int = 128,
        blocks: int = 2,
        head_features: int | None = None,
        residual: bool = True,
    ) -> None:
        super().__init__()
        self.channels = _positive_int(channels, "channels", 3)
        _positive_int(features, "features", 128)
        if isinstance(blocks, bool) or not isinstance(blocks, int) or blocks < 0:
            raise ValueError(f"blocks must be a non-negative int, got {blocks!r}; pass e.g. 2.")
        head = features if head_features is None else head_features
        _positive_int(head, "head_features", 128)
        self.residual = bool(residual)
        self.input = nn.Sequential(
            nn.Conv2d(channels, features, 3, padding=1), nn.ReLU(inplace=True)
        )
        self.blocks = nn.Sequential(*(_ResidualBlock(features) for _ in range(blocks)))
        self.head = nn.Sequential(
            nn.Conv2d(features, head, 1),
            nn.ReLU(inplace=True),
            nn.Conv2d(head, head, 1),
            nn.ReLU(inplace=True),
            nn.Conv2d(head, channels, 1),
        )
        if self.residual:
            nn.init.zeros_(self.head[-1].weight)
            nn.init.zeros_(self.head[-1].bias)

    def forward(self, v: Tensor) -> Tensor:
        _check_input(v, self.channels, "ResNetProxNet")
        out = self.head(self.blocks(self.input(v)))
        return v + out if self.residual else out


class _DoubleConv(nn.Module):
    """``(3x3 conv without bias, BatchNorm, ReLU) x 2`` (milesial/Pytorch-UNet ``DoubleConv``)."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.double_conv = nn.Sequential(
            nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
            nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.double_conv(x)


class _Down(nn.Module):
    """``MaxPool2d(2)`` then :class:`_DoubleConv` (halves ``H`` and ``W``)."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.maxpool_conv = nn.Sequential(nn.MaxPool2d(2), _DoubleConv(in_channels, out_channels))

    def forward(self, x: Tensor) -> Tensor:
        return self.maxpool_conv(x)


class _Up(nn.Module):
    """``ConvTranspose2d(in, in // 2, 2, stride 2)``, concatenation with the skip, DoubleConv."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.up = nn.ConvTranspose2d(in_channels, in_channels // 2, kernel_size=2, stride=2)
        self.conv = _DoubleConv(in_channels, out_channels)

    def forward(self, x: Tensor, skip: Tensor) -> Tensor:
        return self.conv(torch.cat([skip, self.up(x)], dim=1))


class UNet(nn.Module):
    """U-Net (Ronneberger et al. 2015) as in milesial/Pytorch-UNet with ``bilinear=False``.

    Encoder: DoubleConv ``channels -> base``, then ``depth`` Down stages doubling the width
    (``base, 2 base, ..., base 2^depth``: 64-128-256-512-1024 at the defaults). Decoder:
    ``depth`` Up stages (transposed conv halving the width, concatenation with the encoder
    feature of the same size, DoubleConv), then a 1x1 conv with bias to ``channels``. The output
    is ``v + unet(v)`` when ``residual`` (1x1 conv zero-initialised: identity at init) and
    ``unet(v)`` otherwise.

    Args:
        channels: Image channels ``C`` (input and output).
        base: Width of the first DoubleConv.
        depth: Number of down/up-sampling stages; ``H`` and ``W`` must be multiples of
            ``2**depth``.
        residual: Learn a correction ``v + unet(v)``.

    Shapes:
        v: ``(B, C, H, W)`` -> ``(B, C, H, W)``.
    """

    def __init__(
        self, channels: int = 3, base: int = 64, depth: int = 4, residual: bool = True
    ) -> None:
        super().__init__()
        self.channels = _positive_int(channels, "channels", 3)
        _positive_int(base, "base", 64)
        self.depth = _positive_int(depth, "depth", 4)
        self.residual = bool(residual)
        widths = [base * 2**i for i in range(depth + 1)]
        self.inc = _DoubleConv(channels, base)
        self.downs = nn.ModuleList(_Down(widths[i], widths[i + 1]) for i in range(depth))
        self.ups = nn.ModuleList(_Up(widths[i + 1], widths[i]) for i in reversed(range(depth)))
        self.outc = nn.Conv2d(base, channels, kernel_size=1)
        if self.residual:
            nn.init.zeros_(self.outc.weight)
            nn.init.zeros_(self.outc.bias)

    def forward(self, v: Tensor) -> Tensor:
        _check_input(v, self.channels, "UNet")
        multiple = 2**self.depth
        height, width = v.shape[-2:]
        if height % multiple or width % multiple:
            raise ValueError(
                f"UNet(depth={self.depth}) needs H and W divisible by 2**depth = {multiple}, got "
                f"{height}x{width}; crop or pad the images to a multiple of {multiple} (e.g. "
                f"{height - height % multiple or multiple}x{width - width % multiple or multiple})"
                " or use a smaller depth."
            )
        h = self.inc(v)
        skips = [h]
        for down in self.downs:
            h = down(h)
            skips.append(h)
        skips.pop()  # the bottleneck is not a skip connection
        for up in self.ups:
            h = up(h, skips.pop())
        out = self.outc(h)
        return v + out if self.residual else out
