"""Decode + sampling checked by value: frame i of a synthetic video is grey level(i)."""

import numpy as np
import pytest

from r2p1d_batch.config import DecodeConfig, SamplingConfig
from r2p1d_batch.decoding.pyav import DecodeError, VideoSource, clip_sha, merge_spans
from r2p1d_batch.decoding.sampling import plan_clips

from tests.helpers.videos import frame_index, grey_of, level, make_audio_only, make_cut_video, make_video

DEC = DecodeConfig()


def decode_all(path, sampling=SamplingConfig(), start=None, end=None, dec=DEC):
    with VideoSource(str(path), str(path), dec) as src:
        windows = plan_clips(sampling, src.info.duration, src.info.fps, start, end)
        return src.info, list(src.clips(windows))


def test_cfr_30fps_resampled_to_15(tmp_path):
    info, clips = decode_all(make_video(tmp_path / "a.mp4", n_frames=24, fps=30))
    assert info.fps == 30 and info.duration == pytest.approx(0.8)
    (clip,) = clips  # 0.8 s < one clip: padded
    assert clip.frames.shape == (16, 112, 112, 3) and clip.frames.dtype == np.uint8
    idx = [frame_index(f) for f in clip.frames]
    # every other source frame, then the last frame (23) repeated past the end
    assert idx[:12] == [0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22]
    assert idx[12:] == [23] * 4 and clip.padded == 4
    assert clip.frame_pts[1] - clip.frame_pts[0] == clip.frame_pts[2] - clip.frame_pts[1] > 0
    assert clip.sha == clip_sha(clip.frames)


def test_dense_clips_follow_the_source_timeline(tmp_path):
    path = make_video(tmp_path / "b.mp4", n_frames=75, fps=25)  # 3 s
    info, clips = decode_all(path)
    assert [c.index for c in clips] == [0, 1]
    assert clips[1].start_sec == pytest.approx(1.0)
    # at 25 fps, target k/15 s shows frame floor(k * 25 / 15)
    want = [int(np.floor((1.0 + k / 15) * 25 + 1e-6)) for k in range(16)]
    got = [grey_of(f) for f in clips[1].frames]
    assert all(abs(g - level(w)) <= 3 for g, w in zip(got, want)), (got, [level(w) for w in want])
    assert all(c.padded == 0 for c in clips)


def test_variable_frame_rate_picks_frame_on_screen(tmp_path):
    times = [0, 0.05, 0.06, 0.2, 0.21, 0.5, 0.9, 1.0, 1.3, 1.31, 1.32, 1.6, 2.0]
    path = make_video(tmp_path / "vfr.mp4", n_frames=len(times), times=times)
    _, (clip, *_) = decode_all(path)
    got = [frame_index(f) for f in clip.frames]
    want = [max(i for i, t in enumerate(times) if t <= k / 15 + 1e-3) for k in range(16)]
    assert got == want


def test_rotation_metadata_is_applied(tmp_path):
    path = make_video(tmp_path / "rot.mp4", n_frames=20, size=(96, 64), rotation=90)
    info, (clip,) = decode_all(path)
    assert info.rotation == 90 and (info.width, info.height) == (64, 96)
    f = clip.frames[0]
    # the bright marker (top-left in storage) is bottom-left after a 90° counter-clockwise turn
    assert f[-10:, :10].mean() > 200 and f[:10, :10].mean() < 50


def test_start_end_window_decodes_only_that_span(tmp_path):
    path = make_video(tmp_path / "w.mp4", n_frames=120, fps=30)  # 4 s
    _, clips = decode_all(path, start=2.0, end=3.5)
    assert len(clips) == 1 and clips[0].start_sec == pytest.approx(2.0)
    assert frame_index(clips[0].frames[0]) == level(60) // 10  # frame 60 (= 2.0 s)


