"""Image data: ``.npz`` arrays or folders of images, split, downsampled and wrapped as datasets.

Images travel as uint8 numpy arrays of shape ``(N, H, W, 3)`` (RGB, values 0..255) until they
are wrapped in an :class:`ImageDataset`, which hands out float32 tensors ``(3, H, W)`` in
``[0, 1]``. The entry point for experiments is :func:`load_splits`, driven by a
:class:`~flowprox.config.DataConfig`:

* one ``.npz`` file, or several separated by commas, holding uint8 ``(N, H, W, 3)`` arrays
  ``train``/``val``/``test`` (see :func:`load_npz_arrays`);
* a directory holding ``celeba64.npz`` (the CelebA layout of ``shared/data``): that file plus
  ``celeba64_train_extra.npz`` if present, whose ``train`` arrays are concatenated;
* a folder of images (any directory without ``.npz`` files), centre-cropped, resized and split
  with ``split_sizes``/``split_seed`` (see :func:`load_image_folder`, :func:`split_indices`).

All resampling uses Pillow's antialiased LANCZOS filter (the filter the shared CelebA arrays
were made with), except that an exact integer-factor reduction (e.g. 64 -> 32) is an exact
block average (see :func:`downsample`).
"""

from __future__ import annotations

import math
import os
import pickle
import warnings
import zipfile
import zlib
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from flowprox.config import DataConfig
from flowprox.utils.images import read_image

__all__ = [
    "CELEBA_HQ_SPLIT",
    "IMAGE_EXTENSIONS",
    "SPLITS",
    "ImageDataset",
    "describe",
    "downsample",
    "load_image_folder",
    "load_npz_arrays",
    "load_splits",
    "split_indices",
]

SPLITS: tuple[str, str, str] = ("train", "val", "test")
"""The split names, in the order used everywhere (sizes, ``describe``)."""

CELEBA_HQ_SPLIT: tuple[int, int, int] = (23000, 1500, 1500)
"""The paper's CelebA-HQ split (train, val, test) of the 26,000 images, as absolute counts."""

IMAGE_EXTENSIONS: tuple[str, ...] = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff")
"""File suffixes (matched case-insensitively) that :func:`load_image_folder` reads."""

CELEBA_MAIN_FILE = "celeba64.npz"
CELEBA_EXTRA_FILE = "celeba64_train_extra.npz"

_RESAMPLE = Image.Resampling.LANCZOS
_MAX_LISTED_BAD_FILES = 5
_CHUNK = 128  # images per block-averaging step in downsample


# --------------------------------------------------------------------------------------------
# .npz files
# --------------------------------------------------------------------------------------------


def _check_image_array(array: np.ndarray, name: str, path: Path) -> None:
    """Raise a ValueError unless ``array`` is uint8 ``(N, H, W, 3)``."""
    if array.dtype != np.uint8 or array.ndim != 4 or array.shape[-1] != 3:
        raise ValueError(
            f"array {name!r} in {path} has dtype {array.dtype} and shape {array.shape}, but "
            "(N, H, W, 3) uint8 RGB images were expected; re-save it with "
            "images.astype(np.uint8) in channels-last RGB layout (values 0..255)."
        )


