"""Benchmark pieces: ffmpeg command lines, report formatting, a tiny smoke run, and the
decode-path changes the benchmark drove (shared swscale context, swscale knob)."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from r2p1d_batch import config
from r2p1d_batch.bench.decode import ffmpeg_cmd
from r2p1d_batch.bench.report import format_report, format_table, ratio
from r2p1d_batch.decode import VideoSource
from r2p1d_batch.sampling import plan_clips
from tests.synth import make_video

ROOT = Path(__file__).resolve().parent.parent


def test_ffmpeg_cmd_full_size_and_scaled():
    full = ffmpeg_cmd("/v.mp4", 2, seconds=10)
    assert full[full.index("-threads") + 1] == "2" and full[full.index("-filter_threads") + 1] == "2"
    assert full.index("-t") < full.index("-i")  # an input option: decode only 10 s
    assert "-vf" not in full and full[full.index("-pix_fmt") + 1] == "rgb24" and full[-3:] == ["-f", "null", "-"]
    scaled = ffmpeg_cmd("/v.mp4", 1, scale=(171, 128))
    assert scaled[scaled.index("-vf") + 1] == "scale=171:128:flags=bilinear" and "-t" not in scaled


def test_format_table_and_report():
    rows = [{"a": "x", "b": 1234.5, "c": None}, {"a": "longer", "b": 0.00012, "d": 2.5}]
    lines = format_table(rows).splitlines()
    assert lines[0].split() == ["a", "b", "c", "d"]
    assert lines[2].split() == ["x", "1234", "-", "-"] and lines[3].split() == ["longer", "1.2e-04", "-", "2.50"]
    text = format_report({"machine": {"cores": 2}, "sections": {"model": {"rows": rows, "notes": ["n1"]}}})
    assert "== model ==" in text and "note: n1" in text
    assert ratio(2.0, 4.0) == 0.5 and ratio(1.0, None) is None and ratio(0.0, 1.0) is None


def test_bench_tiny_smoke(tmp_path):
    out = tmp_path / "b.json"
    r = subprocess.run([sys.executable, str(ROOT / "jobs" / "bench.py"), "--tiny", "--only", "decode", "--only", "sparse",
                        "--inputs", str(tmp_path / "in"), "--out", str(out)], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    res = json.loads(out.read_text())
    rows = res["sections"]["decode"]["rows"]
    assert {x["scaler"] for x in rows} == {"exact", "cv2", "swscale"} and all(x["ours_fps"] > 0 for x in rows)
    assert res["sections"]["sparse"]["rows"][0]["clips"] == 5
    assert "== decode ==" in r.stdout


def _clips(path, scaler):
    cfg = config.load(None, [f"decode.scaler={scaler}"])
    with VideoSource(str(path), str(path), cfg.decode) as v:
        return [c.frames for c in v.clips(plan_clips(cfg.sampling, v.info.duration, v.info.fps))]


@pytest.mark.parametrize("rotation", [0, 90])
def test_swscale_knob_close_to_exact(tmp_path, rotation):
    p = make_video(tmp_path / "v.mp4", n_frames=40, fps=30, size=(320, 240), rotation=rotation)
    exact, fast = _clips(p, "exact"), _clips(p, "swscale")
    assert len(exact) == len(fast) >= 1
    for a, b in zip(exact, fast):
        assert a.shape == b.shape == (16, 112, 112, 3)
        # Flat grey frames: the scalers agree away from the marker's edges.
        assert np.abs(a[:, 60:, 60:].astype(int) - b[:, 60:, 60:]).max() <= 2


def test_exact_path_matches_preset(tmp_path):
    """The shared reformatter and thread limit changed nothing: clips equal torchvision's preset."""
    import av
    import torch

    from r2p1d_batch.preprocess import preset

    p = make_video(tmp_path / "n.mp4", n_frames=20, fps=15, size=(200, 150), pattern="noise")
    clip = _clips(p, "exact")[0]
    with av.open(str(p)) as c:
        frames = np.stack([f.to_ndarray(format="rgb24") for f in c.decode(video=0)][:16])
    pre = preset()
    import torchvision.transforms.functional as TF

    x = torch.from_numpy(frames).permute(0, 3, 1, 2)
    # The preset on one torch thread, as the decode stage runs it: torch's CPU bilinear kernel
    # rounds differently when a call is split over threads (a pixel may move by 1 level).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        ref = TF.center_crop(TF.resize(x, list(pre.resize_size), interpolation=pre.interpolation, antialias=False),
                             list(pre.crop_size)).permute(0, 2, 3, 1).numpy()
    finally:
        torch.set_num_threads(threads)
    assert np.array_equal(clip, ref)
