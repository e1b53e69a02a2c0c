"""Learning curves of a reproduction's training runs: val PSNR against step, and whether a run
has flattened (the rule of ``flowprox.training.plateau``, by which training may also stop)."""

from __future__ import annotations

import csv
from pathlib import Path

from flowprox.training.plateau import FLAT_GAIN_DB, FLAT_SHARE, Curve, flattened, late_gain

__all__ = ["FLAT_GAIN_DB", "FLAT_SHARE", "Curve", "flattened", "late_gain", "val_curve"]


def val_curve(run: Path) -> Curve:
    """``(step, val PSNR)`` of every evaluation in ``run/metrics.csv`` (empty if none)."""
    path = run / "metrics.csv"
    if not path.is_file():
        return []
    with path.open() as file:
        rows = list(csv.DictReader(file))
    return [(int(r["step"]), float(r["val_psnr"])) for r in rows if r.get("val_psnr")]