def load_npz_arrays(paths: Sequence[str | Path]) -> dict[str, np.ndarray]:
    """Read the ``train``/``val``/``test`` image arrays of one or more ``.npz`` files.

    Other arrays in the files (e.g. ``train_identity``) are ignored. Each split that occurs in
    several files is concatenated in the order of ``paths`` (this is how the CelebA training set
    is assembled from ``celeba64.npz`` and ``celeba64_train_extra.npz``).

    Args:
        paths: the ``.npz`` files, in order.

    Returns:
        A dict from split name to a uint8 array ``(N, H, W, 3)`` with values 0..255; a split that
        no file holds is absent.

    Raises:
        FileNotFoundError: if a file does not exist.
        ValueError: if no paths are given, a file cannot be read as ``.npz``, a file holds none
            of ``train``/``val``/``test``, an array is not uint8 ``(N, H, W, 3)``, or the image
            sizes differ between arrays or files.
    """
    if len(paths) == 0:
        raise ValueError("load_npz_arrays needs at least one .npz path; none were given.")
    parts: dict[str, list[np.ndarray]] = {split: [] for split in SPLITS}
    size: tuple[int, int] | None = None
    size_source = ""
    for raw_path in paths:
        path = Path(raw_path)
        if not path.is_file():
            raise FileNotFoundError(
                f".npz file {path} not found; check the path (data.path) or download/copy the "
                "data there."
            )
        arrays = _read_npz(path)
        for split, array in arrays.items():
            _check_image_array(array, split, path)
            this_size = (int(array.shape[1]), int(array.shape[2]))
            if size is None:
                size, size_source = this_size, f"{split!r} in {path}"
            elif this_size != size:
                raise ValueError(
                    f"array {split!r} in {path} holds {this_size[0]}x{this_size[1]} images but "
                    f"{size_source} holds {size[0]}x{size[1]} images; all files must have the "
                    "same image size: resize them to a common size or load them separately."
                )
            parts[split].append(array)
    result: dict[str, np.ndarray] = {}
    for split, arrays_of_split in parts.items():
        if len(arrays_of_split) == 1:
            result[split] = arrays_of_split[0]
        elif arrays_of_split:
            result[split] = np.concatenate(arrays_of_split, axis=0)
    return result


#: what numpy raises on a damaged archive: truncated (BadZipFile, EOFError, zlib.error), not
#: an archive at all (ValueError: "pickled data"), or unreadable (OSError)
_DAMAGED = (OSError, EOFError, ValueError, zipfile.BadZipFile, zlib.error, pickle.UnpicklingError)


def _damaged(path: Path, error: BaseException) -> ValueError:
    reason = f"{type(error).__name__}: {' '.join(str(error).split())[:200]}"
    if isinstance(error, ValueError) and "pickled" in str(error):  # numpy's last guess
        reason = "it has neither a zip nor a .npy header"
    return ValueError(
        f"cannot read {path} as a .npz archive ({reason}); the "
        "file is damaged (truncated?) or not a numpy .npz file: re-copy or re-create it, e.g. "
        "np.savez(path, train=..., val=..., test=...)."
    )


def _read_npz(path: Path) -> dict[str, np.ndarray]:
    """The ``train``/``val``/``test`` arrays of one ``.npz`` file (a ValueError if damaged)."""
    try:
        archive = np.load(path, allow_pickle=False)
    except _DAMAGED as error:
        raise _damaged(path, error) from error
    if not isinstance(archive, np.lib.npyio.NpzFile):
        raise ValueError(
            f"{path} holds a single array (.npy), not a .npz archive of named arrays; save the "
            "images with np.savez(path, train=..., val=..., test=...)."
        )
    with archive:
        keys = [split for split in SPLITS if split in archive.files]
        if not keys:
            raise ValueError(
                f"{path} holds none of the arrays 'train', 'val', 'test' (it has "
                f"{sorted(archive.files)}); save the images under those names, e.g. "
                "np.savez(path, train=images)."
            )
        try:
            return {split: archive[split] for split in keys}
        except _DAMAGED as error:
            raise _damaged(path, error) from error


# --------------------------------------------------------------------------------------------
# Image folders
# --------------------------------------------------------------------------------------------


class _TooSmallError(ValueError):
    """An image whose shorter side is below the target resolution (a config error)."""


def _find_images(root: Path) -> list[Path]:
    """All files below ``root`` with an accepted image suffix, sorted."""
    return sorted(
        path
        for path in root.rglob("*")
        if path.suffix.lower() in IMAGE_EXTENSIONS and path.is_file()
    )


