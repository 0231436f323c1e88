"""Keeping an output small for years: ``maintain`` (compaction, history expiry, vacuum,
checkpoints, leftovers) and ``migrate`` (an output of the earlier layout into the Delta tables).

``maintain(OUT)``, under a lease of its own so no label run starts meanwhile (and refusing when
one holds the output):
1. rolls committed runs forward and removes killed runs' leftovers (commit.sweep);
2. compacts `clips` and `videos`: small files (a night's relabels, a small run's parts) are
   merged toward ``output.rows_per_file`` rows (delta-rs OPTIMIZE; a new version, same rows);
3. expires history beyond ``keep_days`` / ``keep_runs``: those runs are marked expired in
   `runs` (their rows that are still current stay; `clips_all` loses the rest) and their commit
   records go;
4. vacuums: data files no version inside the horizon references, removed before it (and at
   least ``min_retention_hours`` ago: a reader that just opened a version keeps its files);
5. writes a checkpoint and drops Delta log entries past the log's retention, so opening a table
   reads a checkpoint (and no commit: every version has one, runs/tables.py), however many
   nights came before.
Nothing the current version or a version inside the horizon references is ever removed.
"""
from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from typing import Optional

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from .. import schema
from ..config import MaintainConfig, StorageConfig
from ..storage import filesystem, join
from . import commit, legacy, tables

log = logging.getLogger("r2p1d_batch")


@dataclass
class Maintenance:
    """What one maintenance did (printed by `r2p1d maintain`, one JSON line for schedulers)."""

    output: str
    recovered: list = field(default_factory=list)  # committed runs rolled forward
    swept: list = field(default_factory=list)  # killed runs whose leftovers went
    compacted: dict = field(default_factory=dict)  # table -> {files_removed, files_added}
    expired_runs: list = field(default_factory=list)
    vacuumed: dict = field(default_factory=dict)  # table -> files deleted
    files: dict = field(default_factory=dict)  # table -> data files of the current version
    bytes: dict = field(default_factory=dict)  # table -> their bytes
    horizon: Optional[str] = None  # history before this is expired (ISO time), None: kept
    wall_sec: float = 0.0

    def text(self) -> str:
        lines = [f"maintained {self.output} in {self.wall_sec:.1f} s"]
        for t in tables.TABLES:
            c = self.compacted.get(t, {})
            lines.append(f"  {t}: {self.files.get(t, 0)} files, {self.bytes.get(t, 0) / 2**20:.1f} MiB; "
                         f"compacted {c.get('files_removed', 0)} -> {c.get('files_added', 0)}; "
                         f"vacuumed {self.vacuumed.get(t, 0)}")
        lines.append(f"  history: {'kept whole' if self.horizon is None else 'expired before ' + self.horizon}"
                     f" ({len(self.expired_runs)} runs newly expired)")
        if self.recovered or self.swept:
            lines.append(f"  rolled forward {self.recovered or 'none'}; leftovers removed {self.swept or 'none'}")
        return "\n".join(lines)

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)


def horizon(runs: pa.Table, keep_days: Optional[float], keep_runs: Optional[int], now: float) -> Optional[float]:
    """The time (epoch seconds) before which history is expired, or None (keep all): with both
    limits, whichever keeps more. The newest run is never expired."""
    if not runs.num_rows or (keep_days is None and keep_runs is None):
        return None
    times = sorted(t.timestamp() for t in runs.column("committed_at").to_pylist())
    candidates = []
    if keep_days is not None:
        candidates.append(now - keep_days * 86400)
    if keep_runs is not None:
        candidates.append(times[-keep_runs] if keep_runs <= len(times) else times[0])
    return min(min(candidates), times[-1])


