"""flowprox: deep-unfolded proximal gradient networks with normalizing-flow priors."""

__version__ = "0.1.0"
