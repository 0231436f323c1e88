"""End to end: jobs/label.py on a local Ray over good and bad videos, checked with DuckDB."""
import subprocess
import sys

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from deltalake import DeltaTable

from tests.helpers import REPO
from tests.helpers.videos import make_audio_only, make_video


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    d = tmp_path_factory.mktemp("videos")
    good = {
        "two_clips": make_video(d / "two.mp4", n_frames=66, fps=30, pattern="noise"),  # 2.2 s
        "short": make_video(d / "short.mp4", n_frames=10, fps=30),  # padded
        "odd_10bit": make_video(d / "odd.mp4", n_frames=20, fps=30, size=(98, 66), pix_fmt="yuv420p10le"),
        "rotated": make_video(d / "rot.mp4", n_frames=20, fps=30, rotation=90),
        "vfr": make_video(d / "vfr.mp4", n_frames=6, times=[0, 0.1, 0.15, 0.5, 0.7, 1.2]),
    }
    (d / "empty.mp4").write_bytes(b"")
    (d / "text.mp4").write_text("hello, I am not a video")
    trunc = make_video(d / "trunc_src.mp4", n_frames=60, pattern="noise")
    (d / "trunc.mp4").write_bytes(trunc.read_bytes()[: trunc.stat().st_size // 2])
    bad = {
        "missing": d / "missing.mp4",
        "empty": d / "empty.mp4",
        "text": d / "text.mp4",
        "audio": make_audio_only(d / "audio.m4a"),
        "truncated": d / "trunc.mp4",
    }
    ids = list(good) + list(bad)
    uris = [str(p) for p in list(good.values()) + list(bad.values())]
    manifest = d / "manifest.parquet"
    pq.write_table(pa.table({"uri": uris, "video_id": ids, "split": ["a"] * len(ids)}), manifest)
    return {"dir": d, "manifest": manifest, "good": good, "bad": bad}


@pytest.fixture(scope="module")
def labeled(corpus, tmp_path_factory):
    out = tmp_path_factory.mktemp("out")
    cmd = [sys.executable, str(REPO / "jobs" / "label.py"), str(corpus["manifest"]), "--output", str(out),
           "--set", "model.weights=random", "--set", "ray.num_cpus=2", "--set", "ray.progress_bars=false",
           "--set", "model.batch_size=4", "--set", "ray.object_store_memory_mb=300"]
    env = {"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin", "HOME": str(out), "RAY_USAGE_STATS_ENABLED": "0"}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env, cwd=REPO)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    return out, proc.stdout


def _sql(out, q):
    con = duckdb.connect()
    for table in ("clips", "videos"):  # the Delta tables' own reader: no project code
        con.register(f"_{table}", DeltaTable(str(out / table)).to_pyarrow_dataset())
        con.execute(f"CREATE VIEW {table} AS SELECT * FROM _{table}")
    return con.execute(q).fetchall()


@pytest.mark.ray
@pytest.mark.slow
def test_every_manifest_row_has_exactly_one_video_row(corpus, labeled):
    out, _ = labeled
    rows = dict(_sql(out, "SELECT video_id, count(*) FROM videos GROUP BY 1"))
    assert rows == {vid: 1 for vid in list(corpus["good"]) + list(corpus["bad"])}


@pytest.mark.ray
def test_good_videos_are_labeled_and_bad_ones_are_error_rows(corpus, labeled):
    out, _ = labeled
    status = {v: (s, c, e) for v, s, c, e in _sql(out, "SELECT video_id, status, error_class, error FROM videos")}
    for vid in corpus["good"]:
        assert status[vid][0] == "ok", status[vid]
    expect = {"missing": "NotFound", "empty": "EmptyFile", "text": "InvalidData", "audio": "NoVideoStream"}
    for vid, kind in expect.items():
        assert status[vid][:2] == ("error", kind), status[vid]
        assert str(corpus["bad"][vid]) in status[vid][2]  # the error names the file
    assert status["truncated"][0] == "error" and status["truncated"][2]


@pytest.mark.ray
def test_clip_rows_account_for_num_clips_without_duplicates(labeled):
    out, _ = labeled
    per_video = dict(_sql(out, "SELECT video_id, num_clips FROM videos"))
    counted = dict(_sql(out, "SELECT video_id, count(*) FROM clips GROUP BY 1"))
    assert {k: v for k, v in per_video.items() if v} == counted
    assert per_video["two_clips"] == 2 and per_video["missing"] == 0
    (dups,) = _sql(out, "SELECT count(*) FROM (SELECT video_id, clip_index FROM clips "
                        "GROUP BY 1, 2 HAVING count(*) > 1)")
    assert dups == (0,)


@pytest.mark.ray
def test_output_schema_and_weights_marking(labeled):
    out, stdout = labeled
    cols = {r[0] for r in _sql(out, "DESCRIBE clips")}
    assert {"run_id", "video_id", "uri", "clip_index", "start_sec", "end_sec", "label", "score", "topk_labels",
            "topk_scores", "clip_sha", "weights", "runtime", "created_at", "frame_pts"} <= cols
    vcols = {r[0] for r in _sql(out, "DESCRIBE videos")}
    assert {"run_id", "status", "error", "num_clips", "duration_sec", "fps", "width", "height", "label",
            "topk_labels", "split"} <= vcols
    assert _sql(out, "SELECT DISTINCT weights FROM clips") == [("random:seed=0",)]
    assert _sql(out, "SELECT DISTINCT weights FROM videos") == [("random:seed=0",)]
    assert "RANDOM WEIGHTS" in stdout and "videos 10 (ok 5, error 5)" in stdout
    (n,) = _sql(out, "SELECT count(*) FROM clips WHERE len(topk_labels) = 5 AND label = topk_labels[1]")[0]
    assert n == _sql(out, "SELECT count(*) FROM clips")[0][0]


@pytest.mark.ray
def test_rotated_and_padded_metadata(labeled):
    out, _ = labeled
    (w, h, rot), = _sql(out, "SELECT width, height, rotation FROM videos WHERE video_id = 'rotated'")
    assert (w, h, rot) == (64, 96, 90)
    (pad,), = _sql(out, "SELECT padded_frames FROM clips WHERE video_id = 'short'")
    assert pad > 0


def test_bad_manifest_fails_before_any_work(tmp_path):
    m = tmp_path / "m.parquet"
    pq.write_table(pa.table({"path": ["x.mp4"]}), m)
    proc = subprocess.run([sys.executable, str(REPO / "jobs/label.py"), str(m), "--output", str(tmp_path / "o")],
                          capture_output=True, text=True, timeout=120, cwd=REPO)
    assert proc.returncode == 2 and "required column 'uri' is missing" in proc.stderr
    assert not (tmp_path / "o").exists()


def test_unknown_config_key_fails_before_any_work(tmp_path):
    proc = subprocess.run([sys.executable, str(REPO / "jobs/label.py"), "m.parquet", "--set", "model.weigths=random"],
                          capture_output=True, text=True, timeout=120, cwd=REPO)
    assert proc.returncode == 2 and "model.weigths: unknown key" in proc.stderr
