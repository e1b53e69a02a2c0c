"""``flowprox reproduce`` at the tiny preset on generated data: stages, resume, report."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import write_face_data

from flowprox.cli.main import main
from flowprox.experiments.pipeline import Pipeline


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    return write_face_data(tmp_path_factory.mktemp("faces"), test=32, anime=24)


def test_reproduce_runs_every_stage_writes_the_tables_and_skips_finished_stages(
    data_dir: Path, tmp_path: Path
) -> None:
    out = tmp_path / "repro"
    arguments = ["reproduce", "--preset", "tiny", "--data", str(data_dir), "--out", str(out)]
    assert main([*arguments, "--tasks", "denoise,inpaint"]) == 0
    results = (out / "results.md").read_text()
    for heading in ("Table I", "Table II", "Table III", "Table IV"):
        assert heading in results
    assert "(35.93)" in results  # the paper's GLOW inpainting number beside ours
    assert (out / "figures" / "inpaint-in-distribution.png").stat().st_size > 1000
    summary = json.loads((out / "eval" / "inpaint" / "in-distribution.json").read_text())
    names = [m["method"] for m in summary["methods"]]
    assert "ResNet prox, pre-trained as denoiser" in names and "GLOW plug-and-play" in names
    assert any(name.startswith("latent optimisation") for name in names)
    typicality = json.loads((out / "eval" / "inpaint" / "typicality.json").read_text())
    assert set(typicality["thresholds"]) == {"0.01", "0.05"}
    assert typicality["thresholds"]["0.01"] >= typicality["thresholds"]["0.05"]
    assert 0.0 <= typicality["auroc"] <= 1.0
    assert "fires at 5% false alarm" in results

    # A rerun skips every finished stage; a stage whose mark is gone runs again, resuming
    # its run directory from the last checkpoint instead of failing on the existing run.
    marks = sorted((out / "stages").glob("*.json"))
    before = {p.name: p.read_text() for p in marks}
    (out / "stages" / "train-inpaint-glow.json").unlink()
    assert main([*arguments, "--tasks", "denoise,inpaint"]) == 0
    after = {p.name: p.read_text() for p in sorted((out / "stages").glob("*.json"))}
    assert set(after) == set(before)
    changed = [name for name in before if before[name] != after[name]]
    assert changed == ["train-inpaint-glow.json"]


def test_unknown_task_is_a_clear_error(data_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown task"):
        Pipeline("tiny", data_dir, tmp_path, tasks=("colorize",))
