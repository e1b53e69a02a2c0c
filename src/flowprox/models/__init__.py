"""Networks built from configs: the CNN baselines, the Glow prior of a ``GlowConfig`` (and a
pre-trained one from its checkpoint), and the unrolled network of an ``UnrolledExperiment``."""

from flowprox.models.cnn import ResNetProxNet, UNet
from flowprox.models.prior import build_glow, load_prior
from flowprox.models.unrolled import build_unrolled, load_unrolled

__all__ = ["ResNetProxNet", "UNet", "build_glow", "build_unrolled", "load_prior", "load_unrolled"]
