"""The precision of the prox networks: float32, or bfloat16 autocast for their convolutions.

``model.network_precision = "bfloat16"`` runs the convolutional networks of a prox in bfloat16
autocast on channels-last tensors: the coupling networks ``NN`` of every flow (``AffineCoupling``)
and the ResNet and U-Net proxes (``NetworkProx``); ``"auto"`` does so only where the hardware
computes bfloat16 natively (``utils.precision``). Everything whose precision decides the
bijection or its density stays in float32: ActNorm, the 1x1 convolution, its LU and inverse
(computed in float64), the split priors, the affine map ``y_b = (x_b + t) s`` and every
log-determinant. A coupling maps ``x_a`` to the same ``(t, s)`` in its forward and its inverse,
so the flow stays exactly invertible (tests/test_precision.py).
"""

from __future__ import annotations

from torch import nn

from flowprox.flows.layers import AffineCoupling
from flowprox.optim.prox import NetworkProx
from flowprox.utils.precision import check_network_precision


def set_network_precision(module: nn.Module, precision: str) -> int:
    """Run every coupling network and CNN prox inside ``module`` at ``precision`` (one of
    ``utils.precision.NETWORK_PRECISIONS``); returns how many networks were set."""
    check_network_precision(precision)
    count = 0
    for child in module.modules():
        if isinstance(child, AffineCoupling | NetworkProx):
            child.network_precision = precision
            count += 1
    return count
