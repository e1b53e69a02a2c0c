"""Is an image typical of the prior's training distribution? A two-sided bits/dim test.

A flow can give *higher* likelihood to some out-of-distribution images than to its own data
(Nalisnick et al. 2019: flat, simple images compress well), so a one-sided likelihood
threshold misses them. We flag an image when its bits/dim under the prior falls outside the
central ``1 - 2 * tail`` interval of the bits/dim of validation images (the typical set test of
Nalisnick et al. 2019, one image at a time), calibrated on the images the restorer produces for
validation measurements, since those are what it scores.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import Tensor

from flowprox.flows.dequantization import bits_per_dim
from flowprox.flows.glow import Glow
from flowprox.train import dequantized_batch


@dataclass(frozen=True)
class TypicalRange:
    """The calibrated interval of bits/dim and where it came from."""

    low: float
    high: float
    tail: float
    images: int
    source: str

    def is_typical(self, bpd: float) -> bool:
        return self.low <= bpd <= self.high

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(asdict(self), indent=2) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> TypicalRange:
        return cls(**json.loads(Path(path).read_text()))


@torch.no_grad()
def image_bits_per_dim(flow: Glow, x: Tensor, n_bits: int = 8, batch_size: int = 128) -> Tensor:
    """Bits/dim of images ``x`` in [0, 1] under ``flow`` at the bin midpoints, shape ``(B,)``."""
    values = []
    for start in range(0, x.shape[0], batch_size):
        chunk = x[start : start + batch_size].clamp(0, 1)
        mid = dequantized_batch(chunk, n_bits, torch.full_like(chunk, 0.5))
        values.append(bits_per_dim(flow.log_prob(mid), chunk[0].numel(), n_bits))
    return torch.cat(values)


def calibrate(bpd: Tensor, tail: float = 0.005, source: str = "") -> TypicalRange:
    """The ``[tail, 1 - tail]`` quantiles of validation bits/dim."""
    if not 0 < tail < 0.5:
        raise ValueError(f"tail must be in (0, 0.5), got {tail}; 0.005 flags 1% of val images.")
    if bpd.numel() < 20:
        raise ValueError(f"calibration needs at least 20 images, got {bpd.numel()}.")
    low, high = torch.quantile(bpd.double(), torch.tensor([tail, 1 - tail], dtype=torch.float64))
    return TypicalRange(float(low), float(high), tail, bpd.numel(), source)
