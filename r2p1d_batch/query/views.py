"""DuckDB over a run output (local or s3://): views `clips`, `videos` and `runs`, plus reports.

Only committed runs are visible (``commit.committed_runs``): the views read the data files of
those runs and nothing else, so a half-written or killed run never shows. `videos` and
`clips` hold the current rows: one per (video_id, source_fingerprint, weights), from the
newest committed run that labeled it; `videos_all` and `clips_all` keep every committed run. On S3 the fsspec
filesystem (same endpoint, credentials and retries as the job) is registered with DuckDB,
so no httpfs extension download is needed and it works on a closed network.
"""
from __future__ import annotations

import json
from typing import Optional

import duckdb
import pyarrow as pa

from .. import schema
from ..config import StorageConfig
from ..errors import UserError
from ..runs.commit import committed_runs
from ..storage import filesystem, is_local, join
from . import curation

# -- the "current" rule and the commit records, in SQL ------------------------------------------
# The views below and readers who bring their own DuckDB share these.
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
        con.register(f"_empty_{name}", pa.Table.from_pylist([], schema=empty.append(pa.field("run_id", pa.string()))))
        con.execute(f"CREATE VIEW {name} AS SELECT * FROM _empty_{name}")


def connect(output: str, storage: Optional[StorageConfig] = None, *, require_runs: bool = True,
            con: Optional[duckdb.DuckDBPyConnection] = None) -> duckdb.DuckDBPyConnection:
    """A DuckDB connection with views ``clips``, ``videos`` (current rows), ``clips_all``,
    ``videos_all`` (every committed run) and ``runs`` over ``output``."""
    runs = committed_runs(output, storage)
    if not runs and require_runs:
        raise NoCommittedRuns(f"{output}: no committed run (no {join(output, '_runs', 'run_id=*.json')})")
    fs, root = filesystem(output, storage)
    root = root.rstrip("/")
    con = con or duckdb.connect()
    prefix = ""
    if not is_local(output):
        con.register_filesystem(fs)
        prefix = (fs.protocol[0] if isinstance(fs.protocol, (tuple, list)) else fs.protocol) + "://"
    for table, empty in (("clips", schema.CLIPS), ("videos", schema.VIDEOS)):  # -> clips_all, videos_all
        files: list[str] = []
        for r in runs:
            files += sorted(fs.glob(join(root, table, f"run_id={r['run_id']}", "*.parquet")))
        _view(con, f"{table}_all", [prefix + f for f in files], empty)
    curation.typed_embedding(con, "clips_all")  # embedding as FLOAT[512] (null before output.embeddings)
    # One row per (video_id, source_fingerprint, weights): the newest committed run's (incremental.py).
    con.execute("CREATE VIEW videos AS " + CURRENT_VIDEOS_SQL.format(videos="videos_all"))
    con.execute("CREATE VIEW clips AS "
                + CURRENT_CLIPS_SQL.format(clips="clips_all", current_videos="SELECT * FROM videos"))
    curation.create_views(con)  # segments
    if runs:
        con.register("_runs", _runs_table(runs))
        con.execute("CREATE VIEW runs AS SELECT * FROM _runs")
    else:
        con.execute("CREATE VIEW runs AS SELECT NULL::VARCHAR AS run_id WHERE false")
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