def _read_square(path: Path, resolution: int) -> np.ndarray | Exception:
    """Decode ``path`` by its bit depth, centre-crop the largest square, resize to ``resolution``.

    Decoding is :func:`flowprox.utils.images.read_image` (grey becomes three equal channels,
    alpha is composited on white). 8-bit images are resized as uint8 RGB by Pillow; 16-bit ones
    channel by channel in floating point, then rounded to 8 bits. Returns the uint8 array
    ``(resolution, resolution, 3)``, or the decoding exception of an unreadable file. Raises
    :class:`_TooSmallError` when the shorter side is below ``resolution``.
    """
    try:
        pixels, image_format = read_image(path, alpha="white")
    except (OSError, ValueError) as error:
        return error
    height, width = pixels.shape[:2]
    side = min(width, height)
    if side < resolution:
        raise _TooSmallError(
            f"image {path} is {width}x{height}, smaller than the target resolution "
            f"{resolution} (its shorter side must be >= {resolution}, no upsampling is done); "
            "use a smaller data.resolution or remove the file."
        )
    if pixels.shape[-1] == 1:
        pixels = np.repeat(pixels, 3, axis=-1)
    left, top = (width - side) // 2, (height - side) // 2
    # Crop first: resize(box=...) would let the filter read pixels outside the square.
    square = pixels[top : top + side, left : left + side]
    size = (resolution, resolution)
    if image_format.bits == 8:
        rgb = Image.fromarray(np.round(square * 255).astype(np.uint8))
        return np.asarray(rgb.resize(size, _RESAMPLE), dtype=np.uint8)
    channels = [
        np.asarray(Image.fromarray(np.ascontiguousarray(square[..., c])).resize(size, _RESAMPLE))
        for c in range(3)
    ]
    return np.round(np.clip(np.stack(channels, axis=-1), 0, 1) * 255).astype(np.uint8)


def load_image_folder(
    root: str | Path, resolution: int, strict: bool = False
) -> tuple[np.ndarray, list[Path]]:
    """Load every image below ``root`` as a square RGB array of side ``resolution``.

    Files with the suffixes in :data:`IMAGE_EXTENSIONS` (any case) are found recursively and
    read in sorted path order, so the result is deterministic. Each image is decoded by its real
    bit depth (8- and 16-bit grey, palette, RGB, 16-bit RGB; see
    :func:`flowprox.utils.images.read_image`), grey becomes three equal channels and an alpha
    channel is composited on white; then it is centre-cropped to its largest centred square,
    resized to ``resolution x resolution`` with Pillow's antialiased LANCZOS filter and rounded
    to 8 bits.

    Args:
        root: the folder to search (recursively).
        resolution: the side of the output images, in pixels (> 0).
        strict: if False, unreadable or corrupt files are skipped with one warning that counts
            them; if True, the first one raises a ValueError.

    Returns:
        ``(images, paths)``: a uint8 array ``(N, resolution, resolution, 3)`` with values
        0..255, and the ``N`` paths that were kept, in the same order.

    Raises:
        FileNotFoundError: if ``root`` does not exist.
        ValueError: if ``root`` is not a directory or holds no image files, if an image is
            smaller than ``resolution`` (whatever ``strict`` is), if a file is unreadable and
            ``strict`` is True, or if no file could be read.
    """
    _check_resolution(resolution)
    root = Path(root)
    if not root.exists():
        raise FileNotFoundError(
            f"image folder {root} not found; check the path (data.path) or create the folder."
        )
    if not root.is_dir():
        raise ValueError(
            f"{root} is not a directory; pass a folder of images (or a .npz file to data.path)."
        )
    paths = _find_images(root)
    if not paths:
        raise ValueError(
            f"no images found in {root} (searched recursively for the extensions "
            f"{', '.join(IMAGE_EXTENSIONS)}, any case); put the images there or point "
            "data.path at the right folder."
        )
    workers = max(1, min(8, os.cpu_count() or 1))
    with ThreadPoolExecutor(max_workers=workers) as pool:
        results = list(pool.map(lambda p: _read_square(p, resolution), paths))
    images: list[np.ndarray] = []
    kept: list[Path] = []
    bad: list[tuple[Path, Exception]] = []
    for path, result in zip(paths, results, strict=True):
        if isinstance(result, Exception):
            if strict:
                raise ValueError(
                    f"cannot read image {path} ({type(result).__name__}: {result}); remove or "
                    "replace the file, or run without --strict (data.strict=false) to skip "
                    "unreadable files with a warning."
                ) from result
            bad.append((path, result))
        else:
            images.append(result)
            kept.append(path)
    if not images:
        raise ValueError(
            f"none of the {len(paths)} image files in {root} could be read (first: "
            f"{bad[0][0]}: {bad[0][1]}); check that they are valid image files."
        )
    if bad:
        listed = ", ".join(str(path) for path, _ in bad[:_MAX_LISTED_BAD_FILES])
        more = "" if len(bad) <= _MAX_LISTED_BAD_FILES else ", ..."
        warnings.warn(
            f"skipped {len(bad)} unreadable image file(s) of {len(paths)} in {root}: "
            f"{listed}{more}; use --strict to make this an error (data.strict=true).",
            stacklevel=2,
        )
    return np.stack(images), kept


