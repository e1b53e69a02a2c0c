"""The forward models ``y = A x + n``: linear operators with exact adjoints, seeded measurement
noise, and the task presets of the paper (denoising, inpainting, deblurring)."""

from flowprox.physics.noise import measure, measure_fixed
from flowprox.physics.operators import GaussianBlur, Identity, LinearOperator, Mask
from flowprox.physics.tasks import build_operator, task_preset

__all__ = [
    "GaussianBlur",
    "Identity",
    "LinearOperator",
    "Mask",
    "build_operator",
    "measure",
    "measure_fixed",
    "task_preset",
]
