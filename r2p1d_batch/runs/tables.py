"""The output's Delta Lake tables: `clips`, `videos` and `runs` under OUT/ (local or s3://).

What this module knows: where each table lives and how delta-rs reaches it (the storage
options: endpoint, region, plain-HTTP endpoints, S3's conditional writes), the Delta file
statistics of a part file (so readers skip files by video_id and run_id), and the one
operation that changes a table: ``apply`` commits a run's add and remove actions as one Delta
version, tagged with the run's sequence number as a Delta *transaction* (app id "r2p1d"), so
applying the same run twice is a no-op. ``rewrite_without`` is the copy-on-write a relabel
needs: a new file of a data file's rows without some videos (runs on the workers).

The commit protocol that orders all this (the run's commit record, recovery) is commit.py's.
"""
from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass
from typing import Optional

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from ..config import StorageConfig
from ..storage import filesystem, is_local, join, with_env

APP_ID = "r2p1d"  # the Delta transaction id the runs' sequence numbers are recorded under
TABLES = ("clips", "videos")
RUNS_TABLE = "runs"
STATS_COLUMNS = ("video_id", "run_id")  # min/max per file: readers skip files by these
ROW_GROUP_ROWS = 16_384  # part files' Parquet row groups: DuckDB reads them in parallel, skips by video_id
# A Delta checkpoint at every version (delta-rs's post-commit hook, per the table's
# delta.checkpointInterval): opening a table reads the checkpoint and no JSON commit. delta-rs
# 1.6 reads each commit after the checkpoint twice on S3 (two requests per commit; with 10, up
# to 18 more a table), while a checkpoint costs the same whenever it was written.
CHECKPOINT_EVERY = 1
# Which columns the files' stats cover must be declared: a reader that expects the default (the
# first 32 columns) takes a column without stats for all-null (delta-rs 1.6's Arrow dataset then
# drops every file from `WHERE clip_index = 1`).
TABLE_PROPERTIES = {"delta.checkpointInterval": str(CHECKPOINT_EVERY),
                    "delta.dataSkippingStatsColumns": ",".join(STATS_COLUMNS)}


def delta_options(output: str, storage: Optional[StorageConfig] = None) -> dict[str, str]:
    """delta-rs storage options for ``output``: none locally; on S3 the job's endpoint and region
    (credentials: the usual AWS environment, profile or role), plain HTTP when the endpoint is
    http://, and conditional PUTs for the commit log (S3 has If-None-Match: no lock table needed)."""
    if is_local(output):
        return {}
    cfg = with_env(storage)
    opts = {"conditional_put": "etag"}
    if cfg.endpoint_url:
        opts["AWS_ENDPOINT_URL"] = cfg.endpoint_url
        if cfg.endpoint_url.startswith("http://"):
            opts["AWS_ALLOW_HTTP"] = "true"
    if cfg.region:
        opts["AWS_REGION"] = cfg.region
    if cfg.profile and not cfg.anon:
        opts["AWS_PROFILE"] = cfg.profile
    if cfg.anon:
        opts["AWS_SKIP_SIGNATURE"] = "true"
    return opts


def table_uri(output: str, table: str) -> str:
    """The table's URI for delta-rs: an absolute local path, or the s3:// URL."""
    if is_local(output):
        import os

        return os.path.abspath(join(output.removeprefix("file://"), table))
    return join(output, table)


def exists(output: str, table: str, storage: Optional[StorageConfig] = None) -> bool:
    fs, root = filesystem(output, storage)
    log_dir = join(root.rstrip("/"), table, "_delta_log")
    fs.invalidate_cache(log_dir)
    return fs.exists(join(log_dir, "00000000000000000000.json"))


def open_table(output: str, table: str, storage: Optional[StorageConfig] = None, version: Optional[int] = None):
    """The Delta table ``table`` of ``output`` (its latest version, or ``version``); None when absent."""
    from deltalake import DeltaTable
    from deltalake.exceptions import TableNotFoundError

    try:
        return DeltaTable(table_uri(output, table), version=version, storage_options=delta_options(output, storage))
    except TableNotFoundError:
        return None