# --------------------------------------------------------------------------------------------
# Splits
# --------------------------------------------------------------------------------------------


def _split_counts(n: int, sizes: Sequence[float | int]) -> tuple[int, int, int]:
    """Turn fractions or counts into three image counts (see :func:`split_indices`)."""
    if len(sizes) != 3:
        raise ValueError(
            f"split sizes must be three numbers (train, val, test), got {tuple(sizes)!r}; "
            "e.g. (0.8, 0.1, 0.1) or (23000, 1500, 1500)."
        )
    values: list[float] = []
    for value in sizes:
        if isinstance(value, bool) or not isinstance(value, int | float | np.integer | np.floating):
            raise ValueError(
                f"split sizes must be numbers, got {tuple(sizes)!r}; "
                "e.g. (0.8, 0.1, 0.1) or (23000, 1500, 1500)."
            )
        if not math.isfinite(value) or value < 0:
            raise ValueError(
                f"split sizes must be finite and >= 0, got {tuple(sizes)!r}; "
                "e.g. (0.8, 0.1, 0.1) or (23000, 1500, 1500)."
            )
        values.append(float(value))
    all_ints = all(isinstance(v, int | np.integer) for v in sizes)
    if all_ints or any(v > 1 for v in values):
        if not all(v.is_integer() for v in values):
            raise ValueError(
                f"split sizes {tuple(sizes)!r} mix counts (> 1) with fractions; give either "
                "three fractions <= 1 (e.g. (0.8, 0.1, 0.1)) or three whole image counts "
                "(e.g. (23000, 1500, 1500))."
            )
        counts = [int(v) for v in values]
        if sum(counts) > n:
            raise ValueError(
                f"split counts {tuple(counts)} add up to {sum(counts)} images but only {n} are "
                "available; use smaller counts or fractions such as (0.8, 0.1, 0.1)."
            )
        return counts[0], counts[1], counts[2]
    if sum(values) > 1 + 1e-9:
        raise ValueError(
            f"split fractions {tuple(sizes)!r} add up to {sum(values):.6g} > 1; make them sum "
            "to at most 1, e.g. (0.8, 0.1, 0.1)."
        )
    # Round the cumulative boundaries so that fractions summing to 1 use every image.
    bounds = [min(n, round(n * math.fsum(values[: i + 1]))) for i in range(3)]
    return bounds[0], bounds[1] - bounds[0], bounds[2] - bounds[1]


