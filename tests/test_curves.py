"""Learning curves: the late gain of a run's val PSNR and whether it has flattened."""

from __future__ import annotations

from pathlib import Path

import pytest

from flowprox.evaluation.figures import curves_figure
from flowprox.experiments.curves import flattened, late_gain, val_curve


def test_late_gain_is_measured_over_the_last_fifth_of_the_steps() -> None:
    rising = [(100, 20.0), (200, 21.0), (300, 21.5), (400, 21.8), (500, 22.0)]
    # the last evaluation at or before 80% of 500 steps is step 400
    assert late_gain(rising) == pytest.approx(0.2)
    assert flattened(rising) is False
    flat = [(100, 20.0), (200, 21.0), (300, 21.5), (400, 21.95), (500, 22.0)]
    assert late_gain(flat) == pytest.approx(0.05)
    assert flattened(flat) is True
    falling = [(50, 25.0), (100, 24.0)]  # over-fitting also counts as flattened
    assert late_gain(falling) == 0.0
    assert flattened(falling) is True


def test_too_short_a_curve_says_nothing() -> None:
    assert late_gain([]) is None
    assert late_gain([(100, 20.0)]) is None
    assert flattened([(100, 20.0)]) is None


def test_val_curve_reads_the_evaluation_rows(tmp_path: Path) -> None:
    (tmp_path / "metrics.csv").write_text(
        "step,train_loss,val_loss,val_psnr\n5,0.1,,\n10,0.1,0.01,20.5\n15,0.1,,\n20,0.1,0.009,21\n"
    )
    assert val_curve(tmp_path) == [(10, 20.5), (20, 21.0)]
    assert val_curve(tmp_path / "missing") == []


def test_curves_figure_writes_a_png(tmp_path: Path) -> None:
    path = curves_figure(
        {"denoise": {"GLOW prox": [(50, 20.0), (100, 21.0)], "U-Net prox": []}},
        tmp_path / "figures" / "curves.png",
    )
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
