"""``flowprox reproduce``: the paper's whole pipeline, stage by stage, resumable.

Stages: pre-train the prior; for every task train each method (ResNet prox, U-Net prox, both
also started from their denoising run, GLOW prox, GLOW plug-and-play); evaluate every task in
the three settings (with the classical reference and latent optimisation); write
``results.md`` (Tables I-IV beside the paper's numbers), CSVs and figures. A finished stage
leaves ``stages/NAME.json`` and is skipped on a rerun; a killed training stage resumes from its
last checkpoint.
"""

from __future__ import annotations

import functools
import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tqdm import tqdm

from flowprox.config import PriorExperiment, load_config, preset_path
from flowprox.experiments.evaluation import evaluate_task
from flowprox.experiments.layout import Reproduction
from flowprox.experiments.plan import TASKS, Method, methods_for
from flowprox.experiments.report import write_report
from flowprox.training.pretrain import pretrain_prior
from flowprox.training.task import train_unrolled


class Pipeline(Reproduction):
    """The stages of one reproduction in ``out``, run in order by ``run``."""

    @functools.cached_property
    def stages(self) -> list[tuple[str, Callable[[], dict[str, Any]]]]:
        """Every stage in order: the prior, each method of each task, each task's evaluation,
        the report."""
        stages: list[tuple[str, Callable[[], dict[str, Any]]]] = [("prior", self._pretrain)]
        for task in self.tasks:
            for method in methods_for(task):
                name = f"train-{task}-{method.key}"
                stages.append((name, lambda t=task, m=method: self._train(t, m)))
        for task in self.tasks:
            stages.append((f"evaluate-{task}", lambda t=task: evaluate_task(self, t)))
        stages.append(("report", lambda: {"results": str(write_report(self))}))
        return stages

    def run(self) -> Path:
        """Run every stage not yet done; returns the path of ``results.md``."""
        # Under torchrun every rank runs the training stages together (DDP); rank 0 alone
        # evaluates, reports and writes the stage marks (evaluation comes after all training).
        rank = int(os.environ.get("RANK", "0"))
        marks = self.out / "stages"
        marks.mkdir(parents=True, exist_ok=True)
        bar = tqdm(self.stages, desc=f"reproduce ({self.preset})", unit="stage", position=0,
                   disable=rank != 0)  # fmt: skip
        for name, stage in bar:
            mark = marks / f"{name}.json"
            if mark.is_file() or (rank != 0 and not name.startswith(("prior", "train-"))):
                continue
            bar.set_postfix_str(name)
            tqdm.write(f"\n=== stage {name} ===")
            started = time.monotonic()
            info = stage() or {}
            info["seconds"] = round(time.monotonic() - started, 1)
            if rank == 0:
                mark.write_text(json.dumps(info, indent=2) + "\n")
        bar.close()
        return self.out / "results.md"

    def _pretrain(self) -> dict[str, Any]:
        out = self.out / "prior"
        overrides = [
            f"data.path={json.dumps(self.data)}",
            f"train.device={json.dumps(self.device)}",
        ]
        config = load_config(PriorExperiment, preset_path("prior", self.preset), overrides)
        resume = (out / "checkpoints" / "last.pt").is_file()
        pretrain_prior(config, out, resume=resume, argv=["reproduce", "prior"])
        return {"checkpoint": str(self.prior_checkpoint)}

    def _train(self, task: str, method: Method) -> dict[str, Any]:
        if method.from_denoiser and "denoise" not in self.tasks:
            raise ValueError(f"{method.label} needs the denoising task in the reproduction.")
        run = self.run_dir(task, method.key)
        base = method.key.removesuffix("-denoiser")
        if method.from_denoiser and not self.trained("denoise", base):
            return {"run": str(run), "failed": "its denoising run failed"}
        resume = (run / "checkpoints" / "last.pt").is_file()
        try:
            train_unrolled(self.train_config(task, method), run, resume=resume,
                           argv=["reproduce", task, method.key])  # fmt: skip
        except RuntimeError as error:  # diverged: recorded, and the reproduction goes on
            tqdm.write(f"training {method.key} on {task} failed: {error}")
            return {"run": str(run), "failed": str(error)}
        return {"run": str(run)}


def reproduce(
    preset: str,
    data: str | Path,
    out: str | Path,
    device: str = "cpu",
    tasks: tuple[str, ...] = TASKS,
    overrides: tuple[str, ...] = (),
) -> Path:
    """Run (or resume) the whole reproduction; returns the path of ``results.md``."""
    started = time.monotonic()
    pipeline = Pipeline(preset, data, out, device, tasks, overrides)
    path = pipeline.run()
    minutes = (time.monotonic() - started) / 60
    print(f"reproduction ({preset}) finished in {minutes:.1f} min this call; see {path}")
    return path
