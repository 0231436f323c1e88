"""The commit protocol of a run: a lease while it runs, one commit record, three Delta tables.

Layout under an output root OUT (local or s3://, same code through fsspec and delta-rs):

    clips/   videos/   runs/                  Delta tables (runs/tables.py): the current rows,
                                              history through their versions
    clips/part-<run_id>-<uuid>.parquet        written by the workers' writer stage, in the table
                                              directory: no reader sees a file the log does not add
    videos/part-<run_id>-NNNNN.parquet        written by the driver
    _commits/<seq, 20 digits>.json            a run's commit record: what it adds and removes
    _staging/run_id=X/_lease.json             who runs X (host, pid, heartbeat)

A run is committed when, and only when, its record exists. The record is created with a
conditional put (S3: If-None-Match; local: a hard link, which fails on an existing name), so of
two writers that both take sequence number N one fails, named, and commits nothing. Once the
record exists the run's changes are applied to `clips`, then `videos`, then a row appended to
`runs` (its summary, own files and the two tables' versions), each one Delta commit tagged with
the sequence number (``tables.apply`` skips a table that already has it). A driver killed after
the record's put leaves a run that ``recover`` (called before every run and every maintenance)
rolls forward, so a committed run is always applied whole; readers go through the newest `runs`
row and read `clips` and `videos` at the versions it names, so they never see half of one.

What a run changes: its own new files are added; each video it relabels (changed source or
weights, retried error, forced) has its earlier rows removed from the current version, the
files holding them rewritten without them (copy-on-write, ``tables.rewrite_without``, run by
the caller's ``map_files``: Ray tasks on the cluster). Files of failed or retried writer
attempts are never added, and are deleted after the commit; a killed run's files and staging
are removed by the next run (``sweep``) once its lease is stale.
"""
from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Optional

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from .. import schema
from ..errors import UserError
from ..storage import filesystem, join
from . import legacy, tables
from .tables import RUNS_TABLE, TABLES, DataFile

log = logging.getLogger("r2p1d_batch")

COMMITS_DIR = "_commits"
STAGING_DIR = "_staging"
LEASE = "_lease.json"
HEARTBEAT_SEC = 30.0
ROW_GROUP_ROWS = tables.ROW_GROUP_ROWS

RUNS_SCHEMA = pa.schema([
    ("run_id", pa.string()),
    ("seq", pa.int64()),
    ("committed_at", pa.timestamp("us", tz="UTC")),
    ("clips_version", pa.int64()),  # the tables' Delta versions once this run was applied
    ("videos_version", pa.int64()),
    ("files", pa.list_(pa.string())),  # the run's own data files, relative to the output root
    ("expired", pa.bool_()),  # maintenance expired its history: only its rows still current remain
    ("summary", pa.string()),  # the run's summary (RunSummary), JSON
])

# map_files(fn, argument tuples) -> results, in order: how rewrites run (threads by default;
# the pipeline passes Ray tasks).
MapFiles = Callable[[Callable, list[tuple]], list]


class RunInProgressError(UserError, RuntimeError):
    """Another run holds this output (a live lease, or it committed the same sequence number)."""


class LegacyOutputError(UserError, RuntimeError):
    """The output is in the layout written before the Delta tables: `r2p1d migrate` converts it."""


def threads(fn: Callable, args: list[tuple]) -> list:
    with ThreadPoolExecutor(8) as pool:
        return list(pool.map(lambda a: fn(*a), args))


# -- what is committed -------------------------------------------------------------------------
def runs_table(output: str, storage=None) -> pa.Table:
    """The `runs` table's rows, by sequence number (empty when nothing is committed). delta-rs
    reads the log; the version's data file (one, rewritten by each run) is read whole, in one
    GET on S3 (delta-rs's own reader makes two or more)."""
    dt = tables.open_table(output, RUNS_TABLE, storage)
    if dt is None:
        return RUNS_SCHEMA.empty_table()
    fs, root = filesystem(output, storage)
    t = tables.read_small(dt, join(root.rstrip("/"), RUNS_TABLE), fs)
    return t.take(pc.sort_indices(t, sort_keys=[("seq", "ascending")]))


def _record(row: dict) -> dict:
    """A `runs` row as the run's record: its summary with run_id, seq and files."""
    return {**json.loads(row["summary"]), "run_id": row["run_id"], "seq": row["seq"], "files": row["files"] or [],
            "clips_version": row["clips_version"], "videos_version": row["videos_version"],
            "expired": bool(row.get("expired"))}


