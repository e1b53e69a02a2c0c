"""The experiment config of a task training run: a preset (or a file), the task, the prox, then
``--set`` overrides."""

from __future__ import annotations

from pathlib import Path

from flowprox.config import (
    UnrolledExperiment,
    apply_overrides,
    config_from_dict,
    config_to_dict,
    load_config,
    preset_path,
)
from flowprox.physics.tasks import resolve_task


def unrolled_config(
    task: str,
    prox: str,
    preset: str = "small",
    config: str | Path | None = None,
    data: str | Path | None = None,
    prior: str | Path | None = None,
    init_from: str | Path | None = None,
    device: str | None = None,
    overrides: list[str] | None = None,
) -> UnrolledExperiment:
    """The experiment of ``flowprox train``: preset (or ``config``), task, prox, then overrides."""
    base = load_config(UnrolledExperiment, config or preset_path("unrolled", preset))
    values = config_to_dict(base)
    values["task"] = config_to_dict(resolve_task(task, preset))
    values["model"]["prox"] = prox
    values["name"] = f"{prox}-{values['task']['kind']}"
    if data:
        values["data"]["path"] = str(data)
    if prior:
        values["prior"] = str(prior)
    if init_from:
        values["init_from"] = str(init_from)
    if device:
        values["train"]["device"] = device
    return config_from_dict(UnrolledExperiment, apply_overrides(values, overrides or []))
