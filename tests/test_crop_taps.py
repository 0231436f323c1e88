"""crop_taps.py: the exact path from only the pixels the crop reads gives the full-frame path's
pixels, bit for bit, and steps aside where it does not apply."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from r2p1d_batch import config as config_mod
from r2p1d_batch.decoding import colour, crop_taps
from r2p1d_batch.decoding.crop_taps import CropTaps, taps
from r2p1d_batch.decoding.preprocess import FrameTransform, resize_crop_exact
from r2p1d_batch.decoding.pyav import VideoSource
from r2p1d_batch.decoding.sampling import plan_clips

from tests.helpers.videos import make_video, make_yuv_video

T = FrameTransform.from_preset()


def _full_path(y, u, v, matrix, full_range):
    rgb = colour.yuv420_to_rgb(torch.from_numpy(y), torch.from_numpy(u), torch.from_numpy(v), matrix, full_range)
    return resize_crop_exact(rgb.numpy(), T.resize, T.crop)


@pytest.mark.parametrize("w,h", [(640, 360), (1280, 720), (1920, 1080), (3840, 2160), (1000, 562), (333, 250),
                                 (171, 128), (160, 120), (127, 96), (4096, 2)])
@pytest.mark.parametrize("matrix,full_range", [("bt601", False), ("bt709", True)])
def test_taps_alone_give_the_full_paths_pixels(w, h, matrix, full_range):
    """Every pixel but the taps is NaN: had the kernel read one, the crop would hold a NaN."""
    rng = np.random.default_rng(w * h)
    y = rng.integers(0, 256, (h, w), dtype=np.uint8)
    u, v = (rng.integers(0, 256, ((h + 1) // 2, (w + 1) // 2), dtype=np.uint8) for _ in range(2))
    ct = CropTaps(h, w, T, matrix, full_range, fill=float("nan"))
    ct._pixels.index_copy_(0, ct.flat, torch.from_numpy(ct.rgb(y, u, v).reshape(-1, 3)))
    from r2p1d_batch.decoding.preprocess import preset_resize_crop

    raw = preset_resize_crop(ct.frame.permute(2, 0, 1), T.resize, T.crop)
    assert not torch.isnan(raw).any()
    got = ct(y, u, v)
    assert got.shape == (*T.crop, 3) and got.dtype == np.uint8
    np.testing.assert_array_equal(got, _full_path(y, u, v, matrix, full_range))


def test_taps_are_few():
    """1080p: about 2 x 112 rows and columns (the point of it), not the frame."""
    rows = taps(1080, T.resize[0], *(lambda t: (t, t + T.crop[0]))(T.crop_box()[0]))
    cols = taps(1920, T.resize[1], *(lambda t: (t, t + T.crop[1]))(T.crop_box()[1]))
    assert 2 * T.crop[0] <= len(rows) <= 2 * T.crop[0] + 8
    assert 2 * T.crop[1] <= len(cols) <= 2 * T.crop[1] + 8


@pytest.fixture(autouse=True)
def taps_on_small_frames(monkeypatch):
    """The test videos are small: below crop_taps.MIN_PIXELS the job takes the full-frame path."""
    monkeypatch.setattr(crop_taps, "MIN_PIXELS", 0)


def test_small_frames_take_the_full_frame_path(monkeypatch, tmp_path):
    monkeypatch.setattr(crop_taps, "MIN_PIXELS", 320 * 180 + 1)
    path = make_yuv_video(tmp_path / "v.mp4", 320, 180, n=75, pattern="noise")
    assert not any(_clips(path, crop_taps="true")[1].values())


def _clips(path, **overrides):
    cfg = config_mod.load(None, [f"decode.{k}={v}" for k, v in overrides.items()] + ["sampling.stride_sec=0.5"])
    with VideoSource(str(path), str(path), cfg.decode) as v:
        got = list(v.clips(plan_clips(cfg.sampling, v.info.duration, v.info.fps)))
        return [c.sha for c in got], v._taps


@pytest.mark.parametrize("case", ["untagged", "bt709-full", "bt709-limited", "odd-width", "odd-height",
                                  "width-not-multiple-of-8", "lossy"])
def test_video_clips_identical_with_and_without(case, tmp_path):
    kw = {"untagged": dict(w=320, h=180),
          "bt709-full": dict(w=320, h=180, colorspace=1, color_range=2),
          "bt709-limited": dict(w=320, h=180, colorspace=1, color_range=1),
          "odd-width": dict(w=321, h=180, codec="ffv1"),
          "odd-height": dict(w=320, h=181, codec="ffv1"),
          "width-not-multiple-of-8": dict(w=314, h=178),
          "lossy": dict(w=640, h=360, lossless=False)}[case]
    w, h = kw.pop("w"), kw.pop("h")
    path = make_yuv_video(tmp_path / "v.mp4", w, h, n=75, pattern="noise" if case != "lossy" else "gradient", **kw)
    with_taps, used = _clips(path, crop_taps="true")
    without, _ = _clips(path, crop_taps="false")
    assert with_taps == without and len(with_taps) >= 2
    # Odd heights take the full-frame path (swscale interpolates chroma there); the rest use taps.
    assert any(t is not None for t in used.values()) == (case != "odd-height")


def test_rotated_video_takes_the_full_frame_path(tmp_path):
    path = make_video(tmp_path / "r.mp4", n_frames=30, fps=15, size=(96, 64), rotation=90, pattern="noise")
    with_taps, used = _clips(path, crop_taps="true")
    assert with_taps == _clips(path, crop_taps="false")[0] and not used
