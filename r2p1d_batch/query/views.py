"""DuckDB over a run output (local or s3://): views `clips`, `videos` and `runs`, plus reports.

`clips` and `videos` are the output's Delta tables (runs/tables.py) at the versions the newest
`runs` row names, their files read by DuckDB's Parquet reader (local) or as Arrow datasets (S3:
``view_schema``; DuckDB pushes filters and projections into them): the current rows, one
labeling per video, the newest committed run's.
A half-applied or killed run never shows. `videos_all` and `clips_all` are every committed
labeling: the files each run wrote itself (the `runs` rows list them), and for runs whose
history maintenance expired, their rows that are still current. On S3 the fsspec filesystem
(same endpoint, credentials and retries as the job) is registered with DuckDB, so no httpfs
extension download is needed and it works on a closed network.

An output of the earlier layout (``_runs/run_id=*.json``, runs/legacy.py) is read as before,
through the SQL below, until ``r2p1d migrate`` converts it.
"""
from __future__ import annotations

import json
from typing import Optional

import duckdb
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.fs as pafs

from .. import schema
from ..config import StorageConfig
from ..errors import UserError
from ..runs import commit, legacy, tables
from ..storage import filesystem, is_local, join
from . import curation

# -- the earlier layout: its "current" rule and commit records, in SQL ----------------------------
# The legacy views below and readers who bring their own DuckDB to such an output share these.
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


REPORTS: dict[str, str] = {
    # Label histogram over the current clips.
    "labels": """
        SELECT label, count(*) AS clips, count(DISTINCT video_id) AS videos,
               round(avg(score), 4) AS mean_score
        FROM clips GROUP BY label ORDER BY clips DESC, label""",
    # Per video: the video-level label (mean clip softmax) and its top-k, plus the most
    # frequent clip label.
    "videos": """
        SELECT v.video_id, v.label, round(v.score, 4) AS score, v.topk_labels, v.num_clips,
               (SELECT mode(c.label) FROM clips c
                 WHERE c.video_id = v.video_id AND c.run_id = v.run_id) AS most_frequent_clip_label,
               v.run_id
        FROM videos v WHERE v.status = 'ok' ORDER BY v.video_id, v.run_id""",
    # The labels of one video over time ($video_id).
    "timeline": """
        SELECT clip_index, round(start_sec, 3) AS start_sec, round(end_sec, 3) AS end_sec,
               label, round(score, 4) AS score, topk_labels, run_id
        FROM clips WHERE video_id = $video_id ORDER BY run_id, start_sec, clip_index""",
    # Videos that produced no labels, with the error (S3 message included).
    "failed": """
        SELECT video_id, uri, error_class, error, run_id
        FROM videos WHERE status <> 'ok' ORDER BY error_class, video_id, run_id""",
}
REPORT_PARAMS = {"timeline": ("video_id",)}


class NoCommittedRuns(UserError, LookupError):
    """The output holds no committed run: nothing to query."""


class ReportError(UserError, ValueError):
    """An unknown report, or one without the parameters it needs."""


def _runs_table(runs: list[dict]) -> pa.Table:
    """Run summaries as a table: every key any run has (older runs may lack newer keys);
    nested values (errors_by_class) as JSON text."""
    keys = list(dict.fromkeys(k for r in runs for k in r))
    cols = {k: [r.get(k) for r in runs] for k in keys}
    for k, values in cols.items():
        if any(isinstance(v, (dict, list)) for v in values):
            cols[k] = [None if v is None else json.dumps(v, sort_keys=True) for v in values]
    return pa.table(cols)


def _view(con: duckdb.DuckDBPyConnection, name: str, files: list[str], empty: pa.Schema) -> None:
    if files:
        listing = ", ".join("'" + f.replace("'", "''") + "'" for f in files)
        con.execute(
            f"CREATE VIEW {name} AS SELECT * FROM read_parquet([{listing}], "
            "hive_partitioning = true, union_by_name = true)"
        )
    else:  # e.g. every video failed: no clip files, but the view still has its columns
        if "run_id" not in empty.names:
            empty = empty.append(pa.field("run_id", pa.string()))
        con.register(f"_empty_{name}", empty.empty_table())
        con.execute(f"CREATE VIEW {name} AS SELECT * FROM _empty_{name}")


