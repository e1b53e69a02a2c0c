"""Normalizing flows: Glow layers, the multi-scale Glow and memory-saving backprop."""

from flowprox.flows.base import InvertibleModule, InvertibleSequential
from flowprox.flows.dequantization import bits_per_dim, dequantize, quantize
from flowprox.flows.glow import Glow
from flowprox.flows.layers import (
    ActNorm,
    AffineCoupling,
    FlowStep,
    InvConv1x1,
    SplitStandardize,
    Squeeze,
    TopStandardize,
)
from flowprox.flows.memory import invertible_chain

__all__ = [
    "ActNorm",
    "AffineCoupling",
    "FlowStep",
    "Glow",
    "InvConv1x1",
    "InvertibleModule",
    "InvertibleSequential",
    "SplitStandardize",
    "Squeeze",
    "TopStandardize",
    "bits_per_dim",
    "dequantize",
    "invertible_chain",
    "quantize",
]
