"""``flowprox demo``: the method end to end in minutes, offline, on faces shipped with scikit-image.

The images are the 100 faces of ``skimage.data.lfw_subset()`` (25x25 grey crops of Labeled
Faces in the Wild, bundled with scikit-image; cropped to 24x24 and repeated over three
channels): 80 for training (and their mirror images), 10 for validation, 10 for testing. The
demo pre-trains a small Glow prior on them, trains the 4-fold unrolled GLOW prox network to
inpaint a centre 8x8 hole, and compares it on the test faces with the measurement and
biharmonic inpainting: a PSNR table (``demo.md``) and a figure (``demo.png``). (Denoising is
not the demo's task: the flow's inverse is unstable on noisy images, see the README.)

A rerun reuses the two trained stages when their settings (``--minutes`` included) are those of
``stages/*.json``; with other settings it stops and lists them until ``--redo prior|train|all``.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from flowprox.config import (
    DataConfig,
    GlowConfig,
    PretrainConfig,
    PriorExperiment,
    TaskConfig,
    UnrolledExperiment,
    UnrolledModelConfig,
    UnrolledTrainConfig,
    config_to_dict,
)
from flowprox.evaluation.evaluate import (
    classical_method_name,
    classical_reconstructor,
    load_evaluation_set,
    markdown_table,
    measurement_reconstructor,
    run_method,
    tune_classical,
)
from flowprox.evaluation.figures import comparison_figure
from flowprox.models.unrolled import load_unrolled
from flowprox.training.pretrain import pretrain_prior
from flowprox.training.task import train_unrolled
from flowprox.utils.runlock import RunLock
from flowprox.utils.stages import Stage, StageRunner

RESOLUTION = 24
TASK = TaskConfig(kind="inpaint", window=8, ood_window=6)


def lfw_faces() -> dict[str, np.ndarray]:
    """Train (with mirror images), val and test splits of scikit-image's LFW faces, uint8."""
    from skimage.data import lfw_subset

    faces = np.asarray(lfw_subset()[:100])  # the first 100 images are faces
    if faces.dtype != np.uint8:
        faces = np.round(np.clip(faces, 0, 1) * 255).astype(np.uint8)
    faces = faces[:, :RESOLUTION, :RESOLUTION]
    rgb = np.repeat(faces[..., None], 3, axis=-1)
    train = rgb[:80]
    return {
        "train": np.concatenate([train, train[:, :, ::-1]]),
        "val": rgb[80:90],
        "test": rgb[90:100],
    }


def run_demo(
    out: str | Path, minutes: float = 1.5, seed: int = 0, redo: Sequence[str] = ()
) -> Path:
    """Run the demo into ``out``; returns the path of ``demo.md``.

    ``out`` is locked while the demo runs. Its two training stages (``prior``, ``train``) are
    reused on a rerun only if they were made with the same settings (``--minutes`` included);
    otherwise the demo stops, listing the differences, until ``redo`` names them (``--redo``).
    """
    if not math.isfinite(minutes) or minutes <= 0:
        raise ValueError(f"--minutes must be a number > 0, got {minutes}.")
    out = Path(out)
    with RunLock(out):
        return _run_demo(out, minutes, seed, redo)


def _portable(config: PriorExperiment | UnrolledExperiment) -> dict[str, Any]:
    """The config as fingerprinted: without the device, the data path (the demo writes its own
    data) and the prior's path (an input, fingerprinted by content)."""
    values = config_to_dict(config)
    values["train"].pop("device", None)
    values["data"].pop("path", None)
    values["data"].pop("num_workers", None)
    values.pop("prior", None)
    return values