def test_uniform_sparse_spans_seek(tmp_path):
    path = make_video(tmp_path / "long.mp4", n_frames=600, fps=30)  # 20 s, keyframe every 15
    cfg = SamplingConfig(mode="uniform", num_clips=3)
    _, clips = decode_all(path, sampling=cfg)
    starts = [c.start_sec for c in clips]
    assert len(clips) == 3 and starts[0] == 0.0 and starts[1] == pytest.approx(142 / 15, abs=1e-6)
    # 300 resampled frames, starts floor(linspace(0, 284, 3)): clip 1 = resampled 142 = source 284
    assert grey_of(clips[1].frames[0]) == pytest.approx(level(284), abs=3)
    windows = plan_clips(cfg, 20.0, 30.0)
    assert len(merge_spans(windows, 2.0)) == 3  # three separate spans, one seek each


@pytest.mark.parametrize(
    "kw",
    [
        dict(size=(97, 65), pix_fmt="yuv444p"),  # odd size
        dict(pix_fmt="yuv420p10le"),  # 10-bit
        dict(codec="ffv1", pix_fmt="gray"),  # grayscale
        dict(codec="mpeg4"),
    ],
)
def test_pixel_formats_and_odd_sizes(tmp_path, kw):
    suffix = ".mkv" if kw.get("codec") == "ffv1" else ".mp4"
    path = make_video(tmp_path / f"x{suffix}", n_frames=20, **kw)
    info, (clip,) = decode_all(path)
    assert clip.frames.shape == (16, 112, 112, 3)
    assert abs(grey_of(clip.frames[0]) - level(0)) <= 3
    assert abs(grey_of(clip.frames[1]) - level(2)) <= 3


def test_4k_frames(tmp_path):
    path = make_video(tmp_path / "4k.mp4", n_frames=4, size=(3840, 2160))
    info, (clip,) = decode_all(path)
    assert (info.width, info.height) == (3840, 2160) and clip.padded > 0


def test_frames_over_the_pixel_limit_are_an_error(tmp_path):
    path = make_video(tmp_path / "big.mp4", n_frames=2, size=(640, 480))
    with pytest.raises(DecodeError) as e:
        decode_all(path, dec=DecodeConfig(max_pixels=640 * 480 - 1))
    assert e.value.kind == "TooLarge"


@pytest.mark.parametrize(
    "make, kind",
    [
        (lambda p: (p.write_text("this is not a video"), p)[1], "InvalidData"),
        (lambda p: make_audio_only(p), "NoVideoStream"),
        (lambda p: p, "NotFound"),
    ],
)
def test_unreadable_inputs(tmp_path, make, kind):
    path = make(tmp_path / "bad.mp4")
    with pytest.raises(DecodeError) as e:
        decode_all(path)
    assert e.value.kind == kind and str(path) in str(e.value)


def test_truncated_file_is_an_error(tmp_path):
    path = make_video(tmp_path / "t.mp4", n_frames=90, fps=30, pattern="noise")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(DecodeError) as e:
        decode_all(path)
    assert e.value.kind in ("InvalidData", "Truncated", "CorruptStream")


def test_cut_tail_with_index_is_truncated(tmp_path):
    # moov first (faststart-like): cutting the tail keeps the index, so frames go missing
    fast = make_cut_video(tmp_path / "fast.mp4", n_frames=150, fps=30, keep=0.6)
    with pytest.raises(DecodeError) as e:
        decode_all(fast)
    assert e.value.kind in ("Truncated", "CorruptStream")


def test_decode_stage_runs_torch_on_one_thread(tmp_path):
    """resize_exact needs one torch thread; a decode task keeps it rather than switching per frame."""
    import pyarrow as pa
    import torch

    from r2p1d_batch import config
    from r2p1d_batch.decoding.stage import DecodeStage

    video = make_video(tmp_path / "v.mp4", n_frames=20, fps=15)
    cfg = config.load(None, [])
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        blocks = list(DecodeStage(cfg)(pa.table({"video_id": ["v"], "uri": [str(video)], "start_sec": [None],
                                                  "end_sec": [None]})))
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)
    kinds = [k for b in blocks for k in b.column("kind").to_pylist()]
    assert kinds.count("video") == 1 and kinds.count("clip") >= 1
