"""Image files: every mode decoded to [0, 1] by its real bit depth, results written alike, grids.

:func:`read_image` is the one decoder of image files (``flowprox restore`` and image-folder data
both use it). Pillow's ``convert("RGB")`` clips 16- and 32-bit integer images to 255 and drops
alpha as if it were not there; here every mode is scaled by its own bit depth instead:

* ``1`` (bilevel), ``L``, ``P`` (palette), ``RGB``, ``CMYK``, ``YCbCr``, ``HSV``: 8 bits;
* ``I;16`` (and its byte orders) and ``I`` (how Pillow opens 16-bit grey PNG and TIFF files,
  values 0..65535): 16 bits; an ``I`` image with values outside 0..65535 is refused;
* ``F`` (32-bit float) with values in [0, 1]: written back as 16 bits;
* 16-bit colour or grey-alpha PNG (colour types 2, 4, 6) and 16-bit RGB(A) TIFF, which Pillow
  would truncate to 8 bits: read here with numpy (PNG) or ``tifffile`` (TIFF).

A photo's EXIF orientation is applied, so the pixels are the way the image is shown.
An alpha channel (``LA``, ``RGBA``, ``PA``, a palette or colour key with transparency) is
composited on a stated background, white by default (``alpha="black"`` for black), or refused
(``alpha="refuse"``) when any pixel is transparent. :func:`write_image` writes a result like its
input: one grey channel for a grey input (the mean of the colour channels, so no colour cast),
three for a colour one, at 8 or 16 bits, as PNG (16-bit colour through the encoder here).
"""

from __future__ import annotations

import math
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError
from torch import Tensor

ALPHA_CHOICES = ("white", "black", "refuse")
"""How an alpha channel is dropped: composited on white or black, or refused if used."""

_BACKGROUND = {"white": 1.0, "black": 0.0}
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_PNG_CHANNELS = {0: 1, 2: 3, 4: 2, 6: 4}  # colour type -> samples per pixel (no palette)
_TIFF_BITS_PER_SAMPLE = 258
_EXIF_ORIENTATION = 0x0112


@dataclass(frozen=True)
class ImageFormat:
    """How an image file stored its pixels: what an output written "like the input" uses.

    Attributes:
        channels: 1 (grey) or 3 (colour), after the alpha channel was composited away.
        bits: 8 or 16, the bit depth of the samples (a 16-bit input gives a 16-bit output).
        mode: the file's mode as read: a Pillow mode, or ``RGB;16``, ``RGBA;16``, ``LA;16`` for
            16-bit colour and grey-alpha files read with numpy.
        alpha: the file had an alpha channel (composited on the background).
    """

    channels: int
    bits: int
    mode: str
    alpha: bool = False

    def describe(self) -> str:
        kind = "grey" if self.channels == 1 else "RGB"
        return f"{self.bits}-bit {kind}" + (" (alpha composited)" if self.alpha else "")


def read_image(path: str | Path, alpha: str = "white") -> tuple[np.ndarray, ImageFormat]:
    """Decode an image file to float32 pixels ``(H, W, C)`` in [0, 1], ``C`` = 1 or 3.

    Args:
        path: any file Pillow opens (PNG, JPEG, TIFF, BMP, WebP, ...).
        alpha: ``"white"`` or ``"black"``: the background an alpha channel is composited on;
            ``"refuse"``: a ValueError when any pixel is not fully opaque.

    Returns:
        The pixels and the file's :class:`ImageFormat`.

    Raises:
        FileNotFoundError: if ``path`` is not a file.
        ValueError: for an unreadable file, an unsupported mode or value range, or
            transparency with ``alpha="refuse"``.
    """
    if alpha not in ALPHA_CHOICES:
        raise ValueError(f"alpha must be one of {ALPHA_CHOICES}, got {alpha!r}.")
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"image {path} not found; check the path.")
    try:
        with Image.open(path) as image:
            image.load()
            samples, bits, mode, has_alpha = _decode(image, path)
            samples = _upright(samples, image.getexif().get(_EXIF_ORIENTATION, 1))
    except (UnidentifiedImageError, OSError, SyntaxError, EOFError, zlib.error) as error:
        raise ValueError(
            f"{path} is not a readable image ({error}); pass PNG, JPEG, TIFF or another format "
            "that Pillow reads."
        ) from error
    except Image.DecompressionBombError as error:
        raise ValueError(f"{path} is too large to decode safely ({error}).") from error
    if has_alpha:
        samples = _composite(samples, alpha, path)
    channels = samples.shape[-1]
    return samples.astype(np.float32), ImageFormat(channels, bits, mode, has_alpha)


