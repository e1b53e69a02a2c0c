"""Prior pre-training: it learns, resumes exactly after SIGKILL, runs under DDP, guards NaN."""

from __future__ import annotations

import dataclasses
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import smooth_uint8_images
from torch import Tensor, nn

from flowprox.cli.main import main
from flowprox.config import (
    GlowConfig,
    PriorExperiment,
    config_from_dict,
    load_config,
    preset_path,
)
from flowprox.data.datasets import ImageDataset
from flowprox.models.prior import build_glow, load_prior
from flowprox.training.distributed import DistributedContext
from flowprox.training.pretrain import evaluate_bits_per_dim, initialize_actnorm
from flowprox.training.rundir import RunDirectory
from flowprox.training.trainer import LoopSettings, Trainer
from flowprox.utils.checkpoint import load_checkpoint, save_checkpoint

ROOT = Path(__file__).resolve().parents[1]
TINY = preset_path("prior", "tiny")


@pytest.fixture(scope="module")
def npz_path(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("data") / "faces.npz"
    np.savez(
        path,
        train=smooth_uint8_images(256, 8, 0),
        val=smooth_uint8_images(64, 8, 1),
        test=smooth_uint8_images(64, 8, 2),
    )
    return path


def run_cli(*args: str, **kwargs) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [sys.executable, "-m", "flowprox", *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        **kwargs,
    )


def pretrain_tiny(npz_path: Path, run: Path, *settings: str) -> subprocess.CompletedProcess:
    """``flowprox pretrain`` with the tiny preset on ``npz_path`` into ``run``."""
    overrides = [arg for setting in settings for arg in ("--set", setting)]
    return run_cli(
        "pretrain", "--config", str(TINY), "--data", str(npz_path), "--out", str(run), *overrides
    )


def model_state(run: Path) -> dict[str, torch.Tensor]:
    return load_checkpoint(run / "checkpoints" / "last.pt", kind="prior")["model"]


def test_pretraining_lowers_validation_bits_per_dim(npz_path: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    result = pretrain_tiny(npz_path, run, "train.max_steps=60", "train.lr=3e-3")
    assert result.returncode == 0, result.stderr
    for name in ("config.resolved.toml", "command.txt", "metrics.csv", "checkpoints/best.pt"):
        assert (run / name).is_file(), name
    assert any((run / "tensorboard").iterdir())
    config = load_config(PriorExperiment, TINY)
    fresh = build_glow(config.model)
    val = ImageDataset(np.load(npz_path)["val"])
    initialize_actnorm(fresh, torch.stack([val[i] for i in range(64)]), 8, 0)
    before = evaluate_bits_per_dim(fresh, val, 8)
    trained, _ = load_prior(run / "checkpoints" / "best.pt")
    after = evaluate_bits_per_dim(trained, val, 8)
    assert after < before - 0.3, (before, after)


def test_resume_after_sigkill_gives_bit_identical_weights(npz_path: Path, tmp_path: Path) -> None:
    common = ["--config", str(TINY), "--data", str(npz_path), "--set", "train.max_steps=60"]
    reference = tmp_path / "uninterrupted"
    assert run_cli("pretrain", *common, "--out", str(reference)).returncode == 0

    killed = tmp_path / "killed"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen(
        [sys.executable, "-m", "flowprox", "pretrain", *common, "--out", str(killed)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=env,
        cwd=ROOT,
    )
    last = killed / "checkpoints" / "last.pt"
    deadline = time.monotonic() + 120
    step = 0
    while time.monotonic() < deadline and process.poll() is None:
        if last.is_file():
            step = load_checkpoint(last)["step"]
            if step >= 15:
                break
        time.sleep(0.05)
    assert process.poll() is None, "the run ended before it could be killed: lengthen it"
    process.send_signal(signal.SIGKILL)
    process.wait()
    killed_at = load_checkpoint(last)["step"]
    assert 15 <= killed_at < 60

    resumed = run_cli("pretrain", *common, "--out", str(killed), "--resume")
    assert resumed.returncode == 0, resumed.stderr
    expected, actual = model_state(reference), model_state(killed)
    assert expected.keys() == actual.keys()
    for key in expected:
        assert torch.equal(expected[key], actual[key]), key
    steps = [int(line.split(",")[0]) for line in (killed / "metrics.csv").read_text().split()[1:]]
    assert steps == sorted(steps), "metrics rows after the last checkpoint were not dropped"


def test_resume_refuses_another_model_configuration(npz_path: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    base = ["--config", str(TINY), "--data", str(npz_path), "--out", str(run)]
    assert run_cli("pretrain", *base, "--set", "train.max_steps=5").returncode == 0
    result = run_cli("pretrain", *base, "--resume", "--set", "model.hidden=32")
    assert result.returncode == 2
    assert "model.hidden: checkpoint 16 vs requested 32" in result.stderr
    again = run_cli("pretrain", *base)
    assert again.returncode == 2 and "pass --resume" in again.stderr


def test_loading_a_prior_into_another_configuration_names_both(
    npz_path: Path, tmp_path: Path
) -> None:
    run = tmp_path / "run"
    assert pretrain_tiny(npz_path, run, "train.max_steps=2").returncode == 0
    with pytest.raises(
        ValueError,
        match=r"(?s)hidden: checkpoint 16 vs requested 64.*"
        r"checkpoint model: .*requested model: ",
    ):
        load_prior(
            run / "checkpoints" / "last.pt",
            expected=GlowConfig(levels=2, steps_per_level=2, hidden=64, image_size=8),
        )


def torchrun_pretrain(npz_path: Path, run: Path, *extra: str) -> subprocess.CompletedProcess:
    """``torchrun --nproc_per_node 2 -m flowprox pretrain`` (gloo on CPU), tiny preset."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2"]
    command += ["--standalone", "-m", "flowprox", "pretrain", "--config", str(TINY)]
    command += ["--data", str(npz_path), "--out", str(run), "--set", "train.eval_every=10", *extra]
    return subprocess.run(command, capture_output=True, text=True, env=env, cwd=ROOT)


@pytest.mark.skipif(sys.platform != "linux", reason="torchrun with gloo is tested on Linux")
def test_ddp_with_two_processes_matches_one_process_and_resumes(
    npz_path: Path, tmp_path: Path
) -> None:
    ddp = tmp_path / "ddp"
    result = torchrun_pretrain(npz_path, ddp, "--set", "train.max_steps=20")
    assert result.returncode == 0, result.stderr[-3000:]
    rows = (ddp / "metrics.csv").read_text().splitlines()
    header = rows[0].split(",")
    divergences = [r.split(",")[header.index("replica_divergence")] for r in rows[1:]]
    checked = [float(d) for d in divergences if d]
    assert checked and all(d == 0.0 for d in checked), "replicas differ across ranks"

    single = tmp_path / "single"
    assert (
        pretrain_tiny(npz_path, single, "train.max_steps=20", "train.eval_every=10").returncode == 0
    )
    for key, value in model_state(single).items():
        assert torch.allclose(model_state(ddp)[key], value, atol=1e-5, rtol=1e-4), key

    # a DDP run stopped at step 10 and resumed under DDP ends where the uninterrupted one does
    resumed = tmp_path / "ddp-resumed"
    assert torchrun_pretrain(npz_path, resumed, "--set", "train.max_steps=10").returncode == 0
    again = torchrun_pretrain(npz_path, resumed, "--resume", "--set", "train.max_steps=20")
    assert again.returncode == 0, again.stderr[-3000:]
    for key, value in model_state(ddp).items():
        assert torch.equal(model_state(resumed)[key], value), key


def test_sample_and_evaluate_prior_commands(npz_path: Path, tmp_path: Path, capsys) -> None:
    run = tmp_path / "run"
    assert pretrain_tiny(npz_path, run, "train.max_steps=5").returncode == 0
    grid = tmp_path / "grid.png"
    checkpoint = str(run / "checkpoints" / "best.pt")
    assert main(["sample", "--checkpoint", checkpoint, "--n", "6", "--out", str(grid)]) == 0
    assert main(["sample", "--checkpoint", str(tmp_path / "none.pt"), "--out", str(grid)]) == 2
    from PIL import Image

    # 6 samples of 8x8 in a grid of 6 columns with 2-pixel white padding
    assert Image.open(grid).size == (6 * 10 + 2, 10 + 2)
    assert main(["evaluate-prior", "--checkpoint", checkpoint, "--data", str(npz_path)]) == 0
    out = capsys.readouterr().out
    value = float(out.split("test bits/dim: ")[1].split()[0])
    assert 2.0 < value < 12.0


# --------------------------------------------------------------------------- trainer unit tests
class _Toy(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(3))


def _toy_trainer(tmp_path: Path, max_bad_steps: int = 2, max_restores: int = 1) -> Trainer:
    model = _Toy()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    settings = LoopSettings(
        max_steps=12,
        eval_every=100,
        checkpoint_every=3,
        log_every=1,
        max_bad_steps=max_bad_steps,
        max_restores=max_restores,
    )
    run_dir = RunDirectory(tmp_path / "toy")
    return Trainer(model, optimizer, None, settings, run_dir, DistributedContext(), "toy", {})


def test_nan_steps_are_skipped_and_the_good_state_restored(tmp_path: Path) -> None:
    trainer = _toy_trainer(tmp_path, max_bad_steps=2, max_restores=3)
    history: list[torch.Tensor] = []
    bad_steps = {4, 5}  # two in a row: skipped, then the state of the step-3 checkpoint comes back

    def loss_fn(model: nn.Module, batch: torch.Tensor, step: int) -> torch.Tensor:
        history.append(model.weight.detach().clone())
        loss = model.weight.sum()
        return loss * math.nan if step in bad_steps else loss

    trainer.fit(iter(lambda: torch.zeros(1), None), loss_fn, lambda m: {"score": 0.0})
    assert trainer.bad_steps_total == 2 and trainer.restores == 1
    assert torch.equal(history[5], history[4])  # the bad step changed nothing
    assert torch.equal(history[6], history[3])  # restored to the checkpoint after step 3
    assert torch.isfinite(trainer.model.weight).all()


def test_a_forward_pass_that_produces_nan_is_a_skipped_step(tmp_path: Path) -> None:
    from flowprox.utils.validation import check_finite

    trainer = _toy_trainer(tmp_path, max_bad_steps=3, max_restores=1)
    history: list[torch.Tensor] = []

    def loss_fn(model: nn.Module, batch: torch.Tensor, step: int) -> torch.Tensor:
        history.append(model.weight.detach().clone())
        hidden = model.weight * (math.inf if step == 4 else 1.0)
        check_finite(hidden, "hidden")  # raises NonFiniteError inside the forward pass
        return hidden.sum()

    trainer.fit(iter(lambda: torch.zeros(1), None), loss_fn, lambda m: {"score": 0.0})
    assert trainer.bad_steps_total == 1 and trainer.restores == 0 and trainer.step == 12
    assert torch.equal(history[5], history[4])  # the failed step changed nothing


def test_persistent_nan_aborts_with_a_clear_message(tmp_path: Path) -> None:
    trainer = _toy_trainer(tmp_path, max_bad_steps=2, max_restores=1)

    def loss_fn(model: nn.Module, batch: torch.Tensor, step: int) -> torch.Tensor:
        return model.weight.sum() * (math.nan if step >= 2 else 1.0)

    with pytest.raises(RuntimeError, match="training diverged.*lower the learning rate"):
        trainer.fit(iter(lambda: torch.zeros(1), None), loss_fn, lambda m: {"score": 0.0})


def test_checkpoints_are_written_atomically(tmp_path: Path, monkeypatch) -> None:
    path = tmp_path / "ckpt.pt"
    save_checkpoint(path, {"config": {}, "model": {"w": torch.ones(2)}})

    def broken_save(obj, file, *args, **kwargs):
        file.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(path, {"config": {}, "model": {"w": torch.zeros(2)}})
    monkeypatch.undo()
    assert torch.equal(load_checkpoint(path)["model"]["w"], torch.ones(2))
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt.pt"]


def test_unreadable_checkpoint_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "bad.pt"
    path.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="could not be read"):
        load_checkpoint(path)
    with pytest.raises(FileNotFoundError, match="not found"):
        load_checkpoint(tmp_path / "missing.pt")


def test_learning_rate_schedules() -> None:
    from flowprox.training.pretrain import learning_rate_factor

    constant = learning_rate_factor("constant", warmup_steps=4, max_steps=20)
    assert [constant(s) for s in (0, 3, 4, 19)] == [0.25, 1.0, 1.0, 1.0]
    cosine = learning_rate_factor("cosine", warmup_steps=4, max_steps=24, final_fraction=0.1)
    assert cosine(3) == 1.0 and cosine(4) == pytest.approx(1.0)
    assert cosine(14) == pytest.approx(0.55) and cosine(24) == pytest.approx(0.1)
    assert all(cosine(s) >= cosine(s + 1) for s in range(4, 30))
    with pytest.raises(ValueError, match="unknown lr_schedule"):
        learning_rate_factor("step", 1, 2)


def test_a_checkpoint_older_than_a_setting_resumes_and_loads_at_its_default_only(
    npz_path: Path, tmp_path: Path
) -> None:
    """A checkpoint written before ``model.log_sd_bound`` existed matches the setting's default
    (which keeps the former behaviour), on resume and on loading the prior, and nothing else."""
    run = tmp_path / "run"
    base = ["--config", str(TINY), "--data", str(npz_path), "--out", str(run)]

    def forget_the_setting() -> dict:
        for name in ("last.pt", "best.pt"):
            payload = load_checkpoint(run / "checkpoints" / name)
            del payload["config"]["model"]["log_sd_bound"]
            save_checkpoint(run / "checkpoints" / name, payload)
        return payload

    assert run_cli("pretrain", *base, "--set", "train.max_steps=5").returncode == 0
    forget_the_setting()
    resumed = run_cli("pretrain", *base, "--resume", "--set", "train.max_steps=8")
    assert resumed.returncode == 0, resumed.stderr
    payload = forget_the_setting()
    expected = config_from_dict(GlowConfig, payload["config"]["model"])
    load_prior(run / "checkpoints" / "best.pt", expected)
    with pytest.raises(ValueError, match="log_sd_bound: checkpoint '<absent>' vs requested 2.0"):
        load_prior(run / "checkpoints" / "best.pt", dataclasses.replace(expected, log_sd_bound=2.0))
    refused = run_cli("pretrain", *base, "--resume", "--set", "model.log_sd_bound=2.0")
    assert refused.returncode == 2
    assert "model.log_sd_bound: checkpoint '<absent>' vs requested 2.0" in refused.stderr


def _augmentation(noise_sigma_max: float, noise_fraction: float) -> Tensor | None:
    from flowprox.training.pretrain import MaximumLikelihood

    config = dataclasses.replace(
        PriorExperiment(),
        train=dataclasses.replace(
            PriorExperiment().train,
            batch_size=64,
            noise_sigma_max=noise_sigma_max,
            noise_fraction=noise_fraction,
        ),
    )
    task = MaximumLikelihood(config, None, torch.Size((3, 8, 8)), DistributedContext())
    return task._step_noise(step=7, device=torch.device("cpu"))[1]


def test_noise_augmentation_reaches_the_stated_share_of_images_with_the_same_noise() -> None:
    """``noise_fraction = p`` leaves about ``1 - p`` of the images clean and gives the others
    exactly the noise ``p = 1`` gives them (the default keeps the former draws); off is None."""
    assert _augmentation(0.0, 1.0) is None
    every = _augmentation(0.3, 1.0)
    assert every is not None and bool((every.flatten(1).abs().amax(dim=1) > 0).all())
    share = _augmentation(0.3, 0.25)
    noisy = share.flatten(1).abs().amax(dim=1) > 0
    assert 4 <= int(noisy.sum()) <= 32, int(noisy.sum())
    assert torch.equal(share[noisy], every[noisy])
    assert bool((share[~noisy] == 0).all())
    with pytest.raises(ValueError, match="noise_fraction"):
        _augmentation(0.3, 1.5)
