"""Query a labeling output with DuckDB (local or s3://); only committed runs are visible.

  r2p1d query OUT "SELECT label, count(*) FROM clips GROUP BY 1 ORDER BY 2 DESC"
  r2p1d query OUT --report labels | videos | failed
  r2p1d query OUT --report timeline --video-id ID
  r2p1d query OUT --report segments --video-id ID
  r2p1d query OUT --report similar --clip VIDEO_ID:CLIP_INDEX [--k 10]
  r2p1d query OUT --report duplicates [--threshold 0.95]
Views: clips, videos (current rows: one per manifest row, status/error), clips_all,
videos_all (every committed run), runs (committed-run summaries), segments (runs of
consecutive clips with the same label).
"""
from __future__ import annotations

import argparse
import json
import sys

from .. import config as config_mod
from ..errors import UserError
from .args import add_config_args, command


def add_parser(sub) -> None:
    p = command(sub, "query", __doc__, run)
    p.add_argument("output", help="output root of `r2p1d label` (local path or s3://)")
    p.add_argument("sql", nargs="?", help="SQL over the views clips, videos, clips_all, videos_all, runs")
    p.add_argument("--report", "-r",
                   help="a ready report: labels, videos, timeline, failed, segments, similar, duplicates")
    p.add_argument("--video-id", help="video for --report timeline / segments")
    p.add_argument("--clip", help="VIDEO_ID:CLIP_INDEX for --report similar")
    p.add_argument("--k", type=int, help="--report similar: clips returned (default 10)")
    p.add_argument("--threshold", type=float, help="--report duplicates: min cosine (default 0.95)")
    p.add_argument("--format", "-f", default="table", choices=["table", "csv", "json"])
    p.add_argument("--max-rows", type=int, default=100, help="table format: rows shown")
    add_config_args(p, "storage.endpoint_url=http://127.0.0.1:9000")


def _print(rel, fmt: str, max_rows: int) -> None:
    if fmt == "table":
        rel.show(max_rows=max_rows, max_width=200)
        return
    table = rel.to_arrow_table()
    if fmt == "csv":
        import pyarrow.csv as pcsv

        pcsv.write_csv(table, sys.stdout.buffer)
    else:
        for row in table.to_pylist():
            print(json.dumps(row, default=str))


def run(args: argparse.Namespace) -> int:
    if bool(args.sql) == bool(args.report):
        raise UserError("give either SQL or --report NAME")
    import duckdb

    from .. import query

    cfg = config_mod.load(args.config, args.overrides)
    con = query.connect(args.output, cfg.storage)
    try:
        rel = (query.report(con, args.report, video_id=args.video_id, clip=args.clip, k=args.k,
                            threshold=args.threshold) if args.report else con.sql(args.sql))
        if rel is not None:  # DDL/SET statements return nothing
            _print(rel, args.format, args.max_rows)
    except duckdb.Error as e:
        raise UserError(str(e)) from None
    return 0
