"""The Glow prior a config describes, and a pre-trained prior loaded from its checkpoint."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from flowprox.config import GlowConfig, config_from_dict, config_to_dict
from flowprox.flows import Glow
from flowprox.utils.checkpoint import check_same_config, load_checkpoint


def build_glow(config: GlowConfig) -> Glow:
    """The Glow of a config."""
    return Glow(
        config.in_channels,
        config.levels,
        config.steps_per_level,
        config.hidden,
        image_size=config.image_size,
        additive=config.additive,
        seed=config.seed,
        scale_floor=config.scale_floor,
        log_sd_bound=config.log_sd_bound,
    )


def load_prior(path: str | Path, expected: GlowConfig | None = None) -> tuple[Glow, dict[str, Any]]:
    """A pre-trained Glow from a ``prior`` checkpoint, and the checkpoint's experiment config.

    Raises:
        ValueError: if ``expected`` is given and the checkpoint's model config differs.
    """
    payload = load_checkpoint(path, kind="prior")
    model_config = config_from_dict(GlowConfig, payload["config"]["model"])
    if expected is not None:
        check_same_config(
            payload["config"]["model"],
            config_to_dict(expected),
            "model",
            path,
            defaults=config_to_dict(GlowConfig()),
        )
    glow = build_glow(model_config)
    glow.load_state_dict(payload["model"])
    glow.eval()
    return glow, payload["config"]
