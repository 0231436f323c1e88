"""Helpers that read what a run committed, and what decoding the sources directly gives."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq

from r2p1d_batch import config as config_mod
from r2p1d_batch.decoding.stage import decode_video
from r2p1d_batch.runs import commit

from . import REPO


def expected_clips(paths: dict[str, Path]) -> list[tuple]:
    """(video_id, clip_index, clip_sha) from decoding each file directly, no Ray."""
    cfg = config_mod.load(None, [], manifest="m")
    out = []
    for vid, p in paths.items():
        for r in decode_video({"video_id": vid, "uri": str(p), "start_sec": None, "end_sec": None}, cfg):
            if r["kind"] == "clip":
                out.append((vid, r["clip_index"], r["clip_sha"]))
    return sorted(out)


def committed(out: Path, table: str) -> list[dict]:
    """Every committed row of ``table`` under ``out``, with its run_id."""
    rows = []
    for r in commit.committed_runs(str(out)):
        for f in commit.committed_files(str(out), table, runs=[r]):
            rows += [dict(x, run_id=r["run_id"]) for x in pq.read_table(f).to_pylist()]
    return rows


def label_cli(manifest: Path, out: Path, *sets: str, timeout: float = 600) -> None:
    """`jobs/label.py MANIFEST --output OUT` with random weights on its own small local Ray."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    env.pop("RAY_ADDRESS", None)
    args = [a for s in ("model.weights=random", "ray.num_cpus=2", "ray.progress_bars=false", *sets)
            for a in ("--set", s)]
    proc = subprocess.run([sys.executable, str(REPO / "jobs" / "label.py"), str(manifest), "--output", str(out),
                           *args, "--log-level", "WARNING"],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