def write_image(pixels: np.ndarray, path: str | Path, like: ImageFormat) -> Path:
    """Write pixels ``(H, W, C)`` in [0, 1] as a PNG in ``like``'s channels and bit depth.

    Three channels become one grey channel (their mean) when ``like`` is grey, one channel three
    when it is colour; values are clamped to [0, 1] and rounded to ``like.bits`` bits.
    """
    pixels = np.asarray(pixels, dtype=np.float64)
    if pixels.ndim == 2:
        pixels = pixels[..., None]
    if pixels.ndim != 3 or pixels.shape[-1] not in (1, 3):
        raise ValueError(f"write_image needs pixels (H, W, 1|3), got shape {pixels.shape}.")
    if like.channels == 1 and pixels.shape[-1] == 3:
        pixels = pixels.mean(axis=-1, keepdims=True)
    elif like.channels == 3 and pixels.shape[-1] == 1:
        pixels = np.repeat(pixels, 3, axis=-1)
    if like.bits not in (8, 16):
        raise ValueError(f"write_image writes 8- or 16-bit images, got {like.bits} bits.")
    peak = 2**like.bits - 1
    samples = np.round(np.clip(np.nan_to_num(pixels), 0.0, 1.0) * peak)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if like.bits == 16:
        _write_png16(path, samples.astype(np.uint16))
    else:
        array = samples.astype(np.uint8)
        Image.fromarray(array[..., 0] if like.channels == 1 else array).save(path, format="PNG")
    return path


# ------------------------------------------------------------------------------ decoding


def _decode(image: Image.Image, path: Path) -> tuple[np.ndarray, int, str, bool]:
    """``(samples (H, W, K) float64 in [0, 1] with alpha last if any, bits, mode, has_alpha)``."""
    mode = image.mode
    if image.format == "PNG":
        depth, colour_type = _png_header(path)
        if depth == 16 and colour_type in (2, 4, 6):
            samples = _read_png16(path)
            name = {2: "RGB;16", 4: "LA;16", 6: "RGBA;16"}[colour_type]
            return samples / 65535.0, 16, name, colour_type in (4, 6) or samples.shape[-1] in (2, 4)
    if image.format == "TIFF" and mode in ("RGB", "RGBA", "RGBX", "LA", "CMYK"):
        bits = image.tag_v2.get(_TIFF_BITS_PER_SAMPLE, (8,))
        bits = bits if isinstance(bits, tuple) else (bits,)
        if max(bits) > 8:
            samples = _read_tiff16(path)
            return samples / 65535.0, 16, f"{mode};16", mode in ("RGBA", "LA")
    if mode == "1":
        return np.asarray(image, dtype=np.float64)[..., None], 8, mode, False
    if mode in ("L", "LA", "RGB", "RGBA"):
        return _scaled(image, 255), 8, mode, mode.endswith("A")
    if mode in ("La", "RGBa", "PA") or (mode == "P" and "transparency" in image.info):
        target = "LA" if mode == "La" else "RGBA"
        return _scaled(image.convert(target), 255), 8, mode, True
    if mode.startswith("I;16"):
        return np.asarray(image).astype(np.float64)[..., None] / 65535.0, 16, mode, False
    if mode == "I":
        values = np.asarray(image)
        if values.size and (values.min() < 0 or values.max() > 65535):
            raise ValueError(
                f"{path} holds 32-bit integers from {values.min()} to {values.max()}, outside "
                "the 16-bit range 0..65535; save it as an 8- or 16-bit image."
            )
        return values.astype(np.float64)[..., None] / 65535.0, 16, mode, False
    if mode == "F":
        values = np.asarray(image, dtype=np.float64)
        if not np.isfinite(values).all() or values.min() < 0 or values.max() > 1:
            raise ValueError(
                f"{path} is a floating-point image with values outside [0, 1]; scale it to "
                "[0, 1] or save it as an 8- or 16-bit image."
            )
        return values[..., None], 16, mode, False
    try:
        rgb = image.convert("RGB")  # P, CMYK, YCbCr, HSV, RGBX: 8 bits per sample
    except ValueError as error:
        raise ValueError(
            f"{path} has the image mode {mode}, which cannot be converted to RGB ({error}); "
            "save it as an RGB or grey image."
        ) from error
    return _scaled(rgb, 255), 8, mode, False


