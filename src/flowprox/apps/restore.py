"""Restoring a user's own images with a trained unrolled network (``flowprox restore``).

Each input image is the measurement ``y`` at its own resolution; the operator is the
checkpoint's task, optionally changed by the caller (another hole size, a mask image, another
blur). Three ways to run a network trained at ``R x R`` on an ``H x W`` image (``--mode``):

* ``native`` (the default): the whole image in one pass, padded (by reflection) to a multiple
  of ``2**levels`` (the flows' squeezes, the U-Net's poolings) and cropped back. The unrolled
  network starts from ``x_0 = g_0(0)``, the run's prior's mode computed for that size
  (:class:`InitialEstimates`). No seams, and a hole or a blur of any size sees all its context;
  memory grows with the image.
* ``tiles``: overlapping ``R x R`` tiles, each restored exactly as in training (same size, the
  stored ``x_0``), blended with a smooth window (:func:`tile_grid`): each tile gives the output
  around its centre and hands over to its neighbour with a raised-cosine ramp across the middle
  of their overlap. Memory is bounded by the tile size; a tile's operator is the image's
  operator cropped to it (masks exactly; a blur is applied per tile, approximately at its
  borders, which the window weights least).
* ``resize``: the image is resized (bicubic, antialiased) to ``R x R``, restored and resized
  back (the behaviour before the modes: detail finer than ``R x R`` is lost).

``--window``, ``--mask`` and ``--sigma-b`` are in the input's pixels in every mode (in
``resize`` mode they are rescaled to the model's grid with the image). Without them the
checkpoint's task is used in the pixels the network works in: the input's for ``native`` and
``tiles``, the model's for ``resize``. ``simulate=True`` treats the inputs as clean images:
they are degraded at their own size by the operator (and noise), restored, and the *written*
files are scored by PSNR against the original input.

Super-resolution takes the low-resolution image and writes one ``factor`` times larger (with
``simulate``, a clean image is shrunk first and restored at its own size); compressed sensing
and MRI measure no image a person holds, so they restore simulated measurements of clean
images only. All three run in ``native`` mode, where the whole operator is at hand.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from flowprox.apps.posterior import SamplerSettings, draw_samples
from flowprox.config import ProxKind, TaskConfig, UnrolledExperiment
from flowprox.evaluation.restored import restored_val_bits_per_dim
from flowprox.flows import Glow
from flowprox.metrics.typicality import TypicalRange, calibrate, image_bits_per_dim
from flowprox.models.prior import load_prior
from flowprox.optim.prox import FlowProx
from flowprox.optim.unrolled import UnrolledProximalGradient, prior_mode
from flowprox.physics.noise import measure_fixed
from flowprox.physics.operators import GaussianBlur, Identity, LinearOperator, Mask
from flowprox.physics.tasks import build_operator
from flowprox.utils.images import ImageFormat, read_image, write_image

MODES = ("native", "tiles", "resize")
DEFAULT_MODE = "native"
"""The whole image in one pass: no seams, all the context; ``tiles`` when memory is short."""


# ------------------------------------------------------------------------------ files


def load_image(
    path: str | Path, channels: int = 3, alpha: str = "white"
) -> tuple[Tensor, ImageFormat]:
    """An image file as a float tensor ``(channels, H, W)`` in [0, 1] and its file format.

    Grey files give ``channels`` equal channels; colour files for a grey model their mean.
    """
    pixels, image_format = read_image(path, alpha)
    x = torch.from_numpy(pixels).permute(2, 0, 1)
    return _with_channels(x, channels).contiguous(), image_format


def save_image(x: Tensor, path: str | Path, like: ImageFormat) -> Path:
    """Write ``(C, H, W)`` in [0, 1] as a PNG with ``like``'s channels and bit depth."""
    return write_image(x.detach().cpu().double().permute(1, 2, 0).numpy(), path, like)


def _with_channels(x: Tensor, channels: int) -> Tensor:
    if x.shape[0] == channels:
        return x
    if x.shape[0] == 1:
        return x.expand(channels, -1, -1)
    return x.mean(dim=0, keepdim=True).expand(channels, -1, -1)


