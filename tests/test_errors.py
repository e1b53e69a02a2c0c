"""Bad input gives a one-line error naming the fix, exit code 2, and no half-made run directory;
never a traceback (a property-based test draws config values for ``pretrain`` and ``train``)."""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import pytest
from conftest import smooth_uint8_images
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from flowprox.cli.main import main
from flowprox.config import PriorExperiment, load_config, preset_path
from flowprox.data.datasets import load_npz_arrays
from flowprox.training.configs import unrolled_config
from flowprox.training.pretrain import pretrain_prior
from flowprox.training.task import train_unrolled


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    """A good .npz, a truncated one and a text file named .npz."""
    root = tmp_path_factory.mktemp("errors")
    np.savez(
        root / "faces.npz",
        train=smooth_uint8_images(64, 8, 0),
        val=smooth_uint8_images(16, 8, 1),
        test=smooth_uint8_images(16, 8, 2),
    )
    content = (root / "faces.npz").read_bytes()
    (root / "truncated.npz").write_bytes(content[: len(content) // 2])
    (root / "text.npz").write_text("these are not images\n")
    return root


def run(argv: list[str]) -> int:
    """``flowprox ARGV``'s exit code (argparse's errors included)."""
    try:
        return main(argv)
    except SystemExit as exit_:
        return int(exit_.code or 0)


PRETRAIN = ["pretrain", "--preset", "tiny", "--data", "{data}/faces.npz"]
TRAIN = ["train", "--task", "denoise", "--prox", "resnet", "--preset", "tiny", "--data",
         "{data}/faces.npz"]  # fmt: skip


@pytest.mark.parametrize(
    ("argv", "named"),
    [
        (["pretrain", "--preset", "tiny", "--data", "{data}/truncated.npz"], "truncated.npz"),
        (["pretrain", "--preset", "tiny", "--data", "{data}/text.npz"], "text.npz"),
        ([*PRETRAIN, "--set", "train.batch_size=0"], "train.batch_size"),
        ([*PRETRAIN, "--set", "train.eval_every=0"], "train.eval_every"),
        ([*PRETRAIN, "--set", "train.max_steps=0"], "train.max_steps"),
        ([*PRETRAIN, "--set", "train.lr=nan"], "train.lr"),
        ([*TRAIN, "--set", "train.batch_size=0"], "train.batch_size"),
        ([*TRAIN, "--set", "train.max_steps=0"], "train.max_steps"),
        (
            [
                "train",
                "--task",
                "denoise",
                "--prox",
                "resnet",
                "--preset",
                "tiny",
                "--data",
                "{data}/truncated.npz",
            ],
            "truncated.npz",
        ),  # fmt: skip
    ],
    ids=[
        "truncated",
        "text",
        "batch0",
        "eval0",
        "steps0",
        "lr-nan",
        "train-batch0",
        "train-steps0",
        "train-truncated",
    ],  # fmt: skip
)
def test_bad_input_is_a_one_line_error_and_leaves_no_run_directory(
    argv: list[str], named: str, data: Path, tmp_path: Path, capsys
) -> None:
    out = tmp_path / "runs" / "run"
    code = run([part.format(data=data) for part in argv] + ["--out", str(out)])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert "\n" not in err and "Traceback" not in err
    assert named in err
    assert not (tmp_path / "runs").exists()


def test_out_that_is_an_existing_file_is_refused(data: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "notes.txt"
    out.write_text("keep")
    code = run([part.format(data=data) for part in PRETRAIN] + ["--out", str(out)])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "\n" not in err and "notes.txt" in err and "not a directory" in err
    assert out.read_text() == "keep"


@pytest.mark.parametrize(
    ("argv", "named"),
    [
        (["check-operator", "--size", "0"], "--size"),
        (["check-operator", "--size", "-3"], "--size"),
        (["glow-summary", "--folds", "0"], "--folds"),
        (["glow-summary", "--levels", "0"], "--levels"),
        (["glow-summary", "--size", "12", "--levels", "3"], "2**levels"),
        (["sample", "--checkpoint", "c.pt", "--out", "x.png", "--n", "0"], "--n"),
    ],
)
def test_bad_numbers_on_the_command_line_are_one_line_errors(
    argv: list[str], named: str, capsys
) -> None:
    assert run(argv) == 2
    captured = capsys.readouterr()
    err = captured.err.strip()
    assert "\n" not in err and named in err, err
    assert "parameters" not in captured.out  # nothing printed as if it had worked


def test_damaged_npz_files_are_value_errors_naming_the_file(data: Path) -> None:
    for name in ("truncated.npz", "text.npz"):
        with pytest.raises(ValueError, match=name):
            load_npz_arrays([data / name])


# --------------------------------------------------------------------------------------------
# Property: any config value gives a finished run or a ValueError/FileNotFoundError
# --------------------------------------------------------------------------------------------

VALUES = ["0", "-1", "nan", "inf", "-inf", "1e30", "1000000000000", "1", "3", "0.5", "true"]
PRIOR_KEYS = [
    "seed", "train.batch_size", "train.max_steps", "train.eval_every", "train.checkpoint_every",
    "train.log_every", "train.warmup_steps", "train.init_batch_size", "train.eval_batch_size",
    "train.val_images", "train.n_bits", "train.max_bad_steps", "train.max_restores", "train.lr",
    "train.grad_clip", "train.time_limit_minutes", "train.final_lr_fraction",
    "data.max_train_images", "data.resolution", "data.split_seed", "model.scale_floor",
]  # fmt: skip
TRAIN_KEYS = [
    "seed", "train.batch_size", "train.max_steps", "train.eval_every", "train.checkpoint_every",
    "train.log_every", "train.lr", "train.lr_step", "train.eps", "train.grad_clip",
    "train.max_bad_steps", "train.max_restores", "train.early_stopping_patience",
    "train.val_images", "train.eval_batch_size", "train.measurement_seed",
    "train.time_limit_minutes", "task.sigma_n", "model.mu_init", "model.lambda_init",
    "data.max_train_images",
]  # fmt: skip
#: every run is short unless a drawn value changes these (the two are never drawn together)
FAST = ["train.max_steps=4", "train.eval_every=2", "train.checkpoint_every=2",
        "train.log_every=1", "train.time_limit_minutes=0.01", "train.val_images=8"]  # fmt: skip


def _draws(keys: list[str]) -> st.SearchStrategy:
    pairs = st.tuples(st.sampled_from(keys), st.sampled_from(VALUES))
    return st.lists(pairs, min_size=1, max_size=2, unique_by=lambda pair: pair[0])


def _check_outcome(attempt, out: Path) -> None:
    try:
        attempt()
    except (ValueError, FileNotFoundError) as error:
        assert str(error).strip(), "an error without a message"
        # nothing left behind, or (a run that diverged after a checkpoint) a resumable run
        resumable = (out / "checkpoints" / "last.pt").is_file()
        assert not out.exists() or resumable, f"a half-made run directory after: {error}"
    else:
        assert (out / "checkpoints" / "best.pt").is_file()


def _slow(draws: list[tuple[str, str]]) -> bool:
    keys = {key for key, _ in draws}
    return {"train.max_steps", "train.time_limit_minutes"} <= keys


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(draws=_draws(PRIOR_KEYS))
def test_pretrain_with_any_config_value_finishes_or_says_why(draws, data: Path) -> None:
    assume(not _slow(draws))
    overrides = [f'data.path="{data / "faces.npz"}"', *FAST, *(f"{k}={v}" for k, v in draws)]
    with tempfile.TemporaryDirectory() as folder:
        out = Path(folder) / "run"

        def attempt() -> None:
            config = load_config(PriorExperiment, preset_path("prior", "tiny"), overrides)
            pretrain_prior(config, out)

        _check_outcome(attempt, out)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(draws=_draws(TRAIN_KEYS))
def test_train_with_any_config_value_finishes_or_says_why(draws, data: Path) -> None:
    assume(not _slow(draws))
    overrides = [*FAST, *(f"{k}={v}" for k, v in draws)]
    with tempfile.TemporaryDirectory() as folder:
        out = Path(folder) / "run"

        def attempt() -> None:
            config = unrolled_config(
                "denoise", "resnet", "tiny", data=data / "faces.npz", overrides=overrides
            )
            train_unrolled(config, out)

        _check_outcome(attempt, out)
