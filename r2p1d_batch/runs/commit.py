"""The commit protocol of a run: staging under a lease, heartbeat, publish, the commit record.

Layout under an output root OUT (local or s3://, same code through fsspec):

    _staging/run_id=X/_lease.json           who runs X (host, pid, heartbeat); never read as data
    _staging/run_id=X/clips/part-<uuid>.parquet  clips, written by the workers' writer stage
    _staging/run_id=X/videos/part-*.parquet      videos rows, written by the driver
    clips/run_id=X/part-*.parquet           published data (the Hive partition readers glob)
    videos/run_id=X/part-*.parquet
    _runs/run_id=X.json                     the commit record: written last, in one atomic put

A run is committed when, and only when, its record exists. Commit order: the staged files the
run accepted are published (local: renamed into a directory inside staging, which is then
renamed into place, one rename per table; S3: server-side copies), then the record is put
(local: temp file + rename; S3: a single PUT, atomic by itself). Only files named by the driver
are published: in clips/ that is the files whose reports it received (clip_writer.py), never the
staging directory wholesale, so the files of failed or retried writer attempts stay behind and
go with staging. Readers that go through the record (``committed_run_ids``, the query views,
the SQL in ``query.COMMITTED_SQL``) never see a partial or killed run. A killed run's files are
removed by the next run (``sweep``) once its lease is stale, and ignored by every reader until
then. ``StagedRun`` is the driver's side of all this; which rows go into the files is not its
business (see aggregate.py).
"""
from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Optional

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from ..errors import UserError
from ..storage import filesystem, join

log = logging.getLogger("r2p1d_batch")

RUNS_DIR = "_runs"
STAGING_DIR = "_staging"
LEASE = "_lease.json"
TABLES = ("clips", "videos")
HEARTBEAT_SEC = 30.0
ROW_GROUP_ROWS = 16_384  # clips part files' Parquet row groups: DuckDB reads them in parallel, skips by video_id


def clips_file_name() -> str:
    """A new clips part file's name: unique, so no attempt of any writer overwrites another's."""
    return f"part-{uuid.uuid4().hex}.parquet"


def write_clips_file(fs, path: str, table: pa.Table) -> None:
    """One clips part file: zstd, ROW_GROUP_ROWS rows per row group."""
    with fs.open(path, "wb") as f:
        pq.write_table(table, f, compression="zstd", row_group_size=ROW_GROUP_ROWS)


class RunInProgressError(UserError, RuntimeError):
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


def publish(fs, src_dir: str, names: list[str], dest_dir: str) -> list[str]:
    """Publish the files ``names`` of a staged table directory as its partition ``dest_dir``;
    returns their published paths. Other files in ``src_dir`` stay in staging. Raises
    FileNotFoundError when a named file is gone."""
    if not names:
        return []
    fs.makedirs(dest_dir.rsplit("/", 1)[0], exist_ok=True)
    if _is_local_fs(fs):
        # Gathered inside staging first (renames no reader sees), then one atomic rename into
        # place: a plain glob sees all of the table's files or none, as before.
        gathered = src_dir + ".publish"
        os.makedirs(gathered, exist_ok=True)
        for name in names:
            os.rename(join(src_dir, name), join(gathered, name))
        os.rename(gathered, dest_dir)  # dest does not exist (run ids are unique)
    else:
        for name in names:  # server-side copies; the glob may see them, the record not yet
            fs.copy(join(src_dir, name), join(dest_dir, name))
    return [join(dest_dir, name) for name in names]


def _protocol(fs) -> str:
    return fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]


def _is_local_fs(fs) -> bool:
    return _protocol(fs) in ("file", "local")


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


# -- the driver's side: one run's staged files --------------------------------------------
class PartWriter:
    """Rolling Parquet part files under one directory (the driver's `videos` rows)."""

    def __init__(self, fs, directory: str, sch: pa.Schema, rows_per_file: int):
        self.fs, self.dir, self.schema, self.limit = fs, directory, sch, rows_per_file
        self.rows_in_part, self._w, self._f = 0, None, None
        self.names: list[str] = []  # part files written (the last one open until close)
        fs.makedirs(directory, exist_ok=True)

    def write(self, table: pa.Table) -> None:
        table = table.select(self.schema.names).cast(self.schema)
        while table.num_rows:
            if self._w is None:
                self.names.append(f"part-{len(self.names):05d}.parquet")
                self._f = self.fs.open(join(self.dir, self.names[-1]), "wb")
                self._w = pq.ParquetWriter(self._f, self.schema, compression="zstd")
            take = table.slice(0, self.limit - self.rows_in_part)
            self._w.write_table(take)
            self.rows_in_part += take.num_rows
            table = table.slice(take.num_rows)
            if self.rows_in_part >= self.limit:
                self.close()

    def close(self) -> None:
        if self._w is not None:
            self._w.close()
            self._f.close()
            self._w, self._f, self.rows_in_part = None, None, 0