def _upright(samples: np.ndarray, orientation: int) -> np.ndarray:
    """Turn ``(H, W, K)`` samples as the EXIF orientation tag says (a camera's portrait photo
    is stored sideways), as ``PIL.ImageOps.exif_transpose`` does."""
    if orientation == 2:
        samples = samples[:, ::-1]
    elif orientation == 3:
        samples = samples[::-1, ::-1]
    elif orientation == 4:
        samples = samples[::-1]
    elif orientation == 5:
        samples = samples.transpose(1, 0, 2)
    elif orientation == 6:
        samples = np.rot90(samples, -1)
    elif orientation == 7:
        samples = samples[::-1, ::-1].transpose(1, 0, 2)
    elif orientation == 8:
        samples = np.rot90(samples, 1)
    return np.ascontiguousarray(samples)


def _scaled(image: Image.Image, peak: int) -> np.ndarray:
    array = np.asarray(image, dtype=np.float64) / peak
    return array[..., None] if array.ndim == 2 else array


def _composite(samples: np.ndarray, alpha: str, path: Path) -> np.ndarray:
    colour, opacity = samples[..., :-1], samples[..., -1:]
    if alpha == "refuse":
        if bool((opacity < 1).any()):
            raise ValueError(
                f"{path} has transparent pixels; composite it on a background yourself, or pass "
                "--alpha white or --alpha black to composite it on white or black."
            )
        return colour
    return colour * opacity + _BACKGROUND[alpha] * (1.0 - opacity)


def _png_chunks(data: bytes, path: Path) -> list[tuple[bytes, bytes]]:
    if data[:8] != _PNG_SIGNATURE:
        raise ValueError(f"{path} is not a PNG file.")
    chunks, offset = [], 8
    while offset + 8 <= len(data):
        (length,) = struct.unpack(">I", data[offset : offset + 4])
        name = data[offset + 4 : offset + 8]
        chunks.append((name, data[offset + 8 : offset + 8 + length]))
        offset += 12 + length
        if name == b"IEND":
            break
    return chunks


def _png_header(path: Path) -> tuple[int, int]:
    with open(path, "rb") as file:
        head = file.read(26)
    if len(head) < 26 or head[:8] != _PNG_SIGNATURE or head[12:16] != b"IHDR":
        return 0, -1
    return head[24], head[25]


def _read_png16(path: Path) -> np.ndarray:
    """A 16-bit PNG (grey, grey-alpha, RGB, RGBA) as float64 samples 0..65535 ``(H, W, K)``;
    an RGB or grey colour key (``tRNS``) becomes an alpha channel."""
    chunks = _png_chunks(path.read_bytes(), path)
    width, height, depth, colour_type, _, _, interlace = struct.unpack(">IIBBBBB", chunks[0][1])
    if interlace:
        raise ValueError(
            f"{path} is an interlaced 16-bit PNG, which flowprox does not decode; save it "
            "without interlacing."
        )
    channels = _PNG_CHANNELS[colour_type]
    raw = zlib.decompress(b"".join(body for name, body in chunks if name == b"IDAT"))
    bpp = channels * depth // 8
    expected = height * (1 + width * bpp)
    if len(raw) < expected:
        raise ValueError(f"{path} is truncated ({len(raw)} of {expected} bytes of pixel data).")
    rows = np.frombuffer(raw[:expected], dtype=np.uint8).reshape(height, 1 + width * bpp)
    data = _unfilter(rows[:, 0], rows[:, 1:].reshape(height, width, bpp))
    samples = data.reshape(height, width * bpp).view(">u2").reshape(height, width, channels)
    samples = samples.astype(np.float64)
    key = next((body for name, body in chunks if name == b"tRNS"), None)
    if key is not None and colour_type in (0, 2):
        colour = np.array(struct.unpack(f">{channels}H", key[: 2 * channels]), dtype=np.float64)
        opaque = (samples != colour).any(axis=-1, keepdims=True)
        samples = np.concatenate([samples, opaque * 65535.0], axis=-1)
    return samples


