"""``flowprox reproduce``: the paper's whole pipeline, stage by stage, resumable.

Stages: pre-train the prior; for every task train each method (ResNet prox, U-Net prox, both
also started from their denoising run, GLOW prox, GLOW plug-and-play); evaluate every task in
the three settings (with the classical reference and latent optimisation); write
``results.md`` (Tables I-IV beside the paper's numbers), CSVs and figures. A finished stage
leaves ``stages/NAME.json`` and is skipped on a rerun; a killed training stage resumes from its
last checkpoint.

Each stage mark holds the stage's fingerprint (``utils.stages``): its resolved config (the
prior's, or the training run's after the preset's budgets and ``--set``) and the sha256 of the
checkpoints it reads. A rerun reuses a finished stage only when the fingerprint is unchanged;
otherwise it stops before running anything, listing the differences, until ``--redo STAGE`` (or
``--redo all``). Every input (device, configs, data splits, the out-of-distribution set) is
checked before the first stage, and the reproduction directory is locked while it runs.
"""

from __future__ import annotations

import dataclasses
import os
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any

from flowprox.config import DataConfig, PriorExperiment, UnrolledExperiment
from flowprox.data.datasets import SPLITS, load_splits
from flowprox.experiments.evaluation import evaluate_task
from flowprox.experiments.layout import Reproduction
from flowprox.experiments.plan import TASKS, Method, evaluation_stages, methods_for
from flowprox.experiments.report import write_report
from flowprox.physics.tasks import build_operator
from flowprox.training.distributed import resolve_device
from flowprox.training.pretrain import pretrain_prior
from flowprox.training.task import train_unrolled
from flowprox.utils.runlock import RunLock
from flowprox.utils.stages import Stage, StageRunner

#: config keys that do not change what a stage computes (where and how fast it runs), left out
#: of its fingerprint; the prior and init_from checkpoints are inputs, fingerprinted by content
_UNFINGERPRINTED = (
    ("train", "device"),
    ("data", "num_workers"),
    ("data", "strict"),
    ("prior",),
    ("init_from",),
)


