"""``python -m perfcallback`` runs the command-line interface."""

from perfcallback.cli import run

run()
