"""The ``flowprox`` command line: ``main`` parses the subcommands of ``cli.main``, ``cli.tasks``
and ``cli.apps``."""

from flowprox.cli.main import main

__all__ = ["main"]
