"""``python -m perfcallback`` runs the command-line interface."""

from perfcallback.cli import main

raise SystemExit(main())
