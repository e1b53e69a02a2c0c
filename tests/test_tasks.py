"""Task training, baselines and evaluation at the tiny preset on generated 8x8 images."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import smooth_uint8_images, write_face_data

from flowprox.cli.main import main
from flowprox.config import PriorExperiment, config_to_dict, load_config, preset_path
from flowprox.data.datasets import load_splits
from flowprox.evaluation.evaluate import load_evaluation_set, measurement_reconstructor, run_method
from flowprox.evaluation.reconstruct import stack_images
from flowprox.models.prior import load_prior
from flowprox.models.unrolled import build_unrolled, load_prox_weights, load_unrolled
from flowprox.optim.latent import solve_latent
from flowprox.physics.noise import measure_fixed
from flowprox.physics.operators import Identity, Mask
from flowprox.physics.tasks import SUBSAMPLING_KINDS, build_operator, ood_task, task_preset
from flowprox.training.configs import unrolled_config
from flowprox.training.pretrain import pretrain_prior
from flowprox.training.task import train_unrolled, with_prior_model
from flowprox.utils.checkpoint import load_checkpoint, save_checkpoint

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    """A CelebA-like directory (celeba64.npz) and an OOD set (anime64.npz, inverted colours)."""
    return write_face_data(tmp_path_factory.mktemp("faces"), test=48, anime=40)


@pytest.fixture(scope="module")
def prior_path(data_dir: Path, tmp_path_factory) -> Path:
    config = load_config(PriorExperiment, preset_path("prior", "tiny"), [f'data.path="{data_dir}"'])
    run = pretrain_prior(config, tmp_path_factory.mktemp("prior"))
    return run / "checkpoints" / "best.pt"


def train_tiny(
    data_dir: Path, prior: Path, out: Path, task: str, prox: str, *overrides: str, **kwargs
) -> Path:
    config = unrolled_config(
        task, prox, "tiny", data=data_dir, prior=prior, overrides=list(overrides), **kwargs
    )
    train_unrolled(config, out)
    return out / "checkpoints"


def validation_loss(network, config, data_dir: Path) -> float:
    from flowprox.data.datasets import load_splits

    splits = load_splits(config.data)
    x = stack_images(splits["val"], config.train.val_images)
    op = build_operator(config.task, config.data.resolution)
    y = measure_fixed(op, x, config.task.sigma_n, config.train.measurement_seed)
    with torch.no_grad():
        return float(F.mse_loss(network(y, op), x))


def test_training_lowers_the_validation_loss(data_dir: Path, prior_path: Path, tmp_path) -> None:
    config = unrolled_config("inpaint", "glow", "tiny", data=data_dir, prior=prior_path)
    prior, saved = load_prior(prior_path)
    config = with_prior_model(config, saved["model"])
    op = build_operator(config.task, 8)
    before = validation_loss(build_unrolled(config, op, prior).eval(), config, data_dir)
    checkpoints = train_tiny(data_dir, prior_path, tmp_path / "run", "inpaint", "glow")
    network, _ = load_unrolled(checkpoints / "best.pt")
    after = validation_loss(network, config, data_dir)
    assert after < 0.9 * before
    assert load_checkpoint(checkpoints / "best.pt")["best_score"] == pytest.approx(after, rel=1e-5)


@pytest.mark.parametrize("kind", SUBSAMPLING_KINDS)
def test_tasks_beyond_the_paper_train_through_the_same_code(
    kind: str, data_dir: Path, prior_path: Path, tmp_path
) -> None:
    """Super-resolution, compressed sensing and MRI measure fewer numbers than the image has
    (MRI's are complex, in two channels each); the GLOW prox trains on them through the same
    code and lowers its val loss. (Against the zero-filled pseudo-inverse it is measured at the
    ``small`` preset on real data: at 8x8 after 30 steps it is not yet ahead of it for x2
    super-resolution, 0.00203 against 0.00190.)"""
    config = unrolled_config(kind, "glow", "tiny", data=data_dir, prior=prior_path)
    prior, saved = load_prior(prior_path)
    config = with_prior_model(config, saved["model"])
    fresh = build_unrolled(config, build_operator(config.task, 8), prior).eval()
    before = validation_loss(fresh, config, data_dir)
    checkpoints = train_tiny(data_dir, prior_path, tmp_path / kind, kind, "glow")
    network, _ = load_unrolled(checkpoints / "best.pt")
    after = validation_loss(network, config, data_dir)
    splits = load_splits(config.data)
    x = stack_images(splits["val"], config.train.val_images)
    op = build_operator(config.task, 8)
    y = measure_fixed(op, x, config.task.sigma_n, config.train.measurement_seed)
    assert tuple(y.shape) == op.measurement_shape(x.shape)
    assert (y.shape != x.shape) == (kind != "compressed-sensing")
    assert math.isfinite(after) and after < before, (after, before)


@pytest.fixture(scope="module")
def denoiser(data_dir: Path, prior_path: Path, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("resnet-denoise")
    settings = ("train.lr=3e-3", "train.max_steps=80", "train.eval_every=20")
    return train_tiny(data_dir, prior_path, out, "denoise", "resnet", *settings) / "best.pt"


def test_trained_denoiser_beats_its_noisy_input(data_dir: Path, denoiser: Path) -> None:
    network, config = load_unrolled(denoiser)
    evaluation = load_evaluation_set(config.task, "in-distribution", data_dir, 8)
    noisy = run_method("measurement", measurement_reconstructor, evaluation)
    denoised = run_method("resnet", network, evaluation)
    assert np.mean(denoised.psnr) > np.mean(noisy.psnr) + 1.0
    assert np.mean(denoised.ssim) > np.mean(noisy.ssim)


@pytest.fixture(scope="module")
def glow_denoiser(data_dir: Path, prior_path: Path, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("glow-denoise")
    # mu_1 = 0.2 as the small reproduction's flow denoisers (experiments.plan.TaskSettings)
    settings = ("model.mu_init=0.2", "train.max_steps=80", "train.eval_every=20")
    return train_tiny(data_dir, prior_path, out, "denoise", "glow", *settings) / "best.pt"


def test_trained_glow_prox_denoiser_beats_its_noisy_input_and_its_start(
    data_dir: Path, prior_path: Path, glow_denoiser: Path
) -> None:
    network, config = load_unrolled(glow_denoiser)
    prior, _ = load_prior(prior_path)
    untrained = build_unrolled(config, build_operator(config.task, 8), prior).eval()
    evaluation = load_evaluation_set(config.task, "in-distribution", data_dir, 8)
    noisy = run_method("measurement", measurement_reconstructor, evaluation)
    denoised = run_method("glow", network, evaluation)
    start = run_method("glow, untrained", untrained, evaluation)
    assert np.mean(denoised.psnr) > np.mean(noisy.psnr) + 1.0
    assert np.mean(denoised.ssim) > np.mean(noisy.ssim)
    # the folds start from the prior mode: the untrained network already blends it with y
    assert np.mean(denoised.psnr) > np.mean(start.psnr) + 0.5


def test_reloaded_checkpoint_gives_identical_outputs(tmp_path: Path, prior_path: Path) -> None:
    prior, saved = load_prior(prior_path)
    config = unrolled_config("deblur", "glow", "tiny", prior=prior_path)
    config = with_prior_model(config, saved["model"])
    op = build_operator(config.task, 8)
    network = build_unrolled(config, op, prior)
    with torch.no_grad():
        for param in network.parameters():
            param.add_(0.01 * torch.randn_like(param))
    path = tmp_path / "net.pt"
    save_checkpoint(
        path, {"kind": "unrolled", "config": config_to_dict(config), "model": network.state_dict()}
    )
    reloaded, _ = load_unrolled(path)
    y = op.A(torch.rand(4, 3, 8, 8, generator=torch.Generator().manual_seed(0)))
    network.eval()
    with torch.no_grad():
        assert torch.equal(network(y, op), reloaded(y, op))


def test_ood_measurement_setting_changes_the_operator(data_dir: Path) -> None:
    inpaint = task_preset("tiny", "inpaint")
    inside = load_evaluation_set(inpaint, "in-distribution", data_dir, 8)
    outside = load_evaluation_set(inpaint, "ood-measurement", data_dir, 8)
    assert isinstance(inside.op, Mask) and isinstance(outside.op, Mask)
    assert int((inside.op.mask == 0).sum()) == 3 * 3
    assert int((outside.op.mask == 0).sum()) == 2 * 2
    assert torch.equal(inside.x, outside.x) and not torch.equal(inside.y, outside.y)

    denoise = task_preset("tiny", "denoise")
    assert ood_task(denoise).sigma_n == 0.25
    a = load_evaluation_set(denoise, "in-distribution", data_dir, 8)
    b = load_evaluation_set(denoise, "ood-measurement", data_dir, 8)
    assert isinstance(b.op, Identity)
    ratio = float((b.y - b.x).std() / (a.y - a.x).std())
    assert ratio == pytest.approx(0.25 / 0.2, rel=1e-6)  # same noise draws, scaled

    blur = task_preset("tiny", "deblur")
    assert build_operator(ood_task(blur), 8).sigma_b == 1.0
    anime = load_evaluation_set(blur, "ood-images", data_dir, 8, max_images=10)
    assert len(anime.x) == 10 and "anime64" in anime.source


def test_init_from_loads_the_denoiser_into_the_unrolled_baseline(
    data_dir: Path, prior_path: Path, denoiser: Path
) -> None:
    source, _ = load_unrolled(denoiser)
    config = unrolled_config("inpaint", "resnet", "tiny", data=data_dir, init_from=denoiser)
    network = build_unrolled(config, build_operator(config.task, 8))
    load_prox_weights(network, config, denoiser)
    theirs = source.state_dict()
    for key, value in network.state_dict().items():
        if key.startswith("proxes."):
            assert torch.equal(value, theirs[key]), key
    other = unrolled_config(
        "inpaint", "resnet", "tiny", overrides=["model.resnet_features=4"], init_from=denoiser
    )
    with pytest.raises(ValueError, match="another architecture.*resnet_features"):
        load_prox_weights(build_unrolled(other, build_operator(other.task, 8)), other, denoiser)


def test_plug_and_play_trains_only_the_step_sizes(
    data_dir: Path, prior_path: Path, tmp_path: Path
) -> None:
    # rho_0 = 1: at the noise-free floor (1e-11) the data steps alone invert the tiny blur
    # exactly and rho_k, already at its optimum, gets gradients below Adam's eps.
    rho = "model.rho_init=1.0"
    checkpoints = train_tiny(data_dir, prior_path, tmp_path / "pnp", "deblur", "pnp-glow", rho)
    state = load_checkpoint(checkpoints / "last.pt")["model"]
    prior_state = load_checkpoint(prior_path)["model"]
    flow_keys = [k for k in state if k.startswith("proxes.0.flow.")]
    assert flow_keys
    for key in flow_keys:
        assert torch.equal(state[key], prior_state[key.removeprefix("proxes.0.flow.")]), key
    network, _ = load_unrolled(checkpoints / "last.pt")
    config = unrolled_config("deblur", "pnp-glow", "tiny", prior=prior_path, overrides=[rho])
    fresh = build_unrolled(config, build_operator(config.task, 8), load_prior(prior_path)[0])
    for trained, initial in zip(network.step_parameters(), fresh.step_parameters(), strict=True):
        assert not torch.equal(trained, initial)  # every step parameter moved


def test_latent_optimisation_lowers_its_objective(prior_path: Path) -> None:
    flow, _ = load_prior(prior_path)
    op = Mask.center_square(8, 8, 3)
    x = torch.from_numpy(smooth_uint8_images(6, 8, 5)).permute(0, 3, 1, 2).float() / 255
    result = solve_latent(flow, op.A(x), op, steps=30, gamma=0.1, lr=0.05)
    assert result.objective[-1] < 0.5 * result.objective[0]
    assert result.x.shape == x.shape
    assert all(p.requires_grad for p in flow.parameters())  # restored afterwards


def _summaries(path: Path) -> list[dict]:
    methods = json.loads(path.read_text())["methods"]
    for method in methods:
        method.pop("seconds_per_image")
        method.pop("peak_memory_mib")
    return methods


def test_evaluation_is_deterministic_for_every_method(
    data_dir: Path, prior_path: Path, denoiser: Path, tmp_path: Path
) -> None:
    glow = train_tiny(
        data_dir, prior_path, tmp_path / "glow", "denoise", "glow", "train.max_steps=5"
    )
    arguments = [
        "evaluate", "--checkpoint", str(denoiser), str(glow / "best.pt"), "--data", str(data_dir),
        "--latent-prior", str(prior_path), "--latent-steps", "5", "--latent-gamma", "0.1",
        "--latent-lr", "0.05", "--setting", "ood-images", "--max-images", "12",
    ]  # fmt: skip
    assert main([*arguments, "--out", str(tmp_path / "a")]) == 0
    assert main([*arguments, "--out", str(tmp_path / "b"), "--batch-size", "5"]) == 0
    first = _summaries(tmp_path / "a" / "ood-images.json")
    assert first == _summaries(tmp_path / "b" / "ood-images.json")
    names = [m["method"] for m in first]
    assert names[:2] == ["measurement", "classical: TV denoising (Chambolle)"]
    assert any(n.startswith("latent") for n in names) and "GLOW prox" in names
    assert (tmp_path / "a" / "ood-images.csv").read_text() == (
        tmp_path / "b" / "ood-images.csv"
    ).read_text()


def test_train_command_rejects_a_flow_prox_without_a_prior(data_dir: Path, tmp_path, capsys):
    code = main(["train", "--task", "denoise", "--preset", "tiny", "--prox", "glow",
                 "--data", str(data_dir), "--out", str(tmp_path / "x")])  # fmt: skip
    assert code == 2
    assert "needs the pre-trained prior" in capsys.readouterr().err


def _train_command(data_dir: Path, prior: Path, out: Path, *extra: str) -> list[str]:
    return ["-m", "flowprox", "train", "--task", "deblur", "--preset", "tiny", "--prox", "glow",
            "--prior", str(prior), "--data", str(data_dir), "--out", str(out), *extra]  # fmt: skip


def _run(arguments: list[str], torchrun: bool = False) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    launcher = [sys.executable]
    if torchrun:
        launcher += ["-m", "torch.distributed.run", "--nproc_per_node", "2", "--standalone"]
    return subprocess.run([*launcher, *arguments], capture_output=True, text=True, env=env)


def _weights(run: Path) -> dict[str, torch.Tensor]:
    return load_checkpoint(run / "checkpoints" / "last.pt", kind="unrolled")["model"]


@pytest.mark.skipif(sys.platform != "linux", reason="torchrun with gloo is tested on Linux")
def test_task_training_under_ddp_matches_one_process_and_resumes_exactly(
    data_dir: Path, prior_path: Path, tmp_path: Path
) -> None:
    # rho_0 = 1: at the noise-free default floor (1e-11) the tiny blur is inverted by the data
    # steps alone and the first flow would barely move in 12 steps.
    steps = ["--set", "train.max_steps=12", "--set", "train.eval_every=6", "--set", "train.lr=1e-4",
             "--set", "model.rho_init=1.0"]  # fmt: skip
    single = tmp_path / "single"
    result = _run(_train_command(data_dir, prior_path, single, *steps))
    assert result.returncode == 0, result.stderr[-3000:]
    ddp = tmp_path / "ddp"
    result = _run(_train_command(data_dir, prior_path, ddp, *steps), torchrun=True)
    assert result.returncode == 0, result.stderr[-3000:]
    # Adam moves a weight by up to lr per step whatever its gradient's size, so float round-off
    # in small all-reduced gradients shows up in proportion to lr (~3e-6 at lr 1e-4, against
    # moves of up to 1.2e-3 in these 12 steps).
    prior = load_checkpoint(prior_path)["model"]
    moved = max(
        float((value - prior[key.removeprefix("proxes.0.flow.")]).abs().max())
        for key, value in _weights(single).items()
        if key.startswith("proxes.0.flow.") and value.is_floating_point()
    )
    assert moved > 5e-4
    for key, value in _weights(single).items():
        assert torch.allclose(_weights(ddp)[key], value, atol=3e-5, rtol=1e-4), key

    # stopped at step 6 and resumed: the same weights as the uninterrupted run, bit for bit
    resumed = tmp_path / "resumed"
    first = [*steps[:2], "--set", "train.max_steps=6", *steps[2:]]
    assert _run(_train_command(data_dir, prior_path, resumed, *first)).returncode == 0
    again = _run(_train_command(data_dir, prior_path, resumed, "--resume", *steps))
    assert again.returncode == 0, again.stderr[-3000:]
    for key, value in _weights(single).items():
        assert torch.equal(_weights(resumed)[key], value), key


def test_sample_posterior_writes_calibrated_statistics_and_never_overwrites(
    data_dir: Path, glow_denoiser: Path, tmp_path: Path, capsys
) -> None:
    out = tmp_path / "posterior"
    arguments = ["sample-posterior", "--model", str(glow_denoiser), "--data", str(data_dir),
                 "--out", str(out), "--images", "4", "--samples", "20", "--burn-in", "10",
                 "--thin", "1", "--step-size", "1e-4"]  # fmt: skip
    assert main(arguments) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["images"] == 4 and report["samples"] == 20 and report["burn_in"] == 10
    assert report["acceptance"] == 1.0  # unadjusted Langevin
    assert 0 <= report["coverage_50"] <= report["coverage_90"] <= 1
    # the rank ends lie outside torch.quantile's (further from the median): never less coverage
    assert report["coverage_90"] <= report["coverage_90_rank"] <= 1
    assert math.isfinite(report["psnr_posterior_mean"]) and math.isfinite(report["ess_median"])
    assert (out / "uncertainty.png").stat().st_size > 1000
    assert "| coverage_90 |" in (out / "report.md").read_text()
    capsys.readouterr()
    assert main(arguments) == 2  # the same --out again: refused, nothing overwritten
    assert "already holds a posterior report" in capsys.readouterr().err


def test_sample_posterior_reports_the_hole_and_the_observed_pixels_apart(
    data_dir: Path, prior_path: Path, tmp_path: Path
) -> None:
    """Inpainting: coverage and effective sample size inside the hole and outside it; the
    coverage over all pixels is the two's mixture, weighted by the hole's share of pixels."""
    settings = ("train.max_steps=4", "train.eval_every=2")
    model = train_tiny(data_dir, prior_path, tmp_path / "run", "inpaint", "glow", *settings)
    out = tmp_path / "posterior"
    arguments = ["sample-posterior", "--model", str(model / "best.pt"), "--data", str(data_dir),
                 "--out", str(out), "--images", "4", "--samples", "12", "--burn-in", "2",
                 "--step-size", "0.05", "--leapfrog-steps", "3", "--precondition"]  # fmt: skip
    assert main(arguments) == 0
    report = json.loads((out / "report.json").read_text())
    _, config = load_unrolled(model / "best.pt")
    op = build_operator(config.task, config.data.resolution)
    assert isinstance(op, Mask)
    hole = 1 - float(op.mask.mean())
    assert 0 < hole < 0.5
    for level in (50, 90):
        for suffix in ("", "_rank"):
            inside = report[f"coverage_{level}_hole{suffix}"]
            outside = report[f"coverage_{level}_observed{suffix}"]
            mixed = hole * inside + (1 - hole) * outside
            assert report[f"coverage_{level}{suffix}"] == pytest.approx(mixed, abs=1e-9)
    for region in ("hole", "observed"):
        assert 0 < report[f"ess_median_{region}"] <= report["samples"]


@pytest.mark.parametrize(("mass", "described"), [([], "diag"), (["dense"], "(dense)")])
def test_sample_posterior_by_preconditioned_hmc(
    data_dir: Path, glow_denoiser: Path, tmp_path: Path, capsys, mass: list, described: str
) -> None:
    out = tmp_path / "hmc"
    arguments = ["sample-posterior", "--model", str(glow_denoiser), "--data", str(data_dir),
                 "--out", str(out), "--images", "2", "--samples", "6", "--burn-in", "2",
                 "--step-size", "0.02", "--leapfrog-steps", "3",
                 "--precondition", *mass]  # fmt: skip
    assert main(arguments) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["sampler"].startswith("HMC, 3 leapfrog steps") and described in report["sampler"]
    assert report["samples"] == 6 and 0 < report["acceptance"] <= 1
    capsys.readouterr()
    no_hmc = [a for a in arguments if a not in ("--leapfrog-steps", "3")]
    no_hmc[no_hmc.index("--out") + 1] = str(tmp_path / "no-hmc")
    assert main(no_hmc) == 2  # a mass matrix without HMC: a clear error
    assert "pass --leapfrog-steps" in capsys.readouterr().err


def test_sample_posterior_on_prior_draws_covers_at_the_nominal_rate(
    data_dir: Path, glow_denoiser: Path, tmp_path: Path
) -> None:
    """``--split prior``: truths drawn from the prior and measured at the sampler's noise level,
    so the target posterior is exact; a sampler that mixes covers them at the nominal rate."""
    out = tmp_path / "prior-draws"
    arguments = ["sample-posterior", "--model", str(glow_denoiser), "--data", str(data_dir),
                 "--out", str(out), "--split", "prior", "--images", "8", "--samples", "60",
                 "--burn-in", "10", "--step-size", "0.1", "--leapfrog-steps", "8"]  # fmt: skip
    assert main(arguments) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["truth"].startswith("prior draws") and report["images"] == 8
    assert report["acceptance"] > 0.5
    assert 0.8 < report["coverage_90"] < 0.97, report["coverage_90"]
    assert 0.4 < report["coverage_50"] < 0.6, report["coverage_50"]
