"""`cloudlayer` subcommands owned by the store package (filled in by its issue)."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser], common: argparse.ArgumentParser) -> None:
    """Add this package's subcommands. Each sets `func(args) -> int` and takes `parents=[common]`."""
