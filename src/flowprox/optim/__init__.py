"""Reconstruction algorithms: the proximal operators (flow shrinkage, CNN), the unrolled
proximal gradient network (paper eqs. 8-12), latent optimisation, and the classical
references (Wiener, biharmonic inpainting, TV)."""

from flowprox.optim.latent import solve_latent
from flowprox.optim.prox import FlowProx, IdentityProx, NetworkProx, Prox
from flowprox.optim.unrolled import (
    UnrolledProximalGradient,
    flow_unrolled_network,
    step_size_from_operator,
)

__all__ = [
    "FlowProx",
    "IdentityProx",
    "NetworkProx",
    "Prox",
    "UnrolledProximalGradient",
    "flow_unrolled_network",
    "solve_latent",
    "step_size_from_operator",
]
