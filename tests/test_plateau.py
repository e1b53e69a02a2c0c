"""Stopping a run whose learning curve has flattened: the rule, the trainer honouring it, and
resume keeping the curve."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

from flowprox.training.distributed import DistributedContext
from flowprox.training.plateau import flattened, late_gain
from flowprox.training.rundir import RunDirectory
from flowprox.training.trainer import LoopSettings, Trainer

#: val PSNR at steps 10, 20, ...: rising fast, then by 0.02 dB per evaluation from step 60 on
PSNR = [20.0, 22.0, 23.0, 23.5, 23.8, 24.0, 24.02, 24.04, 24.06, 24.08, 24.1, 24.12]


class _Toy(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(3))


def _evaluate(model: nn.Module, trainer: list[Trainer]) -> dict[str, float]:
    psnr = PSNR[trainer[0].step // 10 - 1]
    return {"score": -psnr, "val_psnr": psnr}


def _fit(root: Path, stop_when_flat: bool, max_steps: int = 120, resume: bool = False) -> Trainer:
    model = _Toy()
    settings = LoopSettings(
        max_steps=max_steps,
        eval_every=10,
        checkpoint_every=10,
        log_every=5,
        stop_when_flat=stop_when_flat,
        flat_min_steps=50,
    )
    with RunDirectory(root, resume=resume) as run_dir:
        optimizer = torch.optim.SGD(model.parameters(), lr=1e-3)
        trainer = Trainer(
            model,
            optimizer,
            None,
            settings,
            run_dir,
            DistributedContext(),
            "toy",
            {},
            ("val_psnr",),
        )
        if resume:
            trainer.resume()
        holder = [trainer]
        trainer.fit(
            iter(lambda: torch.zeros(1), None),
            lambda m, batch, step: m.weight.sum(),
            lambda m: _evaluate(m, holder),
        )
    return trainer


def test_the_best_psnr_decides_so_one_noisy_evaluation_does_not() -> None:
    dip = [(100, 20.0), (200, 21.0), (300, 22.0), (400, 23.0), (500, 22.5)]
    assert late_gain(dip) == 0.0 and flattened(dip) is True
    spike = [(100, 20.0), (200, 21.0), (300, 21.2), (400, 24.0), (500, 21.0)]
    assert late_gain(spike) == 0.0  # the spike at 400 is at or before 80% of the steps
    late_rise = [(100, 20.0), (200, 21.0), (300, 21.2), (400, 21.3), (500, 21.5)]
    assert flattened(late_rise) is False


def test_a_run_stops_at_the_first_evaluation_where_its_curve_has_flattened(tmp_path: Path) -> None:
    trainer = _fit(tmp_path / "flat", stop_when_flat=True)
    # at step 80 the best before 64 steps is 24.0 (step 60) and the best is 24.04: +0.04 dB;
    # at step 70 the best at or before 56 steps is 23.8 (step 50): +0.22 dB, not yet flat
    assert trainer.step == 80
    summary = json.loads((tmp_path / "flat" / "summary.json").read_text())
    assert summary["stop_reason"] == "flattened"
    assert trainer.curve == [(10 * (i + 1), p) for i, p in enumerate(PSNR[:8])]


def test_without_the_setting_the_run_goes_on_to_its_budget(tmp_path: Path) -> None:
    trainer = _fit(tmp_path / "budget", stop_when_flat=False)
    assert trainer.step == 120
    summary = json.loads((tmp_path / "budget" / "summary.json").read_text())
    assert summary["stop_reason"] == "max_steps"


def test_a_resumed_run_keeps_its_curve_and_stops_where_an_unbroken_one_does(
    tmp_path: Path,
) -> None:
    root = tmp_path / "resumed"
    _fit(root, stop_when_flat=True, max_steps=70)  # stopped by its budget before flattening
    trainer = _fit(root, stop_when_flat=True, resume=True)
    assert trainer.step == 80
    assert [step for step, _ in trainer.curve] == list(range(10, 90, 10))