def applied_seq(dt) -> int:
    """The newest run sequence number committed to the table (0: none)."""
    return int(dt.transaction_version(APP_ID) or 0) if dt is not None else 0


def read_small(dt, table_dir: str, fs) -> pa.Table:
    """The rows of a small table version (`runs`): each of its data files fetched whole, one GET
    each on S3 (its size is in the add action: no HEAD), then conformed to the table's schema (a
    column older files lack: nulls). ``table_dir``: the table's fs path. For tables without
    deletion vectors or column mapping, as the job's are."""
    sch = pa.schema(dt.schema().to_arrow())
    files = data_files(dt)
    parts = []
    for path, size in zip(files.column("path").to_pylist(), files.column("size_bytes").to_pylist()):
        t = pq.read_table(pa.BufferReader(fs.cat_file(join(table_dir, path), start=0, end=int(size))))
        parts.append(pa.table([t.column(f.name).cast(f.type) if f.name in t.column_names
                               else pa.nulls(t.num_rows, f.type) for f in sch], schema=sch))
    return pa.concat_tables(parts) if parts else sch.empty_table()


def data_files(dt) -> pa.Table:
    """The table version's files: path (relative to the table), size_bytes, num_records and the
    flattened statistics (min.video_id, max.video_id, ...)."""
    return pa.table(dt.get_add_actions(flatten=True))


# -- data files and their statistics ---------------------------------------------------------------
@dataclass(frozen=True)
class DataFile:
    """A Parquet file written into a table's directory: its path relative to the table, bytes,
    rows and Delta statistics (JSON)."""

    path: str
    size: int
    rows: int
    stats: str

    def to_json(self) -> dict:
        return {"path": self.path, "size": self.size, "rows": self.rows, "stats": self.stats}

    @classmethod
    def from_json(cls, d: dict) -> DataFile:
        return cls(d["path"], int(d["size"]), int(d["rows"]), d["stats"])


def file_stats(table: pa.Table) -> str:
    """Delta statistics of a file holding ``table``: rows, and min/max/null count of STATS_COLUMNS."""
    mins, maxs, nulls = {}, {}, {}
    for name in STATS_COLUMNS:
        if name not in table.column_names:
            continue
        col = table.column(name)
        nulls[name] = col.null_count
        if table.num_rows > col.null_count:
            mm = pc.min_max(col)
            mins[name], maxs[name] = mm["min"].as_py(), mm["max"].as_py()
    return json.dumps({"numRecords": table.num_rows, "minValues": mins, "maxValues": maxs, "nullCount": nulls})


def write_file(fs, table_dir: str, name: str, table: pa.Table) -> DataFile:
    """One part file ``name`` in ``table_dir`` (an fs path): zstd, ROW_GROUP_ROWS per row group."""
    path = join(table_dir, name)
    with fs.open(path, "wb") as f:
        pq.write_table(table, f, compression="zstd", row_group_size=ROW_GROUP_ROWS)
    return DataFile(name, int(fs.info(path)["size"]), table.num_rows, file_stats(table))


def part_name(run_id: str) -> str:
    """A new part file's name: the run that wrote it, then a uuid (no attempt overwrites another's)."""
    return f"part-{run_id}-{uuid.uuid4().hex}.parquet"


def rewrite_without(output: str, table: str, path: str, video_ids: pa.Array, run_id: str,
                    storage: Optional[StorageConfig] = None) -> Optional[tuple[str, Optional[DataFile]]]:
    """Copy-on-write of one data file: a new file of its rows whose video_id is not in
    ``video_ids``. Returns (the old path, the new file or None when no row is left), or None
    when the file holds none of those videos (nothing to do)."""
    fs, root = filesystem(output, storage)
    table_dir = join(root.rstrip("/"), table)
    with fs.open(join(table_dir, path), "rb") as f:
        data = pq.read_table(f)
    drop = pc.is_in(data.column("video_id"), value_set=video_ids)
    if not pc.any(drop).as_py():
        return None
    keep = data.filter(pc.invert(drop))
    return path, (write_file(fs, table_dir, part_name(run_id), keep) if keep.num_rows else None)


