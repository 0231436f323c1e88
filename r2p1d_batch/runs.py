"""The committed-runs record, and the rules built on it: commit, leftovers, "current", incremental.

Layout under an output root OUT (local or s3://, same code through fsspec):

    _staging/run_id=X/_lease.json           who runs X (host, pid, heartbeat); never read as data
    _staging/run_id=X/{clips,videos}/*.parquet  X's files while it runs
    clips/run_id=X/part-*.parquet           published data (the Hive partition readers glob)
    videos/run_id=X/part-*.parquet
    _runs/run_id=X.json                     the commit record: written last, in one atomic put

A run is committed when, and only when, its record exists. Commit order: staged files are
published (local: one directory rename per table; S3: server-side copies), then the record is
put (local: temp file + rename; S3: a single PUT, atomic by itself). Readers that go through
the record (``committed_run_ids``, the query views, the SQL in ``COMMITTED_*_SQL``) never see
a partial or killed run. A killed run's files are removed by the next run (``sweep``) once its
lease is stale, and ignored by every reader until then.

"Current" rule: over committed runs, the newest row per (video_id, source_fingerprint,
weights) -- a forced relabel supersedes older rows of the same key, and clips follow their
video row (joined on run_id, video_id). Older runs stay in place as history.
"""
from __future__ import annotations

import json
import logging
import os
import socket
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Iterable, Optional

import pyarrow as pa
import pyarrow.parquet as pq

from .storage import filesystem, fingerprint, is_local, join

log = logging.getLogger("r2p1d_batch")

RUNS_DIR = "_runs"
STAGING_DIR = "_staging"
LEASE = "_lease.json"
TABLES = ("clips", "videos")
KEY = ("video_id", "source_fingerprint", "weights")


class RunInProgressError(RuntimeError):
    """Another run holds this output (a live lease): two writers would race on the selection."""


# -- the commit record ---------------------------------------------------------------------
def committed_runs(output: str, storage=None) -> list[dict]:
    """Records of every committed run under ``output``, oldest first."""
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


def committed_run_ids(output: str, storage=None) -> list[str]:
    return [r["run_id"] for r in committed_runs(output, storage)]


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


def record_path(root: str, run_id: str) -> str:
    return join(root, RUNS_DIR, f"run_id={run_id}.json")


def put_atomic(fs, path: str, text: str) -> None:
    """Write a small file so that readers see all of it or nothing."""
    directory, name = path.rsplit("/", 1)
    fs.makedirs(directory, exist_ok=True)
    if _is_local_fs(fs):
        tmp = join(directory, f".{name}.{os.getpid()}.tmp")  # a dot name: no reader glob matches it
        with open(tmp, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    else:
        fs.pipe_file(path, text.encode())  # one PUT: the object appears whole or not at all


def write_record(fs, root: str, run_id: str, text: str) -> None:
    """The commit point: one atomic put of the run's record."""
    put_atomic(fs, record_path(root, run_id), text)


def publish(fs, src_dir: str, dest_dir: str) -> list[str]:
    """Move a staged table directory to its partition; returns the published file paths."""
    if not fs.exists(src_dir):
        return []
    files = sorted(fs.find(src_dir))
    if not files:
        return []
    fs.makedirs(dest_dir.rsplit("/", 1)[0], exist_ok=True)
    if _is_local_fs(fs):
        os.rename(src_dir, dest_dir)  # atomic; dest does not exist (run ids are unique)
    else:
        for f in files:  # server-side copies; the glob may see them, the record not yet
            fs.copy(f, dest_dir + f[len(src_dir):])
    return [dest_dir + f[len(src_dir):] for f in files]


def _is_local_fs(fs) -> bool:
    proto = fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]
    return proto in ("file", "local")


# -- leases and leftovers ------------------------------------------------------------------
def _process_start(pid: int) -> Optional[float]:
    try:
        import psutil

        return psutil.Process(pid).create_time()
    except Exception:
        return None


def lease_text(run_id: str) -> str:
    pid = os.getpid()
    return json.dumps({"run_id": run_id, "host": socket.gethostname(), "pid": pid,
                       "pid_started": _process_start(pid), "heartbeat": time.time()})


def write_lease(fs, root: str, run_id: str) -> None:
    put_atomic(fs, join(root, STAGING_DIR, f"run_id={run_id}", LEASE), lease_text(run_id))


