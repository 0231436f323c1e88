"""Query a labeling output with DuckDB (local or s3://); only committed runs are visible.

  python jobs/query.py OUT "SELECT label, count(*) FROM clips GROUP BY 1 ORDER BY 2 DESC"
  python jobs/query.py OUT --report labels | videos | failed
  python jobs/query.py OUT --report timeline --video-id ID
  python jobs/query.py OUT --report segments --video-id ID
  python jobs/query.py OUT --report similar --clip VIDEO_ID:CLIP_INDEX [--k 10]
  python jobs/query.py OUT --report duplicates [--threshold 0.95]
Views: clips, videos (one row per manifest row, status/error), runs (committed-run summaries),
segments (runs of consecutive clips with the same label).
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
    p.add_argument("sql", nargs="?", help="SQL over the views clips, videos, runs")
    p.add_argument("--report", "-r",
                   help="a ready report: labels, videos, timeline, failed, segments, similar, duplicates")
    p.add_argument("--video-id", help="video for --report timeline / segments")
    p.add_argument("--clip", help="VIDEO_ID:CLIP_INDEX for --report similar")
    p.add_argument("--k", type=int, help="--report similar: clips returned (default 10)")
    p.add_argument("--threshold", type=float, help="--report duplicates: min cosine (default 0.95)")
    p.add_argument("--format", "-f", default="table", choices=["table", "csv", "json"])
    p.add_argument("--max-rows", type=int, default=100, help="table format: rows shown")
    p.add_argument("--config", "-c", help="YAML profile (its storage section is used)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config key, e.g. --set storage.endpoint_url=http://127.0.0.1:9000")
    args = p.parse_args(argv)
    if bool(args.sql) == bool(args.report):
        p.error("give either SQL or --report NAME")
    return args


def _print(rel, fmt: str, max_rows: int) -> None:
    if fmt == "table":
        rel.show(max_rows=max_rows, max_width=200)
        return
    table = rel.to_arrow_table()
    if fmt == "csv":
        import pyarrow.csv as pcsv

        pcsv.write_csv(table, sys.stdout.buffer)
    else:
        import json

        for row in table.to_pylist():
            print(json.dumps(row, default=str))


def main(argv=None) -> int:
    args = parse_args(argv)
    import duckdb

    from r2p1d_batch import query

    try:
        cfg = config_mod.load(args.config, args.overrides)
        con = query.connect(args.output, cfg.storage)
        rel = (query.report(con, args.report, video_id=args.video_id, clip=args.clip, k=args.k,
                            threshold=args.threshold) if args.report else con.sql(args.sql))
    except (ConfigError, query.NoCommittedRuns, KeyError, ValueError) as e:
        print(f"error: {e.args[0] if isinstance(e, KeyError) else e}", file=sys.stderr)
        return 2
    except duckdb.Error as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if rel is not None:  # DDL/SET statements return nothing
        _print(rel, args.format, args.max_rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
