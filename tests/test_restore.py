"""``flowprox restore`` on image files, the typicality test, and the offline demo."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import png_depth_and_colour_type, smooth_uint8_images, write_face_data, write_png
from PIL import Image

from flowprox.apps.restore import (
    InitialEstimates,
    Restorer,
    read_mask,
    restore_tiles,
    size_multiple,
    tile_grid,
)
from flowprox.cli.main import main
from flowprox.config import PriorExperiment, load_config, preset_path
from flowprox.metrics.quality import psnr
from flowprox.metrics.typicality import TypicalRange, auroc, calibrate
from flowprox.models.prior import load_prior
from flowprox.models.unrolled import build_unrolled, load_unrolled
from flowprox.optim.unrolled import prior_mode
from flowprox.physics.noise import measure_fixed
from flowprox.physics.operators import Identity
from flowprox.training.configs import unrolled_config
from flowprox.training.pretrain import pretrain_prior
from flowprox.training.task import train_unrolled
from flowprox.utils.images import read_image, write_image


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
                 str(out), "--simulate", "--calibration-data", str(data),
                 "--mode", "resize"])  # fmt: skip
    assert code == 0
    printed = capsys.readouterr().out
    assert "PSNR restored" in printed and "bits/dim" in printed and "typical" in printed
    for path in paths:
        restored, _ = read_image(out / f"{path.stem}_restored.png")
        assert restored.shape == (12, 20, 3)  # the input's own size
    rows = [line.split() for line in printed.splitlines() if line.startswith(str(paths[0].parent))]
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
        read_mask(bad)


def test_mask_image_is_read_at_its_own_size(tmp_path: Path) -> None:
    mask = np.full((16, 12), 255, dtype=np.uint8)
    mask[4:12, 4:8] = 0
    Image.fromarray(mask).save(tmp_path / "mask.png")
    observed = read_mask(tmp_path / "mask.png")
    assert observed.shape == (1, 16, 12)
    assert int((observed == 0).sum()) == 32  # the 8x4 hole, in the mask's own pixels


def test_demo_runs_offline_and_writes_a_figure_and_a_table(tmp_path: Path) -> None:
    assert main(["demo", "--out", str(tmp_path), "--minutes", "0.05"]) == 0
    table = (tmp_path / "demo.md").read_text()
    assert "GLOW prox (4 folds)" in table and "biharmonic inpainting" in table
    assert (tmp_path / "demo.png").stat().st_size > 5000


def _restore(checkpoint: Path, inputs: list[Path], out: Path, *extra: str) -> int:
    return main(["restore", *map(str, inputs), "--checkpoint", str(checkpoint), "--out", str(out),
                 *extra])  # fmt: skip


# ------------------------------------------------------------------ item 1: one output per input


def test_inputs_sharing_a_name_get_distinct_outputs(
    trained: tuple[Path, Path], tmp_path: Path, capsys
) -> None:
    _, checkpoint = trained
    faces = _write_images(tmp_path / "src", 3, (8, 8))
    inputs = [tmp_path / "a" / "face.png", tmp_path / "b" / "face.png", tmp_path / "a" / "face.jpg"]
    for source, target in zip(faces, inputs, strict=True):
        target.parent.mkdir(exist_ok=True)
        Image.open(source).save(target, quality=95)
    out = tmp_path / "out"
    assert _restore(checkpoint, inputs, out) == 0
    printed = capsys.readouterr().out
    written = sorted(p.name for p in out.iterdir())
    assert written == ["a_face_png_restored.png", "b_face_png_restored.png",
                       "face_jpg_restored.png"]  # fmt: skip
    assert f"wrote 3 restored image(s) to {out}" in printed
    for name in written:  # every input keeps its own output: a/ and b/ are different images
        assert read_image(out / name)[0].shape == (8, 8, 3)
    assert not np.array_equal(read_image(out / written[0])[0], read_image(out / written[1])[0])


def test_the_same_image_twice_is_refused(
    trained: tuple[Path, Path], tmp_path: Path, capsys
) -> None:
    _, checkpoint = trained
    face = _write_images(tmp_path / "src", 1, (8, 8))[0]
    twice = [face, tmp_path / "src" / ".." / "src" / face.name]
    assert _restore(checkpoint, twice, tmp_path / "out") == 2
    error = capsys.readouterr().err
    assert "twice" in error and face.name in error and len(error.splitlines()) == 1
    assert not (tmp_path / "out").exists()


# ------------------------------------------------------------------ item 5: exact decoding


def _ramp(height: int, width: int, channels: int, seed: int) -> np.ndarray:
    """Values in [0, 1] that use the whole range, (H, W, C)."""
    rng = np.random.default_rng(seed)
    return rng.uniform(0, 1, (height, width, channels))


def _mode_cases(folder: Path) -> dict[str, tuple[Path, np.ndarray, int, int]]:
    """name: (file, expected pixels (H, W, C) in [0, 1], channels, bits) for every mode."""
    folder.mkdir(parents=True, exist_ok=True)
    cases: dict[str, tuple[Path, np.ndarray, int, int]] = {}
    grey8 = (_ramp(6, 10, 1, 0) * 255).round().astype(np.uint8)
    Image.fromarray(grey8[..., 0], mode="L").save(folder / "grey8.png")
    cases["L"] = (folder / "grey8.png", grey8 / 255, 1, 8)
    grey16 = (_ramp(6, 10, 1, 1) * 65535).round().astype(np.uint16)
    Image.fromarray(grey16[..., 0]).save(folder / "grey16.png")  # Pillow's I;16 PNG
    cases["I;16"] = (folder / "grey16.png", grey16 / 65535, 1, 16)
    Image.fromarray(grey16[..., 0].astype(np.int32)).save(folder / "grey32.tif")  # mode I
    cases["I"] = (folder / "grey32.tif", grey16 / 65535, 1, 16)
    cases["I;16 by hand"] = (write_png(folder / "grey16b.png", grey16), grey16 / 65535, 1, 16)
    rgb8 = (_ramp(6, 10, 3, 2) * 255).round().astype(np.uint8)
    Image.fromarray(rgb8).save(folder / "rgb8.png")
    cases["RGB"] = (folder / "rgb8.png", rgb8 / 255, 3, 8)
    alpha = (_ramp(6, 10, 1, 3) * 255).round().astype(np.uint8)
    Image.fromarray(np.concatenate([rgb8, alpha], -1)).save(folder / "rgba8.png")
    on_white = rgb8 / 255 * (alpha / 255) + (1 - alpha / 255)
    cases["RGBA"] = (folder / "rgba8.png", on_white, 3, 8)
    Image.fromarray(np.concatenate([grey8, alpha], -1), mode="LA").save(folder / "la8.png")
    cases["LA"] = (folder / "la8.png", grey8 / 255 * (alpha / 255) + (1 - alpha / 255), 1, 8)
    palette = Image.fromarray(rgb8).quantize(16)
    palette.save(folder / "palette.png")
    cases["P"] = (folder / "palette.png", np.asarray(palette.convert("RGB")) / 255, 3, 8)
    bilevel = grey8 >= 128
    Image.fromarray(bilevel[..., 0]).save(folder / "bilevel.png")
    cases["1"] = (folder / "bilevel.png", bilevel.astype(float), 1, 8)
    rgb16 = (_ramp(6, 10, 3, 4) * 65535).round().astype(np.uint16)
    cases["RGB;16 PNG"] = (write_png(folder / "rgb16.png", rgb16), rgb16 / 65535, 3, 16)
    alpha16 = (_ramp(6, 10, 1, 5) * 65535).round().astype(np.uint16)
    a = alpha16 / 65535
    cases["RGBA;16 PNG"] = (
        write_png(folder / "rgba16.png", np.concatenate([rgb16, alpha16], -1)),
        rgb16 / 65535 * a + (1 - a), 3, 16,
    )  # fmt: skip
    cases["LA;16 PNG"] = (
        write_png(folder / "la16.png", np.concatenate([grey16, alpha16], -1)),
        grey16 / 65535 * a + (1 - a), 1, 16,
    )  # fmt: skip
    import tifffile

    tifffile.imwrite(folder / "rgb16.tif", rgb16, photometric="rgb")
    cases["RGB;16 TIFF"] = (folder / "rgb16.tif", rgb16 / 65535, 3, 16)
    return cases


@pytest.mark.parametrize(
    "name",
    ["L", "I;16", "I", "I;16 by hand", "RGB", "RGBA", "LA", "P", "1", "RGB;16 PNG",
     "RGBA;16 PNG", "LA;16 PNG", "RGB;16 TIFF"],
)  # fmt: skip
def test_every_mode_is_decoded_by_its_bit_depth_and_written_back_alike(
    tmp_path: Path, name: str
) -> None:
    path, expected, channels, bits = _mode_cases(tmp_path / "in")[name]
    pixels, image_format = read_image(path)
    assert pixels.dtype == np.float32 and pixels.shape == (6, 10, channels)
    np.testing.assert_allclose(pixels, expected, atol=1e-6)
    assert (image_format.channels, image_format.bits) == (channels, bits)
    written = write_image(pixels, tmp_path / "out.png", image_format)
    again, again_format = read_image(written)
    np.testing.assert_allclose(again, expected, atol=0.5 / (2**bits - 1) + 1e-6)
    assert (again_format.channels, again_format.bits) == (channels, bits)
    depth, colour_type = png_depth_and_colour_type(written)
    assert depth == bits and colour_type == (0 if channels == 1 else 2)


def test_transparency_is_composited_on_the_stated_background_or_refused(tmp_path: Path) -> None:
    path, _, _, _ = _mode_cases(tmp_path / "in")["RGBA"]
    white, fmt = read_image(path)
    black, _ = read_image(path, alpha="black")
    assert fmt.alpha and bool((white >= black).all()) and float((white - black).max()) > 0.5
    with pytest.raises(ValueError, match="transparen.*--alpha"):
        read_image(path, alpha="refuse")
    opaque = tmp_path / "opaque.png"
    Image.new("RGBA", (4, 4), (10, 20, 30, 255)).save(opaque)
    pixels, _ = read_image(opaque, alpha="refuse")  # nothing to composite
    np.testing.assert_allclose(pixels[0, 0], np.array([10, 20, 30]) / 255, atol=1e-6)


@pytest.mark.parametrize("bits", [8, 16])
def test_grey_and_16_bit_inputs_give_grey_16_bit_outputs_with_their_brightness(
    trained: tuple[Path, Path], tmp_path: Path, bits: int
) -> None:
    _, checkpoint = trained
    grey = (smooth_uint8_images(1, 8, 9)[0].mean(-1) / 255 * 0.5 + 0.2).astype(np.float64)
    path = tmp_path / f"grey{bits}.png"
    if bits == 16:
        Image.fromarray((grey * 65535).round().astype(np.uint16)).save(path)
    else:
        Image.fromarray((grey * 255).round().astype(np.uint8)).save(path)
    out = tmp_path / "out"
    assert _restore(checkpoint, [path], out) == 0
    with Image.open(out / f"grey{bits}_restored.png") as written:
        assert written.mode == ("I;16" if bits == 16 else "L")  # grey stays one channel
    restored, image_format = read_image(out / f"grey{bits}_restored.png")
    assert (image_format.channels, image_format.bits) == (1, bits)
    assert abs(float(restored.mean()) - float(grey.mean())) < 0.1  # not a white image


# ------------------------------------------------------------------ item 6: the user's resolution


def test_tiled_restore_of_four_copies_matches_per_tile_restores(
    trained: tuple[Path, Path],
) -> None:
    _, checkpoint = trained
    network, config = load_unrolled(checkpoint)
    size = config.data.resolution
    image = torch.from_numpy(smooth_uint8_images(1, size, 11)[0]).permute(2, 0, 1) / 255
    y = measure_fixed(Identity(), image[None].float(), 0.2, seed=3)
    four = y.repeat(1, 1, 2, 2)  # four copies of a model-size measurement
    with torch.no_grad():
        single = network(y, Identity())
        tiled = restore_tiles(network, four, Identity(), size)
    assert tiled.shape == four.shape
    expected = single.repeat(1, 1, 2, 2)
    corners, weights = tile_grid(2 * size, 2 * size, size)
    total = weights_total(corners, weights, 2 * size)
    torch.testing.assert_close(total, torch.ones_like(total))  # the weights sum to 1
    copies = 0
    for (top, left), weight in zip(corners, weights, strict=True):
        if top % size or left % size:
            continue  # a tile across the copies' borders
        copies += 1
        inside = weight > 1 - 1e-6  # where this tile alone gives the output
        assert int(inside.sum()) >= (size // 2) ** 2
        window = (..., slice(top, top + size), slice(left, left + size))
        torch.testing.assert_close(
            tiled[window][..., inside], expected[window][..., inside], atol=1e-5, rtol=0
        )
    assert copies == 4
    # and close to the copies elsewhere too (tiles across the copies' borders see other content;
    # 29.4 dB with the proximal data step, 30+ with the gradient one)
    assert float(psnr(tiled, expected)) > 25


def weights_total(corners: list[tuple[int, int]], weights: torch.Tensor, side: int) -> torch.Tensor:
    total = torch.zeros(side, side, dtype=weights.dtype)
    tile = weights.shape[-1]
    for (top, left), weight in zip(corners, weights, strict=True):
        total[top : top + tile, left : left + tile] += weight
    return total


def test_initial_estimate_is_the_prior_mode_at_the_image_size(trained: tuple[Path, Path]) -> None:
    _, checkpoint = trained
    network, config = load_unrolled(checkpoint)
    prior, _ = load_prior(config.prior)
    size = config.data.resolution
    initial = InitialEstimates(network, config)
    torch.testing.assert_close(initial((size, size)), network.x0)
    x0 = initial((12, 20))
    assert x0.shape == (1, 3, 12, 20)
    torch.testing.assert_close(x0, prior_mode(prior, (12, 20)))
    with torch.no_grad():
        y = torch.rand(2, 3, 12, 20)
        assert network(y, Identity(), x0=x0).shape == (2, 3, 12, 20)


def test_native_simulate_scores_the_written_file_against_the_input(
    trained: tuple[Path, Path], tmp_path: Path, capsys
) -> None:
    _, checkpoint = trained
    paths = _write_images(tmp_path / "in", 2, (18, 10))  # not a multiple of 2**levels = 4
    out = tmp_path / "out"
    assert _restore(checkpoint, paths, out, "--simulate", "--noise", "0.1") == 0  # native
    printed = capsys.readouterr().out
    assert "mode native" in printed
    rows = [line.split() for line in printed.splitlines() if line.startswith(str(paths[0].parent))]
    for path, row in zip(paths, rows, strict=True):
        original, _ = read_image(path)
        restored, _ = read_image(out / f"{path.stem}_restored.png")
        measured, _ = read_image(out / f"{path.stem}_measurement.png")
        assert restored.shape == original.shape == (10, 18, 3)
        as_batch = [torch.from_numpy(a).permute(2, 0, 1)[None] for a in (restored, original)]
        assert float(row[3]) == pytest.approx(float(psnr(*as_batch)), abs=0.01)
        as_batch[0] = torch.from_numpy(measured).permute(2, 0, 1)[None]
        assert float(row[2]) == pytest.approx(float(psnr(*as_batch)), abs=0.01)


@pytest.mark.parametrize(("mode", "window"), [("native", 4), ("tiles", 4), ("resize", 8)])
def test_window_is_in_the_inputs_pixels(
    trained: tuple[Path, Path], tmp_path: Path, mode: str, window: int
) -> None:
    _, checkpoint = trained
    path = _write_images(tmp_path / "in", 1, (16, 16))[0]
    out = tmp_path / "out"
    code = _restore(checkpoint, [path], out, "--simulate", "--noise", "0", "--window",
                    str(window), "--mode", mode)  # fmt: skip
    assert code == 0
    measured, _ = read_image(out / f"{path.stem}_measurement.png")
    hole = (measured == 0).all(-1)
    assert int(hole.sum()) == window * window
    start = (16 - window) // 2
    assert bool(hole[start : start + window, start : start + window].all())
    assert read_image(out / f"{path.stem}_restored.png")[0].shape == (16, 16, 3)


def test_mask_in_the_inputs_pixels_and_help_states_the_default_mode(
    trained: tuple[Path, Path], tmp_path: Path, capsys
) -> None:
    _, checkpoint = trained
    path = _write_images(tmp_path / "in", 1, (16, 12))[0]  # 16 wide, 12 high
    mask = np.full((12, 16), 255, dtype=np.uint8)
    mask[2:5, 3:9] = 0
    Image.fromarray(mask).save(tmp_path / "mask.png")
    out = tmp_path / "out"
    code = _restore(checkpoint, [path], out, "--simulate", "--noise", "0", "--mask",
                    str(tmp_path / "mask.png"), "--mode", "tiles")  # fmt: skip
    assert code == 0
    measured, _ = read_image(out / f"{path.stem}_measurement.png")
    assert int((measured == 0).all(-1).sum()) == 18
    with pytest.raises(SystemExit):
        main(["restore", "--help"])
    assert "default: native" in " ".join(capsys.readouterr().out.split())


# ------------------------------------------------------------------ item 7: no ignored flag


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--prior", "/nonexistent.pt"], "/nonexistent.pt"),
        (["--noise", "0.1"], "--simulate"),
        (["--false-alarm", "0"], "--false-alarm"),
        (["--false-alarm", "1.5"], "--false-alarm"),
        (["--false-alarm", "0.1"], "--calibration-data"),
        (["--mask", "MASK"], "16x16"),
    ],
)
def test_flags_that_would_be_ignored_are_refused(
    trained: tuple[Path, Path], tmp_path: Path, capsys, extra: list[str], message: str
) -> None:
    _, checkpoint = trained
    path = _write_images(tmp_path / "in", 1, (8, 8))[0]
    Image.new("L", (16, 16), 255).save(tmp_path / "mask.png")  # not the image's 8x8
    extra = [str(tmp_path / "mask.png") if e == "MASK" else e for e in extra]
    out = tmp_path / "out"
    assert _restore(checkpoint, [path], out, *extra) == 2
    error = capsys.readouterr().err
    assert message in error and len(error.strip().splitlines()) == 1
    assert not out.exists()  # refused before anything was written


@pytest.mark.parametrize("prox", ["unet", "resnet"])
@pytest.mark.parametrize("mode", ["native", "tiles"])
def test_cnn_networks_restore_images_of_any_size(prox: str, mode: str) -> None:
    config = unrolled_config("inpaint", prox, "tiny")  # U-Net depth 2: sides padded to 4
    network = build_unrolled(config, Identity()).eval()
    assert size_multiple(config, network) == (4 if prox == "unet" else 1)
    restorer = Restorer(network, config, mode, config.task)
    image = torch.rand(3, 10, 18)
    result = restorer.restore(image, Path("x.png"), simulate=True, seed=0)
    assert result.restored.shape == (3, 10, 18) and result.measurement is not None
    hole = (result.measurement == 0).all(0)  # the checkpoint's 3x3 hole, in the input's pixels
    assert int(hole.sum()) == 9 and bool(hole[3:6, 7:10].all())
    assert bool(torch.isfinite(result.restored).all())


def test_native_mode_without_the_runs_prior_is_a_clear_error(
    trained: tuple[Path, Path], tmp_path: Path
) -> None:
    _, checkpoint = trained
    network, config = load_unrolled(checkpoint)
    moved = dataclasses.replace(config, prior=str(tmp_path / "gone.pt"))
    with pytest.raises(ValueError, match=r"gone\.pt is not there.*--prior.*--mode tiles"):
        InitialEstimates(network, moved)((12, 20))
    other = tmp_path / "other"
    prior_config = load_config(PriorExperiment, preset_path("prior", "tiny"),
                               [f'data.path="{trained[0]}"', "train.max_steps=2",
                                "model.seed=7"])  # fmt: skip
    pretrain_prior(prior_config, other)
    with pytest.raises(ValueError, match="another mode than the checkpoint's x_0"):
        InitialEstimates(network, moved, other / "checkpoints" / "best.pt")((12, 20))
    size = config.data.resolution  # the stored x_0 needs no prior
    torch.testing.assert_close(InitialEstimates(network, moved)((size, size)), network.x0)


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_is_applied_as_pillow_shows_the_image(
    tmp_path: Path, orientation: int
) -> None:
    from PIL import ImageOps

    pixels = (_ramp(4, 6, 3, 8) * 255).round().astype(np.uint8)
    image = Image.fromarray(pixels)
    exif = image.getexif()
    exif[0x0112] = orientation
    image.save(tmp_path / "photo.jpg", exif=exif, quality=100)
    decoded, _ = read_image(tmp_path / "photo.jpg")
    with Image.open(tmp_path / "photo.jpg") as opened:
        shown = np.asarray(ImageOps.exif_transpose(opened)) / 255
    np.testing.assert_allclose(decoded, shown, atol=1e-6)


# ------------------------------------------------------------ posterior samples (--samples N)


@pytest.mark.parametrize(
    ("mode", "sampler", "described"),
    [("native", (), "ULA"), ("resize", (), "ULA"),
     ("native", ("--sample-leapfrog-steps", "3", "--sample-step", "0.02"), "mass diag"),
     ("native", ("--sample-leapfrog-steps", "3", "--sample-step", "0.02",
                 "--sample-precondition", "dense"), "(dense)")],
)  # fmt: skip
def test_samples_write_a_posterior_mean_and_std_of_the_inputs_size(
    trained: tuple[Path, Path],
    tmp_path: Path,
    capsys,
    mode: str,
    sampler: tuple[str, ...],
    described: str,
) -> None:
    _, checkpoint = trained
    paths = _write_images(tmp_path / "in", 2, (12, 10))
    out = tmp_path / "out"
    code = _restore(
        checkpoint, paths, out, "--simulate", "--samples", "12", "--mode", mode, *sampler
    )
    assert code == 0
    printed = capsys.readouterr().out
    assert "std max" in printed and "ESS" in printed
    assert "posterior samples: 12 per image by " in printed and described in printed
    for path in paths:
        restored, _ = read_image(out / f"{path.stem}_restored.png")
        mean, _ = read_image(out / f"{path.stem}_posterior_mean.png")
        std, _ = read_image(out / f"{path.stem}_posterior_std.png")
        assert mean.shape == std.shape == restored.shape == (10, 12, 3)
        assert std.max() == 1.0 and std.min() < std.max()  # scaled so its maximum is white
        # the chain starts at the restoration and stays near it: the mean is close to it
        mean_t, restored_t = (torch.from_numpy(a).permute(2, 0, 1)[None] for a in (mean, restored))
        assert float(psnr(mean_t, restored_t)[0]) > 20.0


def test_samples_need_a_whole_image_chain_and_the_prior(
    trained: tuple[Path, Path], tmp_path: Path, capsys
) -> None:
    _, checkpoint = trained
    paths = _write_images(tmp_path / "in", 1, (8, 8))
    code = _restore(checkpoint, paths, tmp_path / "out", "--samples", "4", "--mode", "tiles")
    assert code == 2
    assert "--mode tiles never sees" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # argparse: "must be a whole number >= 0"
        _restore(checkpoint, paths, tmp_path / "out", "--samples", "-1")
    assert "must be a whole number >= 0" in capsys.readouterr().err


# ------------------------------------------------ super-resolution, compressed sensing and MRI


def _trained_on(trained: tuple[Path, Path], task: str, steps: int) -> Path:
    data, _ = trained
    out = data / f"glow-{task}"
    if not (out / "checkpoints" / "best.pt").is_file():
        config = unrolled_config(
            task, "glow", "tiny", data=data, prior=data / "prior" / "checkpoints" / "best.pt",
            overrides=[f"train.max_steps={steps}"],
        )  # fmt: skip
        train_unrolled(config, out)
    return out / "checkpoints" / "best.pt"


def test_super_resolution_restores_a_low_resolution_image_at_factor_times_its_size(
    trained: tuple[Path, Path], tmp_path: Path, capsys
) -> None:
    checkpoint = _trained_on(trained, "super-resolution", 30)
    low = tmp_path / "low.png"
    Image.fromarray(smooth_uint8_images(1, 8, 9)[0][:5, :6]).save(low)  # 6x5: not a multiple of 4
    assert _restore(checkpoint, [low], tmp_path / "out") == 0
    restored, _ = read_image(tmp_path / "out" / "low_restored.png")
    assert restored.shape == (10, 12, 3)  # twice the input's size (the tiny preset's x2)
    # the restoration is consistent with the measurement: its 2x2 means are near the input
    means = torch.from_numpy(restored).permute(2, 0, 1)[None]
    means = torch.nn.functional.avg_pool2d(means, 2)
    given = torch.from_numpy(read_image(low)[0]).permute(2, 0, 1)[None]
    assert float(psnr(means, given)[0]) > 25.0
    clean = _write_images(tmp_path / "clean", 2, (12, 8))
    out = tmp_path / "simulated"
    assert _restore(checkpoint, clean, out, "--simulate", "--samples", "4") == 0
    printed = capsys.readouterr().out
    rows = [line.split() for line in printed.splitlines() if line.startswith(str(clean[0].parent))]
    assert len(rows) == 2 and all(float(row[2]) > 10 and float(row[3]) > 10 for row in rows)
    for path in clean:
        for suffix in ("restored", "measurement", "posterior_mean", "posterior_std"):
            assert read_image(out / f"{path.stem}_{suffix}.png")[0].shape == (8, 12, 3)
    odd = _write_images(tmp_path / "odd", 1, (11, 8))
    assert _restore(checkpoint, odd, tmp_path / "o", "--simulate") == 2
    assert "not a multiple of 2; crop it" in capsys.readouterr().err
    assert _restore(checkpoint, [low], tmp_path / "t", "--mode", "tiles") == 2
    assert "use --mode native" in capsys.readouterr().err


def test_compressed_sensing_restores_simulated_measurements_only(
    trained: tuple[Path, Path], tmp_path: Path, capsys
) -> None:
    checkpoint = _trained_on(trained, "compressed-sensing", 5)
    clean = _write_images(tmp_path / "clean", 1, (16, 8))
    assert _restore(checkpoint, clean, tmp_path / "out", "--simulate") == 0
    restored, _ = read_image(tmp_path / "out" / "face0_restored.png")
    assert restored.shape == (8, 16, 3)
    assert _restore(checkpoint, clean, tmp_path / "o2") == 2
    assert "measurement is not an image file" in capsys.readouterr().err
    odd = _write_images(tmp_path / "odd", 1, (10, 8))
    assert _restore(checkpoint, odd, tmp_path / "o3", "--simulate") == 2
    assert "cannot be padded after it is measured" in capsys.readouterr().err
