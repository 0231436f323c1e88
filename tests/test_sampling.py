import pytest

from r2p1d_batch.config import SamplingConfig
from r2p1d_batch.decoding.sampling import (
    ShortVideoError,
    dense_starts,
    plan_clips,
    resolve_window,
    sampling_id,
    uniform_starts,
    zoo_times,
)


def test_dense_counts_and_times():
    cfg = SamplingConfig(mode="dense", fps=15, stride_sec=1.0, clip_len=16)
    clips = plan_clips(cfg, duration=10.0)
    # a clip spans 16/15 s; starts 0..8 fit in 10 s (8 + 1.0667 <= 10), 9 does not
    assert [c.start for c in clips] == pytest.approx(list(range(9)))
    assert clips[0].times == pytest.approx([i / 15 for i in range(16)])
    assert all(c.padded == 0 for c in clips)
    assert [c.index for c in clips] == list(range(9))


def test_dense_exact_fit_counts_last_clip():
    # 16 frames at 16 fps = exactly 1 s; a 3 s video holds starts 0, 1, 2
    assert dense_starts(3.0, 16, 16.0, 1.0) == [0.0, 1.0, 2.0]


def test_dense_overlapping_stride():
    assert dense_starts(2.0, 16, 15.0, 0.5) == [0.0, 0.5]


def test_uniform_matches_torchvision_protocol():
    # 10 s at 15 fps = 150 resampled frames; starts spread over 0..134 like
    # UniformClipSampler: floor(linspace(0, 134, 5)) = [0, 33, 67, 100, 134]
    starts = uniform_starts(10.0, 16, 15.0, 5)
    assert [round(s * 15) for s in starts] == [0, 33, 67, 100, 134]


def test_uniform_single_clip_and_short():
    assert uniform_starts(10.0, 16, 15.0, 1) == [0.0]
    assert uniform_starts(1.0, 16, 15.0, 5) == []


def test_short_video_pads_by_default():
    cfg = SamplingConfig(mode="dense")
    clips = plan_clips(cfg, duration=0.5)
    assert len(clips) == 1
    # frames at t >= 0.5 s repeat the last frame: 16 - ceil(0.5 * 15) = 8 padded
    assert clips[0].padded == 8


def test_short_video_error_policy():
    cfg = SamplingConfig(mode="uniform", short_video="error")
    with pytest.raises(ShortVideoError, match="shorter than one clip"):
        plan_clips(cfg, duration=0.5)


def test_start_end_window():
    cfg = SamplingConfig(mode="dense", stride_sec=1.0)
    clips = plan_clips(cfg, duration=20.0, start_sec=5.0, end_sec=8.5)
    assert [c.start for c in clips] == pytest.approx([5.0, 6.0, 7.0])
    assert all(c.window_end == 8.5 for c in clips)
    cfg_u = SamplingConfig(mode="uniform", num_clips=3)
    u = plan_clips(cfg_u, duration=20.0, start_sec=10.0)
    assert u[0].start == pytest.approx(10.0) and u[-1].times[-1] < 20.0


def test_window_clamps_and_rejects():
    assert resolve_window(5.0, None, 9.0) == (0.0, 5.0)
    with pytest.raises(ValueError, match="past the end"):
        resolve_window(5.0, 6.0, None)


def test_zoo_strides_over_whole_video():
    times = zoo_times(10.0, 16, 30.0)  # 300 frames -> indices floor(linspace(0, 299, 16))
    assert len(times) == 16
    assert times[0] == 0.0 and round(times[-1] * 30) == 299
    cfg = SamplingConfig(mode="zoo")
    assert len(plan_clips(cfg, duration=10.0, native_fps=30.0)) == 1


def test_sampling_id():
    assert sampling_id(SamplingConfig()) == "dense:16@15fps/1s"
    assert sampling_id(SamplingConfig(mode="uniform")) == "uniform:5x16@15fps"