def _run_demo(out: Path, minutes: float, seed: int, redo: Sequence[str]) -> Path:
    started = time.monotonic()
    data_path = out / "data" / "lfw_faces.npz"
    data = DataConfig(path=str(data_path), resolution=RESOLUTION)
    prior_run = out / "prior"
    prior_path = prior_run / "checkpoints" / "best.pt"
    prior_config = PriorExperiment(
        name="demo-prior",
        seed=seed,
        model=GlowConfig(  # additive couplings: a stable inverse on 160 grey faces (see README)
            levels=2, steps_per_level=4, hidden=48, image_size=RESOLUTION, additive=True
        ),
        data=data,
        train=PretrainConfig(
            batch_size=16, lr=2e-3, warmup_steps=50, lr_schedule="cosine", max_steps=2000,
            time_limit_minutes=minutes, init_batch_size=128, eval_every=100,
            checkpoint_every=100, log_every=20, eval_batch_size=64,
        ),
    )  # fmt: skip
    run = out / "glow-inpaint"
    config = UnrolledExperiment(
        name="demo-glow-inpaint",
        seed=seed,
        prior=str(prior_path),
        task=TASK,
        model=UnrolledModelConfig(prox="glow", num_folds=4),
        data=data,
        train=UnrolledTrainConfig(
            batch_size=8, lr=1e-4, max_steps=2000, time_limit_minutes=minutes, eval_every=20,
            checkpoint_every=20, log_every=5, early_stopping_patience=0, val_images=10,
        ),
    )  # fmt: skip

    def pretrain() -> dict[str, Any]:
        resume = (prior_run / "checkpoints" / "last.pt").is_file()
        pretrain_prior(prior_config, prior_run, resume=resume, argv=["demo"])
        return {"run": str(prior_run)}

    def train() -> dict[str, Any]:
        resume = (run / "checkpoints" / "last.pt").is_file()
        train_unrolled(config, run, resume=resume, argv=["demo"])
        return {"run": str(run)}

    stages = [
        Stage("prior", pretrain, lambda: {"config": _portable(prior_config)},
              outputs=lambda: [prior_run]),
        Stage("train", train, lambda: {"config": _portable(config)},
              lambda: {"prior/checkpoints/best.pt": prior_path}, ("prior",),
              outputs=lambda: [run]),
    ]  # fmt: skip
    runner = StageRunner(out, stages, "demo", {"minutes": minutes, "seed": seed})
    redone = runner.redo_names(redo)
    runner.check(skip=redone)
    runner.remove(redone)
    data_path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(data_path, **lfw_faces())
    runner.run("demo (pre-train the prior, train the unrolled GLOW prox)")

    print("evaluating on the test faces")
    network, trained = load_unrolled(run / "checkpoints" / "best.pt")
    evaluation = load_evaluation_set(TASK, "in-distribution", data_path, RESOLUTION)
    validation = load_evaluation_set(
        TASK, "in-distribution", data_path, RESOLUTION, seed=trained.train.measurement_seed,
        split="val",
    )  # fmt: skip
    weight, _ = tune_classical(validation)
    results = [
        run_method("measurement", measurement_reconstructor, evaluation, keep=4),
        run_method(classical_method_name(evaluation.op), classical_reconstructor(weight),
                   evaluation, keep=4),
        run_method("GLOW prox (4 folds)", network, evaluation, keep=4),
    ]  # fmt: skip
    comparison_figure(
        evaluation.x[:4],
        [("measurement", results[0].examples), ("biharmonic", results[1].examples),
         ("GLOW prox", results[2].examples)],
        out / "demo.png",
        title="flowprox demo: inpainting a centre 8x8 hole (LFW faces from scikit-image)",
    )  # fmt: skip
    table = markdown_table(results)
    minutes_taken = (time.monotonic() - started) / 60
    report = out / "demo.md"
    report.write_text(
        "# flowprox demo\n\n"
        f"Inpainting a centre 8x8 hole in the {len(evaluation.x)} held-out test faces of "
        "scikit-image's LFW subset, 24x24; the prior and the network were trained here on 80 "
        f"faces, each for up to {minutes:g} minutes.\n\n{table}\n\n![demo](demo.png)\n"
    )
    print(f"\n{table}\n\nwrote {report} and {out / 'demo.png'} in {minutes_taken:.1f} min")
    return report
