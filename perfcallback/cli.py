"""Command-line interface: ``perfcallback --version`` and the subcommands registered below.

``main(argv)`` returns an exit status and is what tests call; only this module prints.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from perfcallback._version import __version__


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="perfcallback",
        description="Performance monitor and advisor for PyTorch training loops.",
    )
    parser.add_argument("--version", action="version", version=f"perfcallback {__version__}")
    parser.add_subparsers(dest="command", metavar="COMMAND")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI with ``argv`` (default: ``sys.argv[1:]``); returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    return 0