def _as_views(t: pa.DataType) -> pa.DataType:
    """``t`` with string_view for every string, nested ones included."""
    if pa.types.is_string(t) or pa.types.is_large_string(t):
        return pa.string_view()
    if pa.types.is_list(t):
        return pa.list_(t.value_field.with_type(_as_views(t.value_type)))
    if pa.types.is_large_list(t):
        return pa.large_list(t.value_field.with_type(_as_views(t.value_type)))
    if pa.types.is_struct(t):
        return pa.struct([f.with_type(_as_views(f.type)) for f in t])
    if pa.types.is_map(t):
        return pa.map_(_as_views(t.key_type), t.item_field.with_type(_as_views(t.item_type)))
    return t


def view_schema(sch: pa.Schema) -> pa.Schema:
    """The Arrow schema of the views' datasets (`clips_all`, `videos_all`; `clips`, `videos` on
    S3): the table's columns, run_id last (as the job writes them), every string a string_view.
    pyarrow filters a file by its own statistics in the file's types: with plain strings in the
    dataset schema a filter on a file that delta-rs's UPDATE/MERGE wrote (string_view) fails
    (docs/tables.md); with string_view here both kinds filter (tests/test_s3.py)."""
    fields = [f for f in sch if f.name != schema.RUN_ID.name] + [f for f in sch if f.name == schema.RUN_ID.name]
    return pa.schema([f.with_type(_as_views(f.type)) for f in fields])


def _dataset(files: list[str], sch: pa.Schema, arrow_fs) -> ds.Dataset:
    """The files as one Arrow dataset with the table's schema: built ``from_paths``, so no request
    per file here (a listing or a footer each on S3); each file is opened when a query reads it,
    and a column it lacks reads as null."""
    return ds.FileSystemDataset.from_paths(files, schema=view_schema(sch), format=ds.ParquetFileFormat(),
                                           filesystem=arrow_fs)


def connect(output: str, storage: Optional[StorageConfig] = None, *, require_runs: bool = True,
            con: Optional[duckdb.DuckDBPyConnection] = None) -> duckdb.DuckDBPyConnection:
    """A DuckDB connection with views ``clips``, ``videos`` (current rows), ``clips_all``,
    ``videos_all`` (every committed labeling), ``runs`` and ``segments`` over ``output``.

    What it reads: a listing of the output root (the earlier layout?), the three Delta logs
    (delta-rs: the latest checkpoint and the commits after it) and the `runs` table's file; on
    S3 no data file of `clips` or `videos` (the views open them when a query reads them)."""
    if legacy.is_legacy(output, storage):
        return _connect_legacy(output, storage, require_runs=require_runs, con=con)
    runs = commit.runs_table(output, storage)
    if not runs.num_rows and require_runs:
        raise NoCommittedRuns(f"{output}: no committed run (no Delta table {join(output, 'runs')})")
    fs, root = filesystem(output, storage)
    con, _ = _with_filesystem(con or duckdb.connect(), output, fs)
    arrow_fs = pafs.LocalFileSystem() if is_local(output) else pafs.PyFileSystem(pafs.FSSpecHandler(fs))
    records = [commit._record(r) for r in runs.to_pylist()]
    expired = sorted(r["run_id"] for r in records if r.get("expired"))
    for table in tables.TABLES:
        dt = commit.committed_table(output, table, storage, runs)
        if dt is None:
            empty = schema.CLIPS_TABLE if table == "clips" else schema.videos_table(schema.VIDEOS)
            con.register(f"_{table}_current", empty.empty_table())
            con.execute(f"CREATE VIEW {table} AS SELECT * FROM _{table}_current")
            con.execute(f"CREATE VIEW {table}_all AS SELECT * FROM _{table}_current")
            continue
        sch = pa.schema(dt.schema().to_arrow())
        current = commit.table_files(output, table, dt, storage)
        if is_local(output):
            # DuckDB's own Parquet reader: it opens every file at each bind of a view on it, a
            # few syscalls each here, and scans 2-3x faster than through an Arrow dataset.
            _view(con, table, current, sch)
        else:
            # An Arrow dataset (view_schema), not read_parquet: through fsspec every open of a
            # file is HEADs and a GET (docs/tables.md); nor delta-rs's own dataset, whose string
            # columns make pyarrow fail a filter on files delta-rs's UPDATE/MERGE wrote.
            con.register(f"_{table}_current", _dataset(current, sch, arrow_fs))
            con.execute(f"CREATE VIEW {table} AS SELECT * FROM _{table}_current")
        live = [r for r in records if not r.get("expired")]
        own = commit.committed_files(output, table, storage, runs=live)
        con.register(f"_{table}_own", _dataset(own, sch, arrow_fs))
        kept = ""
        if expired:  # expired runs: only their rows that are still current
            listing = ", ".join("'" + r + "'" for r in expired)
            kept = f" UNION ALL BY NAME SELECT * FROM {table} WHERE run_id IN ({listing})"
        con.execute(f"CREATE VIEW {table}_all AS SELECT * FROM _{table}_own{kept}")
    for view in ("clips_all", "clips"):
        curation.typed_embedding(con, view)  # embedding as FLOAT[512] (null before output.embeddings)
    curation.create_views(con)  # segments
    _runs_view(con, records)
    return con


