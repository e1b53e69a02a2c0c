"""``flowprox reproduce`` at the tiny preset on generated data: stages, resume, report."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
from conftest import smooth_uint8_images, write_face_data

from flowprox.cli.main import main
from flowprox.experiments.layout import Reproduction
from flowprox.experiments.pipeline import Pipeline
from flowprox.experiments.report import LABELS, PAPER, write_report


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


@pytest.fixture(scope="module")
def finished(data_dir: Path, tmp_path_factory) -> tuple[Path, list[str]]:
    """A finished tiny reproduction of denoising and inpainting: (out, its arguments)."""
    out = tmp_path_factory.mktemp("repro") / "run"
    arguments = ["reproduce", "--preset", "tiny", "--data", str(data_dir), "--out", str(out),
                 "--tasks", "denoise,inpaint"]  # fmt: skip
    assert main(arguments) == 0
    return out, arguments


def marks(out: Path) -> dict[str, str]:
    return {p.name: p.read_text() for p in sorted((out / "stages").glob("*.json"))}


def test_reproduce_runs_every_stage_writes_the_tables_and_skips_finished_stages(
    finished,
) -> None:
    out, arguments = finished
    results = (out / "results.md").read_text()
    for heading in ("Table I", "Table II", "Table III", "Table IV"):
        assert heading in results
    assert "--out RUN --tasks denoise,inpaint`" in results  # the command that re-makes it
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
    assert (out / "figures" / "curves.png").stat().st_size > 1000
    assert "| late gain (dB) | flattened |" in results
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
    assert main(arguments) == 0
    after = {p.name: p.read_text() for p in sorted((out / "stages").glob("*.json"))}
    assert set(after) == set(before)
    changed = [name for name in before if before[name] != after[name]]
    assert changed == ["train-inpaint-glow.json"]


# Stage fingerprints: a finished stage is reused only if made with the settings asked for now.


def test_each_stage_mark_holds_the_fingerprint_of_its_settings_and_inputs(finished) -> None:
    out, _ = finished
    prior = json.loads((out / "stages" / "prior.json").read_text())
    assert prior["fingerprint"]["settings"]["preset"] == "tiny"
    assert prior["fingerprint"]["settings"]["config"]["model"]["hidden"] == 16
    train = json.loads((out / "stages" / "train-denoise-glow.json").read_text())
    inputs = train["fingerprint"]["inputs"]
    assert inputs["prior/checkpoints/best.pt"].startswith("sha256:")
    assert train["fingerprint"]["settings"]["config"]["train"]["lr_step"] == 0.01


def test_rerun_with_another_preset_is_refused_listing_the_differences(finished, capsys) -> None:
    out, arguments = finished
    before = marks(out)
    assert main([*arguments, "--preset", "small"]) == 2
    err = capsys.readouterr().err
    assert "prior: preset 'tiny' -> 'small'" in err
    assert "model.hidden 16 -> 96" in err
    assert "train-denoise-glow:" in err and "--redo" in err
    assert marks(out) == before
    assert "preset `tiny`" in (out / "results.md").read_text()


def test_rerun_with_another_set_is_refused_listing_the_differences(finished, capsys) -> None:
    out, arguments = finished
    before = marks(out)
    assert main([*arguments, "--set", "train.lr_step=0.02"]) == 2
    err = capsys.readouterr().err
    for method in ("resnet", "unet", "glow", "pnp-glow"):
        assert f"train-denoise-{method}: train.lr_step 0.01 -> 0.02" in err
    assert "train-inpaint-unet-denoiser: train.lr_step 0.01 -> 0.02" in err
    assert "prior:" not in err  # --set changes the training runs, not the prior
    assert marks(out) == before


def test_unknown_redo_stage_is_a_clear_error(finished, capsys) -> None:
    _, arguments = finished
    assert main([*arguments, "--redo", "train-colorize"]) == 2
    assert "train-denoise-glow" in capsys.readouterr().err  # the valid names are listed


def test_redo_names_a_stage_and_every_stage_that_uses_its_results(finished, data_dir) -> None:
    out, _ = finished
    pipeline = Pipeline("tiny", data_dir, out, tasks=("denoise", "inpaint"))
    assert pipeline.runner.redo_names(["train-denoise-resnet"]) == [
        "train-denoise-resnet", "train-inpaint-resnet-denoiser", "evaluate-denoise",
        "evaluate-inpaint", "report",
    ]  # fmt: skip
    assert pipeline.runner.redo_names(["prior"]) == [s.name for s in pipeline.stages]
    assert pipeline.runner.redo_names(["evaluate"]) == [
        "evaluate-denoise",
        "evaluate-inpaint",
        "report",
    ]


def test_redo_reruns_the_stage(finished) -> None:
    out, arguments = finished
    before = marks(out)
    (out / "results.md").write_text("stale")
    assert main([*arguments, "--redo", "report"]) == 0
    after = marks(out)
    assert sorted(name for name in before if before[name] != after[name]) == ["report.json"]
    assert "preset `tiny`" in (out / "results.md").read_text()


def test_the_report_states_the_settings_read_from_its_stages(finished, data_dir) -> None:
    out, _ = finished
    # Written for a reproduction object that claims another preset and overrides: the header
    # still reports the settings the stages were made with.
    write_report(Reproduction("small", data_dir, out, tasks=("denoise",), overrides=("x=1",)))
    text = (out / "results.md").read_text()
    header = text.split("## Table I")[0]
    assert "preset `tiny`" in header and "small" not in header and "x=1" not in header


def test_unknown_task_is_a_clear_error(data_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown task"):
        Pipeline("tiny", data_dir, tmp_path, tasks=("colorize",))


def _one_npz(path: Path) -> Path:
    np.savez(
        path,
        train=smooth_uint8_images(64, 8, 0),
        val=smooth_uint8_images(16, 8, 1),
        test=smooth_uint8_images(16, 8, 2),
    )
    return path


def test_missing_ood_set_fails_before_any_stage_naming_ood_data(tmp_path: Path, capsys) -> None:
    one = _one_npz(tmp_path / "one.npz")
    out = tmp_path / "repro"
    code = main(["reproduce", "--preset", "tiny", "--data", str(one), "--out", str(out),
                 "--tasks", "denoise"])  # fmt: skip
    assert code == 2
    err = capsys.readouterr().err
    assert "--ood-data" in err and "anime64.npz" in err
    assert not out.exists()  # nothing trained, nothing left behind


def test_reproduce_validates_every_input_before_the_first_stage(
    data_dir: Path, tmp_path: Path, capsys
) -> None:
    one = _one_npz(tmp_path / "one.npz")
    anime = data_dir / "anime64.npz"
    base = ["reproduce", "--preset", "tiny", "--out", str(tmp_path / "repro"), "--tasks",
            "denoise"]  # fmt: skip
    np.savez(tmp_path / "no-test.npz", train=smooth_uint8_images(32, 8, 0),
             val=smooth_uint8_images(8, 8, 1))  # fmt: skip
    cases = [
        (["--data", str(one), "--ood-data", str(tmp_path / "none.npz")], "none.npz"),
        (["--data", str(tmp_path / "no-test.npz"), "--ood-data", str(anime)], "'test'"),
        (["--data", str(one), "--ood-data", str(one), "--device", "cuda:7"], "cuda:7"),
        (["--data", str(one), "--ood-data", str(anime), "--set", "train.lr=-1"], "train.lr"),
    ]
    for arguments, named in cases:
        assert main([*base, *arguments]) == 2, arguments
        err = capsys.readouterr().err
        assert named in err, err
        assert not (tmp_path / "repro").exists()
    # With an OOD set given, the single .npz passes every check.
    Pipeline("tiny", one, tmp_path / "ok", tasks=("denoise",), ood_data=anime).validate()
