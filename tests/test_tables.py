"""The output as open Delta tables, end to end on the session's local Ray: a video whose file
changed is relabeled and replaces its rows; other engines (delta-rs's own reader through DuckDB
and Polars) read exactly what `r2p1d query` reads, with no project code."""
from __future__ import annotations

import os
import time
from pathlib import Path

import duckdb
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from deltalake import DeltaTable

from r2p1d_batch import query

from tests.helpers.outputs import label_run
from tests.helpers.videos import make_video

pytestmark = [pytest.mark.ray, pytest.mark.slow]

ROWS = "SELECT video_id, clip_index, clip_sha, label, run_id FROM {} ORDER BY video_id, clip_index"


def _ours(out: Path, table: str = "clips") -> list[tuple]:
    con = query.connect(str(out))
    return con.sql(ROWS.format(table)).fetchall()


def _duckdb_delta(out: Path, table: str = "clips") -> list[tuple]:
    """DuckDB over the format's own reader: what any user writes, no project code."""
    con = duckdb.connect()
    con.register("t", DeltaTable(str(out / table)).to_pyarrow_dataset())
    return con.sql(ROWS.format("t")).fetchall()


def _polars(out: Path, table: str = "clips") -> list[tuple]:
    df = pl.read_delta(str(out / table)).select("video_id", "clip_index", "clip_sha", "label", "run_id")
    return sorted(df.sort("video_id", "clip_index").rows(), key=lambda r: (r[0], r[1]))


def test_a_changed_video_replaces_its_rows_and_every_engine_reads_the_same(ray_local, tmp_path):
    videos = {f"v{i}": make_video(tmp_path / f"v{i}.mp4", n_frames=45, fps=15, pattern="noise", seed=i)
              for i in range(4)}
    m = tmp_path / "m.parquet"
    pq.write_table(pa.table({"video_id": list(videos), "uri": [str(p) for p in videos.values()]}), m)
    out = tmp_path / "out"
    first = label_run(m, out)
    before = _ours(out)
    assert first.videos == 4 and len(before) == first.clips
    time.sleep(0.01)
    make_video(videos["v2"], n_frames=60, fps=15, pattern="noise", seed=9)  # v2's file changes
    second = label_run(m, out)
    assert (second.videos_changed, second.videos_skipped, second.videos) == (1, 3, 1)

    after = _ours(out)
    assert {r[0] for r in after} == set(videos)  # one labeling per video
    assert [r for r in after if r[0] != "v2"] == [r for r in before if r[0] != "v2"]
    v2 = [r for r in after if r[0] == "v2"]
    assert {r[4] for r in v2} == {second.run_id} and len(v2) == second.clips
    assert len(after) == first.clips - sum(r[0] == "v2" for r in before) + second.clips
    # Other engines read the same current rows with their own Delta readers.
    assert _duckdb_delta(out) == after
    assert _polars(out) == after
    # A filter on a column the files carry no stats for still finds its rows (the tables declare
    # which columns their stats cover; without that, delta-rs's reader skipped every file here).
    con = duckdb.connect()
    con.register("t", DeltaTable(str(out / "clips")).to_pyarrow_dataset())
    second_clips = con.sql("SELECT video_id, clip_index FROM t WHERE clip_index = 1 ORDER BY video_id").fetchall()
    assert second_clips == [(r[0], r[1]) for r in after if r[1] == 1] and second_clips
    con = query.connect(str(out))
    ours_v = con.sql("SELECT video_id, source_fingerprint, run_id FROM videos ORDER BY video_id").fetchall()
    theirs_v = sorted(pl.read_delta(str(out / "videos")).select("video_id", "source_fingerprint", "run_id").rows())
    assert ours_v == theirs_v and len(ours_v) == 4
    # History: both labelings of v2 stay reachable (the views, and Delta time travel).
    assert con.sql("SELECT count(DISTINCT run_id) FROM clips_all WHERE video_id = 'v2'").fetchall() == [(2,)]
    runs = con.sql("SELECT run_id, clips_version FROM runs ORDER BY run_id").fetchall()
    assert [r[0] for r in runs] == [first.run_id, second.run_id]
    old = DeltaTable(str(out / "clips"), version=runs[0][1]).to_pyarrow_table()
    assert sorted(zip(old.column("video_id").to_pylist(), old.column("clip_index").to_pylist())) == [
        (r[0], r[1]) for r in before]
    # A rerun with nothing changed labels nothing and changes no table.
    third = label_run(m, out)
    assert third.videos == 0 and _ours(out) == after


def test_a_plain_parquet_glob_is_not_the_table(ray_local, tmp_path):
    """Reading the directory's Parquet files without the Delta log also sees files that the
    current version removed: what the README tells readers not to do (this is why)."""
    v = make_video(tmp_path / "a.mp4", n_frames=45, fps=15, pattern="noise", seed=1)
    m = tmp_path / "m.parquet"
    pq.write_table(pa.table({"video_id": ["a"], "uri": [str(v)]}), m)
    out = tmp_path / "out"
    label_run(m, out)
    s = label_run(m, out, "run.mode=force")  # relabels a: its first rows are removed from the table
    assert s.videos_forced == 1
    n_table = len(_duckdb_delta(out))
    n_glob = duckdb.sql(f"SELECT count(*) FROM read_parquet('{out}/clips/*.parquet')").fetchall()[0][0]
    assert n_glob == 2 * n_table
    assert os.path.isdir(out / "clips" / "_delta_log")