def maintain(output: str, storage: Optional[StorageConfig] = None, cfg: MaintainConfig = MaintainConfig(), *,
             rows_per_file: int = 200_000, stale_after_sec: float = 900.0, own_lease: bool = True) -> Maintenance:
    """Maintain ``output`` (module docstring). ``own_lease``: take the output's lease (False: the
    caller holds it, as a label run that maintains after its commit does)."""
    t0 = time.perf_counter()
    commit.check_writable(output, storage)
    report = Maintenance(output=output)
    swept = commit.sweep(output, storage, stale_after_sec)
    report.recovered, report.swept = swept.recovered, swept.removed
    if swept.live and own_lease:
        raise commit.RunInProgressError(
            f"{output}: run {swept.live[0]} is running (live lease in {commit.STAGING_DIR}/run_id={swept.live[0]}/); "
            "maintenance waits for no run: run it again when the label run is done")
    fs, root = filesystem(output, storage)
    root = root.rstrip("/")
    lease_id = f"maintain-{datetime.now(timezone.utc):%Y%m%dT%H%M%SZ}"
    if own_lease:
        commit.write_lease(fs, root, lease_id)
    try:
        runs = commit.runs_table(output, storage)
        if not runs.num_rows:
            report.wall_sec = round(time.perf_counter() - t0, 3)
            return report
        now = time.time()
        cut = horizon(runs, cfg.keep_days, cfg.keep_runs, now)
        for table in tables.TABLES:
            dt = tables.open_table(output, table, storage)
            if dt is None:
                continue
            if cfg.compact:
                report.compacted[table] = _compact(dt, rows_per_file)
        if cut is not None:
            report.horizon = datetime.fromtimestamp(cut, timezone.utc).isoformat()
            report.expired_runs = _expire(output, storage, runs, cut)
            _drop_records(fs, root, runs, cut)
        # Vacuum (only with a horizon: keeping all history deletes nothing): files no version
        # from the oldest kept run's on references, removed at least min_retention_hours ago.
        kept = runs.filter(pc.greater_equal(runs.column("committed_at"), pa.scalar(
            datetime.fromtimestamp(cut, timezone.utc), runs.schema.field("committed_at").type))) if cut else None
        for table in (*tables.TABLES, tables.RUNS_TABLE):
            dt = tables.open_table(output, table, storage)
            if dt is None:
                continue
            if kept is not None:
                first = (min(kept.column(f"{table}_version").to_pylist()) if table in tables.TABLES
                         else dt.version())
                deleted = dt.vacuum(retention_hours=math.ceil(cfg.min_retention_hours), dry_run=False,
                                    enforce_retention_duration=False,
                                    keep_versions=list(range(first, dt.version() + 1)))
                if table in tables.TABLES:
                    report.vacuumed[table] = len(deleted)
                dt = tables.open_table(output, table, storage)
            dt.create_checkpoint()
            dt.cleanup_metadata()
            if table in tables.TABLES:
                files = tables.data_files(dt)
                report.files[table] = files.num_rows
                report.bytes[table] = int(pc.sum(files.column("size_bytes")).as_py() or 0)
    finally:
        if own_lease:
            try:
                fs.rm(join(root, commit.STAGING_DIR, f"run_id={lease_id}"), recursive=True)
            except FileNotFoundError:
                pass
    report.wall_sec = round(time.perf_counter() - t0, 3)
    log.info("%s", report.text())
    return report


def _compact(dt, rows_per_file: int) -> dict:
    """Small files merged toward ``rows_per_file`` rows (the target size from the table's own
    bytes per row)."""
    files = tables.data_files(dt)
    rows = int(pc.sum(files.column("num_records")).as_py() or 0)
    if files.num_rows < 2 or not rows:
        return {"files_removed": 0, "files_added": 0}
    per_row = (pc.sum(files.column("size_bytes")).as_py() or 0) / rows
    target = max(1 << 20, int(per_row * rows_per_file))
    got = dt.optimize.compact(target_size=target)
    return {"files_removed": int(got.get("numFilesRemoved", 0)), "files_added": int(got.get("numFilesAdded", 0))}


def _expire(output: str, storage, runs: pa.Table, cut: float) -> list[str]:
    """Mark the runs committed before ``cut`` expired (the `runs` table rewritten: one row per run)."""
    from deltalake import write_deltalake

    old = [t.timestamp() < cut for t in runs.column("committed_at").to_pylist()]
    already = runs.column("expired").fill_null(False).to_pylist()
    newly = [r for r, o, a in zip(runs.column("run_id").to_pylist(), old, already) if o and not a]
    if not newly:
        return []
    expired = pa.array([o or a for o, a in zip(old, already)], pa.bool_())
    updated = runs.set_column(runs.schema.get_field_index("expired"), "expired", expired)
    write_deltalake(tables.table_uri(output, tables.RUNS_TABLE), updated.cast(commit.RUNS_SCHEMA), mode="overwrite",
                    storage_options=tables.delta_options(output, storage))
    return newly


