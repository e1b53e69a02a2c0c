"""``flowprox reproduce`` at the tiny preset on generated data: stages, resume, report."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
from conftest import write_face_data

from flowprox.cli.main import main
from flowprox.experiments.pipeline import Pipeline
from flowprox.experiments.report import LABELS, PAPER


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    """Faces, and as the "anime" set images of independent uniform pixels: out of distribution
    for a prior of smooth faces, so their bits/dim must rank above the faces'."""
    root = write_face_data(tmp_path_factory.mktemp("faces"), test=32)
    noise = np.random.default_rng(3).integers(0, 256, size=(24, 8, 8, 3), dtype=np.uint8)
    np.savez(root / "anime64.npz", test=noise)
    return root


def table_cells(results: str, table: str) -> dict[str, list[tuple[str, str | None]]]:
    """Each row of Table ``table`` of results.md by label: ``(ours, paper)`` per task column."""
    section = results.split(f"## Table {table}:", 1)[1].split("\n\n")[1]
    rows = {}
    for line in section.splitlines()[2:]:  # after the header and the rule
        label, *cells = (cell.strip() for cell in line.strip().strip("|").split("|"))
        parsed = [re.fullmatch(r"(.*?)(?: \((\d+\.\d\d)\))?", cell) for cell in cells]
        rows[label] = [(m.group(1), m.group(2)) for m in parsed if m is not None]
    return rows


def test_reproduce_runs_every_stage_writes_the_tables_and_skips_finished_stages(
    data_dir: Path, tmp_path: Path
) -> None:
    out = tmp_path / "repro"
    arguments = ["reproduce", "--preset", "tiny", "--data", str(data_dir), "--out", str(out)]
    assert main([*arguments, "--tasks", "denoise,inpaint"]) == 0
    results = (out / "results.md").read_text()
    for heading in ("Table I", "Table II", "Table III", "Table IV"):
        assert heading in results
    # every row of the paper's tables: the paper's numbers of PAPER, task by task
    for table, methods in PAPER.items():
        rows = table_cells(results, table)
        for key, paper in methods.items():
            expected = [None if value is None else f"{value:.2f}" for value in paper]
            assert [cell[1] for cell in rows[LABELS[key]]] == expected, (table, key)
    # and ours beside them: Table I's inpainting column from the evaluation, deblurring not run
    summary = json.loads((out / "eval" / "inpaint" / "in-distribution.json").read_text())
    ours = {m["key"]: m for m in summary["methods"] if m.get("key")}
    for key in PAPER["I"]:
        _, inpaint, deblur = table_cells(results, "I")[LABELS[key]]
        assert inpaint[0] == f"{ours[key]['psnr_mean']:.2f} ± {ours[key]['psnr_std']:.2f}"
        assert deblur[0] == "—"
    assert (out / "figures" / "inpaint-in-distribution.png").stat().st_size > 1000
    names = [m["method"] for m in summary["methods"]]
    assert "ResNet prox, pre-trained as denoiser" in names and "GLOW plug-and-play" in names
    assert any(name.startswith("latent optimisation") for name in names)
    typicality = json.loads((out / "eval" / "inpaint" / "typicality.json").read_text())
    assert set(typicality["thresholds"]) == {"0.01", "0.05"}
    assert typicality["thresholds"]["0.01"] >= typicality["thresholds"]["0.05"]
    # uniform noise images restore to higher bits/dim than faces: AUROC well above chance
    assert typicality["auroc"] > 0.9
    assert (
        typicality["anime"]["median_bits_per_dim"]
        > typicality["celeba_test"]["median_bits_per_dim"]
    )
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
