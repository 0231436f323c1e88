"""The committed-runs record: which runs under an output root are visible to readers.

A run is committed when ``OUT/_runs/run_id=<id>.json`` exists (written last, after all of the
run's data files are in place). Readers (the query views, the audit) only read data of
committed runs.
"""
from __future__ import annotations

import json

from .storage import filesystem, join

RUNS_DIR = "_runs"


def committed_runs(output: str, storage=None) -> list[dict]:
    """Summaries of every committed run under ``output``, oldest first."""
    fs, root = filesystem(output, storage)
    runs_dir = join(root.rstrip("/"), RUNS_DIR)
    if not fs.exists(runs_dir):
        return []
    out = []
    for path in sorted(fs.glob(join(runs_dir, "run_id=*.json"))):
        with fs.open(path, "r") as f:
            out.append(json.load(f))
    return sorted(out, key=lambda r: r["run_id"])


def committed_run_ids(output: str, storage=None) -> list[str]:
    return [r["run_id"] for r in committed_runs(output, storage)]
