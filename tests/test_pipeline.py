"""pipeline.label in process on the shared local Ray: uniform sampling, checkpoint weights, and
the stored labels reproduced from re-decoded clips; the writer stage's output against decode +
classify without Ray; a writer task that dies after writing."""
from pathlib import Path

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from torchvision.models.video import r2plus1d_18

from r2p1d_batch import config
from r2p1d_batch.classifying.classifier import ClipClassifier
from r2p1d_batch.decoding.faults import TEST_HOOKS_ENV
from r2p1d_batch.decoding.pyav import VideoSource
from r2p1d_batch.decoding.sampling import plan_clips
from r2p1d_batch.decoding.stage import decode_video
from r2p1d_batch.pipeline import label
from r2p1d_batch.runs import commit

from tests.helpers.outputs import expected_clips
from tests.helpers.videos import make_cut_video, make_video

pytestmark = [pytest.mark.ray, pytest.mark.slow]


def test_uniform_run_with_checkpoint_reproduces_labels(ray_local, tmp_path):
    v1 = make_video(tmp_path / "a.mp4", n_frames=45, fps=15, pattern="noise", seed=1)
    v2 = make_video(tmp_path / "b.mp4", n_frames=40, fps=20, pattern="noise", seed=2)
    m = tmp_path / "m.parquet"
    pq.write_table(pa.table({"uri": [str(v1), str(v2)], "start_sec": [0.5, None]}), m)
    torch.manual_seed(7)
    ckpt = tmp_path / "w.pth"
    torch.save(r2plus1d_18(num_classes=400).state_dict(), ckpt)
    cfg = config.load(overrides=[
        f"model.weights={ckpt}", "sampling.mode=uniform", "sampling.num_clips=2", "model.batch_size=2",
        "ray.progress_bars=false",
    ], manifest=str(m), **{"output.path": str(tmp_path / "out")})
    summary = label(cfg)
    assert summary.committed and summary.videos_ok == 2 and summary.clips == 4
    assert summary.weights.startswith("file:w.pth@sha256:") and not summary.random_weights
    assert 0 < summary.first_clip_sec <= summary.wall_sec  # start-up, then the clips reach the writer

    con = duckdb.connect()
    clips = con.execute(f"SELECT uri, clip_index, start_sec, clip_sha, label, score FROM "
                        f"read_parquet('{tmp_path}/out/clips/*.parquet') ORDER BY uri, clip_index").fetchall()
    videos = dict(con.execute(f"SELECT uri, label FROM read_parquet('{tmp_path}/out/videos/*.parquet')").fetchall())
    clf = ClipClassifier(cfg.model)
    for uri in (str(v1), str(v2)):
        mine = [c for c in clips if c[0] == uri]
        with VideoSource(uri, uri, cfg.decode) as src:
            start = 0.5 if uri == str(v1) else None
            decoded = list(src.clips(plan_clips(cfg.sampling, src.info.duration, src.info.fps, start)))
        assert [c.sha for c in decoded] == [c[3] for c in mine]  # same input, proven by hash
        assert mine[0][2] == pytest.approx(decoded[0].start_sec)
        s = clf(np.stack([c.frames for c in decoded]))
        assert [clf.labels[i] for i in s.topk_ids[:, 0]] == [c[4] for c in mine]
        assert np.allclose(s.topk_scores[:, 0], [c[5] for c in mine], atol=1e-5)
        assert videos[uri] == clf.labels[int(np.argmax(s.probs.mean(0)))]  # mean clip softmax


def _expected(cfg, rows: dict[str, str], clf) -> tuple[dict, dict]:
    """What the run must commit, from a direct decode and the same classifier on the CPU, no Ray:
    clips by (video_id, clip_index), and per video its status, clip count and mean-softmax top-k."""
    clips, videos = {}, {}
    for vid, uri in rows.items():
        out = list(decode_video({"video_id": vid, "uri": uri, "start_sec": None, "end_sec": None}, cfg))
        video = out[-1]
        mine = [r for r in out if r["kind"] == "clip"] if video["status"] == "ok" else []
        entry = {"status": video["status"], "error_class": video["error_class"], "num_clips": len(mine),
                 "label": None, "topk_labels": None, "topk_scores": None}
        if mine:
            s = clf(np.stack([np.frombuffer(r["frames"], np.uint8).reshape(16, 112, 112, 3) for r in mine]))
            for r, ids, scores in zip(mine, s.topk_ids, s.topk_scores):
                clips[(vid, r["clip_index"])] = {"clip_sha": r["clip_sha"], "topk_ids": ids.tolist(),
                                                 "topk_labels": [clf.labels[i] for i in ids],
                                                 "topk_scores": scores.tolist()}
            mean = s.probs.astype(np.float64).mean(0).astype(np.float32)  # the mean clip softmax
            top = np.argsort(-mean, kind="stable")[: cfg.model.topk]
            entry.update(label=clf.labels[top[0]], topk_labels=[clf.labels[i] for i in top],
                         topk_scores=mean[top].tolist())
        videos[vid] = entry
    return clips, videos


def _committed(out: Path, table: str) -> list[dict]:
    return [r for f in commit.committed_files(str(out), table) for r in pq.read_table(f).to_pylist()]


