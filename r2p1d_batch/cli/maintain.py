"""Keep a labeling output small and fast (local or s3://): compact, expire history, vacuum.

  r2p1d maintain OUT                      compact small files, checkpoint; keep all history
  r2p1d maintain OUT --keep-days 90       ...and expire history older than 90 days
  r2p1d maintain OUT --keep-runs 30       ...or beyond the newest 30 runs
Refuses (exit 2) while a label run holds OUT, and holds OUT itself while it runs. Nothing the
current rows or the kept history reference is removed. A label run does the same after its
commit with --set output.maintain.after_label=true.
"""
from __future__ import annotations

import argparse
import sys

from .. import config as config_mod
from .args import add_config_args, command


def add_parser(sub) -> None:
    p = command(sub, "maintain", __doc__, run)
    p.add_argument("output", help="output root of `r2p1d label` (local path or s3://)")
    p.add_argument("--keep-days", type=float, help="expire history older than this many days "
                                                    "(output.maintain.keep_days)")
    p.add_argument("--keep-runs", type=int, help="expire history beyond the newest N runs (output.maintain.keep_runs)")
    p.add_argument("--no-compact", action="store_true", help="skip compaction (output.maintain.compact=false)")
    add_config_args(p, "output.maintain.min_retention_hours=6")


def run(args: argparse.Namespace) -> int:
    from ..runs.maintain import maintain

    sets = list(args.overrides)
    for key, value in (("keep_days", args.keep_days), ("keep_runs", args.keep_runs)):
        if value is not None:
            sets.append(f"output.maintain.{key}={value}")
    if args.no_compact:
        sets.append("output.maintain.compact=false")
    cfg = config_mod.load(args.config, sets)
    report = maintain(args.output, cfg.storage, cfg.output.maintain, rows_per_file=cfg.output.rows_per_file,
                      stale_after_sec=cfg.run.stale_after_sec)
    print(report.text())
    print(report.to_json(), file=sys.stdout)
    return 0
