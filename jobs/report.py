"""A visual report of a labeling output: one self-contained HTML file (images embedded).

  python jobs/report.py OUT --html report.html
  python jobs/report.py s3://bucket/labels --html s3://bucket/reports/today.html --labels 40
Label histogram, a contact sheet per label (thumbnails decoded from the sources; a source that
cannot be read shows as a placeholder that says why), a timeline strip per video coloured by
action segment, the runs' summaries and the error rows. Only committed runs are shown.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout, no install

from r2p1d_batch import config as config_mod  # noqa: E402
from r2p1d_batch.config import ConfigError  # noqa: E402


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("output", help="output root of jobs/label.py (local path or s3://)")
    p.add_argument("--html", required=True, help="where to write the report (local path or s3://)")
    p.add_argument("--labels", type=int, default=24, help="contact sheets for the N most frequent labels")
    p.add_argument("--per-label", type=int, default=8, help="thumbnails per contact sheet")
    p.add_argument("--videos", type=int, default=100, help="timeline strips (videos in id order)")
    p.add_argument("--config", "-c", help="YAML profile (its storage section is used)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config key, e.g. --set storage.endpoint_url=http://127.0.0.1:9000")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    from r2p1d_batch import query
    from r2p1d_batch.curate.report import ReportOptions, write_report

    try:
        cfg = config_mod.load(args.config, args.overrides)
        opts = ReportOptions(labels=args.labels, per_label=args.per_label, videos=args.videos)
        stats = write_report(args.output, args.html, cfg.storage, opts)
    except (ConfigError, query.NoCommittedRuns) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"report: {stats.path} ({stats.bytes / 2**20:.1f} MiB, {stats.thumbnails} thumbnails, "
          f"{stats.placeholders} placeholders, {stats.labels} labels, {stats.videos} timelines, "
          f"{stats.errors} error rows, {stats.seconds:.1f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
