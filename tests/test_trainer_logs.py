"""What the trainer writes to ``metrics.csv`` besides the losses: the gradient norm before
clipping, so that a spike that precedes a breakdown can be seen."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import pytest
import torch
from torch import nn

from flowprox.training.distributed import DistributedContext
from flowprox.training.rundir import RunDirectory
from flowprox.training.trainer import LoopSettings, Trainer


def test_the_logged_gradient_norm_is_the_largest_before_clipping(tmp_path: Path) -> None:
    model = nn.Linear(1, 3, bias=False)
    torch.nn.init.ones_(model.weight)
    settings = LoopSettings(
        max_steps=10, eval_every=10, checkpoint_every=10, log_every=5, grad_clip=1.0
    )
    scales = iter([1.0, 2.0, 10.0, 3.0, 1.0, 1.0, 1.0, 4.0, 1.0, 1.0])
    with RunDirectory(tmp_path, resume=False) as run_dir:
        optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
        trainer = Trainer(
            model, optimizer, None, settings, run_dir, DistributedContext(), "toy", {}, ()
        )
        trainer.fit(
            iter(lambda: torch.tensor(next(scales)), None),
            lambda m, scale, step: scale * m.weight.sum(),
            lambda m: {"score": 0.0},
        )
    with (tmp_path / "metrics.csv").open(newline="") as file:
        rows = [row for row in csv.DictReader(file) if row["train_loss"]]
    # d(scale * sum w)/dw = scale * ones(3): the norm is scale * sqrt(3), logged unclipped
    logged = [float(row["grad_norm"]) for row in rows]
    assert logged == pytest.approx([10 * math.sqrt(3), 4 * math.sqrt(3)], rel=1e-6)
    # every step was clipped to norm 1 (each coordinate moved by lr / sqrt(3))
    torch.testing.assert_close(model.weight, torch.full((3, 1), 1 - 10 * 0.01 / math.sqrt(3)))
