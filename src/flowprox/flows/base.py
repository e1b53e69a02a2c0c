"""The invertible-module contract shared by every flow layer.

Direction convention (one direction everywhere in flowprox):

* ``forward(x) -> (y, logdet)`` maps data to latent; ``logdet`` has shape ``(B,)`` and is
  ``log |det dy/dx|`` for each sample, so that ``log p(x) = log p(y) + logdet``.
* ``inverse(y) -> x`` maps latent to data and is the exact inverse of ``forward``.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch
from torch import Tensor, nn


class InvertibleModule(nn.Module):
    """Bijection ``f``: ``forward(x) = (f(x), log|det J_f(x)|)`` and ``inverse = f^-1``."""

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:  # pragma: no cover - abstract
        raise NotImplementedError

    def inverse(self, y: Tensor) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def leaf_layers(self) -> Iterator[InvertibleModule]:
        """The elementary layers in the order ``forward`` applies them (itself for a leaf)."""
        yield self


class InvertibleSequential(InvertibleModule):
    """Composition ``f = f_n o ... o f_1``; log-determinants add up, the inverse runs backwards."""

    def __init__(self, layers: Sequence[InvertibleModule]) -> None:
        super().__init__()
        self.layers = nn.ModuleList(layers)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        logdet = x.new_zeros(x.shape[0])
        for layer in self.layers:
            x, layer_logdet = layer(x)
            logdet = logdet + layer_logdet
        return x, logdet

    def inverse(self, y: Tensor) -> Tensor:
        for layer in reversed(self.layers):
            y = layer.inverse(y)
        return y

    def leaf_layers(self) -> Iterator[InvertibleModule]:
        for layer in self.layers:
            yield from layer.leaf_layers()


def zero_logdet(x: Tensor) -> Tensor:
    """A ``(B,)`` zero log-determinant matching ``x``'s batch, dtype and device."""
    return torch.zeros(x.shape[0], dtype=x.dtype, device=x.device)