def candidate_files(dt, video_ids: pa.Array) -> list[str]:
    """Files of the table's current version whose video_id range (from the Delta statistics)
    may hold one of ``video_ids``: the files a relabel must rewrite."""
    if dt is None or not len(video_ids):
        return []
    actions = data_files(dt)
    if not actions.num_rows:
        return []
    paths = actions.column("path").to_pylist()
    if "min.video_id" not in actions.column_names:
        return paths
    ids = pc.sort_indices(video_ids)
    ids = video_ids.take(ids).to_numpy(zero_copy_only=False)
    import numpy as np

    lo = actions.column("min.video_id").to_pylist()
    hi = actions.column("max.video_id").to_pylist()
    out = []
    for p, a, b in zip(paths, lo, hi):
        if a is None or b is None:
            out.append(p)
            continue
        i = np.searchsorted(ids, a, "left")  # the first id >= min; a candidate when it is <= max
        if i < len(ids) and ids[i] <= b:
            out.append(p)
    return out


# -- one run's changes to one table ---------------------------------------------------------------------
def ensure_table(output: str, table: str, sch: pa.Schema, storage: Optional[StorageConfig] = None):
    """The table, created empty with ``sch`` when absent; columns of ``sch`` it lacks are added
    (a manifest's new pass-through columns: Delta appends do not evolve the schema themselves)."""
    from deltalake import DeltaTable, Schema

    dt = open_table(output, table, storage)
    if dt is None:
        dt = DeltaTable.create(table_uri(output, table), schema=sch, mode="ignore",
                               storage_options=delta_options(output, storage),
                               configuration=TABLE_PROPERTIES)
        return dt
    changed = False
    conf = dt.metadata().configuration
    stale = {k: v for k, v in TABLE_PROPERTIES.items() if conf.get(k) != v}
    if stale:  # a table created with other properties (before checkpoints at every version)
        dt.alter.set_table_properties(stale)
        changed = True
    have = set(dt.schema().to_arrow().names)
    new = [f for f in sch if f.name not in have]
    if new:
        fields = Schema.from_arrow(pa.schema(new)).fields
        dt.alter.add_columns(list(fields))
        changed = True
    return open_table(output, table, storage) if changed else dt


def apply(output: str, table: str, seq: int, sch: pa.Schema, adds: list[DataFile], removes: list[tuple[str, int]],
          metadata: dict, storage: Optional[StorageConfig] = None) -> int:
    """Commit one run's ``adds`` and ``removes`` (path, size) to ``table`` as one Delta version,
    unless the table already holds run ``seq`` (a recovery that repeats it). Returns the table's
    version after it."""
    from deltalake import CommitProperties, Transaction
    from deltalake.transaction import AddAction, RemoveAction

    dt = ensure_table(output, table, sch, storage)
    if applied_seq(dt) >= seq:
        return dt.version()
    now = int(time.time() * 1000)
    actions = [AddAction(f.path, f.size, {}, now, True, f.stats) for f in adds]
    actions += [RemoveAction(path, True, now, size, {}) for path, size in removes]
    props = CommitProperties(custom_metadata={k: str(v) for k, v in metadata.items()},
                             app_transactions=[Transaction(APP_ID, seq, now)])
    # delta-rs's post-commit hook writes the checkpoint (TABLE_PROPERTIES: at every version)
    dt.create_write_transaction(actions=actions, mode="append", schema=dt.schema(), commit_properties=props)
    dt.update_incremental()  # the object is not refreshed by its own commit
    return dt.version()