def committed_runs(output: str, storage=None) -> list[dict]:
    """Records of every committed run under ``output``, oldest first (an earlier-layout
    output's records as they are)."""
    if legacy.is_legacy(output, storage):
        return legacy.committed_runs(output, storage)
    return [_record(r) for r in runs_table(output, storage).to_pylist()]


def committed_run_ids(output: str, storage=None) -> list[str]:
    return [r["run_id"] for r in committed_runs(output, storage)]


def committed_files(output: str, table: str, storage=None, runs: Optional[list[dict]] = None) -> list[str]:
    """The own data files (fs paths) of ``table`` written by committed runs (``runs``: those
    records), as each record lists them. A run's own files hold exactly the rows it labeled;
    the table's current version may have rewritten or compacted them since."""
    return legacy.committed_files(output, table, storage, runs if runs is not None else committed_runs(output, storage))


def current_files(output: str, table: str, storage=None) -> list[str]:
    """The fs paths of ``table``'s files in its committed current version (the version the
    newest `runs` row names), or the earlier layout's committed files."""
    if legacy.is_legacy(output, storage):
        return legacy.committed_files(output, table, storage)
    dt = committed_table(output, table, storage)
    return [] if dt is None else table_files(output, table, dt, storage)


def table_files(output: str, table: str, dt, storage=None) -> list[str]:
    """The fs paths of the data files of ``dt`` (one version of ``table``)."""
    _, root = filesystem(output, storage)
    return [join(root.rstrip("/"), table, p) for p in tables.data_files(dt).column("path").to_pylist()]


def committed_table(output: str, table: str, storage=None, runs: Optional[pa.Table] = None):
    """``table`` (clips or videos) at its committed current version, or None: its latest
    version, unless that holds a run the `runs` table does not have yet (a driver stopped
    between its table commits; ``recover`` finishes it): then the version the newest `runs` row
    names. Maintenance versions (compaction) hold no run and count as committed."""
    runs = runs_table(output, storage) if runs is None else runs
    if not runs.num_rows:
        return None
    dt = tables.open_table(output, table, storage)
    named, newest = runs.column(f"{table}_version")[-1].as_py(), runs.column("seq")[-1].as_py()
    # At the version the newest run names (the usual case) the table holds no newer run: no
    # look-up of its transactions (on S3 the newest commits or a checkpoint read once more).
    if dt is not None and named is not None and dt.version() != named and tables.applied_seq(dt) > newest:
        dt.load_as_version(named)
    return dt


# -- the commit record -----------------------------------------------------------------------------
def record_path(root: str, seq: int) -> str:
    return join(root, COMMITS_DIR, f"{seq:020d}.json")


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