def _unfilter(filters: np.ndarray, raw: np.ndarray) -> np.ndarray:
    """Undo the PNG scanline filters (None, Sub, Up, Average, Paeth) of ``raw (H, W, bpp)``.

    Each byte depends on its left, upper and upper-left neighbours, so the pixels of one
    anti-diagonal are independent: the loop runs over the ``H + W - 1`` anti-diagonals with
    numpy, whatever filter each row uses.
    """
    if filters.size and int(filters.max()) > 4:
        raise ValueError(f"unknown PNG filter type {int(filters.max())}; the file is corrupt.")
    height, width, _ = raw.shape
    out = np.zeros((height + 1, width + 1, raw.shape[-1]), dtype=np.int32)
    raw = raw.astype(np.int32)
    all_rows = np.arange(height)
    for diagonal in range(height + width - 1):
        r = all_rows[max(0, diagonal - width + 1) : min(height, diagonal + 1)]
        c = diagonal - r
        left, up, up_left = out[r + 1, c], out[r, c + 1], out[r, c]
        kind = filters[r][:, None]
        p = left + up - up_left
        pa, pb, pc = np.abs(p - left), np.abs(p - up), np.abs(p - up_left)
        paeth = np.where((pa <= pb) & (pa <= pc), left, np.where(pb <= pc, up, up_left))
        predicted = np.select(
            [kind == 1, kind == 2, kind == 3, kind == 4],
            [left, up, (left + up) >> 1, paeth],
            0,
        )
        out[r + 1, c + 1] = (raw[r, c] + predicted) & 255
    return out[1:, 1:].astype(np.uint8)


def _read_tiff16(path: Path) -> np.ndarray:
    try:
        import tifffile
    except ImportError as error:  # pragma: no cover - a dependency of scikit-image
        raise ValueError(
            f"{path} is a 16-bit colour TIFF, which needs the tifffile package (pip install "
            "tifffile), or save it as a 16-bit PNG."
        ) from error
    array = np.asarray(tifffile.imread(path))
    if array.dtype != np.uint16 or array.ndim != 3:
        raise ValueError(
            f"{path} holds {array.dtype} samples of shape {array.shape}; save it as an 8- or "
            "16-bit RGB image."
        )
    return array.astype(np.float64)


def _write_png16(path: Path, samples: np.ndarray) -> None:
    """Write uint16 samples ``(H, W, 1|3)`` as a 16-bit grey or RGB PNG (filter None)."""
    height, width, channels = samples.shape
    colour_type = 0 if channels == 1 else 2
    rows = samples.astype(">u2").reshape(height, width * channels).view(np.uint8)
    scanlines = np.concatenate([np.zeros((height, 1), dtype=np.uint8), rows], axis=1)

    def chunk(name: bytes, body: bytes) -> bytes:
        crc = zlib.crc32(name + body) & 0xFFFFFFFF
        return struct.pack(">I", len(body)) + name + body + struct.pack(">I", crc)

    header = struct.pack(">IIBBBBB", width, height, 16, colour_type, 0, 0, 0)
    path.write_bytes(
        _PNG_SIGNATURE
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(scanlines.tobytes(), 6))
        + chunk(b"IEND", b"")
    )


# ------------------------------------------------------------------------------ grids


def to_uint8(images: Tensor) -> np.ndarray:
    """``(B, C, H, W)`` floats in [0, 1] to ``(B, H, W, C)`` uint8 (clamped, rounded)."""
    array = images.detach().clamp(0, 1).mul(255).round().byte().cpu().numpy()
    return array.transpose(0, 2, 3, 1)


def save_grid(images: Tensor, path: str | Path, columns: int = 8, padding: int = 2) -> None:
    """Save a batch ``(B, C, H, W)`` in [0, 1] as one PNG grid, white-padded."""
    if images.dim() != 4 or images.shape[1] not in (1, 3):
        raise ValueError(f"save_grid needs (B, 1|3, H, W) images, got {tuple(images.shape)}.")
    array = to_uint8(images)
    count, height, width, channels = array.shape
    columns = max(1, min(columns, count))
    rows = math.ceil(count / columns)
    grid = np.full(
        (rows * (height + padding) + padding, columns * (width + padding) + padding, channels),
        255,
        dtype=np.uint8,
    )
    for index in range(count):
        row, column = divmod(index, columns)
        top = padding + row * (height + padding)
        left = padding + column * (width + padding)
        grid[top : top + height, left : left + width] = array[index]
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(grid.squeeze(-1) if channels == 1 else grid).save(path)