def _drop_records(fs, root: str, runs: pa.Table, cut: float) -> None:
    """Commit records of runs before the horizon go (never the newest: the next run's number
    is taken against it)."""
    newest = max(runs.column("seq").to_pylist())
    for seq, at in zip(runs.column("seq").to_pylist(), runs.column("committed_at").to_pylist()):
        if seq != newest and at.timestamp() < cut:
            try:
                fs.rm(commit.record_path(root, seq))
            except FileNotFoundError:
                pass


# -- the earlier layout -> the Delta tables ----------------------------------------------------------
def migrate(output: str, storage: Optional[StorageConfig] = None) -> list[str]:
    """Convert an output of the earlier layout (runs/legacy.py) into the Delta tables without
    relabeling: each committed run, oldest first, is committed again from its own files (run_id
    written into the rows), relabeled videos replacing their earlier rows as a label run does.
    The earlier layout's records and partitions are removed last, so a migration that stops
    half-way leaves the output readable as before and is simply run again. Returns the run ids."""
    if not legacy.is_legacy(output, storage):
        raise commit.LegacyOutputError(f"{output}: no runs of the earlier layout (_runs/run_id=*.json) to migrate")
    fs, root = filesystem(output, storage)
    root = root.rstrip("/")
    _drop_delta_state(fs, root)
    runs = legacy.committed_runs(output, storage)
    current: set[str] = set()
    for record in runs:
        run_id = record["run_id"]
        own, ids = {}, []
        for table in tables.TABLES:
            files, sch = [], None
            for path in legacy.committed_files(output, table, storage, runs=[record]):
                with fs.open(path, "rb") as f:
                    t = pq.read_table(f)
                t = _as_table_rows(t, table, run_id)
                sch = t.schema if sch is None else sch
                files.append(tables.write_file(fs, join(root, table), tables.part_name(run_id), t))
                if table == "videos":
                    ids += t.column("video_id").to_pylist()
            empty = schema.CLIPS_TABLE if table == "clips" else schema.videos_table(schema.VIDEOS)
            own[table] = (sch or empty, files)
        replaced = pa.array(sorted(set(ids) & current), pa.string())
        summary = {k: v for k, v in record.items() if k != "files"}
        commit.commit_run(output, run_id, summary, own, replaced, storage=storage)
        current |= set(ids)
    for table in tables.TABLES:  # the earlier partitions, then the records: from here it is a Delta output
        for d in fs.glob(join(root, table, "run_id=*")):
            fs.rm(d, recursive=True)
    fs.rm(join(root, legacy.RUNS_DIR), recursive=True)
    return [r["run_id"] for r in runs]


def _as_table_rows(t: pa.Table, table: str, run_id: str) -> pa.Table:
    """An earlier-layout file's rows as the Delta table's: run_id written in, the embedding as a list."""
    if "run_id" not in t.column_names:
        t = t.append_column(schema.RUN_ID, pa.repeat(pa.scalar(run_id), t.num_rows))
    if table == "clips":
        if "embedding" not in t.column_names:
            t = t.add_column(t.schema.get_field_index("run_id"), "embedding",
                             pa.nulls(t.num_rows, pa.list_(pa.float32())))
        t = t.set_column(t.schema.get_field_index("embedding"), "embedding",
                         t.column("embedding").cast(pa.list_(pa.float32())))
    return t


def _drop_delta_state(fs, root: str) -> None:
    """What an interrupted migration wrote (only ever called while the earlier layout's records exist)."""
    for path in (join(root, commit.COMMITS_DIR), join(root, tables.RUNS_TABLE),
                 *(join(root, t, "_delta_log") for t in tables.TABLES)):
        if fs.exists(path):
            fs.rm(path, recursive=True)
    for t in tables.TABLES:
        parts = fs.glob(join(root, t, "part-*.parquet"))
        if parts:
            fs.rm(parts)