def split_indices(
    n: int, sizes: tuple[float | int, float | int, float | int], seed: int
) -> dict[str, np.ndarray]:
    """Split ``range(n)`` into disjoint train/val/test index sets with a seeded permutation.

    ``sizes`` are either fractions of ``n`` (all <= 1, summing to at most 1; the cumulative
    boundaries are rounded, so fractions summing to 1 use every index) or absolute counts
    (whole numbers summing to at most ``n``). They are read as counts when they are all Python
    or numpy integers, or when any of them is > 1 (so ``(23000.0, 1500.0, 1500.0)`` from a TOML
    file also counts); otherwise as fractions. Indices not covered by the sizes are unused.

    Args:
        n: the number of items (>= 0).
        sizes: ``(train, val, test)`` sizes, e.g. ``(0.8, 0.1, 0.1)`` or :data:`CELEBA_HQ_SPLIT`.
        seed: seed of ``np.random.default_rng``; the same ``n``, ``sizes`` and ``seed`` always
            give the same split.

    Returns:
        A dict with keys ``train``, ``val``, ``test``, each a 1-D int64 array of indices in
        ``[0, n)`` (possibly empty), in permuted order.

    Raises:
        ValueError: if ``n`` is negative, or the sizes are not three finite non-negative numbers
            forming valid fractions or counts.
    """
    if isinstance(n, bool) or not isinstance(n, int | np.integer) or n < 0:
        raise ValueError(f"n must be a non-negative integer, got {n!r}.")
    n_train, n_val, n_test = _split_counts(int(n), sizes)
    order = np.random.default_rng(seed).permutation(int(n)).astype(np.int64)
    return {
        "train": order[:n_train],
        "val": order[n_train : n_train + n_val],
        "test": order[n_train + n_val : n_train + n_val + n_test],
    }


# --------------------------------------------------------------------------------------------
# Resampling
# --------------------------------------------------------------------------------------------


def _check_resolution(resolution: int) -> None:
    if isinstance(resolution, bool) or not isinstance(resolution, int | np.integer):
        raise ValueError(f"resolution must be an integer number of pixels, got {resolution!r}.")
    if resolution <= 0:
        raise ValueError(
            f"resolution must be positive, got {resolution}; set data.resolution to e.g. 32."
        )


def downsample(images: np.ndarray, resolution: int) -> np.ndarray:
    """Reduce square uint8 images ``(N, H, H, 3)`` to ``(N, resolution, resolution, 3)``.

    When ``H`` is an integer multiple of ``resolution`` (e.g. 64 -> 32) every output pixel is
    the exact mean of its ``k x k`` block (``k = H // resolution``), rounded to the nearest
    integer (halves up). Otherwise each image is resized with Pillow's antialiased LANCZOS
    filter. ``resolution == H`` returns ``images`` itself (no copy).

    Args:
        images: uint8 array ``(N, H, H, 3)``, values 0..255.
        resolution: the output side, ``1 <= resolution <= H``.

    Returns:
        uint8 array ``(N, resolution, resolution, 3)``.

    Raises:
        ValueError: if ``images`` is not uint8 ``(N, H, W, 3)`` with ``H == W``, or
            ``resolution`` is not positive or exceeds ``H`` (no upsampling).
    """
    _check_resolution(resolution)
    if not isinstance(images, np.ndarray) or images.dtype != np.uint8 or images.ndim != 4:
        raise ValueError(
            f"downsample expects a uint8 numpy array (N, H, W, 3), got "
            f"{type(images).__name__} {getattr(images, 'dtype', '')} "
            f"{getattr(images, 'shape', '')}; convert it with np.asarray(x, dtype=np.uint8)."
        )
    n, height, width, channels = images.shape
    if channels != 3 or height != width:
        raise ValueError(
            f"downsample expects square RGB images (N, H, H, 3), got shape {images.shape}; "
            "centre-crop the images to squares first (load_image_folder does this)."
        )
    if resolution > height:
        raise ValueError(
            f"cannot downsample {height}x{height} images to {resolution}x{resolution} (no "
            f"upsampling is done); set data.resolution <= {height} or use higher-resolution data."
        )
    if resolution == height:
        return images
    factor, remainder = divmod(height, resolution)
    out = np.empty((n, resolution, resolution, 3), dtype=np.uint8)
    if remainder == 0:
        # Sum the k*k strided sub-grids in small chunks (much faster than reshape().sum()).
        area = factor * factor
        acc_dtype = np.uint16 if area * 255 + area // 2 <= np.iinfo(np.uint16).max else np.uint32
        for start in range(0, n, _CHUNK):
            chunk = images[start : start + _CHUNK]
            total = np.zeros((len(chunk), resolution, resolution, 3), dtype=acc_dtype)
            for dy in range(factor):
                for dx in range(factor):
                    total += chunk[:, dy::factor, dx::factor]
            total += area // 2
            total //= area
            out[start : start + _CHUNK] = total
        return out
    for i in range(n):
        image = Image.fromarray(images[i])
        out[i] = np.asarray(image.resize((resolution, resolution), _RESAMPLE), dtype=np.uint8)
    return out