def put_new(fs, path: str, text: str) -> bool:
    """Create ``path`` whole, only if it does not exist; False when it did (another writer's)."""
    directory, name = path.rsplit("/", 1)
    fs.makedirs(directory, exist_ok=True)
    if _is_local_fs(fs):
        tmp = join(directory, f".{name}.{os.getpid()}.tmp")
        with open(tmp, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        try:
            os.link(tmp, path)  # atomic, and fails when the name exists
        except FileExistsError:
            return False
        finally:
            os.unlink(tmp)
        return True
    try:
        fs.pipe_file(path, text.encode(), mode="create")  # S3: If-None-Match: *
    except FileExistsError:
        return False
    except OSError as e:  # s3fs maps 412 PreconditionFailed to a plain OSError on some versions
        if "PreconditionFailed" in str(e) or "412" in str(e):
            return False
        raise
    return True


def _read_record(fs, root: str, seq: int) -> Optional[dict]:
    path = record_path(root, seq)
    try:
        with fs.open(path, "r") as f:
            return json.load(f)
    except FileNotFoundError:
        return None


def _applied(output: str, storage) -> int:
    runs = tables.open_table(output, RUNS_TABLE, storage)
    return tables.applied_seq(runs)


def recover(output: str, storage=None) -> list[str]:
    """Apply every committed record the tables do not hold yet (a driver killed between its
    record's put and the last table commit). Returns the run ids rolled forward."""
    fs, root = filesystem(output, storage)
    root = root.rstrip("/")
    fs.invalidate_cache(join(root, COMMITS_DIR))
    done = []
    seq = _applied(output, storage) + 1
    while (record := _read_record(fs, root, seq)) is not None:
        _apply_record(output, storage, record)
        done.append(record["run_id"])
        seq += 1
    if done:
        log.warning("rolled forward runs committed by a driver that stopped before applying them: %s",
                    ", ".join(done))
    return done


def _apply_record(output: str, storage, record: dict) -> dict[str, int]:
    """Apply a commit record to the tables (each step skipped where already done)."""
    seq, run_id = record["seq"], record["run_id"]
    meta = {"r2p1d.run_id": run_id, "r2p1d.seq": seq}
    versions = {}
    for table in TABLES:
        change = record["tables"][table]
        sch = pa.ipc.read_schema(pa.py_buffer(bytes.fromhex(change["schema"])))
        adds = [DataFile.from_json(d) for d in change["adds"]]
        removes = [(r["path"], int(r["size"])) for r in change["removes"]]
        dt = tables.open_table(output, table, storage)
        if not adds and not removes and dt is not None:
            versions[table] = dt.version()  # nothing to change: no empty Delta commit
            continue
        versions[table] = tables.apply(output, table, seq, sch, adds, removes, meta, storage)
    runs = tables.ensure_table(output, RUNS_TABLE, RUNS_SCHEMA, storage)
    if tables.applied_seq(runs) < seq:
        # One file for all of `runs`, rewritten with each run (a few KB a run): opening it is two
        # GETs whatever the number of nights, where a file per run would be two per run.
        earlier = runs.to_pyarrow_table().cast(RUNS_SCHEMA)
        old = tables.data_files(runs)
        row = pa.Table.from_pylist([{
            "run_id": run_id, "seq": seq, "committed_at": datetime.fromisoformat(record["committed_at"]),
            "clips_version": versions["clips"], "videos_version": versions["videos"],
            "files": record["files"], "expired": False, "summary": json.dumps(record["summary"], sort_keys=True),
        }], schema=RUNS_SCHEMA)
        fs, root = filesystem(output, storage)
        runs_dir = join(root.rstrip("/"), RUNS_TABLE)
        row_file = tables.write_file(fs, runs_dir, f"part-{seq:020d}-{run_id}.parquet",
                                     pa.concat_tables([earlier, row]))
        removes = list(zip(old.column("path").to_pylist(), old.column("size_bytes").to_pylist()))
        tables.apply(output, RUNS_TABLE, seq, RUNS_SCHEMA, [row_file], removes, meta, storage)
    return versions


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
    recovered: list[str] = field(default_factory=list)  # committed runs rolled forward


def _staged_run_ids(fs, directory: str) -> set[str]:
    if not fs.exists(directory):
        return set()
    out = set()
    for p in fs.ls(directory, detail=False):
        name = p.rstrip("/").rsplit("/", 1)[-1]
        if name.startswith("run_id="):
            out.add(name[len("run_id="):])
    return out


def run_files(fs, table_dir: str, run_id: str) -> list[str]:
    """Every part file a run wrote into a table's directory (fs paths), in the log or not."""
    prefix = f"part-{run_id}-"
    fs.invalidate_cache(table_dir)
    if not fs.exists(table_dir):
        return []
    if _is_local_fs(fs):
        return sorted(fs.glob(join(table_dir, prefix + "*.parquet")))
    return sorted(p for p in fs.find(table_dir, maxdepth=1, prefix=prefix) if p.endswith(".parquet"))


def remove_unadded(fs, root: str, run_id: str, keep: Iterable[str] = ()) -> int:
    """Delete the files run ``run_id`` wrote that are not in ``keep`` (paths relative to the
    output root): its failed attempts, or all of a run that never committed."""
    keep = set(keep)
    gone = [p for t in TABLES for p in run_files(fs, join(root, t), run_id) if p[len(root) + 1:] not in keep]
    if gone:
        fs.rm(gone)
    return len(gone)


def check_writable(output: str, storage=None) -> None:
    """Refuse an output of the earlier layout (it must be migrated first)."""
    if legacy.is_legacy(output, storage):
        raise LegacyOutputError(
            f"{output} holds runs in the layout written before the Delta tables (_runs/run_id=*.json); "
            f"convert it once with `r2p1d migrate {output}` (no relabeling), then rerun")


def sweep(output: str, storage=None, stale_after_sec: float = 900.0, keep: Iterable[str] = ()) -> Sweep:
    """Roll committed runs forward (``recover``), delete what killed runs left (their staging and
    their part files), report runs that are still live. Committed runs and ``keep`` are never
    touched."""
    fs, root = filesystem(output, storage)
    root = root.rstrip("/")
    fs.invalidate_cache(root)
    result = Sweep(recovered=recover(output, storage))
    committed = set(committed_run_ids(output, storage)) | set(keep)
    staging = join(root, STAGING_DIR)
    for run_id in sorted(_staged_run_ids(fs, staging)):
        lease = None
        try:
            with fs.open(join(staging, f"run_id={run_id}", LEASE), "r") as f:
                lease = json.load(f)
        except (FileNotFoundError, ValueError):
            pass
        if run_id not in committed and lease_alive(lease, stale_after_sec):
            result.live.append(run_id)
            if lease.get("host") == socket.gethostname():
                result.local_live.append(run_id)
            continue
        if run_id not in committed:
            remove_unadded(fs, root, run_id)
            result.removed.append(run_id)
        try:
            fs.rm(join(staging, f"run_id={run_id}"), recursive=True)
        except FileNotFoundError:
            pass
    if result.removed:
        log.info("removed leftovers of killed runs: %s", ", ".join(result.removed))
    return result


# -- the driver's side: one run's files and its commit ------------------------------------------
class PartWriter:
    """Rolling Parquet part files in a table's directory (the driver's `videos` rows), each with
    its Delta statistics."""

    def __init__(self, fs, directory: str, sch: pa.Schema, rows_per_file: int, prefix: str = "part-"):
        self.fs, self.dir, self.schema, self.limit, self.prefix = fs, directory, sch, rows_per_file, prefix
        self.rows_in_part, self._w, self._f = 0, None, None
        self.names: list[str] = []  # part files written (the last one open until close)
        self.files: list[DataFile] = []  # the closed ones
        self._ids: list[pa.Array] = []
        fs.makedirs(directory, exist_ok=True)

    def write(self, table: pa.Table) -> None:
        table = table.select(self.schema.names).cast(self.schema)
        while table.num_rows:
            if self._w is None:
                self.names.append(f"{self.prefix}{len(self.names):05d}.parquet")
                self._f = self.fs.open(join(self.dir, self.names[-1]), "wb")
                self._w = pq.ParquetWriter(self._f, self.schema, compression="zstd")
            take = table.slice(0, self.limit - self.rows_in_part)
            self._w.write_table(take)
            self._ids.append(take.select(list(tables.STATS_COLUMNS)))
            self.rows_in_part += take.num_rows
            table = table.slice(take.num_rows)
            if self.rows_in_part >= self.limit:
                self.close()

    def close(self) -> None:
        if self._w is not None:
            self._w.close()
            self._f.close()
            name = self.names[-1]
            stats = tables.file_stats(pa.concat_tables(self._ids))
            size = int(self.fs.info(join(self.dir, name))["size"])
            self.files.append(DataFile(name, size, self.rows_in_part, stats))
            self._w, self._f, self.rows_in_part, self._ids = None, None, 0, []


def rewrites(output: str, table: str, replaced: pa.Array, run_id: str, storage, map_files: MapFiles
             ) -> tuple[list[DataFile], list[tuple[str, int]]]:
    """What replacing the rows of the videos ``replaced`` does to ``table``: (new files, removed
    (path, size)). The candidates come from the current version's file statistics; each is
    rewritten without those videos by ``map_files``."""
    dt = tables.open_table(output, table, storage)
    paths = tables.candidate_files(dt, replaced)
    if not paths:
        return [], []
    files = tables.data_files(dt)
    sizes = dict(zip(files.column("path").to_pylist(), files.column("size_bytes").to_pylist()))
    results = map_files(tables.rewrite_without, [(output, table, p, replaced, run_id, storage) for p in paths])
    adds, removes = [], []
    for got in results:
        if got is None:
            continue
        old, new = got
        removes.append((old, int(sizes[old])))
        if new is not None:
            adds.append(new)
    return adds, removes


def commit_run(output: str, run_id: str, summary: dict, own: dict[str, tuple[pa.Schema, list[DataFile]]],
               replaced: Optional[pa.Array] = None, map_files: Optional[MapFiles] = None, storage=None,
               on_record: Optional[Callable[[], None]] = None) -> list[str]:
    """Commit run ``run_id``, whose files are written in the tables' directories (``own``: per
    table, its schema and files): the earlier rows of the videos ``replaced`` are rewritten away,
    the record put (the commit point; RunInProgressError when another writer took its number),
    the tables applied, and the run's files that were not added deleted. Returns the run's own
    files, relative to the output root."""
    fs, root = filesystem(output, storage)
    root = root.rstrip("/")
    replaced = replaced if replaced is not None else pa.array([], pa.string())
    changes, files = {}, []
    for table in TABLES:
        sch, mine = own[table]
        adds, removes = (rewrites(output, table, replaced, run_id, storage, map_files or threads)
                         if len(replaced) else ([], []))
        files += [f"{table}/{f.path}" for f in mine]
        changes[table] = {"schema": sch.serialize().to_pybytes().hex(),
                          "adds": [f.to_json() for f in [*mine, *adds]],
                          "removes": [{"path": p, "size": s} for p, s in removes]}
    seq = _applied(output, storage) + 1
    record = {"run_id": run_id, "seq": seq,
              "committed_at": summary.get("committed_at") or datetime.now(timezone.utc).isoformat(),
              "files": files, "summary": {**summary, "files": files}, "tables": changes}
    if not put_new(fs, record_path(root, seq), json.dumps(record, sort_keys=True)):
        other = _read_record(fs, root, seq) or {}
        raise RunInProgressError(
            f"{output}: run {other.get('run_id', '?')} committed as number {seq} while run {run_id} "
            "was running (two writers on one output); nothing of this run was committed, rerun it")
    if on_record:
        on_record()
    _apply_record(output, storage, record)
    written = {f"{t}/{d['path']}" for t, c in changes.items() for d in c["adds"]}
    remove_unadded(fs, root, run_id, keep=written)
    return files


class StagedRun:
    """One run's output while it runs: a lease (kept fresh by a heartbeat thread), the clips
    table's directory the workers write into (``clips_url``), the driver's part writer for
    `videos`, and ``commit`` (the record, then the tables) or ``abort``."""

    def __init__(self, output: str, run_id: str, videos_schema: pa.Schema, *, rows_per_file: int, storage=None):
        self.run_id, self.output, self.storage = run_id, output.rstrip("/"), storage
        self.fs, root = filesystem(self.output, storage)
        self.root = root.rstrip("/")
        self.staging = join(self.root, STAGING_DIR, f"run_id={run_id}")
        write_lease(self.fs, self.root, run_id)  # first: the run holds the output from here
        self._stop_beat = threading.Event()
        threading.Thread(target=self._heartbeat, name=f"lease-{run_id}", daemon=True).start()
        self.clips_dir = join(self.root, "clips")
        # The full URL for the workers (`root` has no protocol on S3).
        self.clips_url = self.clips_dir if _is_local_fs(self.fs) else f"{_protocol(self.fs)}://{self.clips_dir}"
        self.videos_schema = schema.videos_table(videos_schema)
        self.videos = PartWriter(self.fs, join(self.root, "videos"), self.videos_schema, rows_per_file,
                                 prefix=f"part-{run_id}-")
        self.committed = False

    def _heartbeat(self) -> None:
        # A thread, so the lease stays fresh while rows stall (actors starting, a long video).
        while not self._stop_beat.wait(HEARTBEAT_SEC):
            try:
                write_lease(self.fs, self.root, self.run_id)
            except Exception:  # a transient store error: the next beat tries again
                pass

    def drop_videos(self, name: str, video_ids: set[str]) -> tuple[str, Optional[DataFile]]:
        """A new clips file: ``name`` without the rows of ``video_ids`` (videos that failed after
        some of their clips were written). Returns (new name, file); None: no row left."""
        with self.fs.open(join(self.clips_dir, name), "rb") as f:
            table = pq.read_table(f)
        keep = table.filter(pc.invert(pc.is_in(table.column("video_id"), value_set=pa.array(sorted(video_ids)))))
        if not keep.num_rows:
            return "", None
        new = tables.part_name(self.run_id)
        return new, tables.write_file(self.fs, self.clips_dir, new, keep)

    def commit(self, summary: dict, clip_files: list[DataFile], replaced: Optional[pa.Array] = None,
               map_files: Optional[MapFiles] = None) -> list[str]:
        """Commit the run (``commit_run``): ``clip_files`` (reported by the writer stage) and the
        `videos` parts are added, the earlier rows of the videos ``replaced`` removed. Returns
        the run's own files, relative to the output root."""
        self.videos.close()
        self._stop_beat.set()

        def committed() -> None:
            self.committed = True  # from here a failure is rolled forward by the next run, not undone

        own = {"clips": (schema.CLIPS_TABLE, clip_files), "videos": (self.videos_schema, self.videos.files)}
        files = commit_run(self.output, self.run_id, summary, own, replaced, map_files, self.storage,
                           on_record=committed)
        self._remove_staging()
        return files

    def abort(self) -> None:
        """A run that failed in-process: its files and staging go (a killed one is swept next time)."""
        self._stop_beat.set()
        if self.committed:  # the record exists: the next run's recover applies it
            return
        try:
            self.videos.close()
        except Exception:
            pass
        try:
            remove_unadded(self.fs, self.root, self.run_id)
        except OSError:
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


def _protocol(fs) -> str:
    return fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]


def _is_local_fs(fs) -> bool:
    return _protocol(fs) in ("file", "local")

