"""Label a video manifest: python jobs/label.py MANIFEST --output OUT [--config C] [--set k=v ...]"""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout, no install

from r2p1d_batch import config as config_mod  # noqa: E402
from r2p1d_batch.errors import USER_ERRORS  # noqa: E402


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("manifest", help="Parquet manifest (local path or s3://) with a 'uri' column")
    p.add_argument("--output", "-o", help="output root (local or s3://); default: output.path")
    p.add_argument("--config", "-c", help="YAML profile layered on configs/default.yaml")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config key, e.g. --set model.weights=random (repeatable)")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--rerun-failed", action="store_true",
                      help="also label videos whose committed row is an error (run.mode=rerun_failed)")
    mode.add_argument("--force", action="store_true",
                      help="label every manifest row again, skipping nothing (run.mode=force)")
    p.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    return p.parse_args(argv)


def build_config(args: argparse.Namespace):
    mode = "force" if args.force else "rerun_failed" if args.rerun_failed else None
    return config_mod.load(args.config, args.overrides, manifest=args.manifest,
                           **{"output.path": args.output, "run.mode": mode})


def main(argv=None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        cfg = build_config(args)
        from r2p1d_batch.pipeline import run

        summary = run(cfg)
    except USER_ERRORS as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(summary.text())
    print(summary.to_json(indent=None))  # the run record, also at OUT/_runs/run_id=<id>.json
    return 0 if summary.committed else 1


if __name__ == "__main__":
    sys.exit(main())
