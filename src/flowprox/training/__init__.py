"""Training: the one resumable trainer (run directories, atomic checkpoints, DDP), prior
pre-training by maximum likelihood, and end-to-end MSE training of the unrolled network."""

from flowprox.training.configs import unrolled_config
from flowprox.training.pretrain import pretrain_prior
from flowprox.training.task import train_unrolled

__all__ = ["pretrain_prior", "train_unrolled", "unrolled_config"]
