"""Data loading: .npz files, image folders, splits, downsampling, datasets and load_splits."""

from __future__ import annotations

import time
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from flowprox.config import DataConfig
from flowprox.data.datasets import (
    CELEBA_HQ_SPLIT,
    ImageDataset,
    describe,
    downsample,
    load_image_folder,
    load_npz_arrays,
    load_splits,
    split_indices,
)

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def random_images(n: int, size: int, seed: int = 0) -> np.ndarray:
    """Random uint8 images ``(n, size, size, 3)``."""
    return np.random.default_rng(seed).integers(0, 256, (n, size, size, 3), dtype=np.uint8)


def solid(size: tuple[int, int], colour: tuple[int, int, int], mode: str = "RGB") -> Image.Image:
    """A uniform image of ``size = (width, height)`` in ``mode``."""
    return Image.new("RGB", size, colour).convert(mode)


# --------------------------------------------------------------------------------------------
# .npz files
# --------------------------------------------------------------------------------------------


def test_npz_round_trip_ignores_metadata(tmp_path: Path) -> None:
    train, val, test = random_images(5, 8, 0), random_images(2, 8, 1), random_images(3, 8, 2)
    path = tmp_path / "d.npz"
    np.savez(path, train=train, val=val, test=test, train_identity=np.arange(5, dtype=np.int32))
    arrays = load_npz_arrays([path])
    assert sorted(arrays) == ["test", "train", "val"]
    np.testing.assert_array_equal(arrays["train"], train)
    np.testing.assert_array_equal(arrays["val"], val)
    np.testing.assert_array_equal(arrays["test"], test)


def test_npz_concatenates_train_in_order(tmp_path: Path) -> None:
    a, b = random_images(4, 8, 0), random_images(3, 8, 1)
    val = random_images(2, 8, 2)
    np.savez(tmp_path / "a.npz", train=a, val=val)
    np.savez(tmp_path / "b.npz", train=b)
    arrays = load_npz_arrays([str(tmp_path / "a.npz"), tmp_path / "b.npz"])
    np.testing.assert_array_equal(arrays["train"], np.concatenate([a, b]))
    np.testing.assert_array_equal(arrays["val"], val)
    assert "test" not in arrays
    swapped = load_npz_arrays([tmp_path / "b.npz", tmp_path / "a.npz"])
    np.testing.assert_array_equal(swapped["train"], np.concatenate([b, a]))


def test_npz_missing_file_names_it(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="nope.npz"):
        load_npz_arrays([tmp_path / "nope.npz"])


def test_npz_without_split_keys(tmp_path: Path) -> None:
    path = tmp_path / "odd.npz"
    np.savez(path, images=random_images(2, 8))
    with pytest.raises(ValueError, match=r"odd\.npz.*none of the arrays"):
        load_npz_arrays([path])


def test_npz_wrong_dtype_and_shape(tmp_path: Path) -> None:
    path = tmp_path / "float.npz"
    np.savez(path, train=random_images(2, 8).astype(np.float32))
    with pytest.raises(ValueError, match=r"'train'.*\(N, H, W, 3\) uint8"):
        load_npz_arrays([path])
    gray = tmp_path / "gray.npz"
    np.savez(gray, test=random_images(2, 8)[..., 0])
    with pytest.raises(ValueError, match=r"'test'.*\(N, H, W, 3\) uint8"):
        load_npz_arrays([gray])


def test_npz_different_sizes_across_files(tmp_path: Path) -> None:
    np.savez(tmp_path / "a.npz", train=random_images(2, 8))
    np.savez(tmp_path / "b.npz", train=random_images(2, 16))
    with pytest.raises(ValueError, match="same image size"):
        load_npz_arrays([tmp_path / "a.npz", tmp_path / "b.npz"])


# --------------------------------------------------------------------------------------------
# Image folders
# --------------------------------------------------------------------------------------------


