"""A visual report of a labeling output: one self-contained HTML file (images embedded).

  r2p1d report OUT --html report.html
  r2p1d report s3://bucket/labels --html s3://bucket/reports/today.html --labels 40
Label histogram, a contact sheet per label (thumbnails decoded from the sources; a source that
cannot be read shows as a placeholder that says why), a timeline strip per video coloured by
action segment, the runs' summaries and the error rows. Only committed runs are shown.
"""
from __future__ import annotations

import argparse

from .. import config as config_mod
from .args import add_config_args, command


def add_parser(sub) -> None:
    p = command(sub, "report", __doc__, run)
    p.add_argument("output", help="output root of `r2p1d label` (local path or s3://)")
    p.add_argument("--html", required=True, help="where to write the report (local path or s3://)")
    p.add_argument("--labels", type=int, default=24, help="contact sheets for the N most frequent labels")
    p.add_argument("--per-label", type=int, default=8, help="thumbnails per contact sheet")
    p.add_argument("--videos", type=int, default=100, help="timeline strips (videos in id order)")
    add_config_args(p, "storage.endpoint_url=http://127.0.0.1:9000")


def run(args: argparse.Namespace) -> int:
    from ..curate.html import ReportOptions, write_report

    cfg = config_mod.load(args.config, args.overrides)
    opts = ReportOptions(labels=args.labels, per_label=args.per_label, videos=args.videos)
    stats = write_report(args.output, args.html, cfg.storage, opts)
    print(f"report: {stats.path} ({stats.bytes / 2**20:.1f} MiB, {stats.thumbnails} thumbnails, "
          f"{stats.placeholders} placeholders, {stats.labels} labels, {stats.videos} timelines, "
          f"{stats.errors} error rows, {stats.seconds:.1f} s)")
    return 0
