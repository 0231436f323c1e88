"""Decode levers on real encoded video: the loop-filter switch acts only from its size up, and the
cluster profile's decode setting stays inside the fidelity budget on the benchmark's content."""
from __future__ import annotations

import numpy as np
import pytest

from r2p1d_batch import config as config_mod
from r2p1d_batch.bench import inputs
from r2p1d_batch.decoding.fidelity import pixel_figures, shift_figures, within
from r2p1d_batch.decoding.pyav import VideoSource
from r2p1d_batch.decoding.sampling import plan_clips

from tests.helpers.videos import make_video


def _clips(path, cfg):
    with VideoSource(str(path), str(path), cfg.decode) as v:
        clips = list(v.clips(plan_clips(cfg.sampling, v.info.duration, v.info.fps)))
        tb, start = v.info.time_base, v.info.start_pts
        times = np.array([float((p - start) * tb) for c in clips for p in c.frame_pts])
        return np.stack([c.frames for c in clips]), times, v.skips_loop_filter


@pytest.fixture(scope="module")
def lossy(tmp_path_factory):
    return make_video(tmp_path_factory.mktemp("lf") / "v.mp4", n_frames=60, fps=30, size=(320, 180),
                      pattern="moving", options={"preset": "veryfast", "crf": "30"})


@pytest.mark.parametrize("min_side,skips", [(None, False), (181, False), (180, True), (0, True)])
def test_loop_filter_switch_follows_the_shorter_side(lossy, min_side, skips):
    exact, _, _ = _clips(lossy, config_mod.load())
    cfg = config_mod.load(None, [f"decode.skip_loop_filter_min_side={'null' if min_side is None else min_side}"])
    got, _, skipped = _clips(lossy, cfg)
    assert skipped is skips
    # Deblocking really is skipped (pixels move), or really is not (identical).
    assert (not np.array_equal(got, exact)) is skips


def test_cluster_decode_setting_is_inside_the_budget(tmp_path):
    """The benchmark's 720p content (H.264 CRF 23, B-frames), two seconds of it."""
    path = inputs.make_segment(tmp_path / "720p.mp4", inputs.SIZES["720p"], 2.0)
    exact, t_exact, _ = _clips(path, config_mod.load())
    cluster = config_mod.load(config_mod.CONFIG_DIR / "cluster.yaml")
    got, t_got, skipped = _clips(path, cluster)
    assert skipped  # 720 px: the cluster profile skips deblocking here
    figs = pixel_figures(exact, got) | shift_figures(t_exact, t_got)
    assert figs["max_shift_ms"] == 0 and figs["max_abs"] > 1  # lossy, but the same frames
    assert within(figs), figs


def test_codec_options_reach_ffmpegs_decoder(lossy):
    """decode.codec_options are FFmpeg decoder options: skip_loop_filter through them gives the
    same pixels as the named switch, and other pixels than the default."""
    exact, _, _ = _clips(lossy, config_mod.load())
    via_options, _, _ = _clips(lossy, config_mod.load(None, ["decode.codec_options={skip_loop_filter: all}"]))
    via_switch, _, _ = _clips(lossy, config_mod.load(None, ["decode.skip_loop_filter_min_side=0"]))
    assert np.array_equal(via_options, via_switch) and not np.array_equal(via_options, exact)
