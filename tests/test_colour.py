"""colour.py (the NVDEC path's NV12 -> RGB) and preprocess.resize_crop_frames (its batched
resize/crop), checked on the CPU against what the CPU path gets from PyAV/libswscale for the same
decoded frames. CI has no GPU: the functions are plain torch, so the same code runs here on CPU tensors."""
from __future__ import annotations

from pathlib import Path

import av
import numpy as np
import pytest
import torch

from r2p1d_batch.decoding import colour
from r2p1d_batch.decoding.preprocess import (
    FrameTransform,
    resize_crop_exact,
    resize_crop_frames,
    rotate_frames,
    torch_threads,
)

from tests.helpers.videos import make_video, make_yuv_video

# Tolerances the issue sets for GPU-decoded clips vs the CPU exact path, per pixel.
MAX_LEVELS, MEAN_LEVELS = 3, 0.5


def _planes(f: av.VideoFrame) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    w, h = f.width, f.height
    shapes = [(h, w), ((h + 1) // 2, (w + 1) // 2), ((h + 1) // 2, (w + 1) // 2)]
    return tuple(np.frombuffer(p, np.uint8).reshape(-1, p.line_size)[: s[0], : s[1]].copy()
                 for p, s in zip(f.planes, shapes))


def _as_nv12(y: np.ndarray, u: np.ndarray, v: np.ndarray, pitch: int) -> np.ndarray:
    """The frame as an NVDEC NV12 surface: luma rows, then interleaved UV rows, pitch-padded."""
    h, w = y.shape
    surf = np.full((h + u.shape[0], pitch), 77, np.uint8)  # padding must be ignored
    surf[:h, :w] = y
    uv = np.stack([u, v], -1).reshape(u.shape[0], -1)
    surf[h:, : uv.shape[1]] = uv
    return surf


CASES = {
    # name: (width, height, colorspace, color_range, pattern, matrix, full)
    "untagged-noise": (96, 64, 0, 0, "noise", "bt601", False),
    "untagged-gradient": (320, 240, 0, 0, "gradient", "bt601", False),
    "bt709-noise": (96, 64, 1, 1, "noise", "bt709", False),
    "bt709-gradient": (256, 144, 1, 1, "gradient", "bt709", False),
    "full-range-noise": (96, 64, 0, 2, "noise", "bt601", True),
    "bt709-full-noise": (64, 48, 1, 2, "noise", "bt709", True),
    "smpte170m-noise": (96, 64, 6, 1, "noise", "bt601", False),
    "width-not-multiple-of-8": (100, 62, 0, 0, "noise", "bt601", False),
    "tiny-64x30": (64, 30, 0, 0, "gradient", "bt601", False),
}


def measure(case: str, tmp_path: Path) -> tuple[int, float, np.ndarray, np.ndarray]:
    w, h, spc, rng, pattern, matrix, full = CASES[case]
    path = make_yuv_video(tmp_path / f"{case}.mp4", w, h, colorspace=spc, color_range=rng, pattern=pattern)
    worst, diffs = 0, []
    with av.open(str(path)) as c:
        for f in c.decode(video=0):
            assert colour.matrix_of(f.colorspace) == matrix and colour.is_full_range(f.color_range) == full
            ref = f.to_ndarray(format="rgb24")  # the CPU path's conversion
            y, u, v = _planes(f)
            nv12 = torch.from_numpy(_as_nv12(y, u, v, pitch=(w + 63) // 64 * 64))
            ours = colour.nv12_to_rgb(nv12, h, w, matrix, full).numpy()
            planar = colour.yuv420_to_rgb(*map(torch.from_numpy, (y, u, v)), matrix, full).numpy()
            assert np.array_equal(ours, planar)
            d = np.abs(ours.astype(int) - ref)
            worst = max(worst, int(d.max()))
            diffs.append(d)
    wrong = "bt709" if matrix == "bt601" else "bt601"
    return worst, float(np.concatenate([d.ravel() for d in diffs]).mean()), ours, \
        colour.nv12_to_rgb(nv12, h, w, wrong, full).numpy()


@pytest.mark.parametrize("case", list(CASES))
def test_nv12_to_rgb_matches_pyav(case, tmp_path):
    worst, mean, ours, wrong = measure(case, tmp_path)
    print(f"{case}: max |d| {worst}, mean {mean:.4f}")
    assert worst <= MAX_LEVELS and mean < MEAN_LEVELS
    # Measured on x86: the integer emulation of swscale's converter is exact. A change in PyAV's
    # bundled FFmpeg that moves this shows up here first.
    assert worst == 0
    # The comparison has teeth: the other matrix is far off on the same frame.
    if "noise" in case:
        assert np.abs(wrong.astype(int) - ours).max() > 20


def test_coefficients_are_swscales():
    c = colour.SwsCoeffs.of("bt601", False)
    assert (c.y_coeff, c.y_offset, c.vr, c.ub, c.ug, c.vg) == (9539, 128, 13075, 16525, -3209, -6660)
    f = colour.SwsCoeffs.of("bt709", True)
    assert f.y_coeff == 8192 and f.y_offset == 0
    with pytest.raises(ValueError, match="only"):
        colour.SwsCoeffs.of("bt2020", False)
    assert colour.matrix_of(9) is None and colour.matrix_of(0) == "bt601" and colour.matrix_of(1) == "bt709"


def test_odd_height_is_refused(tmp_path):
    """swscale converts odd heights through its scaled path (interpolated chroma): not ours."""
    y = torch.zeros((65, 96), dtype=torch.uint8)
    u = v = torch.zeros((33, 48), dtype=torch.uint8)
    with pytest.raises(ValueError, match="odd frame height"):
        colour.yuv420_to_rgb(y, u, v)


def test_batched_planes():
    rng = np.random.default_rng(3)
    y = torch.from_numpy(rng.integers(0, 256, (4, 32, 48), dtype=np.uint8))
    u = torch.from_numpy(rng.integers(0, 256, (4, 16, 24), dtype=np.uint8))
    v = torch.from_numpy(rng.integers(0, 256, (4, 16, 24), dtype=np.uint8))
    batch = colour.yuv420_to_rgb(y, u, v, "bt709")
    assert batch.shape == (4, 32, 48, 3) and batch.dtype == torch.uint8
    assert torch.equal(batch[2], colour.yuv420_to_rgb(y[2], u[2], v[2], "bt709"))


@pytest.mark.parametrize("rotation", [0, 90, 270])
def test_gpu_resize_crop_equals_cpu_exact_path(tmp_path, rotation):
    """The NVDEC path's resize + crop, applied to PyAV's rgb24, equals the CPU exact path
    (decode.VideoSource -> preprocess.resize_crop_exact) pixel for pixel on the CPU."""
    p = make_video(tmp_path / "m.mp4", n_frames=8, fps=15, size=(320, 240), pattern="moving")
    with av.open(str(p)) as c:
        frames = np.stack([f.to_ndarray(format="rgb24") for f in c.decode(video=0)])
    t = FrameTransform.from_preset()
    cpu = np.stack([resize_crop_exact(np.ascontiguousarray(np.rot90(f, k=rotation // 90)), t.resize, t.crop)
                    for f in frames])
    with torch_threads(1):
        ours = resize_crop_frames(rotate_frames(torch.from_numpy(frames), rotation), t.resize, t.crop).numpy()
    assert ours.shape == cpu.shape == (8, 112, 112, 3)
    assert np.array_equal(ours, cpu)
