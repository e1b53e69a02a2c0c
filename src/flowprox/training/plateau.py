"""When a learning curve has flattened: its best val PSNR gained less than ``FLAT_GAIN_DB``
over the last ``FLAT_SHARE`` of its steps. The trainer may stop a run there; the reproduction's
report marks every run by the same rule."""

from __future__ import annotations

#: a run has flattened when its best val PSNR gained less than this (dB) over its last steps ...
FLAT_GAIN_DB = 0.1
#: ... namely over this share of its steps
FLAT_SHARE = 0.2

Curve = list[tuple[int, float]]


def late_gain(curve: Curve, share: float = FLAT_SHARE) -> float | None:
    """What the last ``share`` of the steps added to the best val PSNR: the best over the whole
    curve minus the best at or before ``(1 - share)`` of the last step (None when no evaluation
    came that early). Taking the best, not the last value, keeps one noisy evaluation from
    deciding; a falling curve gains nothing."""
    if len(curve) < 2:
        return None
    last_step = curve[-1][0]
    earlier = [psnr for step, psnr in curve if step <= (1 - share) * last_step]
    if not earlier:
        return None
    return max(psnr for _, psnr in curve) - max(earlier)


def flattened(
    curve: Curve, gain_db: float = FLAT_GAIN_DB, share: float = FLAT_SHARE
) -> bool | None:
    """Whether the run's best val PSNR gained less than ``gain_db`` over its last ``share`` of
    steps (None when the curve is too short to say)."""
    gain = late_gain(curve, share)
    return None if gain is None else gain < gain_db
