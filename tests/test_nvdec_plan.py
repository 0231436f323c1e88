"""nvdec.plan_frames: the NVDEC path picks, for every clip slot, the very frame the CPU path
shows (checked against decode.VideoSource.clips' frame_pts on real files: constant and variable
frame rate, B-frames, windows, every sampling mode, padding). No GPU needed."""
from __future__ import annotations

import av
import pytest

from r2p1d_batch import config
from r2p1d_batch.decoding.nvdec import GpuFrames, NvdecError, Unplannable, packet_times, plan_frames
from r2p1d_batch.decoding.pyav import VideoSource
from r2p1d_batch.decoding.sampling import ClipWindow, plan_clips

from tests.helpers.videos import make_video


def _bframes_video(path, n=90, fps=30):
    """H.264 with B-frames (presentation order != decode order), lossy, moving content."""
    from r2p1d_batch.synth import _moving

    with av.open(str(path), "w") as out:
        s = out.add_stream("libx264", rate=fps)
        s.width, s.height, s.pix_fmt = 160, 96, "yuv420p"
        s.options = {"preset": "medium", "bf": "3", "g": "24"}
        for i in range(n):
            for pkt in s.encode(av.VideoFrame.from_ndarray(_moving(i, n, 160, 96, 1), format="rgb24")):
                out.mux(pkt)
        for pkt in s.encode():
            out.mux(pkt)
    return path


def _compare(path, overrides, start=None, end=None):
    cfg = config.load(None, overrides)
    with VideoSource(str(path), str(path), cfg.decode) as v:
        windows = plan_clips(cfg.sampling, v.info.duration, v.info.fps, start, end)
        times, pts = packet_times(v)
        plan = plan_frames(windows, times, v.info.fps)
        cpu = list(v.clips(windows))  # after packet_times: the container was rewound
    assert len(cpu) == len(windows) == len(plan) >= 1
    for clip, slots in zip(cpu, plan):
        assert clip.frame_pts == [pts[i] for i in slots], clip.index
        assert clip.start_sec == pytest.approx(times[slots[0]])
    return plan


CASES = {
    "cfr-30-dense": (dict(n_frames=75, fps=30), []),
    "cfr-30-uniform": (dict(n_frames=75, fps=30), ["sampling.mode=uniform", "sampling.num_clips=4"]),
    "cfr-24-zoo": (dict(n_frames=50, fps=24), ["sampling.mode=zoo"]),
    "cfr-10-upsampled": (dict(n_frames=30, fps=10), ["sampling.stride_sec=0.5"]),
    "vfr": (dict(n_frames=40, times=[0.0, 0.04, 0.05, 0.2, 0.21, 0.3] + [0.3 + 0.05 * k for k in range(1, 35)]), []),
    "short-padded": (dict(n_frames=10, fps=30), []),
}


@pytest.mark.parametrize("case", list(CASES))
def test_plan_matches_the_cpu_path(tmp_path, case):
    kw, overrides = CASES[case]
    path = make_video(tmp_path / "v.mp4", **kw)
    plan = _compare(path, overrides)
    if case == "short-padded":
        assert plan[0][-1] == plan[0][-2] == 9  # the last frame repeated


def test_plan_with_bframes_and_a_window(tmp_path):
    path = _bframes_video(tmp_path / "b.mp4")
    with av.open(str(path)) as c:
        dts = [p.dts for p in c.demux(video=0) if p.size]
        pts = [p.pts for p in av.open(str(path)).demux(video=0) if p.size]
    assert pts != sorted(pts) and dts == sorted(dts)  # really reordered
    _compare(path, ["sampling.stride_sec=0.3"])
    _compare(path, ["sampling.stride_sec=0.5"], start=0.9, end=2.6)


def test_truncated_slots_are_left_to_the_cpu_path():
    w = ClipWindow(0, tuple(i / 15 for i in range(16)), 10.0)
    times = [i / 30 for i in range(12)]  # the stream stops at 0.37 s, long before the window end
    with pytest.raises(Unplannable, match="truncated"):
        plan_frames([w], times, 30.0)
    assert plan_frames([w], [i / 30 for i in range(40)], 30.0)[0] == [2 * i for i in range(16)]
    with pytest.raises(Unplannable):
        plan_frames([ClipWindow(0, (0.0,), 0.0)], [0.0], 30.0)
    early = ClipWindow(0, (0.0, 0.1), 5.0)  # slots before the first frame show the first frame
    assert plan_frames([early], [0.5, 0.6], 30.0) == [[0, 0]]


def test_gpu_frames_say_why_they_cannot_run_here():
    """No decoder library on this machine: a clear NvdecError (the caller falls back), never a crash."""
    with pytest.raises(NvdecError, match="no NVDEC decoder library importable"):
        GpuFrames("pynvvideocodec")