def lease_alive(lease: Optional[dict], stale_after_sec: float, now: Optional[float] = None) -> bool:
    """A run holds its output while its driver lives: same host -> is the process there;
    another host -> has it written a heartbeat within ``stale_after_sec``."""
    if not lease:
        return False
    if lease.get("host") == socket.gethostname() and lease.get("pid"):
        started = _process_start(int(lease["pid"]))
        return started is not None and (lease.get("pid_started") is None or abs(started - lease["pid_started"]) < 1)
    return ((now or time.time()) - float(lease.get("heartbeat", 0))) < stale_after_sec


@dataclass
class Sweep:
    removed: list[str] = field(default_factory=list)  # run ids whose leftovers were deleted
    live: list[str] = field(default_factory=list)  # uncommitted runs still holding a lease
    local_live: list[str] = field(default_factory=list)  # ...of which the driver runs on this host


def _run_ids(fs, directory: str) -> set[str]:
    if not fs.exists(directory):
        return set()
    out = set()
    for p in fs.ls(directory, detail=False):
        name = p.rstrip("/").rsplit("/", 1)[-1]
        if name.startswith("run_id=") and not name.endswith(".json"):
            out.add(name[len("run_id="):])
    return out


def sweep(output: str, storage=None, stale_after_sec: float = 900.0, keep: Iterable[str] = ()) -> Sweep:
    """Delete what killed runs left (staging, published-but-uncommitted partitions); report
    runs that are still live. Committed runs and ``keep`` are never touched."""
    fs, root = filesystem(output, storage)
    root = root.rstrip("/")
    fs.invalidate_cache(root)
    committed = set(committed_run_ids(output, storage)) | set(keep)
    staging = join(root, STAGING_DIR)
    seen = _run_ids(fs, staging)
    for table in TABLES:
        seen |= _run_ids(fs, join(root, table))
    result = Sweep()
    for run_id in sorted(seen - committed):
        lease = None
        try:
            with fs.open(join(staging, f"run_id={run_id}", LEASE), "r") as f:
                lease = json.load(f)
        except (FileNotFoundError, ValueError):
            pass
        if lease_alive(lease, stale_after_sec):
            result.live.append(run_id)
            if lease.get("host") == socket.gethostname():
                result.local_live.append(run_id)
            continue
        for base in (staging, join(root, "clips"), join(root, "videos")):
            path = join(base, f"run_id={run_id}")
            try:
                if fs.exists(path):
                    fs.rm(path, recursive=True)
            except FileNotFoundError:
                pass
        result.removed.append(run_id)
    if result.removed:
        log.info("removed leftovers of killed runs: %s", ", ".join(result.removed))
    return result


# -- committed rows, the "current" rule, incremental selection -------------------------------
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


# -- SQL for readers who bring their own DuckDB ----------------------------------------------
# {videos}/{clips}: relations over the committed files (e.g. read_parquet([...files of
# committed_files()], hive_partitioning = true, union_by_name = true), or the plain glob
# joined with the records, COMMITTED_*_SQL below).
COMMITTED_SQL = r"""
SELECT t.* FROM read_parquet('{root}/{table}/run_id=*/*.parquet', hive_partitioning = true,
                             union_by_name = true) t
WHERE t.run_id IN (SELECT regexp_extract(file, 'run_id=([^/]*)\.json$', 1)
                   FROM glob('{root}/_runs/run_id=*.json'))"""
CURRENT_VIDEOS_SQL = """
SELECT * FROM {videos}
QUALIFY row_number() OVER (PARTITION BY video_id, source_fingerprint, weights ORDER BY run_id DESC) = 1"""
CURRENT_CLIPS_SQL = """
SELECT c.* FROM {clips} c SEMI JOIN ({current_videos}) v ON c.run_id = v.run_id AND c.video_id = v.video_id"""


def committed_sql(root: str, table: str) -> str:
    """A plain-glob query over ``table`` that honours the commit records."""
    return COMMITTED_SQL.format(root=root.rstrip("/"), table=table)


def current_sql(root: str) -> tuple[str, str]:
    """(videos, clips) SQL of the "current" rows over committed runs under ``root``."""
    videos = CURRENT_VIDEOS_SQL.format(videos=f"({committed_sql(root, 'videos')})")
    clips = CURRENT_CLIPS_SQL.format(clips=f"({committed_sql(root, 'clips')})", current_videos=videos)
    return videos, clips