def test_workers_write_what_the_driver_wrote_before(ray_local, tmp_path):
    """The same input through pipeline.label (writer stage on workers, small part files so videos
    span files) and through decode + classify without Ray: identical clips (clip_sha, top-k
    labels and scores) and video rows (status, clip counts, video-level top-k of the mean
    softmax); a video that fails half-way keeps no clips; one clip part file per writer batch."""
    rows = {
        "long": str(make_video(tmp_path / "long.mp4", n_frames=165, fps=15, size=(64, 48), pattern="noise", seed=3)),
        "short": str(make_video(tmp_path / "short.mp4", n_frames=45, fps=15, size=(64, 48), pattern="noise", seed=4)),
        "cut": str(make_cut_video(tmp_path / "cut.mp4", n_frames=150, fps=15, keep=0.5)),
        "gone": str(tmp_path / "missing.mp4"),
    }
    m = tmp_path / "m.parquet"
    pq.write_table(pa.table({"video_id": list(rows), "uri": list(rows.values()), "tag": [1, 2, 3, 4]}), m)
    cfg = config.load(overrides=["model.weights=random", "ray.progress_bars=false", "output.rows_per_file=4"],
                      manifest=str(m), **{"output.path": str(tmp_path / "out")})
    s = label(cfg)
    want_clips, want_videos = _expected(cfg, rows, ClipClassifier(cfg.model))
    assert s.committed and (s.videos, s.videos_ok, s.clips) == (4, 2, len(want_clips)) and len(want_clips) >= 12
    assert s.errors_by_class == {want_videos["cut"]["error_class"]: 1, "NotFound": 1}

    got = {(c["video_id"], c["clip_index"]): c for c in _committed(tmp_path / "out", "clips")}
    assert sorted(got) == sorted(want_clips)  # every clip once; none of the video that failed
    for key, want in want_clips.items():
        c = got[key]
        assert (c["clip_sha"], c["topk_ids"], c["topk_labels"]) == (want["clip_sha"], want["topk_ids"],
                                                                      want["topk_labels"]), key
        assert np.allclose(c["topk_scores"], want["topk_scores"], atol=1e-5)
        assert (c["label"], c["label_id"], c["score"]) == (want["topk_labels"][0], want["topk_ids"][0],
                                                           pytest.approx(want["topk_scores"][0], abs=1e-5))
    videos = {v["video_id"]: v for v in _committed(tmp_path / "out", "videos")}
    assert sorted(videos) == sorted(rows) and [videos[v]["tag"] for v in rows] == [1, 2, 3, 4]
    for vid, want in want_videos.items():
        v = videos[vid]
        assert (v["status"], v["num_clips"], v["label"], v["topk_labels"]) == (
            want["status"], want["num_clips"], want["label"], want["topk_labels"]), vid
        if want["topk_scores"] is not None:
            assert np.allclose(v["topk_scores"], want["topk_scores"], atol=1e-5) and v["score"] == v["topk_scores"][0]
    clip_files = [f for f in s.files if f.startswith("clips/")]
    assert 1 + len(want_clips) // 4 <= len(clip_files) <= len(want_clips)  # ~4 rows per part file


def test_a_writer_that_dies_after_writing_is_retried_and_only_the_reported_file_is_published(
        ray_local, tmp_path, monkeypatch):
    """The writer task that holds the clips dies right after writing its part file, before its
    report (testing/hooks.writer_exit, once): Ray retries it, the retry writes a file of its own,
    and only that one is published; the output equals what decoding gives."""
    monkeypatch.setenv(TEST_HOOKS_ENV, "1")  # the run passes it to the stages' runtime_env
    video = make_video(tmp_path / "v.mp4", n_frames=60, fps=15, size=(64, 48), pattern="noise", seed=5)
    marker = tmp_path / "writer-died"
    m = tmp_path / "m.parquet"
    pq.write_table(pa.table({"video_id": ["v"], "uri": [f"testhook:writer_exit={marker}:{video}"]}), m)
    cfg = config.load(overrides=["model.weights=random", "ray.progress_bars=false"], manifest=str(m),
                      **{"output.path": str(tmp_path / "out")})
    s = label(cfg)
    assert marker.exists()  # the first attempt died after writing
    assert s.committed and s.videos_ok == 1
    clip_files = [f for f in s.files if f.startswith("clips/")]
    assert len(clip_files) == 1  # the retry's; the dead attempt's file went with staging
    clips = sorted((c["video_id"], c["clip_index"], c["clip_sha"]) for c in _committed(tmp_path / "out", "clips"))
    assert clips == expected_clips({"v": video}) and s.clips == len(clips)
    assert not (tmp_path / "out" / "_staging").exists()


def test_writer_tasks_get_a_core_while_decode_runs(ray_local, tmp_path, monkeypatch):
    """On the 2-CPU local Ray, sized as the defaults size it (decode 0.25 capped at one task,
    classifier 1.5, writer 0.25): with small part files the writer tasks write them while
    decode is still running, not all at the end (their files' times spread over the run)."""
    monkeypatch.setenv(TEST_HOOKS_ENV, "1")
    videos = {f"v{i}": make_video(tmp_path / f"v{i}.mp4", n_frames=45, fps=15, size=(64, 48), pattern="noise",
                                  seed=i) for i in range(3)}
    m = tmp_path / "m.parquet"
    pq.write_table(pa.table({"video_id": list(videos), "uri": [f"testhook:slow=1.5:{p}" for p in videos.values()]}), m)
    cfg = config.load(overrides=["model.weights=random", "ray.progress_bars=false", "output.rows_per_file=1",
                                 "model.batch_size=1", "decode.clips_per_block=1"],
                      manifest=str(m), **{"output.path": str(tmp_path / "out")})
    s = label(cfg)
    assert s.committed and s.videos_ok == 3
    assert s.sizing["chosen"]["decode.concurrency"] == 1 and s.sizing["chosen"]["model.num_cpus"] == 1.5
    written = sorted((tmp_path / "out" / f).stat().st_mtime for f in s.files if f.startswith("clips/"))
    assert len(written) == s.clips >= 6
    assert written[-1] - written[0] > 4.0  # decode takes >= 1.5 s per clip: files written as clips came