# --------------------------------------------------------------------------------------------
# Dataset
# --------------------------------------------------------------------------------------------


class ImageDataset(Dataset[torch.Tensor]):
    """Square RGB images held in memory as one uint8 tensor, served as floats in ``[0, 1]``.

    Args:
        images: uint8 numpy array ``(N, H, H, 3)`` with values 0..255. It is converted once to
            a contiguous uint8 tensor ``(N, 3, H, H)`` (:attr:`tensor`); the float conversion
            happens per item, so memory stays at one byte per value.

    Raises:
        ValueError: if ``images`` is not a uint8 ``(N, H, H, 3)`` numpy array.
    """

    def __init__(self, images: np.ndarray) -> None:
        if not isinstance(images, np.ndarray) or images.dtype != np.uint8 or images.ndim != 4:
            raise ValueError(
                f"ImageDataset expects a uint8 numpy array (N, H, W, 3), got "
                f"{type(images).__name__} {getattr(images, 'dtype', '')} "
                f"{getattr(images, 'shape', '')}; convert it with np.asarray(x, dtype=np.uint8)."
            )
        if images.shape[-1] != 3 or images.shape[1] != images.shape[2]:
            raise ValueError(
                f"ImageDataset expects square RGB images (N, H, H, 3), got shape "
                f"{images.shape}; centre-crop them to squares (channels last) first."
            )
        self.tensor: torch.Tensor = torch.from_numpy(
            np.ascontiguousarray(images.transpose(0, 3, 1, 2))
        )
        """uint8 tensor ``(N, 3, H, H)``, values 0..255."""

    def __len__(self) -> int:
        return int(self.tensor.shape[0])

    def __getitem__(self, index: int) -> torch.Tensor:
        """Image ``index`` as a float32 tensor ``(3, H, H)`` in ``[0, 1]`` (uint8 / 255)."""
        return self.tensor[index].to(torch.float32).div_(255.0)

    @property
    def resolution(self) -> int:
        """The image side ``H`` in pixels."""
        return int(self.tensor.shape[-1])


# --------------------------------------------------------------------------------------------
# Config entry point
# --------------------------------------------------------------------------------------------

_ACCEPTED = (
    "a .npz file with uint8 (N, H, W, 3) arrays train/val/test, several .npz files separated "
    f"by commas, a directory holding {CELEBA_MAIN_FILE} (plus optional {CELEBA_EXTRA_FILE}), "
    "or a folder of images"
)


def _npz_paths(spec: str) -> list[Path] | None:
    """The ``.npz`` files that ``data.path`` names, or None for an image folder."""
    if "," in spec:
        paths = [Path(part.strip()) for part in spec.split(",") if part.strip()]
        for path in paths:
            if path.suffix.lower() != ".npz":
                raise ValueError(
                    f"data.path lists {path} among comma-separated files, but only .npz files "
                    f"can be combined that way; data.path accepts {_ACCEPTED}."
                )
        return paths
    path = Path(spec)
    if not path.exists():
        raise FileNotFoundError(f"data.path {path} not found; it accepts {_ACCEPTED}.")
    if path.is_file():
        if path.suffix.lower() != ".npz":
            raise ValueError(
                f"data.path {path} is a file but not a .npz file; it accepts {_ACCEPTED}."
            )
        return [path]
    if (path / CELEBA_MAIN_FILE).is_file():
        extra = path / CELEBA_EXTRA_FILE
        return [path / CELEBA_MAIN_FILE] + ([extra] if extra.is_file() else [])
    npz_files = sorted(p.name for p in path.glob("*.npz"))
    if npz_files:
        raise ValueError(
            f"directory {path} holds .npz files {npz_files} but no {CELEBA_MAIN_FILE}; name the "
            f"file(s) explicitly, e.g. data.path={path / npz_files[0]} (comma-separate several)."
        )
    return None


