"""``python -m flowprox`` runs the command line (also under ``torchrun -m flowprox``)."""

from flowprox.cli import main

raise SystemExit(main())
