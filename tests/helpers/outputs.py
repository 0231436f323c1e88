"""Helpers that read what a run committed, and what decoding the sources directly gives."""
from __future__ import annotations

from pathlib import Path

import pyarrow.parquet as pq

from r2p1d_batch import config as config_mod
from r2p1d_batch.decoding.stage import decode_video
from r2p1d_batch.runs import commit


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


def label_run(manifest: Path, out: Path, *sets: str):
    """pipeline.label(MANIFEST -> OUT) with random weights, in this process on the session's local
    Ray (the caller asks for the ``ray_local`` fixture): what jobs/label.py does, without starting
    a Python, torch and a Ray of its own. Returns the committed run's summary."""
    from r2p1d_batch.pipeline import label

    cfg = config_mod.load(None, ["model.weights=random", "ray.progress_bars=false", *sets], manifest=str(manifest),
                          **{"output.path": str(out)})
    summary = label(cfg)
    assert summary.committed, summary.text()
    return summary