def test_folder_nested_mixed_formats_modes_and_shapes(tmp_path: Path) -> None:
    (tmp_path / "sub" / "deeper").mkdir(parents=True)
    files = {
        "a.png": solid((40, 40), (200, 10, 10)),
        "sub/b.jpg": solid((60, 40), (10, 200, 10)),
        "sub/deeper/c.webp": solid((40, 70), (10, 10, 200)),
        "d.bmp": solid((48, 48), (100, 100, 100)),
        "E.PNG": solid((40, 40), (50, 60, 70), mode="RGBA"),
        "sub/f.jpeg": solid((40, 50), (128, 128, 128), mode="L"),
    }
    for name, image in files.items():
        image.save(tmp_path / name)
    (tmp_path / "notes.txt").write_text("not an image")
    images, paths = load_image_folder(tmp_path, 16)
    assert images.shape == (6, 16, 16, 3)
    assert images.dtype == np.uint8
    assert paths == sorted(tmp_path / name for name in files)
    by_name = {p.name: img for p, img in zip(paths, images, strict=True)}
    # Lossless formats keep solid colours exactly; JPEG/WebP only approximately.
    np.testing.assert_array_equal(by_name["a.png"], np.full((16, 16, 3), (200, 10, 10)))
    np.testing.assert_array_equal(by_name["E.PNG"], np.full((16, 16, 3), (50, 60, 70)))
    np.testing.assert_array_equal(by_name["d.bmp"], np.full((16, 16, 3), 100))
    assert np.abs(by_name["f.jpeg"].astype(int) - 128).max() <= 2  # grayscale -> 3 equal channels
    assert np.abs(by_name["b.jpg"].astype(int) - (10, 200, 10)).max() <= 8
    assert np.abs(by_name["c.webp"].astype(int) - (10, 10, 200)).max() <= 8


def test_folder_centre_crop(tmp_path: Path) -> None:
    wide = np.zeros((30, 90, 3), dtype=np.uint8)
    wide[:, :30] = (255, 0, 0)
    wide[:, 30:60] = (0, 255, 0)
    wide[:, 60:] = (0, 0, 255)
    Image.fromarray(wide).save(tmp_path / "wide.png")
    tall = np.transpose(wide, (1, 0, 2)).copy()
    Image.fromarray(tall).save(tmp_path / "tall.png")
    images, _ = load_image_folder(tmp_path, 10)
    np.testing.assert_array_equal(images, np.broadcast_to((0, 255, 0), (2, 10, 10, 3)))


def test_folder_without_images(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"no images found.*\.png"):
        load_image_folder(tmp_path, 8)
    (tmp_path / "readme.txt").write_text("hello")
    with pytest.raises(ValueError, match=str(tmp_path)):
        load_image_folder(tmp_path, 8)
    with pytest.raises(FileNotFoundError, match="missing"):
        load_image_folder(tmp_path / "missing", 8)


@pytest.mark.parametrize("strict", [False, True])
def test_folder_image_smaller_than_resolution(tmp_path: Path, strict: bool) -> None:
    solid((64, 64), (1, 2, 3)).save(tmp_path / "big.png")
    solid((40, 20), (1, 2, 3)).save(tmp_path / "small.png")
    with pytest.raises(ValueError, match=r"small\.png.*data\.resolution"):
        load_image_folder(tmp_path, 32, strict=strict)


def test_folder_corrupt_files(tmp_path: Path) -> None:
    for i in range(3):
        solid((20, 20), (i, i, i)).save(tmp_path / f"good{i}.png")
    for i in range(7):
        (tmp_path / f"bad{i}.jpg").write_bytes(b"definitely not a jpeg")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        images, paths = load_image_folder(tmp_path, 8)
    assert images.shape == (3, 8, 8, 3)
    assert [p.name for p in paths] == ["good0.png", "good1.png", "good2.png"]
    assert len(caught) == 1
    message = str(caught[0].message)
    assert "skipped 7" in message and "--strict" in message
    assert "bad0.jpg" in message and "bad5.jpg" not in message  # only the first 5 are listed
    with pytest.raises(ValueError, match=r"bad0\.jpg"):
        load_image_folder(tmp_path, 8, strict=True)


