"""The preset's exact pixels from the few source pixels its crop reads.

Bilinear resizing without antialias reads 2x2 source pixels per output pixel, so the model's
112x112 crop of a 1080p frame depends on ~224x224 of its two million pixels. The full-frame path
converts every pixel to RGB (swscale) and casts the whole frame to float for torch's resize:
together more work than decoding the frame at 720p and up. ``CropTaps`` converts only the pixels
the crop reads (the "taps"), with swscale's own arithmetic (``colour.rgb_tables``), writes them
into a full-size float frame it keeps between calls, and runs the preset's resize on that frame.
Pixels the kernel never reads are never written, and cannot reach the output: the result is the
preset's, bit for bit, by construction (tests/test_crop_taps.py fills every other pixel with NaN
to show the kernel reads nothing else, and compares clips with the full-frame path).

It applies (``frame_matrix``) to frames of MIN_PIXELS and more (below, converting the whole frame
is cheaper), 8-bit 4:2:0, of even height, in the matrices colour.py reproduces, unrotated, on x86
(whose swscale converter colour.py reproduces). Other frames take the full-frame path; the pixels
are the same either way.
"""
from __future__ import annotations

import platform
from typing import Optional

import numpy as np

from . import colour
from .preprocess import FrameTransform, preset_resize_crop

# Below this many pixels the whole-frame path is cheaper (fixed costs of gathering ~50k taps):
# per frame on one core, full frame vs taps, 720p 2.7 vs 3.2 ms, 1080p 5.1 vs 3.1 ms,
# 1440p 39 vs 6.0 ms, 2160p 91 vs 7.8 ms (docs/bench.md, "Cheaper decode").
MIN_PIXELS = 1_200_000
X86 = platform.machine().lower() in ("x86_64", "amd64", "i386", "i686")
PIX_FMTS = ("yuv420p", "yuvj420p")


def taps(n_in: int, n_out: int, lo: int, hi: int) -> np.ndarray:
    """Source indices (sorted, unique) that torch's bilinear resize of ``n_in`` -> ``n_out``
    (align_corners=False) reads for outputs ``lo..hi-1``: ``floor(src)`` and the next one, with
    src = (dst + 0.5) * n_in / n_out - 0.5 clamped at 0. Torch computes src in float32: indices
    are taken on both sides of a near-integer src so its rounding cannot pick one left out."""
    src = np.maximum((np.arange(lo, hi) + 0.5) * (n_in / n_out) - 0.5, 0.0)
    lo_i, hi_i = np.floor(src - 1e-4).astype(np.int64), np.floor(src + 1e-4).astype(np.int64)
    idx = np.unique(np.concatenate([lo_i, hi_i, hi_i + 1]))
    return idx[(idx >= 0) & (idx < n_in)]


def frame_matrix(frame) -> Optional[tuple[str, bool]]:
    """(matrix, full_range) swscale converts a PyAV frame with, or None where CropTaps does not
    apply to it (format, odd height, unknown matrix, not x86) or does not pay (small frames)."""
    fmt = frame.format.name
    if not X86 or fmt not in PIX_FMTS or frame.height % 2 or frame.width * frame.height < MIN_PIXELS:
        return None
    matrix = colour.matrix_of(frame.colorspace)
    if matrix is None:
        return None
    return matrix, colour.is_full_range(frame.color_range) or fmt.startswith("yuvj")


class CropTaps:
    """Resize + centre crop of ``transform`` for frames of one size and colour matrix, from the
    frame's YUV planes. Not thread-safe (one per VideoSource)."""

    def __init__(self, height: int, width: int, transform: FrameTransform, matrix: str, full_range: bool,
                 fill: float = 0.0):
        import torch

        self.transform = transform
        top, left = transform.crop_box()
        ch, cw = transform.crop
        self.rows = taps(height, transform.resize[0], top, top + ch)
        self.cols = taps(width, transform.resize[1], left, left + cw)
        self.chroma_rows, self.chroma_cols = self.rows // 2, self.cols // 2
        # Flat (H*W) indices of the taps in the frame kept between calls; HWC like the full path's
        # frame, so the resize sees the same shape, dtype and strides.
        self.flat = torch.from_numpy((self.rows[:, None] * width + self.cols[None, :]).reshape(-1))
        self.frame = torch.full((height, width, 3), fill, dtype=torch.float32)
        self._pixels = self.frame.view(-1, 3)
        self.tables = colour.rgb_tables(matrix, full_range)

    def rgb(self, y: np.ndarray, u: np.ndarray, v: np.ndarray) -> np.ndarray:
        """swscale's RGB at the taps: (rows, cols, 3) float32 (integer values), from the
        full planes (H, >= W) and (ceil(H/2), >= ceil(W/2))."""
        ys = y.take(self.rows, 0).take(self.cols, 1)
        us = u.take(self.chroma_rows, 0).take(self.chroma_cols, 1)
        vs = v.take(self.chroma_rows, 0).take(self.chroma_cols, 1)
        return colour.rgb_by_tables(self.tables, ys, us, vs).astype(np.float32)

    def __call__(self, y: np.ndarray, u: np.ndarray, v: np.ndarray) -> np.ndarray:
        """uint8 (crop_h, crop_w, 3): the preset's resize and crop of the frame these planes hold."""
        import torch

        self._pixels.index_copy_(0, self.flat, torch.from_numpy(self.rgb(y, u, v).reshape(-1, 3)))
        out = preset_resize_crop(self.frame.permute(2, 0, 1), self.transform.resize, self.transform.crop)
        # torchvision rounds, then casts, when it resizes a uint8 frame through float.
        return np.ascontiguousarray(torch.round(out).to(torch.uint8).permute(1, 2, 0).numpy())


def planes(frame) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A yuv420p PyAV frame's Y, U, V planes as uint8 arrays (rows, line size), no copy."""
    h, ch = frame.height, (frame.height + 1) // 2
    return tuple(np.frombuffer(p, np.uint8).reshape(rows, p.line_size)
                 for p, rows in zip(frame.planes, (h, ch, ch)))
