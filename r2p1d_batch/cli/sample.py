"""Write a small sample collection: synthetic videos + a manifest (one row per video).

  r2p1d sample DIR [--videos N] [--seconds S] [--bad]
"""
from __future__ import annotations

import argparse
from pathlib import Path

from .args import command


def add_parser(sub) -> None:
    p = command(sub, "sample", __doc__, run)
    p.add_argument("dir", type=Path)
    p.add_argument("--videos", type=int, default=4)
    p.add_argument("--seconds", type=float, default=3.0)
    p.add_argument("--bad", action="store_true", help="add a missing and a corrupt file (error rows)")


def run(args: argparse.Namespace) -> int:
    from ..synth import make_sample

    print(make_sample(args.dir, videos=args.videos, seconds=args.seconds, bad=args.bad))
    return 0
