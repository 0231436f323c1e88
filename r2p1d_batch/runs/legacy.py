"""Outputs written before the Delta tables (the earlier layout), read as they were.

    clips/run_id=X/part-*.parquet   a committed run's data (the Hive partition readers glob)
    videos/run_id=X/part-*.parquet
    _runs/run_id=X.json             the run's commit record (its summary and ``files``)

A run of that layout is committed when its record exists. ``r2p1d migrate OUT`` converts such an
output into the Delta tables (runs/maintain.py); until then `r2p1d query`, the reports and the
curation read it through this module, and ``r2p1d label`` refuses to write to it.
"""
from __future__ import annotations

import json
import logging
from typing import Optional

from ..storage import filesystem, join

log = logging.getLogger("r2p1d_batch")

RUNS_DIR = "_runs"


# -- the commit record ---------------------------------------------------------------------
def committed_runs(output: str, storage=None) -> list[dict]:
    """Records of every committed run of an earlier-layout ``output``, oldest first."""
    fs, root = filesystem(output, storage)
    runs_dir = join(root.rstrip("/"), RUNS_DIR)
    fs.invalidate_cache(runs_dir)  # s3fs caches listings: another process may have committed since
    if not fs.exists(runs_dir):
        return []
    out = []
    for path in sorted(fs.glob(join(runs_dir, "run_id=*.json"))):
        try:
            with fs.open(path, "r") as f:
                out.append(json.load(f))
        except (ValueError, FileNotFoundError) as e:  # cannot happen with atomic puts; never fatal
            log.warning("ignoring unreadable run record %s: %s", path, e)
    return sorted(out, key=lambda r: r["run_id"])


def committed_files(output: str, table: str, storage=None, runs: Optional[list[dict]] = None) -> list[str]:
    """Data files (fs paths) of ``table`` in committed runs: exactly those each record lists."""
    fs, root = filesystem(output, storage)
    root = root.rstrip("/")
    files = []
    for r in committed_runs(output, storage) if runs is None else runs:
        listed = r.get("files")
        if listed is None:  # a record from before file lists: the run's partition directory
            files += sorted(fs.glob(join(root, table, f"run_id={r['run_id']}", "*.parquet")))
        else:
            files += [join(root, f) for f in listed if f.startswith(table + "/")]
    return files


def is_legacy(output: str, storage=None) -> bool:
    """Does ``output`` hold run records of the earlier layout? One listing of the output root
    (one request on S3, where ``exists`` on the records' directory is a HEAD and a listing);
    only an output that has ``_runs/`` is globbed for records."""
    fs, root = filesystem(output, storage)
    root = root.rstrip("/")
    runs_dir = join(root, RUNS_DIR)
    fs.invalidate_cache(runs_dir)  # s3fs caches listings (this one and its parents'): another process may have written
    try:
        names = fs.ls(root, detail=False)
    except (FileNotFoundError, NotADirectoryError):
        return False
    if not any(n.rstrip("/").rsplit("/", 1)[-1] == RUNS_DIR for n in names):
        return False
    return bool(fs.glob(join(runs_dir, "run_id=*.json")))