class StagedRun:
    """One run's output while it runs: a lease (kept fresh by a heartbeat thread), the staging
    directory the workers write clip part files into (``clips_dir``), the driver's part writer
    for `videos`, and ``commit`` (publish the accepted files, then the record) or ``abort``."""

    def __init__(self, output: str, run_id: str, videos_schema: pa.Schema, *, rows_per_file: int, storage=None):
        self.run_id = run_id
        self.fs, root = filesystem(output.rstrip("/"), storage)
        self.root = root.rstrip("/")
        self.staging = join(self.root, STAGING_DIR, f"run_id={run_id}")
        write_lease(self.fs, self.root, run_id)  # first: the run holds the output from here
        self._stop_beat = threading.Event()
        threading.Thread(target=self._heartbeat, name=f"lease-{run_id}", daemon=True).start()
        self.clips_dir = join(self.staging, "clips")
        # The full URL for the workers (`root` has no protocol on S3).
        self.clips_url = self.clips_dir if _is_local_fs(self.fs) else f"{_protocol(self.fs)}://{self.clips_dir}"
        self.videos = PartWriter(self.fs, join(self.staging, "videos"), videos_schema, rows_per_file)

    def _heartbeat(self) -> None:
        # A thread, so the lease stays fresh while rows stall (actors starting, a long video).
        while not self._stop_beat.wait(HEARTBEAT_SEC):
            try:
                write_lease(self.fs, self.root, self.run_id)
            except Exception:  # a transient store error: the next beat tries again
                pass

    def drop_videos(self, name: str, video_ids: set[str]) -> tuple[str, int]:
        """A new staged clips file: ``name`` without the rows of ``video_ids`` (videos that
        failed after some of their clips were written). Returns (new name, rows); rows 0: no
        file, nothing to publish."""
        src = join(self.clips_dir, name)
        with self.fs.open(src, "rb") as f:
            table = pq.read_table(f)
        keep = table.filter(pc.invert(pc.is_in(table.column("video_id"), value_set=pa.array(sorted(video_ids)))))
        if not keep.num_rows:
            return "", 0
        new = clips_file_name()
        write_clips_file(self.fs, join(self.clips_dir, new), keep)
        return new, keep.num_rows

    def commit(self, record: dict, clip_files: list[str]) -> list[str]:
        """Publish the staged files the run accepted (every `videos` part, and ``clip_files`` in
        clips/), then put the run record (``record`` plus ``files``): the run is visible from that
        put. Returns the data files, relative to the output root."""
        self.videos.close()
        self._stop_beat.set()
        files = []
        for table, names in (("clips", clip_files), ("videos", self.videos.names)):
            try:
                published = publish(self.fs, join(self.staging, table), names,
                                     join(self.root, table, f"run_id={self.run_id}"))
            except FileNotFoundError as e:  # staging was removed under us (a sweep misjudged the lease)
                raise RuntimeError(f"run {self.run_id}: a staged {table} file is gone ({e}): not committing") from e
            files += [f[len(self.root) + 1:] for f in published]
        write_record(self.fs, self.root, self.run_id, json.dumps({**record, "files": files}, indent=2, sort_keys=True))
        self._remove_staging()
        return files

    def abort(self) -> None:
        """A run that failed in-process: drop its staging (a killed one is swept next time)."""
        self._stop_beat.set()
        try:
            self.videos.close()
        except Exception:
            pass
        self._remove_staging()

    def _remove_staging(self) -> None:
        try:
            if self.fs.exists(self.staging):
                self.fs.rm(self.staging, recursive=True)
            top = join(self.root, STAGING_DIR)
            if self.fs.exists(top) and not self.fs.ls(top):
                self.fs.rmdir(top)
        except OSError:
            pass  # a concurrent listing or an S3 prefix: harmless, swept later
