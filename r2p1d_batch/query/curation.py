"""Curation SQL on the query module's views (``query.connect``): nothing here needs new data.

- ``clips.embedding`` is typed ``FLOAT[512]`` (Parquet stores a plain list; DuckDB's array
  functions such as ``array_cosine_similarity`` need the fixed size), and exists (all null) for
  outputs labeled without ``output.embeddings``.
- ``segments``: one row per run of consecutive clips of a video (ordered by start time) with
  the same top-1 label, on the current clips.
- Reports: ``segments`` (one video), ``similar`` (k nearest clips by cosine), ``duplicates``
  (clip pairs of different videos above a cosine threshold; ``duplicates.py``).
"""
from __future__ import annotations

from typing import Optional

import duckdb

from ..schema import EMBEDDING_DIM
from .duplicates import NO_EMBEDDINGS, duplicates

SEGMENTS_SQL = """
WITH ordered AS (
    SELECT run_id, video_id, clip_index, start_sec, end_sec, label, score,
           CASE WHEN label IS DISTINCT FROM lag(label) OVER w THEN 1 ELSE 0 END AS starts_segment
    FROM clips
    WINDOW w AS (PARTITION BY run_id, video_id ORDER BY start_sec, clip_index)
), numbered AS (
    SELECT *, sum(starts_segment) OVER (PARTITION BY run_id, video_id ORDER BY start_sec, clip_index
                                        ROWS UNBOUNDED PRECEDING) AS segment
    FROM ordered
)
SELECT video_id, CAST(segment AS INTEGER) AS segment, label, min(start_sec) AS start_sec,
       max(end_sec) AS end_sec, CAST(count(*) AS INTEGER) AS num_clips, avg(score) AS mean_score,
       min(clip_index) AS first_clip, max(clip_index) AS last_clip, run_id
FROM numbered
GROUP BY run_id, video_id, segment, label"""

REPORTS = {
    # The action segments of one video ($video_id), in time order.
    "segments": """
        SELECT segment, label, round(start_sec, 3) AS start_sec, round(end_sec, 3) AS end_sec, num_clips,
               round(mean_score, 4) AS mean_score, first_clip, last_clip, run_id
        FROM segments WHERE video_id = $video_id ORDER BY run_id, start_sec""",
}
REPORT_PARAMS = {"segments": ("video_id",), "similar": ("clip",), "duplicates": ()}
REPORT_DEFAULTS = {"similar": {"k": 10}, "duplicates": {"threshold": 0.95}}

SIMILAR_SQL = """
SELECT c.video_id, c.clip_index, round(c.start_sec, 3) AS start_sec, round(c.end_sec, 3) AS end_sec, c.label,
       round(c.score, 4) AS score, round(array_cosine_similarity(c.embedding, $query), 4) AS similarity,
       c.uri, c.run_id
FROM clips c
WHERE c.embedding IS NOT NULL AND NOT (c.video_id = $video_id AND c.clip_index = $clip_index)
ORDER BY array_cosine_similarity(c.embedding, $query) DESC, c.video_id, c.clip_index
LIMIT $k"""



def typed_embedding(con: duckdb.DuckDBPyConnection, view: str = "clips_all") -> None:
    """Give ``view`` an ``embedding FLOAT[512]`` column (all null when no file has one)."""
    cols = {name: t for name, t in con.sql(f"SELECT column_name, column_type FROM (DESCRIBE {view})").fetchall()}
    raw = f"_{view}_untyped"
    con.execute(f"ALTER VIEW {view} RENAME TO {raw}")
    if "embedding" in cols:
        expr = f"* REPLACE (CAST(embedding AS FLOAT[{EMBEDDING_DIM}]) AS embedding)"
    else:  # outputs written before embeddings existed
        expr = f"*, CAST(NULL AS FLOAT[{EMBEDDING_DIM}]) AS embedding"
    con.execute(f"CREATE VIEW {view} AS SELECT {expr} FROM {raw}")


def create_views(con: duckdb.DuckDBPyConnection) -> None:
    """Views on top of ``clips``: ``segments``."""
    con.execute("CREATE VIEW segments AS " + SEGMENTS_SQL)


def parse_clip(text: str) -> tuple[str, int]:
    """``VIDEO_ID:CLIP_INDEX`` (the video id may itself hold colons)."""
    video_id, sep, index = (text or "").rpartition(":")
    if not sep or not video_id or not index.strip().lstrip("-").isdigit():
        raise ValueError(f"--clip expects VIDEO_ID:CLIP_INDEX, got {text!r}")
    return video_id, int(index)


def similar(con: duckdb.DuckDBPyConnection, clip: str, k: int = 10) -> duckdb.DuckDBPyRelation:
    """The ``k`` clips most similar to ``clip`` (cosine of embeddings), best first."""
    video_id, clip_index = parse_clip(clip)
    if k < 1:
        raise ValueError("--k must be >= 1")
    rows = con.sql("SELECT embedding FROM clips WHERE video_id = $v AND clip_index = $i ORDER BY run_id DESC",
                   params={"v": video_id, "i": clip_index}).fetchall()
    if not rows:
        raise ValueError(f"no current clip {video_id}:{clip_index} (see --report timeline --video-id {video_id})")
    query = next((r[0] for r in rows if r[0] is not None), None)
    if query is None:
        raise ValueError(f"clip {video_id}:{clip_index} has no embedding; " + NO_EMBEDDINGS)
    return con.sql(SIMILAR_SQL.replace("$query", f"$query::FLOAT[{EMBEDDING_DIM}]"),
                   params={"query": query, "video_id": video_id, "clip_index": clip_index, "k": k})


def report(con: duckdb.DuckDBPyConnection, name: str, params: dict) -> Optional[duckdb.DuckDBPyRelation]:
    """A curation report, or None when ``name`` is not one (``query.report`` handles it)."""
    if name not in REPORT_PARAMS:
        return None
    params = {**REPORT_DEFAULTS.get(name, {}), **{k: v for k, v in params.items() if v is not None}}
    missing = [p for p in REPORT_PARAMS[name] if params.get(p) is None]
    if missing:
        raise ValueError(f"report {name!r} needs {', '.join('--' + m.replace('_', '-') for m in missing)}")
    if name == "similar":
        return similar(con, params["clip"], int(params["k"]))
    if name == "duplicates":
        return duplicates(con, float(params["threshold"]), max_pairs=int(params.get("max_pairs") or 100_000))
    return con.sql(REPORTS[name], params={"video_id": params["video_id"]})