def read_mask(path: str | Path) -> Tensor:
    """A mask image (white = observed, black = missing) at its own size, ``(1, H, W)`` of 0/1."""
    path = Path(path)
    try:
        pixels, _ = read_image(path, alpha="white")
    except (FileNotFoundError, ValueError) as error:
        raise ValueError(f"mask {path} could not be read ({error}); pass a PNG.") from error
    grey = pixels.mean(axis=-1)
    return torch.from_numpy((grey >= 0.5).astype(np.float32))[None]


def output_names(paths: Sequence[Path]) -> list[str]:
    """One distinct output name (without suffix) per input: the stem, then with the extension,
    then with as many parent folders as it takes (``a/face.png``, ``b/face.png``,
    ``a/face.jpg`` give ``a_face_png``, ``b_face_png``, ``face_jpg``). Names are compared
    ignoring case, for case-insensitive file systems.

    Raises:
        ValueError: if one file is given twice.
    """
    resolved: dict[Path, Path] = {}
    for path in paths:
        real = Path(path).resolve()
        if real in resolved:
            raise ValueError(
                f"{path} is given twice (also as {resolved[real]}); pass each image once."
            )
        resolved[real] = Path(path)
    reals = list(resolved)

    def name(real: Path, level: int) -> str:
        if level == 0:
            return real.stem
        folders = [part for part in real.parent.parts if part != real.anchor][::-1][: level - 1]
        extension = [real.suffix.lstrip(".")] if real.suffix else []
        return "_".join([*folders[::-1], real.stem, *extension])

    levels = [0] * len(reals)
    deepest = [len(real.parent.parts) + 1 for real in reals]
    while True:
        names = [name(real, level) for real, level in zip(reals, levels, strict=True)]
        groups: dict[str, list[int]] = {}
        for index, value in enumerate(names):
            groups.setdefault(value.casefold(), []).append(index)
        clashes = [group for group in groups.values() if len(group) > 1]
        movable = [i for group in clashes for i in group if levels[i] < deepest[i]]
        if not movable:
            break
        for index in movable:
            levels[index] += 1
    for group in clashes:  # only names that differ in case alone are left
        for number, index in enumerate(group[1:], start=2):
            names[index] = f"{names[index]}_{number}"
    return names


# ------------------------------------------------------------------------------ operators

#: tasks whose measurement is not an image of the restored image's grid
SUBSAMPLED_KINDS = ("super-resolution", "compressed-sensing", "mri")


def restore_task(
    config: UnrolledExperiment,
    window: int | None = None,
    sigma_b: float | None = None,
    noise: float | None = None,
) -> TaskConfig:
    """The checkpoint's task with the caller's changes."""
    task = config.task
    changes: dict[str, float | int | str] = {}
    if window is not None:
        changes.update(kind="inpaint", window=window)
    if sigma_b is not None:
        changes.update(kind="deblur", sigma_b=sigma_b)
    if noise is not None:
        changes["sigma_n"] = noise
    return dataclasses.replace(task, **changes)


def rescale_operator(
    op: LinearOperator, source: tuple[int, int], target: tuple[int, int]
) -> LinearOperator:
    """The operator ``op`` of ``source``-size images for ``target``-size ones: a mask resized
    (nearest), a blur's std scaled by the mean of the two axes' factors."""
    if isinstance(op, Identity) or tuple(source) == tuple(target):
        return op
    if isinstance(op, Mask):
        mask = F.interpolate(op.mask[None], size=tuple(target), mode="nearest-exact")[0]
        if not bool(mask.any()):
            raise ValueError(
                f"the mask leaves nothing observed at {target[1]}x{target[0]}; use a smaller hole."
            )
        return Mask(mask)
    if isinstance(op, GaussianBlur):
        scale = (target[0] / source[0] + target[1] / source[1]) / 2
        return GaussianBlur(op.sigma_b * scale, boundary=op.boundary)
    raise ValueError(f"cannot rescale a {type(op).__name__} operator; use --mode native or tiles.")


def _pad(x: Tensor, pads: tuple[int, int, int, int]) -> Tensor:
    """Pad ``(B, C, H, W)`` by ``(left, right, top, bottom)``: reflection, or replication when
    the image is too small to reflect."""
    if not any(pads):
        return x
    left, right, top, bottom = pads
    fits = max(left, right) < x.shape[-1] and max(top, bottom) < x.shape[-2]
    return F.pad(x, pads, mode="reflect" if fits else "replicate")


