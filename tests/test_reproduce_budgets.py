"""``flowprox reproduce`` trains for step budgets (the same models on any machine) and its report
hides nothing: non-finite outputs, skipped steps and runs that hit the safety time cap."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import write_face_data

from flowprox.config import ProxKind
from flowprox.experiments.pipeline import Pipeline
from flowprox.experiments.plan import REPRODUCE_PRESETS, methods_for
from flowprox.experiments.report import _cell, _training_summary
from flowprox.utils.checkpoint import load_checkpoint


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    return write_face_data(tmp_path_factory.mktemp("faces"), test=16, anime=8)


def _weights(path: Path) -> dict[str, torch.Tensor]:
    return load_checkpoint(path)["model"]


def test_every_training_stage_has_a_step_budget_and_no_wall_clock_limit(data_dir: Path) -> None:
    for preset, settings in REPRODUCE_PRESETS.items():
        pipeline = Pipeline(preset, data_dir, "/nonexistent", tasks=("denoise", "deblur"))
        for task in pipeline.tasks:
            for method in methods_for(task):
                train = pipeline.train_config(task, method).train
                assert train.max_steps > 0
                assert train.time_limit_minutes == settings.training.safety_minutes
                if settings.training.steps(method.prox) > 0:
                    assert train.max_steps == settings.training.steps(method.prox)


def test_budget_scale_multiplies_every_step_budget_and_the_safety_cap(data_dir: Path) -> None:
    settings = REPRODUCE_PRESETS["small"].training
    base = Pipeline("small", data_dir, "/nonexistent", tasks=("denoise",))
    scaled = Pipeline("small", data_dir, "/nonexistent", tasks=("denoise",), budget_scale=2.5)
    for method in methods_for("denoise"):
        one, more = (p.train_config("denoise", method).train for p in (base, scaled))
        assert more.max_steps == round(2.5 * one.max_steps)
        assert more.time_limit_minutes == pytest.approx(2.5 * settings.safety_minutes)
        if settings.patience_steps:
            assert one.early_stopping_patience * one.eval_every <= settings.patience_steps
    for bad in (0.0, -1.0, float("nan")):
        with pytest.raises(ValueError, match="--budget-scale must be a positive number"):
            Pipeline("small", data_dir, "/nonexistent", tasks=("denoise",), budget_scale=bad)


def test_a_training_stage_run_twice_gives_bit_identical_models(
    data_dir: Path, tmp_path: Path
) -> None:
    runs = []
    for name in ("first", "second"):
        pipeline = Pipeline("tiny", data_dir, tmp_path / name, tasks=("denoise",))
        pipeline._pretrain()
        glow = next(m for m in methods_for("denoise") if m.prox is ProxKind.GLOW)
        assert "failed" not in pipeline._train("denoise", glow)
        runs.append(pipeline)
    first, second = (p.run_dir("denoise", "glow") / "checkpoints" / "best.pt" for p in runs)
    a, b = _weights(first), _weights(second)
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    summary = json.loads((runs[0].run_dir("denoise", "glow") / "summary.json").read_text())
    assert summary["steps"] == REPRODUCE_PRESETS["tiny"].training.glow_steps
    assert summary["stop_reason"] in ("max_steps", "early stopping")
    assert summary["bad_steps"] == 0
    table = _training_summary(runs[0])
    assert "| denoise | GLOW prox (proposed) | 10 | max_steps | 0 |" in table


def test_the_training_table_marks_skipped_steps_and_a_run_stopped_by_the_time_cap(
    data_dir: Path, tmp_path: Path
) -> None:
    pipeline = Pipeline("tiny", data_dir, tmp_path, tasks=("denoise",))
    run = pipeline.run_dir("denoise", "unet")
    run.mkdir(parents=True)
    (run / "metrics.csv").write_text("step,val_psnr,elapsed_s\n5,20.5,30\n")
    (run / "summary.json").write_text(
        json.dumps({"steps": 5, "stop_reason": "time limit", "bad_steps": 3, "elapsed_s": 30})
    )
    table = _training_summary(pipeline)
    assert "| denoise | U-Net prox | 5 | **time cap** (budget not reached) | 3 | 0.5 | 20.50 |" in (
        table
    )


def test_a_cell_shows_how_many_outputs_were_not_finite() -> None:
    method = {"psnr_mean": 20.0, "psnr_std": 1.0, "images": 16, "failed_images": 3}
    assert _cell(method) == "20.00 ± 1.00 [3/16 non-finite, scored grey]"
    assert _cell({**method, "failed_images": 0}, 28.2) == "20.00 ± 1.00 (28.20)"


def test_a_resumed_training_stage_counts_its_runs_own_clock(tmp_path: Path) -> None:
    """The report's total time: a stage mark holds only the seconds of the call that finished
    it; a training stage resumed after a stop counts its run's clock (``summary.json``)."""
    from flowprox.experiments.layout import Reproduction
    from flowprox.experiments.report import _stage_seconds

    reproduction = Reproduction("tiny", str(tmp_path / "data"), tmp_path / "run")
    marks = tmp_path / "run" / "stages"
    marks.mkdir(parents=True)
    for name in ("train-deblur-small-support-glow", "evaluate-deblur"):
        (marks / f"{name}.json").write_text(json.dumps({"seconds": 10.0}))
    run = reproduction.run_dir("deblur-small-support", "glow")
    run.mkdir(parents=True)
    (run / "summary.json").write_text(json.dumps({"elapsed_s": 100.0}))
    assert _stage_seconds(reproduction, marks / "train-deblur-small-support-glow.json") == 100.0
    assert _stage_seconds(reproduction, marks / "evaluate-deblur.json") == 10.0