class Pipeline(Reproduction):
    """The stages of one reproduction in ``out``, run in order by ``run``.

    ``redo``: finished stages to run again (``--redo``: names, prefixes such as ``train``, or
    ``all``), with every stage that uses their results.
    """

    def __init__(
        self,
        preset: str,
        data: str | Path,
        out: str | Path,
        device: str = "cpu",
        tasks: tuple[str, ...] = TASKS,
        overrides: tuple[str, ...] = (),
        ood_data: str | Path | None = None,
        strict: bool = False,
        redo: tuple[str, ...] = (),
        budget_scale: float = 1.0,
    ) -> None:
        super().__init__(
            preset, data, out, device, tasks, overrides, ood_data, strict, budget_scale
        )
        self.redo = tuple(redo)
        # Under torchrun every rank runs the training stages together (DDP); rank 0 alone holds
        # the lock, evaluates, reports and writes the stage marks.
        self.rank = int(os.environ.get("RANK", "0"))
        self.stages = self._plan()
        self.runner = StageRunner(
            self.out, self.stages, "reproduction", self.made_with(), rank=self.rank
        )

    def made_with(self) -> dict[str, Any]:
        """The command line's settings, recorded in every stage mark (the report reads them)."""
        return {
            "preset": self.preset,
            "overrides": list(self.overrides),
            "data": self.data,
            "ood_data": self.ood_data,
            "device": self.device,
            "budget_scale": self.budget_scale,
            "tasks": list(self.tasks),
        }

    def _plan(self) -> list[Stage]:
        stages = [
            Stage("prior", self._pretrain, self._prior_settings,
                  outputs=lambda: [self.prior_run], every_rank=True,
                  defaults=lambda: {"config": dataclasses.asdict(PriorExperiment())})
        ]  # fmt: skip
        for task in self.tasks:
            for method in methods_for(task):
                after = ("prior",)
                if method.from_denoiser:
                    after += (f"train-denoise-{method.key.removesuffix('-denoiser')}",)
                stages.append(Stage(
                    f"train-{task}-{method.key}",
                    lambda t=task, m=method: self._train(t, m),
                    lambda t=task, m=method: self._train_settings(t, m),
                    lambda t=task, m=method: self._train_inputs(t, m),
                    after,
                    outputs=lambda t=task, m=method: [self.run_dir(t, m.key)],
                    every_rank=True,
                    defaults=lambda: {"config": dataclasses.asdict(UnrolledExperiment())},
                ))  # fmt: skip
        for task in self.tasks:
            trained = tuple(f"train-{task}-{m.key}" for m in methods_for(task))
            stages.append(Stage(
                f"evaluate-{task}",
                lambda t=task: evaluate_task(self, t),
                lambda t=task: self._evaluate_settings(t),
                lambda t=task: self._evaluate_inputs(t),
                ("prior", *trained),
                outputs=lambda t=task: self._evaluate_outputs(t),
                derived=True,
            ))  # fmt: skip
        stages.append(Stage(
            "report",
            lambda: {"results": str(write_report(self))},
            lambda: {"preset": self.preset},
            self._report_inputs,
            tuple(f"evaluate-{task}" for task in self.tasks),
            outputs=lambda: [self.out / "results.md", self.out / "tables.csv"],
            derived=True,
        ))  # fmt: skip
        return stages

    def run(self) -> Path:
        """Check the finished stages and every input, then run every stage not yet done (or
        asked to be redone); returns the path of ``results.md``."""
        with RunLock(self.out) if self.rank == 0 else nullcontext():
            redo = self.runner.redo_names(self.redo)
            self.runner.check(skip=redo)
            self.validate()
            self.runner.remove(redo)
            self.runner.run(f"reproduce ({self.preset})")
        return self.out / "results.md"

    def validate(self) -> None:
        """Check every input before the first stage: the device, the preset's configs with the
        ``--set`` overrides, the data's train/val/test splits and the out-of-distribution set.

        Raises:
            ValueError, FileNotFoundError: naming the input and the fix.
        """
        resolve_device(self.device)
        prior = self.prior_config()
        for task in self.tasks:
            for method in methods_for(task):
                if method.from_denoiser and "denoise" not in self.tasks:
                    raise ValueError(
                        f"{method.label} on {task} starts from the denoising run: add denoise "
                        f"to --tasks (e.g. --tasks denoise,{task})."
                    )
                config = self.train_config(task, method)
                build_operator(config.task, config.data.resolution)
        splits = load_splits(prior.data)
        missing = [split for split in SPLITS if split not in splits]
        if missing:
            raise ValueError(
                f"--data {self.data} has no {' or '.join(map(repr, missing))} split; reproduce "
                "needs train, val and test images (a directory with celeba64.npz, an .npz with "
                "train/val/test arrays, or an image folder)."
            )
        if any(
            stage.setting == "ood-images"
            for task in self.tasks
            for stage in evaluation_stages(task, self.settings.evaluation)
        ):
            ood = self.ood_path
            ood_data = DataConfig(str(ood), prior.data.resolution, strict=self.strict)
            if "test" not in load_splits(ood_data):
                raise ValueError(
                    f"the out-of-distribution images {ood} have no 'test' split; pass --ood-data "
                    "with an .npz holding a test array, or an image folder."
                )

    # ----------------------------------------------------------------------------- stages
    def _pretrain(self) -> dict[str, Any]:
        resume = (self.prior_run / "checkpoints" / "last.pt").is_file()
        pretrain_prior(self.prior_config(), self.prior_run, resume=resume,
                       argv=["reproduce", "prior"])  # fmt: skip
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
            print(f"training {method.key} on {task} failed: {error}")
            return {"run": str(run), "failed": str(error)}
        return {"run": str(run)}

    # ----------------------------------------------------------------------- fingerprints
    def _portable(self, values: dict[str, Any]) -> dict[str, Any]:
        """A config dict without the keys of ``_UNFINGERPRINTED``, its data path absolute."""
        values = {k: dict(v) if isinstance(v, dict) else v for k, v in values.items()}
        for key in _UNFINGERPRINTED:
            table = values
            for part in key[:-1]:
                table = table.get(part, {})
            table.pop(key[-1], None)
        data = values.get("data", {})
        if data.get("path"):
            data["path"] = _absolute(data["path"])
        return values

    def _label(self, path: Path) -> str:
        try:
            return str(path.relative_to(self.out))
        except ValueError:
            return str(path)

    def _prior_settings(self) -> dict[str, Any]:
        config = dataclasses.asdict(self.prior_config())
        return {"preset": self.preset, "config": self._portable(config)}

    def _train_settings(self, task: str, method: Method) -> dict[str, Any]:
        config = dataclasses.asdict(self.train_config(task, method))
        return {"preset": self.preset, "config": self._portable(config)}

    def _train_inputs(self, task: str, method: Method) -> dict[str, Path]:
        inputs = [self.prior_checkpoint]
        if method.from_denoiser:
            inputs.append(self.run_dir("denoise", method.key.removesuffix("-denoiser"))
                          / "checkpoints" / "best.pt")  # fmt: skip
        return {self._label(path): path for path in inputs}

    def _evaluate_settings(self, task: str) -> dict[str, Any]:
        budget = self.settings.evaluation
        needs_ood = any(s.setting == "ood-images" for s in evaluation_stages(task, budget))
        return {
            "preset": self.preset,
            "evaluation": dataclasses.asdict(budget),
            "data": _absolute(self.data),
            "ood_data": _absolute(str(self.ood_path)) if needs_ood else None,
        }

    def _evaluate_inputs(self, task: str) -> dict[str, Path]:
        paths = [self.prior_checkpoint]
        paths += [self.run_dir(task, m.key) / "checkpoints" / "best.pt" for m in methods_for(task)]
        return {self._label(path): path for path in paths}

    def _evaluate_outputs(self, task: str) -> list[Path]:
        figures = [
            self.out / "figures" / f"{task}-{stage.name}.png"
            for stage in evaluation_stages(task, self.settings.evaluation)
        ]
        return [self.out / "eval" / task, *figures]

    def _report_inputs(self) -> dict[str, Path]:
        return {self._label(p): p for p in sorted((self.out / "eval").glob("*/*.json"))}


def _absolute(spec: str) -> str:
    """A data path (or comma-separated paths) made absolute, for comparisons."""
    return ",".join(os.path.abspath(part.strip()) for part in spec.split(",") if part.strip())


def reproduce(
    preset: str,
    data: str | Path,
    out: str | Path,
    device: str = "cpu",
    tasks: tuple[str, ...] = TASKS,
    overrides: tuple[str, ...] = (),
    ood_data: str | Path | None = None,
    redo: tuple[str, ...] = (),
    strict: bool = False,
    budget_scale: float = 1.0,
) -> Path:
    """Run (or resume) the whole reproduction; returns the path of ``results.md``."""
    started = time.monotonic()
    pipeline = Pipeline(
        preset, data, out, device, tasks, overrides, ood_data, strict, redo, budget_scale
    )
    path = pipeline.run()
    minutes = (time.monotonic() - started) / 60
    print(f"reproduction ({preset}) finished in {minutes:.1f} min this call; see {path}")
    return path
