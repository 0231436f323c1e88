"""Label a video manifest on Ray; one Parquet row per clip, committed atomically per run.

  r2p1d label MANIFEST --output OUT [--config C] [--set k=v ...] [--rerun-failed | --force]

Without a cluster (RAY_ADDRESS unset, ray.address null) a local Ray is started. Exit status:
0 committed, 1 not committed, 2 bad manifest/config/weights or a busy output.
"""
from __future__ import annotations

import argparse

from .. import config as config_mod
from .args import add_config_args, command


def add_parser(sub) -> None:
    p = command(sub, "label", __doc__, run)
    p.add_argument("manifest", help="Parquet manifest (local path or s3://) with a 'uri' column")
    p.add_argument("--output", "-o", help="output root (local or s3://); default: output.path")
    add_config_args(p)
    p.set_defaults(default_log_level="INFO")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--rerun-failed", action="store_true",
                      help="also label videos whose committed row is an error (run.mode=rerun_failed)")
    mode.add_argument("--force", action="store_true",
                      help="label every manifest row again, skipping nothing (run.mode=force)")


def build_config(args: argparse.Namespace) -> config_mod.Config:
    mode = "force" if args.force else "rerun_failed" if args.rerun_failed else None
    return config_mod.load(args.config, args.overrides, manifest=args.manifest,
                           **{"output.path": args.output, "run.mode": mode})


def run(args: argparse.Namespace) -> int:
    cfg = build_config(args)
    from ..pipeline import label

    summary = label(cfg)
    print(summary.text())
    print(summary.to_json(indent=None))  # the run record, also in OUT/runs (its `summary`)
    return 0 if summary.committed else 1
