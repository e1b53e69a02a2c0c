"""Evaluation: fixed-seed evaluation sets of the three settings, methods scored with PSNR,
SSIM, time and memory, batched reconstruction, and comparison figures."""

from flowprox.evaluation.evaluate import SETTINGS, load_evaluation_set, run_method
from flowprox.evaluation.reconstruct import reconstruct_all

__all__ = ["SETTINGS", "load_evaluation_set", "reconstruct_all", "run_method"]