def test_folder_all_corrupt(tmp_path: Path) -> None:
    (tmp_path / "x.png").write_bytes(b"\x89PNG broken")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(ValueError, match="could be read"):
            load_image_folder(tmp_path, 8)


# --------------------------------------------------------------------------------------------
# Splits
# --------------------------------------------------------------------------------------------


def test_split_indices_deterministic() -> None:
    a = split_indices(100, (0.8, 0.1, 0.1), seed=3)
    b = split_indices(100, (0.8, 0.1, 0.1), seed=3)
    c = split_indices(100, (0.8, 0.1, 0.1), seed=4)
    for split in ("train", "val", "test"):
        np.testing.assert_array_equal(a[split], b[split])
    assert not np.array_equal(a["train"], c["train"])


def test_split_indices_fractions() -> None:
    splits = split_indices(101, (0.8, 0.1, 0.1), seed=0)
    sizes = [len(splits[s]) for s in ("train", "val", "test")]
    assert sum(sizes) == 101 and abs(sizes[0] - 80.8) <= 1 and abs(sizes[1] - 10.1) <= 1
    together = np.concatenate(list(splits.values()))
    assert np.array_equal(np.sort(together), np.arange(101))  # disjoint and complete
    partial = split_indices(50, (0.5, 0.2, 0.0), seed=0)
    assert [len(partial[s]) for s in ("train", "val", "test")] == [25, 10, 0]


def test_split_indices_counts() -> None:
    splits = split_indices(30000, CELEBA_HQ_SPLIT, seed=0)
    assert [len(splits[s]) for s in ("train", "val", "test")] == [23000, 1500, 1500]
    together = np.concatenate(list(splits.values()))
    assert len(np.unique(together)) == 26000 and together.max() < 30000
    as_floats = split_indices(10, (6.0, 2.0, 2.0), seed=1)  # counts as read from TOML
    assert [len(as_floats[s]) for s in ("train", "val", "test")] == [6, 2, 2]


