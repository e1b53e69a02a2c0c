"""flowprox: deep-unfolded proximal gradient networks with normalizing-flow priors.

The public API: forward models (``physics``), the Glow prior (``flows``), the flow prox and the
unrolled network (``optim``), building and loading networks (``models``), and the training and
evaluation entry points. See ``docs/ARCHITECTURE.md`` for the layers.
"""

from flowprox._version import __version__
from flowprox.evaluation import load_evaluation_set, reconstruct_all, run_method
from flowprox.flows import Glow
from flowprox.metrics import psnr, ssim
from flowprox.models import build_glow, build_unrolled, load_prior, load_unrolled
from flowprox.optim import (
    FlowProx,
    UnrolledProximalGradient,
    flow_unrolled_network,
    step_size_from_operator,
)
from flowprox.physics import GaussianBlur, Identity, LinearOperator, Mask, measure
from flowprox.training import pretrain_prior, train_unrolled, unrolled_config

__all__ = [
    "FlowProx",
    "GaussianBlur",
    "Glow",
    "Identity",
    "LinearOperator",
    "Mask",
    "UnrolledProximalGradient",
    "__version__",
    "build_glow",
    "build_unrolled",
    "flow_unrolled_network",
    "load_evaluation_set",
    "load_prior",
    "load_unrolled",
    "measure",
    "psnr",
    "pretrain_prior",
    "reconstruct_all",
    "run_method",
    "ssim",
    "step_size_from_operator",
    "train_unrolled",
    "unrolled_config",
]