def _with_filesystem(con: duckdb.DuckDBPyConnection, output: str, fs) -> tuple[duckdb.DuckDBPyConnection, str]:
    """``con`` with the output's fsspec filesystem registered (S3), and the URL prefix of its paths."""
    if is_local(output):
        return con, ""
    con.register_filesystem(fs)
    return con, (fs.protocol[0] if isinstance(fs.protocol, (tuple, list)) else fs.protocol) + "://"


def _runs_view(con: duckdb.DuckDBPyConnection, records: list[dict]) -> None:
    if records:
        con.register("_runs", _runs_table(records))
        con.execute("CREATE VIEW runs AS SELECT * FROM _runs")
    else:
        con.execute("CREATE VIEW runs AS SELECT NULL::VARCHAR AS run_id WHERE false")


def _connect_legacy(output: str, storage: Optional[StorageConfig], *, require_runs: bool,
                    con: Optional[duckdb.DuckDBPyConnection]) -> duckdb.DuckDBPyConnection:
    """The views over an output of the earlier layout, as they were (its "current" rule: one row
    per video_id, source_fingerprint and weights)."""
    runs = legacy.committed_runs(output, storage)
    if not runs and require_runs:
        raise NoCommittedRuns(f"{output}: no committed run (no {join(output, '_runs', 'run_id=*.json')})")
    fs, root = filesystem(output, storage)
    root = root.rstrip("/")
    con, prefix = _with_filesystem(con or duckdb.connect(), output, fs)
    for table, empty in (("clips", schema.CLIPS), ("videos", schema.VIDEOS)):  # -> clips_all, videos_all
        files: list[str] = []
        for r in runs:
            files += sorted(fs.glob(join(root, table, f"run_id={r['run_id']}", "*.parquet")))
        _view(con, f"{table}_all", [prefix + f for f in files], empty)
    curation.typed_embedding(con, "clips_all")
    con.execute("CREATE VIEW videos AS " + CURRENT_VIDEOS_SQL.format(videos="videos_all"))
    con.execute("CREATE VIEW clips AS "
                + CURRENT_CLIPS_SQL.format(clips="clips_all", current_videos="SELECT * FROM videos"))
    curation.create_views(con)
    _runs_view(con, runs)
    return con


def report(con: duckdb.DuckDBPyConnection, name: str, **params) -> duckdb.DuckDBPyRelation:
    """Run one of REPORTS or the curation reports; ``timeline`` needs ``video_id``."""
    try:
        curated = curation.report(con, name, params)  # segments, similar, duplicates (curation.py)
    except ValueError as e:  # a bad --clip/--k/--threshold, or a clip without an embedding
        raise ReportError(str(e)) from None
    if curated is not None:
        return curated
    if name not in REPORTS:
        known = ", ".join([*REPORTS, *curation.REPORT_PARAMS])
        raise ReportError(f"unknown report {name!r}; choose from {known}")
    needed = REPORT_PARAMS.get(name, ())
    missing = [p for p in needed if params.get(p) is None]
    if missing:
        raise ReportError(f"report {name!r} needs {', '.join('--' + m.replace('_', '-') for m in missing)}")
    return con.sql(REPORTS[name], params={p: params[p] for p in needed} or None)
