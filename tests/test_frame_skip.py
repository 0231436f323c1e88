"""decode.skip_frames: ``unused`` leaves out only non-reference frames no clip shows (same
clips, bit for bit, fewer frames decoded); ``nonref`` leaves out every one, and says so in the
frame times it reports."""
from __future__ import annotations

from fractions import Fraction

import pytest

from r2p1d_batch import config as config_mod
from r2p1d_batch.decoding.pyav import FrameSkipper, VideoSource
from r2p1d_batch.decoding.sampling import plan_clips

from tests.helpers.videos import make_video

# B-frames that nothing references: x264's b-pyramid off; with it (x264's default) the middle
# B of three is a reference. mpeg4's B-frames are never references.
ENCODINGS = {
    "h264-b3-nopyramid": dict(codec="libx264", options={"preset": "veryfast", "bf": "3", "b_pyramid": "none"}),
    "h264-b3-pyramid": dict(codec="libx264", options={"preset": "veryfast", "bf": "3", "g": "20"}),
    "mpeg4-b2": dict(codec="mpeg4", options={"bf": "2", "g": "12"}),
    "h264-vfr": dict(codec="libx264", options={"preset": "veryfast", "bf": "2", "b_pyramid": "none"},
                     times=[i / 30 + (0.012 if i % 5 == 2 else 0) for i in range(120)]),
}
SAMPLING = {
    "dense-15fps": ["sampling.mode=dense", "sampling.fps=15", "sampling.stride_sec=1"],
    "dense-15fps-overlapping": ["sampling.mode=dense", "sampling.fps=15", "sampling.stride_sec=0.5"],
    "dense-10fps-sparse": ["sampling.mode=dense", "sampling.fps=10", "sampling.stride_sec=3", "sampling.clip_len=8"],
    "uniform": ["sampling.mode=uniform", "sampling.num_clips=3", "sampling.clip_len=8", "decode.seek_gap_sec=0"],
    "zoo": ["sampling.mode=zoo"],
    # FFmpeg frame threads: the switch is copied to each worker with its packet
    "dense-15fps-threads": ["sampling.mode=dense", "sampling.fps=15", "sampling.stride_sec=1", "decode.threads=3"],
}


def _decode(path, skip: str, sampling: list[str]):
    cfg = config_mod.load(None, sampling + [f"decode.skip_frames={skip}"])
    with VideoSource(str(path), str(path), cfg.decode) as v:
        clips = list(v.clips(plan_clips(cfg.sampling, v.info.duration, v.info.fps)))
        return [(c.sha, c.frame_pts, c.start_sec, c.end_sec) for c in clips], v.frames_decoded


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    d = tmp_path_factory.mktemp("skip")
    out = {}
    for name, kw in ENCODINGS.items():
        kw = dict(kw)
        n = len(kw["times"]) if "times" in kw else 120
        out[name] = make_video(d / f"{name}.mp4", n_frames=n, fps=30, size=(96, 64), pattern="moving", **kw)
    return out


@pytest.mark.parametrize("sampling", list(SAMPLING))
@pytest.mark.parametrize("encoding", list(ENCODINGS))
def test_unused_gives_the_same_clips(videos, encoding, sampling):
    want, all_frames = _decode(videos[encoding], "none", SAMPLING[sampling])
    got, decoded = _decode(videos[encoding], "unused", SAMPLING[sampling])
    assert got == want and want
    assert decoded <= all_frames


@pytest.mark.parametrize("encoding", ["h264-b3-nopyramid", "mpeg4-b2"])
def test_unused_decodes_fewer_frames(videos, encoding):
    """At 15 clip frames/s from 30 fps, every other frame is shown; with B-frames that nothing
    references, a good share of the others is never decoded."""
    _, all_frames = _decode(videos[encoding], "none", SAMPLING["dense-15fps"])
    _, decoded = _decode(videos[encoding], "unused", SAMPLING["dense-15fps"])
    assert decoded <= 0.8 * all_frames


def test_nonref_shifts_frames_and_says_so(videos):
    want, all_frames = _decode(videos["h264-b3-nopyramid"], "none", SAMPLING["dense-15fps"])
    got, decoded = _decode(videos["h264-b3-nopyramid"], "nonref", SAMPLING["dense-15fps"])
    assert decoded < all_frames and len(got) == len(want)
    # Some clip slots now show an earlier frame: their reported pts say which.
    assert any(g[1] != w[1] for g, w in zip(got, want))
    assert all(gp <= wp for g, w in zip(got, want) for gp, wp in zip(g[1], w[1]))


def test_skipper_rule():
    tb = Fraction(1, 30)
    s = FrameSkipper([0.0, 2 / 30, 4 / 30], tb, 0)
    assert not s.unused(1, [0, 1, 2], None)  # nothing output yet: frame 1 may be the first
    assert s.unused(1, [0, 1, 2], 0.0)  # shown for [1/30, 2/30): no target there
    assert not s.unused(2, [0, 1, 2, 3], 0.0)  # target 2/30 shows frame 2
    assert not s.unused(3, [0, 1, 2, 3], 0.0)  # no later frame known: it may be the last
    assert not s.unused(None, [0, 1, 2], 0.0)
    assert not s.unused(0, [0, 1], 0.0)  # not after the first output frame
