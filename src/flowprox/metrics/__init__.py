"""Image quality (PSNR, SSIM) and the bits/dim typicality test of restored images."""

from flowprox.metrics.quality import mean_and_std, psnr, ssim
from flowprox.metrics.typicality import TypicalRange, auroc, calibrate, image_bits_per_dim

__all__ = [
    "TypicalRange",
    "auroc",
    "calibrate",
    "image_bits_per_dim",
    "mean_and_std",
    "psnr",
    "ssim",
]
