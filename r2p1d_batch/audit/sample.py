"""Step 1a: pick the clips to audit from an output's committed runs, seeded and stratified
by stored label. Reads only the small columns (no pixels) of committed runs' Parquet."""
from __future__ import annotations

from collections.abc import Sequence
from typing import Optional

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from ..runs.commit import committed_files, committed_runs
from ..storage import filesystem, join
from .errors import AuditError

CLIP_COLUMNS = (
    "video_id", "uri", "clip_index", "start_sec", "end_sec", "frame_pts", "padded_frames",
    "clip_sha", "label", "label_id", "score", "weights", "runtime", "sampling",
)
VIDEO_COLUMNS = ("video_id", "source_size", "source_fingerprint", "decoder")  # decoder: runs before it have none
KEY = ("run_id", "video_id", "clip_index")


def stratified_sample(labels: Sequence[str], n: int, seed: int) -> np.ndarray:
    """Indices (sorted) of ``n`` rows chosen so each label is represented.

    With ``n`` at least the number of labels, every label gets one clip and the rest is
    shared in proportion to the labels' sizes (largest remainder); with fewer, ``n``
    labels are drawn, one clip each. Same labels, ``n`` and ``seed`` -> same rows.
    """
    labels = np.asarray(labels, dtype=object)
    total = len(labels)
    if n >= total:
        return np.arange(total)
    rng = np.random.default_rng(seed)
    names = sorted(set(labels.tolist()))
    groups = [np.flatnonzero(labels == name) for name in names]
    sizes = np.array([len(g) for g in groups])
    if n < len(groups):
        take = np.zeros(len(groups), dtype=int)
        take[rng.choice(len(groups), size=n, replace=False)] = 1
    else:
        take = np.ones(len(groups), dtype=int)
        spare, room = n - len(groups), sizes - 1
        if spare:
            quota = spare * room / room.sum()
            take += np.minimum(np.floor(quota).astype(int), room)
            left = n - take.sum()
            frac = quota - np.floor(quota)
            for i in sorted(range(len(groups)), key=lambda i: (-frac[i], i)):
                if left == 0:
                    break
                if take[i] < sizes[i]:
                    take[i] += 1
                    left -= 1
    picked = [g[rng.choice(len(g), size=k, replace=False)] for g, k in zip(groups, take) if k]
    return np.sort(np.concatenate(picked)) if picked else np.array([], dtype=int)


def _read_run(fs, output: str, storage, table: str, record: dict, columns: Sequence[str]) -> Optional[pa.Table]:
    """The rows run ``record`` wrote to ``table`` (its own files: what it labeled, whether or
    not a later run has relabeled them since)."""
    files = committed_files(output, table, storage, runs=[record])
    if not files:
        return None
    parts = []
    for f in files:
        with fs.open(f, "rb") as fh:
            pf = pq.ParquetFile(fh)
            parts.append(pf.read(columns=[c for c in columns if c in pf.schema_arrow.names and c != "run_id"]))
    t = pa.concat_tables(parts, promote_options="default")
    return t.append_column("run_id", pa.array([record["run_id"]] * t.num_rows, pa.string()))


def committed_clips(output: str, storage=None, run_id: Optional[str] = None) -> tuple[pa.Table, dict[str, dict]]:
    """Clips of committed runs (one run, or all), sorted by (run_id, video_id, clip_index),
    with each video's source fingerprint at labeling time; and the runs' summaries."""
    runs = {r["run_id"]: r for r in committed_runs(output, storage)}
    if not runs:
        raise AuditError(f"{output}: no committed runs (no Delta table {join(output, 'runs')}); "
                         f"label something first with jobs/label.py")
    if run_id is not None:
        if run_id not in runs:
            raise AuditError(f"{output}: run {run_id!r} is not committed; committed runs: {', '.join(runs)}")
        runs = {run_id: runs[run_id]}
    fs, _ = filesystem(output, storage)
    clips, videos = [], []
    for record in runs.values():
        c = _read_run(fs, output, storage, "clips", record, CLIP_COLUMNS)
        if c is not None and c.num_rows:
            clips.append(c)
            v = _read_run(fs, output, storage, "videos", record, VIDEO_COLUMNS)
            if v is not None:
                videos.append(v)
    if not clips:
        raise AuditError(f"{output}: committed runs ({', '.join(runs)}) hold no clips "
                         f"(every video failed to decode?): nothing to audit")
    table = pa.concat_tables(clips)
    fp: dict[tuple[str, str], dict] = {}
    for row in (pa.concat_tables(videos, promote_options="default").to_pylist() if videos else []):
        fp[(row["run_id"], row["video_id"])] = row
    keys = zip(table.column("run_id").to_pylist(), table.column("video_id").to_pylist())
    found = [fp.get(k, {}) for k in keys]
    for name, typ in (("source_size", pa.int64()), ("source_fingerprint", pa.string()), ("decoder", pa.string())):
        table = table.append_column(name, pa.array([f.get(name) for f in found], typ))
    weights = pc.unique(table.column("weights")).to_pylist()
    if len(weights) > 1:
        pairs = list(zip(table.column("run_id").to_pylist(), table.column("weights").to_pylist()))
        per = {w: sorted({r for r, x in pairs if x == w})
               for w in weights}
        listing = "; ".join(f"{w}: runs {', '.join(r)}" for w, r in per.items())
        raise AuditError(f"{output}: the committed runs used different weights ({listing}); "
                         f"audit one at a time with --run-id")
    return table.sort_by([(k, "ascending") for k in KEY]), runs


def sample_clips(table: pa.Table, n: int, seed: int) -> pa.Table:
    """The audited sample: ``n`` rows of ``table`` stratified by ``label``, in table order."""
    idx = stratified_sample(table.column("label").to_pylist(), n, seed)
    return table.take(pa.array(idx, pa.int64()))
