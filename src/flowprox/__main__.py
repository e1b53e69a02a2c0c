"""``python -m flowprox`` runs the command line (also under ``torchrun -m flowprox``)."""

from flowprox.cli.main import main

raise SystemExit(main())