def load_splits(config: DataConfig) -> dict[str, ImageDataset]:
    """Load, split and downsample the images that ``config`` describes.

    ``config.path`` may be

    * a ``.npz`` file, or several separated by commas: the arrays ``train``/``val``/``test``
      (see :func:`load_npz_arrays`; ``train`` arrays of several files are concatenated);
    * a directory that contains ``celeba64.npz`` (the CelebA layout of ``shared/data``): it
      loads ``celeba64.npz`` followed by ``celeba64_train_extra.npz`` if that exists, giving the
      full 12,565-image training set. Other ``.npz`` files there (e.g. ``anime64.npz``) are not
      read; a directory with ``.npz`` files but no ``celeba64.npz`` is an error (name the files);
    * a folder of images (a directory without ``.npz`` files): loaded with
      :func:`load_image_folder` (``config.strict``) at ``config.resolution`` and split with
      :func:`split_indices` (``config.split_sizes``, ``config.split_seed``).

    Splits absent from the data, or empty after splitting, are left out of the result (e.g.
    ``anime64.npz`` gives only ``test``). If ``config.max_train_images > 0`` the training split
    is truncated to its first ``max_train_images`` images (the CelebA rows are already
    shuffled). Every split is then downsampled to ``config.resolution`` (:func:`downsample`).

    Args:
        config: the data section of an experiment config.

    Returns:
        A dict from split name (``train``, ``val``, ``test``) to an :class:`ImageDataset` of
        ``config.resolution x config.resolution`` images.

    Raises:
        FileNotFoundError: if ``config.path`` (or a file it lists) does not exist.
        ValueError: if ``config.path`` is empty or of an unsupported kind, the data are
            malformed, the resolution exceeds the stored images, or the sizes are invalid.
    """
    _check_resolution(config.resolution)
    if config.max_train_images < 0:
        raise ValueError(
            f"data.max_train_images must be >= 0 (0 = use all), got {config.max_train_images}."
        )
    spec = config.path.strip()
    if not spec:
        raise ValueError(f"data.path is empty; set it (e.g. --set data.path=...) to {_ACCEPTED}.")
    npz_paths = _npz_paths(spec)
    arrays: dict[str, np.ndarray]
    if npz_paths is not None:
        arrays = load_npz_arrays(npz_paths)
    else:
        images, _ = load_image_folder(spec, config.resolution, strict=config.strict)
        indices = split_indices(len(images), config.split_sizes, config.split_seed)
        arrays = {split: images[idx] for split, idx in indices.items()}
    if config.max_train_images > 0 and "train" in arrays:
        arrays["train"] = arrays["train"][: config.max_train_images]
    return {
        split: ImageDataset(downsample(array, config.resolution))
        for split, array in arrays.items()
        if len(array) > 0
    }


def describe(splits: dict[str, ImageDataset]) -> str:
    """One line such as ``train 12565, val 1583, test 1574 images at 32x32``."""
    if not splits:
        return "no images"
    names = [s for s in SPLITS if s in splits] + sorted(set(splits) - set(SPLITS))
    counts = ", ".join(f"{name} {len(splits[name])}" for name in names)
    sizes = sorted({dataset.resolution for dataset in splits.values()})
    at = ", ".join(f"{size}x{size}" for size in sizes)
    return f"{counts} images at {at}"
