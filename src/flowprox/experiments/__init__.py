"""``flowprox reproduce``: the plan of methods and tasks, its stages, evaluation and report."""

from flowprox.experiments.pipeline import Pipeline, reproduce

__all__ = ["Pipeline", "reproduce"]
