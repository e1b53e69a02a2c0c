"""``flowprox restore`` on image files, the typicality test, and the offline demo."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import smooth_uint8_images, write_face_data
from PIL import Image

from flowprox.apps.restore import read_image, read_mask
from flowprox.cli.main import main
from flowprox.config import PriorExperiment, load_config, preset_path
from flowprox.metrics.typicality import TypicalRange, auroc, calibrate
from flowprox.training.configs import unrolled_config
from flowprox.training.pretrain import pretrain_prior
from flowprox.training.task import train_unrolled


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> tuple[Path, Path]:
    """(data directory, checkpoint of a tiny GLOW prox denoiser with its prior)."""
    root = write_face_data(tmp_path_factory.mktemp("restore"), test=16)
    prior_config = load_config(
        PriorExperiment, preset_path("prior", "tiny"), [f'data.path="{root}"']
    )
    pretrain_prior(prior_config, root / "prior")
    config = unrolled_config(
        "denoise", "glow", "tiny", data=root, prior=root / "prior" / "checkpoints" / "best.pt",
        overrides=["train.max_steps=40"],
    )  # fmt: skip
    train_unrolled(config, root / "glow")
    return root, root / "glow" / "checkpoints" / "best.pt"


def _write_images(folder: Path, count: int, size: tuple[int, int]) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for index, array in enumerate(smooth_uint8_images(count, 8, 7)):
        path = folder / f"face{index}.png"
        Image.fromarray(array).resize(size, Image.BICUBIC).save(path)
        paths.append(path)
    return paths


def test_simulate_restores_images_of_another_size_and_prints_psnr(
    trained: tuple[Path, Path], tmp_path: Path, capsys
) -> None:
    data, checkpoint = trained
    paths = _write_images(tmp_path / "in", 3, (20, 12))
    out = tmp_path / "out"
    code = main(["restore", *map(str, paths), "--checkpoint", str(checkpoint), "--out",
                 str(out), "--simulate", "--calibration-data", str(data)])  # fmt: skip
    assert code == 0
    printed = capsys.readouterr().out
    assert "PSNR restored" in printed and "bits/dim" in printed and "typical" in printed
    for path in paths:
        restored = read_image(out / f"{path.stem}_restored.png")
        assert restored.shape == (3, 12, 20)  # the input's own size
    rows = [line.split() for line in printed.splitlines() if line.startswith("face")]
    measured = [float(row[2]) for row in rows]
    restored_psnr = [float(row[3]) for row in rows]
    assert np.mean(restored_psnr) > np.mean(measured)


def test_typicality_warning_fires_on_noise(
    trained: tuple[Path, Path], tmp_path: Path, capsys
) -> None:
    data, checkpoint = trained
    noise = tmp_path / "noise.png"
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(noise)
    face = _write_images(tmp_path / "faces", 1, (8, 8))[0]
    arguments = ["restore", str(noise), str(face), "--checkpoint", str(checkpoint),
                 "--out", str(tmp_path / "out"), "--calibration-data", str(data)]  # fmt: skip
    assert main(arguments) == 0
    printed = capsys.readouterr().out
    warning = next(line for line in printed.splitlines() if line.startswith("warning:"))
    assert "noise.png" in warning  # random noise scores far above the faces' threshold


def test_calibration_flags_the_false_alarm_fraction_of_val() -> None:
    values = torch.arange(1000, dtype=torch.float64) / 1000
    typical = calibrate(values, false_alarm=0.05)
    assert typical.high == pytest.approx(0.949, abs=1e-3)
    flagged = sum(not typical.is_typical(float(v)) for v in values)
    assert flagged == 50  # exactly the false-alarm fraction of the calibration images
    assert typical.is_typical(0.0)  # one-sided: a very likely image is not flagged
    with pytest.raises(ValueError, match="at least 20"):
        calibrate(values[:5])
    with pytest.raises(ValueError, match="false_alarm"):
        calibrate(values, false_alarm=0.7)


def test_stale_calibration_file_is_a_clear_error(tmp_path: Path) -> None:
    stale = tmp_path / "best.pt.typicality.json"
    stale.write_text('{"low": 1.0, "high": 2.0, "tail": 0.005, "images": 512, "source": "val"}')
    with pytest.raises(ValueError, match="--calibration-data"):
        TypicalRange.load(stale)


def test_auroc_counts_pairs_and_ties() -> None:
    inside = torch.tensor([1.0, 2.0, 3.0])
    assert auroc(inside, torch.tensor([4.0, 5.0])) == 1.0
    assert auroc(inside, torch.tensor([0.0])) == 0.0
    assert auroc(inside, torch.tensor([2.0])) == pytest.approx(0.5)  # 1 above, 1 tie, 1 below


def test_unreadable_image_and_mask_are_clear_errors(
    trained: tuple[Path, Path], tmp_path: Path, capsys
) -> None:
    _, checkpoint = trained
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"not an image")
    code = main(["restore", str(bad), "--checkpoint", str(checkpoint), "--out", str(tmp_path)])
    assert code == 2
    assert "not a readable image" in capsys.readouterr().err
    with pytest.raises(ValueError, match="could not be read"):
        read_mask(bad, 8)


def test_mask_image_gives_the_inpainting_operator(tmp_path: Path) -> None:
    mask = np.full((16, 16), 255, dtype=np.uint8)
    mask[4:12, 4:12] = 0
    Image.fromarray(mask).save(tmp_path / "mask.png")
    op = read_mask(tmp_path / "mask.png", 8)
    assert int((op.mask == 0).sum()) == 16  # the 8x8 hole at half the resolution


def test_demo_runs_offline_and_writes_a_figure_and_a_table(tmp_path: Path) -> None:
    assert main(["demo", "--out", str(tmp_path), "--minutes", "0.05"]) == 0
    table = (tmp_path / "demo.md").read_text()
    assert "GLOW prox (4 folds)" in table and "biharmonic inpainting" in table
    assert (tmp_path / "demo.png").stat().st_size > 5000
