"""Convert an output of the earlier layout (clips/run_id=*/, _runs/run_id=*.json) into the
Delta tables, without relabeling: every committed run is kept, as a version of the tables.

  r2p1d migrate OUT
Until it is migrated, `r2p1d query`, the reports and curation read such an output as before,
and `r2p1d label` refuses to write to it. A migration that stops half-way is run again.
"""
from __future__ import annotations

import argparse

from .. import config as config_mod
from .args import add_config_args, command


def add_parser(sub) -> None:
    p = command(sub, "migrate", __doc__, run)
    p.add_argument("output", help="output root in the earlier layout (local path or s3://)")
    add_config_args(p, "storage.endpoint_url=http://127.0.0.1:9000")


def run(args: argparse.Namespace) -> int:
    from ..runs.maintain import migrate

    cfg = config_mod.load(args.config, args.overrides)
    runs = migrate(args.output, cfg.storage)
    print(f"migrated {len(runs)} committed runs of {args.output} into its Delta tables (clips, videos, runs)")
    return 0
