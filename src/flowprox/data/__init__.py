"""Image data: ``.npz`` arrays and image folders, identity-disjoint splits, downsampling."""

from flowprox.data.datasets import ImageDataset, load_splits

__all__ = ["ImageDataset", "load_splits"]
