"""The ``r2p1d`` command (also ``python -m r2p1d_batch``): one subcommand per module here.

Each module has ``add_parser(subparsers)`` (its arguments, ``--help`` text and ``func``) and a
``run(args) -> int``. Errors the user must act on (``errors.UserError``) are printed without a
traceback and exit with their code: 2 bad input or config, 3 an outside service failed.
"""
from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from typing import Optional

from ..errors import UserError
from . import audit, bench, demo, export, fetch_weights, label, maintain, migrate, quantize, query, report, sample
from .args import LOG_FORMAT

COMMANDS = (label, query, maintain, migrate, report, audit, quantize, export, bench, demo, sample, fetch_weights)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="r2p1d", description="Label the actions in video collections with R(2+1)D-18 on Ray.",
        epilog="r2p1d COMMAND --help shows a command's options.")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for command in COMMANDS:
        command.add_parser(sub)
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=args.log_level or getattr(args, "default_log_level", "WARNING"), format=LOG_FORMAT)
    try:
        return args.run(args)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return e.exit_code