def _pad_operator(op: LinearOperator, pads: tuple[int, int, int, int]) -> LinearOperator:
    if isinstance(op, Mask) and any(pads):
        return Mask(_pad(op.mask[None], pads)[0])
    return op


class _TileMasks(LinearOperator):
    """Inpainting of a batch of tiles, each with its own crop of the image's mask."""

    def __init__(self, masks: Tensor) -> None:
        super().__init__()
        self.register_buffer("masks", masks)

    def _A(self, x: Tensor) -> Tensor:
        return self.masks.to(dtype=x.dtype, device=x.device) * x

    def _A_adjoint(self, y: Tensor) -> Tensor:
        return self._A(y)


def _tile_operator(
    op: LinearOperator, corners: Sequence[tuple[int, int]], tile: int
) -> LinearOperator:
    if isinstance(op, Mask):
        crops = [op.mask[:, top : top + tile, left : left + tile] for top, left in corners]
        return _TileMasks(torch.stack(crops))
    if isinstance(op, Identity | GaussianBlur):
        return op
    raise ValueError(f"cannot cut a {type(op).__name__} operator into tiles; use --mode native.")


# ------------------------------------------------------------------------------ the three modes


def size_multiple(config: UnrolledExperiment, network: UnrolledProximalGradient) -> int:
    """What image sides must be multiples of: ``2**levels`` of the flows (proxes or ``x_0``),
    ``2**depth`` of a U-Net, 1 for a ResNet."""
    multiple = 1
    if config.model.prox in ProxKind.flows() or network.initial_estimate == "prior_mode":
        multiple = math.lcm(multiple, 2**config.prior_model.levels)
    if config.model.prox == ProxKind.UNET:
        multiple = math.lcm(multiple, 2**config.model.unet_depth)
    return multiple


class InitialEstimates:
    """``x_0`` of the unrolled network for images of any size (``native`` mode).

    A network that starts from the prior's mode stores ``x_0 = g_0(0)`` at the model's size
    only. For another size it is recomputed from the run's prior: the first of the run's prior
    file (``config.prior``), ``prior_path`` and the network's own first flow whose mode at the
    model's size is the stored ``x_0`` (so a different prior is never used silently).
    """

    def __init__(
        self,
        network: UnrolledProximalGradient,
        config: UnrolledExperiment,
        prior_path: str | Path | None = None,
    ) -> None:
        self.network = network
        self.config = config
        self.prior_path = prior_path
        self._prior: Glow | None = None
        self._cache: dict[tuple[int, int], Tensor] = {}

    @property
    def needed(self) -> bool:
        return self.network.initial_estimate == "prior_mode"

    def __call__(self, size: tuple[int, int]) -> Tensor | None:
        """``x_0`` ``(1, C, H, W)`` for ``size = (H, W)``, or None when the network starts from
        ``A^T y`` or zeros."""
        if not self.needed:
            return None
        size = (int(size[0]), int(size[1]))
        stored = self.network.x0
        if size == tuple(stored.shape[-2:]):
            return stored
        if size not in self._cache:
            self._cache[size] = prior_mode(self.prior(), size).to(stored.dtype)
        return self._cache[size]

    def prior(self) -> Glow:
        """The run's prior, checked against the stored ``x_0``."""
        if self._prior is not None:
            return self._prior
        stored = self.network.x0
        reasons = []
        candidates: list[tuple[str, Glow | str | Path]] = []
        if self.config.prior:
            candidates.append((f"the run's prior {self.config.prior}", self.config.prior))
        else:
            reasons.append("the run names no prior")
        if self.prior_path:
            candidates.append((f"--prior {self.prior_path}", self.prior_path))
        first = self.network.proxes[0]
        if isinstance(first, FlowProx):
            candidates.append(("the network's first flow", first.flow))
        for label, candidate in candidates:
            if isinstance(candidate, Glow):
                flow = candidate
            elif not Path(candidate).is_file():
                reasons.append(f"{label} is not there")
                continue
            else:
                flow, _ = load_prior(candidate)
            flow = flow.to(device=stored.device)
            try:
                mode = prior_mode(flow, tuple(stored.shape[-2:])).to(stored.dtype)
            except ValueError:
                mode = None
            if mode is not None and torch.allclose(mode, stored, atol=1e-4, rtol=0):
                self._prior = flow
                return flow
            reasons.append(f"{label} has another mode than the checkpoint's x_0")
        raise ValueError(
            "--mode native starts from x_0, the mode of the run's prior at the image's size, "
            f"but {'; '.join(dict.fromkeys(reasons))}: pass --prior with the prior the network "
            "was trained from, or use --mode tiles (tiles of the model's size need no new x_0)."
        )


