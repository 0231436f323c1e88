"""pipeline.label in process on the shared local Ray: uniform sampling, checkpoint weights, and
the stored labels reproduced from re-decoded clips."""
import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from torchvision.models.video import r2plus1d_18

from r2p1d_batch import config
from r2p1d_batch.classifying.classifier import ClipClassifier
from r2p1d_batch.decoding.pyav import VideoSource
from r2p1d_batch.decoding.sampling import plan_clips
from r2p1d_batch.pipeline import label

from tests.helpers.videos import make_video

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
                        f"read_parquet('{tmp_path}/out/clips/**/*.parquet') ORDER BY uri, clip_index").fetchall()
    videos = dict(con.execute(f"SELECT uri, label FROM read_parquet('{tmp_path}/out/videos/**/*.parquet')").fetchall())
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
