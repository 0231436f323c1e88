"""The commit protocol of a run: staging under a lease, heartbeat, publish, the commit record.

Layout under an output root OUT (local or s3://, same code through fsspec):

    _staging/run_id=X/_lease.json           who runs X (host, pid, heartbeat); never read as data
    _staging/run_id=X/{clips,videos}/*.parquet  X's files while it runs
    clips/run_id=X/part-*.parquet           published data (the Hive partition readers glob)
    videos/run_id=X/part-*.parquet
    _runs/run_id=X.json                     the commit record: written last, in one atomic put

A run is committed when, and only when, its record exists. Commit order: staged files are
published (local: one directory rename per table; S3: server-side copies), then the record is
put (local: temp file + rename; S3: a single PUT, atomic by itself). Readers that go through
the record (``committed_run_ids``, the query views, the SQL in ``query.COMMITTED_SQL``) never
see a partial or killed run. A killed run's files are removed by the next run (``sweep``) once
its lease is stale, and ignored by every reader until then. ``StagedRun`` is the writer's side
of all this; which rows go into the files is not its business (see aggregate.py).
"""
from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Optional

import pyarrow as pa
import pyarrow.parquet as pq

from ..errors import UserError
from ..storage import filesystem, join

log = logging.getLogger("r2p1d_batch")

RUNS_DIR = "_runs"
STAGING_DIR = "_staging"
LEASE = "_lease.json"
TABLES = ("clips", "videos")
HEARTBEAT_SEC = 30.0


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


# -- the writer's side: one run's staged files ----------------------------------------------
class PartWriter:
    """Rolling Parquet part files under one directory."""

    def __init__(self, fs, directory: str, sch: pa.Schema, rows_per_file: int):
        self.fs, self.dir, self.schema, self.limit = fs, directory, sch, rows_per_file
        self.part, self.rows_in_part, self._w, self._f = 0, 0, None, None
        fs.makedirs(directory, exist_ok=True)

    def write(self, rows: list[dict]) -> None:
        while rows:
            if self._w is None:
                self._f = self.fs.open(join(self.dir, f"part-{self.part:05d}.parquet"), "wb")
                self._w = pq.ParquetWriter(self._f, self.schema, compression="zstd")
            take = rows[: self.limit - self.rows_in_part]
            self._w.write_table(pa.Table.from_pylist(take, schema=self.schema))
            self.rows_in_part += len(take)
            rows = rows[len(take) :]
            if self.rows_in_part >= self.limit:
                self._roll()

    @property
    def parts(self) -> int:
        """Part files written (closed) so far."""
        return self.part

    def _roll(self) -> None:
        if self._w is not None:
            self._w.close()
            self._f.close()
            self._w, self._f, self.rows_in_part = None, None, 0
            self.part += 1

    def close(self) -> None:
        self._roll()


class StagedRun:
    """One run's output while it runs: a lease (kept fresh by a heartbeat thread), a part writer
    per table under _staging/, and ``commit`` (publish, then the record) or ``abort``."""

    def __init__(self, output: str, run_id: str, schemas: dict[str, pa.Schema], *, rows_per_file: int,
                 storage=None):
        self.run_id = run_id
        self.fs, root = filesystem(output.rstrip("/"), storage)
        self.root = root.rstrip("/")
        self.staging = join(self.root, STAGING_DIR, f"run_id={run_id}")
        write_lease(self.fs, self.root, run_id)  # first: the run holds the output from here
        self._stop_beat = threading.Event()
        threading.Thread(target=self._heartbeat, name=f"lease-{run_id}", daemon=True).start()
        self.tables = {t: PartWriter(self.fs, join(self.staging, t), schemas[t], rows_per_file) for t in TABLES}

    def _heartbeat(self) -> None:
        # A thread, so the lease stays fresh while rows stall (actors starting, a long video).
        while not self._stop_beat.wait(HEARTBEAT_SEC):
            try:
                write_lease(self.fs, self.root, self.run_id)
            except Exception:  # a transient store error: the next beat tries again
                pass

    def write(self, table: str, rows: list[dict]) -> None:
        self.tables[table].write(rows)

    def commit(self, record: dict) -> list[str]:
        """Publish the staged files, then put the run record (``record`` plus ``files``): the
        run is visible from that put. Returns the data files, relative to the output root."""
        for w in self.tables.values():
            w.close()
        self._stop_beat.set()
        files = []
        for table, part_writer in self.tables.items():
            published = publish(self.fs, join(self.staging, table), join(self.root, table, f"run_id={self.run_id}"))
            if len(published) != part_writer.parts:  # staging was removed under us (a sweep misjudged the lease)
                raise RuntimeError(f"run {self.run_id}: {part_writer.parts} {table} parts written, "
                                   f"{len(published)} found at commit: not committing")
            files += [f[len(self.root) + 1:] for f in published]
        write_record(self.fs, self.root, self.run_id, json.dumps({**record, "files": files}, indent=2, sort_keys=True))
        self._remove_staging()
        return files

    def abort(self) -> None:
        """A run that failed in-process: drop its staging (a killed one is swept next time)."""
        self._stop_beat.set()
        for w in self.tables.values():
            try:
                w.close()
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
