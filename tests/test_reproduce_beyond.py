"""``flowprox reproduce --tasks beyond``: super-resolution, compressed sensing and MRI trained
and evaluated in the same frame, with their own table (tiny preset, generated data)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import write_face_data

from flowprox.cli.main import main
from flowprox.experiments.plan import BEYOND_TASKS, PAPER_TASKS, methods_for, resolve_tasks


def test_task_groups_resolve_in_the_plans_order() -> None:
    assert resolve_tasks(None) == PAPER_TASKS
    assert resolve_tasks("beyond") == BEYOND_TASKS
    assert resolve_tasks("all") == PAPER_TASKS + BEYOND_TASKS
    assert resolve_tasks("mri,denoise,paper") == (*PAPER_TASKS, "mri")
    with pytest.raises(ValueError, match="unknown task 'sr' in --tasks"):
        resolve_tasks("sr")
    for task in BEYOND_TASKS:
        assert [m.key for m in methods_for(task)] == ["unet", "glow"]


def test_reproduce_beyond_trains_evaluates_and_reports_the_three_forward_models(
    tmp_path: Path,
) -> None:
    data = write_face_data(tmp_path, test=16)
    out = tmp_path / "run"
    arguments = ["reproduce", "--preset", "tiny", "--data", str(data), "--out", str(out),
                 "--tasks", "beyond"]  # fmt: skip
    assert main(arguments) == 0
    results = (out / "results.md").read_text()
    section = results.split("## Beyond the paper", 1)[1].split("\n## ", 1)[0]
    for label in ("zero-filled (A^+ y)", "TV-regularised reconstruction", "U-Net prox",
                  "GLOW prox (proposed)"):  # fmt: skip
        assert section.count(f"| {label} |") == 2, label  # in distribution and OOD operator
    assert section.count("| latent optimisation |") == 1  # in distribution only
    for task in BEYOND_TASKS:
        for setting in ("in-distribution", "ood-measurement"):
            summary = json.loads((out / "eval" / task / f"{setting}.json").read_text())
            by_name = {m.get("key") or m["method"]: m for m in summary["methods"]}
            assert {"measurement", "unet", "glow"} <= by_name.keys()
            for method in summary["methods"]:
                assert method.get("failed_images", 0) == 0, (task, setting, method["method"])
            cell = f"{by_name['glow']['psnr_mean']:.2f} ± {by_name['glow']['psnr_std']:.2f}"
            assert cell in section
        assert (out / "figures" / f"{task}-in-distribution.png").stat().st_size > 1000
    assert "## Table" not in results and "small support" not in results  # no paper task ran
    assert "--tasks beyond" in results  # the command line that re-makes it
    assert "| super-resolution |" in results  # in the training table
