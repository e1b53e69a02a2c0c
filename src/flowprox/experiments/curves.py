"""Learning curves of a reproduction's training runs: val PSNR against step, and whether a run
has flattened (gained less than ``FLAT_GAIN_DB`` over its last ``FLAT_SHARE`` of steps)."""

from __future__ import annotations

import csv
from pathlib import Path

#: a run has flattened when its val PSNR gained less than this (dB) over its last steps ...
FLAT_GAIN_DB = 0.1
#: ... namely over this share of its steps
FLAT_SHARE = 0.2

Curve = list[tuple[int, float]]


def val_curve(run: Path) -> Curve:
    """``(step, val PSNR)`` of every evaluation in ``run/metrics.csv`` (empty if none)."""
    path = run / "metrics.csv"
    if not path.is_file():
        return []
    with path.open() as file:
        rows = list(csv.DictReader(file))
    return [(int(r["step"]), float(r["val_psnr"])) for r in rows if r.get("val_psnr")]


def late_gain(curve: Curve) -> float | None:
    """Val PSNR gained over the last ``FLAT_SHARE`` of the steps: the last evaluation's PSNR
    minus that of the last evaluation at or before ``(1 - FLAT_SHARE)`` of the steps (None when
    no evaluation came that early)."""
    if len(curve) < 2:
        return None
    last_step, last_psnr = curve[-1]
    earlier = [psnr for step, psnr in curve if step <= (1 - FLAT_SHARE) * last_step]
    return last_psnr - earlier[-1] if earlier else None


def flattened(curve: Curve) -> bool | None:
    """Whether the run gained less than ``FLAT_GAIN_DB`` over its last ``FLAT_SHARE`` of steps."""
    gain = late_gain(curve)
    return None if gain is None else gain < FLAT_GAIN_DB