def native_padding(
    size: tuple[int, int], multiple: int, scale: int = 1
) -> tuple[tuple[int, int, int, int], tuple[int, int, int, int]]:
    """Padding ``(left, right, top, bottom)`` of a measurement of ``size`` and of its image,
    ``scale`` times larger (super-resolution), so that the image's sides become multiples of
    ``multiple``: the measurement is padded to multiples of ``multiple / gcd(multiple, scale)``
    and the image by ``scale`` times as much."""
    unit = multiple // math.gcd(multiple, scale)
    extra_h, extra_w = -size[0] % unit, -size[1] % unit
    pads = (extra_w // 2, extra_w - extra_w // 2, extra_h // 2, extra_h - extra_h // 2)
    return pads, tuple(scale * p for p in pads)  # type: ignore[return-value]


@torch.no_grad()
def restore_native(
    network: torch.nn.Module,
    y: Tensor,
    op: LinearOperator,
    multiple: int,
    initial: InitialEstimates | None = None,
    scale: int = 1,
) -> Tensor:
    """Restore ``y`` ``(1, C, H, W)`` whole: padded by reflection so that the image (``scale``
    times ``y``'s size: super-resolution) has sides that are multiples of ``multiple``, started
    from ``initial`` at the padded image's size, cropped back to ``scale * (H, W)``."""
    height, width = y.shape[-2:]
    pads, image_pads = native_padding((height, width), multiple, scale)
    padded = _pad(y, pads)
    grid = (scale * padded.shape[-2], scale * padded.shape[-1])
    x0 = initial(grid) if initial is not None else None
    device = _device(network)
    kwargs = {"x0": x0.to(device)} if x0 is not None else {}
    x = network(padded.to(device), _pad_operator(op, pads).to(device), **kwargs).cpu()
    top, left = image_pads[2], image_pads[0]
    return x[..., top : top + scale * height, left : left + scale * width]


def tile_grid(
    height: int, width: int, tile: int, overlap: int | None = None
) -> tuple[list[tuple[int, int]], Tensor]:
    """The tiles covering an ``height x width`` image, and their blending weights.

    Along each axis, ``n`` tiles of side ``tile`` are spread evenly from the first pixel to the
    last, ``n`` the fewest with neighbours overlapping by at least ``overlap`` pixels (default
    ``tile // 2``). Between two neighbours the output hands over from one to the other with a
    raised-cosine ramp (``sin^2``) centred in their overlap, half as wide as it, so the outer
    quarter of each overlap (where a tile's output lacks context) gets weight 0 and a tile's
    centre weight 1. A tile's 2-D weight is the product of its two axes' weights, normalised so
    that the weights sum to 1 at every pixel.

    Returns:
        ``(corners, weights)``: the ``(top, left)`` of each tile, and ``(n_tiles, tile, tile)``
        weights.
    """
    if height < tile or width < tile:
        raise ValueError(f"tiles of {tile}x{tile} need an image at least that large.")
    overlap = tile // 2 if overlap is None else overlap
    if not 0 <= overlap < tile:
        raise ValueError(f"the tiles' overlap must be in [0, {tile}), got {overlap}.")
    rows, row_weights = _axis_tiles(height, tile, overlap)
    cols, col_weights = _axis_tiles(width, tile, overlap)
    corners = [(top, left) for top in rows for left in cols]
    weights = (row_weights[:, None, :, None] * col_weights[None, :, None, :]).reshape(
        -1, tile, tile
    )
    total = torch.zeros(height, width, dtype=weights.dtype)
    for (top, left), weight in zip(corners, weights, strict=True):
        total[top : top + tile, left : left + tile] += weight
    for index, (top, left) in enumerate(corners):  # exact sums of 1 whatever the overlap
        weights[index] /= total[top : top + tile, left : left + tile]
    return corners, weights


def _axis_tiles(length: int, tile: int, overlap: int) -> tuple[list[int], Tensor]:
    if length == tile:
        return [0], torch.ones(1, tile, dtype=torch.float64)
    count = max(2, math.ceil((length - overlap) / (tile - overlap)))
    starts = [round(i * (length - tile) / (count - 1)) for i in range(count)]
    centres = torch.arange(tile, dtype=torch.float64) + 0.5
    weights = torch.ones(count, tile, dtype=torch.float64)
    for i in range(1, count):  # the hand-over from tile i - 1 to tile i
        shared = starts[i - 1] + tile - starts[i]
        middle, half = starts[i] + shared / 2, max(shared / 4, 0.5)
        for j, sign in ((i, 1.0), (i - 1, -1.0)):
            position = centres + starts[j]
            ramp = ((position - (middle - half)) / (2 * half)).clamp(0, 1)
            rising = torch.sin(0.5 * math.pi * ramp) ** 2
            weights[j] *= rising if sign > 0 else 1 - rising
    return starts, weights


@torch.no_grad()
def restore_tiles(
    network: torch.nn.Module,
    y: Tensor,
    op: LinearOperator,
    tile: int,
    overlap: int | None = None,
    batch_size: int = 64,
) -> Tensor:
    """Restore ``y`` ``(1, C, H, W)`` in overlapping ``tile x tile`` tiles blended by
    :func:`tile_grid`'s weights (an image smaller than a tile is padded to one first)."""
    height, width = y.shape[-2:]
    extra_h, extra_w = max(0, tile - height), max(0, tile - width)
    pads = (extra_w // 2, extra_w - extra_w // 2, extra_h // 2, extra_h - extra_h // 2)
    padded, op = _pad(y, pads), _pad_operator(op, pads)
    corners, weights = tile_grid(padded.shape[-2], padded.shape[-1], tile, overlap)
    out = torch.zeros(padded.shape, dtype=torch.float64)
    device = _device(network)
    for start in range(0, len(corners), batch_size):
        chunk = corners[start : start + batch_size]
        tiles = torch.cat([padded[..., t : t + tile, s : s + tile] for t, s in chunk])
        restored = network(tiles.to(device), _tile_operator(op, chunk, tile).to(device)).cpu()
        for (top, left), x, weight in zip(chunk, restored, weights[start:], strict=False):
            out[0, :, top : top + tile, left : left + tile] += weight * x.double()
    out = out.to(y.dtype)
    return out[..., pads[2] : pads[2] + height, pads[0] : pads[0] + width]


def resize(x: Tensor, size: tuple[int, int]) -> Tensor:
    """Bicubic, antialiased resize of ``(B, C, H, W)`` images to ``size``, clamped to [0, 1]."""
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    return F.interpolate(x, size=size, mode="bicubic", antialias=True, align_corners=False).clamp(
        0, 1
    )


def _device(network: torch.nn.Module) -> torch.device:
    return next(network.parameters()).device


# ------------------------------------------------------------------------------ one image


@dataclass
class Restored:
    """One restored image, what was measured, and the network's output at the model's scale."""

    source: Path
    restored: Tensor
    measurement: Tensor | None
    scored: Tensor
    y: Tensor  # the measurement restored, (1, C, H, W) on the input's grid


@dataclass(frozen=True)
class PosteriorSummary:
    """Posterior mean and per-pixel standard deviation ``(C, H, W)`` of one restoration, on the
    input's grid, with the sampler's diagnostics."""

    mean: Tensor
    std: Tensor
    samples: int
    step_size: float
    acceptance: float  # MALA's acceptance rate; 1 for unadjusted Langevin
    ess_median: float


class Restorer:
    """Restores images of any size with a trained unrolled network in one of :data:`MODES`.

    Args:
        network, config: the trained network and its experiment (``load_unrolled``).
        mode: ``native``, ``tiles`` or ``resize`` (module docstring).
        task: the task with the caller's changes (:func:`restore_task`).
        in_input_pixels: the task's geometry was given by the caller (``--window``,
            ``--sigma-b``), so it is in the input's pixels in ``resize`` mode too.
        mask: a mask image ``(1, H, W)`` in the input's pixels, replacing the task's operator.
        initial: ``x_0`` at other sizes (``native`` mode).
    """

    def __init__(
        self,
        network: UnrolledProximalGradient,
        config: UnrolledExperiment,
        mode: str,
        task: TaskConfig,
        in_input_pixels: bool = False,
        mask: Tensor | None = None,
        initial: InitialEstimates | None = None,
    ) -> None:
        if mode not in MODES:
            raise ValueError(f"unknown mode {mode!r}; choose one of {', '.join(MODES)}.")
        self.network, self.config, self.mode, self.task = network, config, mode, task
        self.in_input_pixels = in_input_pixels or mask is not None
        self.mask = mask
        self.resolution = config.data.resolution
        self.channels = config.prior_model.in_channels
        self.multiple = size_multiple(config, network)
        self.initial = initial

    def operators(self, size: tuple[int, int]) -> tuple[LinearOperator, LinearOperator]:
        """The operator on the input's grid and on the grid the network works on."""
        model = (self.resolution, self.resolution)
        if self.mask is not None:
            if tuple(self.mask.shape[-2:]) != tuple(size):
                height, width = self.mask.shape[-2:]
                raise ValueError(
                    f"the mask is {width}x{height} but the image is {size[1]}x{size[0]}; pass a "
                    "mask of the image's size (masks are in the input's pixels, white = observed)."
                )
            op: LinearOperator = Mask(self.mask)
        elif self.mode != "resize" or self.in_input_pixels:
            op = build_operator(self.task, size, self.channels)
        else:  # the checkpoint's own task, on the model's grid
            on_model = build_operator(self.task, self.resolution, self.channels)
            return rescale_operator(on_model, model, size), on_model
        if self.mode == "resize":
            return op, rescale_operator(op, size, model)
        return op, op

    @property
    def scale(self) -> int:
        """How many times larger than the measurement the image is (super-resolution's
        factor; 1 otherwise)."""
        return self.task.factor if self.task.kind == "super-resolution" else 1

    def image_size(self, size: tuple[int, int], simulate: bool = False) -> tuple[int, int]:
        """The restored image's size for an input of ``size``: the input's own, or ``factor``
        times it for a low-resolution measurement (super-resolution without ``simulate``)."""
        if self.task.kind in SUBSAMPLED_KINDS and self.mode != "native":
            raise ValueError(
                f"a {self.task.kind} network restores whole images: use --mode native (tiles and "
                "resize would cut or rescale its operator)."
            )
        if self.task.kind in ("compressed-sensing", "mri") and not simulate:
            raise ValueError(
                f"a {self.task.kind} measurement is not an image file: restore clean images with "
                "--simulate (they are measured, then reconstructed), or reconstruct your own "
                "measurements from Python (flowprox.physics.subsampling)."
            )
        if self.task.kind == "super-resolution" and simulate:
            if size[0] % self.scale or size[1] % self.scale:
                raise ValueError(
                    f"--simulate shrinks the image by {self.scale}, but {size[1]}x{size[0]} is "
                    f"not a multiple of {self.scale}; crop it to one."
                )
            return size
        if self.task.kind in ("compressed-sensing", "mri") and (
            size[0] % self.multiple or size[1] % self.multiple
        ):
            raise ValueError(
                f"a {self.task.kind} image cannot be padded after it is measured, so its sides "
                f"must be multiples of {self.multiple}; {size[1]}x{size[0]} is not: crop it."
            )
        return (self.scale * size[0], self.scale * size[1])

    def check(self, size: tuple[int, int], simulate: bool = False) -> None:
        """Raise now (before anything is written) what restoring a ``size`` input would."""
        image_size = self.image_size(size, simulate)
        self.operators(image_size)
        if self.mode == "native" and self.initial is not None:
            measured = (image_size[0] // self.scale, image_size[1] // self.scale)
            _, pads = native_padding(measured, self.multiple, self.scale)
            self.initial((image_size[0] + pads[2] + pads[3], image_size[1] + pads[0] + pads[1]))

    def restore(
        self, image: Tensor, source: Path, simulate: bool = False, seed: int = 0, index: int = 0
    ) -> Restored:
        """Restore ``image`` ``(C, H, W)`` (a measurement, or a clean image when ``simulate``)."""
        size = self.image_size((image.shape[-2], image.shape[-1]), simulate)
        op_input, op_network = self.operators(size)
        y = image[None]
        if simulate:
            y = measure_fixed(op_input, y, self.task.sigma_n, seed, first_index=index)
        if self.mode == "native":
            x = restore_native(self.network, y, op_network, self.multiple, self.initial, self.scale)
            scored = x
        elif self.mode == "tiles":
            x = restore_tiles(self.network, y, op_network, self.resolution)
            scored = x
        else:
            model = (self.resolution, self.resolution)
            small = resize(y, model) if tuple(size) != model else y
            with torch.no_grad():
                device = _device(self.network)
                scored = self.network(small.to(device), op_network.to(device)).cpu()
            x = resize(scored, size)
        shown = y  # what a person sees of the measurement: A^+ y where y is not an image
        pseudo_inverse = getattr(op_input, "pseudo_inverse", None)
        if y.shape != x.shape and callable(pseudo_inverse):
            shown = pseudo_inverse(y)
        return Restored(source, x[0], shown[0] if simulate else None, scored, y)

    def sample_posterior(
        self, prior: Glow, restored: Restored, settings: SamplerSettings, index: int = 0
    ) -> PosteriorSummary:
        """Langevin samples of ``p(x | y)`` under ``prior`` (``optim.posterior``), started at
        ``z_0 = f(x^)`` of the restoration, on the grid the network worked on: the padded
        image (``native``) or the model's size (``resize``, then resized back). ``sigma_n`` is
        the task's, at least ``settings.sigma_floor``."""
        if self.mode == "tiles":
            raise ValueError(
                "--samples draws one chain over the whole image, which --mode tiles never sees "
                "at once; use --mode native (or resize)."
            )
        size = (restored.restored.shape[-2], restored.restored.shape[-1])
        op_input, op_network = self.operators(size)
        if self.mode == "native":
            measured = (restored.y.shape[-2], restored.y.shape[-1])
            pads, image_pads = native_padding(measured, self.multiple, self.scale)
            y, op = _pad(restored.y, pads), _pad_operator(op_input, pads)
            start = _pad(restored.restored[None], image_pads)
        else:
            model = (self.resolution, self.resolution)
            y = resize(restored.y, model) if tuple(size) != model else restored.y
            op, start = op_network, restored.scored
        device = next(prior.parameters()).device
        grid = (start.shape[-2], start.shape[-1])
        with torch.no_grad():
            z0, _ = prior(start.clamp(0, 1).to(device))
        result = draw_samples(
            lambda z: prior.inverse(z, image_size=grid), y.to(device), op.to(device),
            max(self.task.sigma_n, settings.sigma_floor), z0, settings, settings.seed + index,
        )  # fmt: skip
        samples = result.samples.clamp(0, 1).cpu()
        mean, std = samples.mean(0), samples.std(0)
        if self.mode == "native":
            top, left = image_pads[2], image_pads[0]
            crop = (..., slice(top, top + size[0]), slice(left, left + size[1]))
            mean, std = mean[crop], std[crop]
        else:
            mean, std = resize(mean, size), resize(std, size).clamp_min(0)
        return PosteriorSummary(
            mean[0], std[0], len(samples), result.step_size, result.acceptance,
            float(result.ess.median()),
        )  # fmt: skip

    def score(self, prior: Glow, restored: Restored, n_bits: int) -> float:
        """Bits/dim under ``prior`` of the restoration at the model's scale: the highest of its
        ``R x R`` patches (the threshold is calibrated on ``R x R`` restorations)."""
        x = restored.scored
        tile = self.resolution
        height, width = x.shape[-2:]
        extra_h, extra_w = max(0, tile - height), max(0, tile - width)
        x = _pad(x.clamp(0, 1), (extra_w // 2, extra_w - extra_w // 2, extra_h // 2,
                                 extra_h - extra_h // 2))  # fmt: skip
        corners, _ = tile_grid(x.shape[-2], x.shape[-1], tile, overlap=0)
        patches = torch.cat([x[..., t : t + tile, s : s + tile] for t, s in corners])
        device = next(prior.parameters()).device
        return float(image_bits_per_dim(prior, patches.to(device), n_bits).max())


def calibrate_restorer(
    network: torch.nn.Module,
    config: UnrolledExperiment,
    prior: torch.nn.Module,
    data: str | Path,
    n_bits: int,
    false_alarm: float = 0.05,
    images: int = 512,
    strict: bool = False,
) -> TypicalRange:
    """The bits/dim threshold of this restorer's outputs on validation measurements, at the
    prior's ``n_bits`` (``strict``: an unreadable image in ``data`` is an error)."""
    bpd = restored_val_bits_per_dim(network, config, prior, data, n_bits, images, strict=strict)
    return calibrate(bpd, false_alarm, source=f"{len(bpd)} restored val images of {data}")
