"""Which manifest rows a run labels, from the committed videos rows ("incremental" runs).

"Current" rule: over committed runs, the newest row per (video_id, source_fingerprint,
weights) -- a forced relabel supersedes older rows of the same key, and clips follow their
video row (joined on run_id, video_id). Older runs stay in place as history. The same rule
in SQL is in query.py.
"""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Optional

import pyarrow as pa
import pyarrow.parquet as pq

from ..storage import filesystem, fingerprint, is_local
from .commit import committed_files, committed_runs

KEY = ("video_id", "source_fingerprint", "weights")


def committed_videos(output: str, storage=None, columns=(*KEY, "status")) -> pa.Table:
    """``columns`` + run_id of every committed videos row (small columns only)."""
    fs, root = filesystem(output, storage)
    parts = []
    for r in committed_runs(output, storage):
        for path in committed_files(output, "videos", storage, runs=[r]):
            t = pq.read_table(path, filesystem=fs, columns=list(columns))
            parts.append(t.append_column("run_id", pa.array([r["run_id"]] * t.num_rows, pa.string())))
    if not parts:
        return pa.table({**{c: pa.array([], pa.string()) for c in columns}, "run_id": pa.array([], pa.string())})
    return pa.concat_tables(parts)


def current(videos: pa.Table) -> dict[tuple, dict]:
    """The "current" rule on the driver: key -> newest committed row (by run_id)."""
    out: dict[tuple, dict] = {}
    for row in sorted(videos.to_pylist(), key=lambda r: r["run_id"]):
        out[tuple(row[k] for k in KEY)] = row
    return out


SKIP, NEW, CHANGED, RETRIED, FORCED = "skipped", "new", "changed", "retried", "forced"
DECISIONS = (NEW, CHANGED, RETRIED, FORCED, SKIP)


def select(video_ids: list[str], fingerprints: list[Optional[str]], weights: str, committed: pa.Table,
           mode: str) -> list[str]:
    """Per manifest row, what this run does with it:
    skipped (a committed row for the same key: ok, or error in incremental mode),
    new (video_id never committed), changed (committed, but for another fingerprint or weights),
    retried (an error row, rerun_failed/force), forced (an ok row relabeled by force)."""
    cur = current(committed)
    seen = set(committed.column("video_id").to_pylist()) if committed.num_rows else set()
    out = []
    for vid, fp in zip(video_ids, fingerprints):
        row = cur.get((vid, fp, weights))
        if row is None:
            out.append(CHANGED if vid in seen else NEW)
        elif row["status"] == "ok":
            out.append(FORCED if mode == "force" else SKIP)
        else:
            out.append(SKIP if mode == "incremental" else RETRIED)
    return out


def fingerprints(uris: list[str], storage=None, threads: int = 32) -> list[Optional[str]]:
    """Source fingerprints on the driver, the way the decode stage computes them (fs.info);
    None where the file cannot be stat'ed (the decode stage then writes the error row).
    Remote stores are asked in parallel threads: one HEAD per object, no data read."""

    def one(uri: str) -> Optional[str]:
        if not uri:
            return None
        try:
            fs, path = filesystem(uri, storage)
            return fingerprint(fs.info(path))
        except Exception:
            return None

    if all(is_local(u) for u in uris) or len(uris) < 2:
        return [one(u) for u in uris]
    with ThreadPoolExecutor(max_workers=threads) as pool:
        return list(pool.map(one, uris))
