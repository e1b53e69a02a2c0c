"""Multi-scale Glow (Kingma and Dhariwal, 2018) whose every latent dimension is standard normal.

Level ``l = 1..L``: squeeze, ``K`` flow steps (ActNorm, 1x1 conv, affine coupling), then a split
standardisation that turns half the channels into standard-normal latents using Glow's learned
conditional prior (DESIGN.md section 1); the last level standardises all its channels with a
learned per-channel prior. The flow sees ``x - 0.5`` for images ``x`` in [0, 1].

``forward(x) -> (z, logdet)`` returns every level's latent concatenated into one flat ``(B, D)``
tensor (``D = C H W``), so ``z ~ N(0, I)`` under the model and ``z = 0`` is the mode at every
level; ``split_latent`` gives the per-level tensors. ``inverse(z)`` uses all of them, so
``inverse(forward(x)) = x`` exactly.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from flowprox.flows.base import InvertibleModule, InvertibleSequential
from flowprox.flows.dequantization import bits_per_dim, dequantize
from flowprox.flows.layers import FlowStep, SplitStandardize, Squeeze, TopStandardize
from flowprox.flows.memory import invertible_chain
from flowprox.utils.validation import check_finite, check_image_batch

LOG_2PI = math.log(2.0 * math.pi)


class Glow(InvertibleModule):
    """Multi-scale Glow on images in [0, 1].

    Args:
        in_channels: image channels ``C``.
        levels: number of scales ``L``; ``H`` and ``W`` must be divisible by ``2**L``.
        steps_per_level: flow steps ``K`` per scale.
        hidden: width of the coupling networks.
        image_size: ``(H, W)`` (or an int for square images) used by ``sample`` and by
            ``inverse`` when no size is given.
        additive: additive instead of affine couplings.
        scale_floor: lower bound of the affine couplings' scales (``AffineCoupling``); it
            bounds the inverse's amplification, keeping it finite on noisy images.
        log_sd_bound: bound ``b`` of the split and top priors' log standard deviations
            (``b tanh(. / b)``; 0: none), so that their inverses scale by at most ``exp(b)``.
        seed: seed of the random initialisation (1x1 convolutions and coupling networks).
    """

    def __init__(
        self,
        in_channels: int = 3,
        levels: int = 3,
        steps_per_level: int = 8,
        hidden: int = 128,
        image_size: int | tuple[int, int] = 32,
        additive: bool = False,
        seed: int = 0,
        scale_floor: float = 0.0,
        log_sd_bound: float = 0.0,
    ) -> None:
        super().__init__()
        for name, value in (
            ("in_channels", in_channels),
            ("levels", levels),
            ("steps_per_level", steps_per_level),
            ("hidden", hidden),
        ):
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"Glow {name} must be a positive integer, got {value!r}.")
        size = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
        if len(size) != 2 or any(s % 2**levels for s in size) or min(size) < 2**levels:
            raise ValueError(
                f"image_size {size} must be a pair of positive multiples of 2**levels = "
                f"{2**levels}; resize the images or use fewer levels."
            )
        self.in_channels = in_channels
        self.num_levels = levels
        self.steps_per_level = steps_per_level
        self.hidden = hidden
        self.image_size = size
        self.additive = additive
        self.scale_floor = scale_floor
        self.log_sd_bound = log_sd_bound
        # the whole initialisation depends on ``seed`` only, not on the global RNG state
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.levels = torch.nn.ModuleList(self._build_levels())

    def _build_levels(self) -> list[InvertibleSequential]:
        blocks = []
        channels = self.in_channels
        for level in range(self.num_levels):
            channels *= 4
            layers: list[InvertibleModule] = [Squeeze()]
            layers += [
                FlowStep(
                    channels, self.hidden, additive=self.additive, scale_floor=self.scale_floor
                )
                for _ in range(self.steps_per_level)
            ]
            last = level == self.num_levels - 1
            standardize = TopStandardize if last else SplitStandardize
            layers.append(standardize(channels, log_sd_bound=self.log_sd_bound))
            blocks.append(InvertibleSequential(layers))
            if not last:
                channels //= 2
        return blocks

    # ----------------------------------------------------------------- latent layout
    def latent_shapes(self, image_size: tuple[int, int] | None = None) -> list[tuple[int, ...]]:
        """Per-level latent shapes ``(C_l, H_l, W_l)`` for images of ``image_size``."""
        height, width = image_size or self.image_size
        shapes = []
        channels = self.in_channels
        for level in range(self.num_levels):
            channels, height, width = channels * 4, height // 2, width // 2
            if level == self.num_levels - 1:
                shapes.append((channels, height, width))
            else:
                shapes.append((channels - channels // 2, height, width))
                channels //= 2
        return shapes

    def latent_dim(self, image_size: tuple[int, int] | None = None) -> int:
        """``D = C H W``, the length of the flat latent."""
        return sum(math.prod(s) for s in self.latent_shapes(image_size))

    def split_latent(self, z: Tensor, image_size: tuple[int, int] | None = None) -> list[Tensor]:
        """Cut a flat latent ``(B, D)`` into the per-level tensors ``(B, C_l, H_l, W_l)``."""
        shapes = self.latent_shapes(image_size)
        sizes = [math.prod(s) for s in shapes]
        if z.dim() != 2 or z.shape[1] != sum(sizes):
            raise ValueError(
                f"latent z must have shape (B, {sum(sizes)}) for images of size "
                f"{image_size or self.image_size}, got {tuple(z.shape)}; pass the z that "
                "forward() returned, or the right image_size."
            )
        parts = torch.split(z, sizes, dim=1)
        return [part.reshape(z.shape[0], *shape) for part, shape in zip(parts, shapes, strict=True)]

    # ----------------------------------------------------------------- the bijection
    def forward(self, x: Tensor, memory_saving: bool = False) -> tuple[Tensor, Tensor]:
        """Data to latent.

        Args:
            x: images in [0, 1], ``(B, C, H, W)`` with ``H, W`` divisible by ``2**levels``.
            memory_saving: recompute activations by inversion in backward (``flows.memory``).

        Returns:
            ``z`` of shape ``(B, D)`` (all levels, standard normal under the model) and
            ``logdet`` of shape ``(B,)``.
        """
        check_image_batch(x, "x", channels=self.in_channels, divisible_by=2**self.num_levels)
        h = x - 0.5
        logdet = x.new_zeros(x.shape[0])
        latents = []
        for index, block in enumerate(self.levels):
            if memory_saving:
                h, block_logdet = invertible_chain(list(block.leaf_layers()), h)
            else:
                h, block_logdet = block(h)
            logdet = logdet + block_logdet
            if index < self.num_levels - 1:
                keep = h.shape[1] // 2
                latents.append(h[:, keep:])
                h = h[:, :keep]
        latents.append(h)
        return torch.cat([part.flatten(1) for part in latents], dim=1), logdet

    def inverse(
        self,
        z: Tensor,
        image_size: tuple[int, int] | None = None,
        memory_saving: bool = False,
    ) -> Tensor:
        """Latent to data: the exact inverse of ``forward``.

        Args:
            z: flat latent ``(B, D)`` holding every level.
            image_size: ``(H, W)`` of the output; defaults to ``self.image_size``.
            memory_saving: recompute activations by inversion in backward.

        Returns:
            images ``(B, C, H, W)`` (not clamped).
        """
        check_finite(z, "z")
        parts = self.split_latent(z, image_size)
        h = parts[-1]
        for index in reversed(range(self.num_levels)):
            if index < self.num_levels - 1:
                h = torch.cat([h, parts[index]], dim=1)
            block = self.levels[index]
            if memory_saving:
                h, _ = invertible_chain(list(block.leaf_layers()), h, reverse=True)
            else:
                h = block.inverse(h)
        return h + 0.5

    # ----------------------------------------------------------------- densities
    def log_prob(self, x: Tensor) -> Tensor:
        """``log p(x) = log N(f(x); 0, I) + log|det J_f(x)|`` per image, ``(B,)``, in nats."""
        z, logdet = self(x)
        return -0.5 * (z.pow(2) + LOG_2PI).sum(dim=1) + logdet

    def bits_per_dim(
        self,
        x: Tensor,
        n_bits: int = 8,
        dequantize_noise: bool | Tensor = True,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        """Bits per dimension of images ``x`` in [0, 1] (``uint8 / 255``), per image ``(B,)``.

        The images are reduced to ``n_bits`` and dequantised once (uniform noise, or the bin
        midpoint when ``dequantize_noise`` is False, for deterministic evaluation; a tensor is the
        dequantisation noise ``u`` itself).
        """
        check_image_batch(x, "x", channels=self.in_channels, divisible_by=2**self.num_levels)
        x_continuous = dequantize(x, n_bits, noise=dequantize_noise, generator=generator)
        return bits_per_dim(self.log_prob(x_continuous), x[0].numel(), n_bits)

    @torch.no_grad()
    def sample(
        self,
        n: int,
        temperature: float = 1.0,
        generator: torch.Generator | None = None,
        image_size: tuple[int, int] | None = None,
    ) -> Tensor:
        """Draw ``n`` images ``g(T * e)``, ``e ~ N(0, I)``; ``temperature = 0`` gives ``g(0)``."""
        if n < 1 or temperature < 0:
            raise ValueError(
                f"sample needs n >= 1 and temperature >= 0, got n={n}, temperature={temperature}."
            )
        reference = next(self.parameters())
        z = torch.randn(
            n,
            self.latent_dim(image_size),
            generator=generator,
            dtype=reference.dtype,
            device=reference.device,
        )
        return self.inverse(temperature * z, image_size)

    def config(self) -> dict[str, object]:
        """The constructor arguments, for self-describing checkpoints."""
        return {
            "in_channels": self.in_channels,
            "levels": self.num_levels,
            "steps_per_level": self.steps_per_level,
            "hidden": self.hidden,
            "image_size": list(self.image_size),
            "additive": self.additive,
            "scale_floor": self.scale_floor,
            "log_sd_bound": self.log_sd_bound,
        }