@pytest.mark.parametrize(
    ("sizes", "match"),
    [
        ((0.8, 0.2, 0.2), "add up to"),
        ((80, 20, 20), "only 100 are available"),
        ((0.8, 50, 0.1), "mix counts"),
        ((-0.1, 0.5, 0.5), ">= 0"),
        ((0.5, 0.5), "three numbers"),
    ],
)
def test_split_indices_bad_sizes(sizes: tuple, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        split_indices(100, sizes, seed=0)


# --------------------------------------------------------------------------------------------
# Downsampling and the dataset
# --------------------------------------------------------------------------------------------


def test_downsample_integer_factor_is_exact_block_mean() -> None:
    images = random_images(3, 8, seed=5)
    images[0, :2, :2, 0] = [[0, 1], [1, 1]]  # mean 0.75 -> 1
    images[0, :2, :2, 1] = [[0, 0], [1, 0]]  # mean 0.25 -> 0
    images[0, :2, :2, 2] = [[254, 255], [255, 255]]  # mean 254.75 -> 255
    out = downsample(images, 4)
    assert out.shape == (3, 4, 4, 3) and out.dtype == np.uint8
    assert out[0, 0, 0].tolist() == [1, 0, 255]
    expected = images.reshape(3, 4, 2, 4, 2, 3).astype(np.float64).mean(axis=(2, 4))
    assert np.abs(out - expected).max() <= 0.5
    quarter = downsample(images, 2)
    expected4 = images.reshape(3, 2, 4, 2, 4, 3).astype(np.float64).mean(axis=(2, 4))
    assert np.abs(quarter - expected4).max() <= 0.5
    big = random_images(2, 64, seed=6)  # factor 32: the sums overflow uint16
    expected_big = big.astype(np.float64).mean(axis=(1, 2), keepdims=True)
    assert np.abs(downsample(big, 1) - expected_big).max() <= 0.5


def test_downsample_non_integer_factor_and_limits() -> None:
    flat = np.full((2, 48, 48, 3), 77, dtype=np.uint8)
    out = downsample(flat, 32)
    assert out.shape == (2, 32, 32, 3) and out.dtype == np.uint8
    np.testing.assert_array_equal(out, 77)
    images = random_images(2, 48)
    reference = np.asarray(Image.fromarray(images[1]).resize((32, 32), Image.Resampling.LANCZOS))
    np.testing.assert_array_equal(downsample(images, 32)[1], reference)
    assert downsample(images, 48) is images
    with pytest.raises(ValueError, match="data.resolution <= 48"):
        downsample(images, 64)


def test_image_dataset() -> None:
    images = random_images(4, 8)
    images[0, 0, 0] = (0, 255, 128)
    dataset = ImageDataset(images)
    assert len(dataset) == 4 and dataset.resolution == 8
    item = dataset[0]
    assert item.shape == (3, 8, 8) and item.dtype == torch.float32
    assert 0.0 <= float(item.min()) and float(item.max()) <= 1.0
    assert item[:, 0, 0].tolist() == pytest.approx([0.0, 1.0, 128 / 255])
    torch.testing.assert_close(dataset[2], torch.from_numpy(images[2]).permute(2, 0, 1) / 255.0)
    assert dataset.tensor.dtype == torch.uint8
    with pytest.raises(ValueError, match="uint8"):
        ImageDataset(images.astype(np.float32))


# --------------------------------------------------------------------------------------------
# load_splits
# --------------------------------------------------------------------------------------------


def test_load_splits_celeba_directory_layout(tmp_path: Path) -> None:
    train, extra = random_images(6, 32, 0), random_images(4, 32, 1)
    val, test = random_images(3, 32, 2), random_images(2, 32, 3)
    np.savez(tmp_path / "celeba64.npz", train=train, val=val, test=test)
    np.savez(tmp_path / "celeba64_train_extra.npz", train=extra)
    np.savez(tmp_path / "anime64.npz", test=random_images(5, 32, 4))  # not read
    splits = load_splits(DataConfig(path=str(tmp_path), resolution=16))
    assert {k: len(v) for k, v in splits.items()} == {"train": 10, "val": 3, "test": 2}
    assert all(d.resolution == 16 for d in splits.values())
    expected = downsample(np.concatenate([train, extra]), 16)
    torch.testing.assert_close(
        splits["train"][7], torch.from_numpy(expected[7]).permute(2, 0, 1) / 255
    )
    assert describe(splits) == "train 10, val 3, test 2 images at 16x16"
    short = load_splits(DataConfig(path=str(tmp_path), resolution=16, max_train_images=4))
    assert len(short["train"]) == 4


def test_load_splits_npz_files_and_errors(tmp_path: Path) -> None:
    np.savez(tmp_path / "a.npz", train=random_images(3, 16, 0))
    np.savez(tmp_path / "b.npz", train=random_images(2, 16, 1), val=random_images(1, 16, 2))
    both = load_splits(DataConfig(path=f"{tmp_path / 'a.npz'}, {tmp_path / 'b.npz'}", resolution=8))
    assert {k: len(v) for k, v in both.items()} == {"train": 5, "val": 1}
    np.savez(tmp_path / "anime.npz", test=random_images(4, 16, 3))
    only_test = load_splits(DataConfig(path=str(tmp_path / "anime.npz"), resolution=16))
    assert list(only_test) == ["test"]
    with pytest.raises(FileNotFoundError, match=r"nowhere.*\.npz"):
        load_splits(DataConfig(path=str(tmp_path / "nowhere"), resolution=8))
    with pytest.raises(ValueError, match="no celeba64.npz"):
        load_splits(DataConfig(path=str(tmp_path), resolution=8))
    with pytest.raises(ValueError, match="data.path is empty"):
        load_splits(DataConfig(path="", resolution=8))


def test_load_splits_image_folder(tmp_path: Path) -> None:
    colours = [(i * 12, 255 - i * 12, 7) for i in range(20)]
    for i, colour in enumerate(colours):
        folder = tmp_path / f"group{i % 3}"
        folder.mkdir(exist_ok=True)
        solid((24, 30), colour).save(folder / f"img{i:02d}.png")
    config = DataConfig(path=str(tmp_path), resolution=8, split_sizes=(0.6, 0.2, 0.2))
    splits = load_splits(config)
    assert {k: len(v) for k, v in splits.items()} == {"train": 12, "val": 4, "test": 4}
    seen = [
        tuple(round(float(v) * 255) for v in dataset[i][:, 0, 0])
        for dataset in splits.values()
        for i in range(len(dataset))
    ]
    assert sorted(seen) == sorted(colours)  # disjoint and complete
    again = load_splits(config)
    torch.testing.assert_close(again["val"].tensor, splits["val"].tensor)


# --------------------------------------------------------------------------------------------
# Real data (only when ../shared/data is present)
# --------------------------------------------------------------------------------------------


def test_real_celeba_data() -> None:
    if not (SHARED_DATA / "celeba64.npz").is_file():
        pytest.skip("../shared/data not present: real-data test skipped")
    start = time.perf_counter()
    splits = load_splits(DataConfig(path=str(SHARED_DATA), resolution=32))
    assert {k: len(v) for k, v in splits.items()} == {
        "train": 5000 + 7565,
        "val": 1583,
        "test": 1574,
    }
    for dataset in splits.values():
        assert dataset.resolution == 32 and dataset.tensor.dtype == torch.uint8
        assert 0 <= int(dataset.tensor.min()) and int(dataset.tensor.max()) <= 255
        assert 40 < float(dataset.tensor.float().mean()) < 200  # real photographs, not blank
    item = splits["test"][0]
    assert item.shape == (3, 32, 32) and 0.0 <= float(item.min()) <= float(item.max()) <= 1.0
    assert describe(splits) == "train 12565, val 1583, test 1574 images at 32x32"
    assert time.perf_counter() - start < 30


# --------------------------------------------------------------------------------------------
# Bit depths and modes of the files in a folder
# --------------------------------------------------------------------------------------------


def test_folder_decodes_every_mode_by_its_bit_depth(tmp_path: Path) -> None:
    from conftest import write_png

    level = np.full((16, 16), 0.3)
    expected = {  # name: the 8-bit RGB value the image must become
        "grey16.png": (77, 77, 77),
        "grey32.tif": (77, 77, 77),
        "rgb16.png": (77, 153, 230),
        "rgb16.tif": (77, 153, 230),
        "rgba16.png": (166, 204, 242),  # half transparent, on white
        "la8.png": (166, 166, 166),
        "palette.png": (10, 200, 30),
        "bilevel.png": (255, 255, 255),
    }
    Image.fromarray((level * 65535).round().astype(np.uint16)).save(tmp_path / "grey16.png")
    Image.fromarray((level * 65535).round().astype(np.int32)).save(tmp_path / "grey32.tif")
    rgb16 = (np.stack([level, 2 * level, 3 * level], -1) * 65535).round().astype(np.uint16)
    write_png(tmp_path / "rgb16.png", rgb16)
    import tifffile

    tifffile.imwrite(tmp_path / "rgb16.tif", rgb16, photometric="rgb")
    half = np.full((16, 16, 1), 32768, dtype=np.uint16)
    write_png(tmp_path / "rgba16.png", np.concatenate([rgb16, half], -1))
    la = np.stack([np.full((16, 16), 77), np.full((16, 16), 128)], -1).astype(np.uint8)
    Image.fromarray(la, mode="LA").save(tmp_path / "la8.png")
    solid((16, 16), (10, 200, 30)).quantize(4).save(tmp_path / "palette.png")
    Image.new("1", (16, 16), 1).save(tmp_path / "bilevel.png")
    images, paths = load_image_folder(tmp_path, 8)
    for path, image in zip(paths, images, strict=True):
        difference = np.abs(image.astype(int) - expected[path.name]).max()
        assert difference <= 1, (path.name, image[0, 0])  # not 255: the real bit depth


def test_folder_reads_tiff_files(tmp_path: Path) -> None:
    solid((16, 16), (1, 2, 3)).save(tmp_path / "a.tif")
    solid((16, 16), (4, 5, 6)).save(tmp_path / "b.TIFF")
    images, _ = load_image_folder(tmp_path, 8)
    assert images.shape == (2, 8, 8, 3)
