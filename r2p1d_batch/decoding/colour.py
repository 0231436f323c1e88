"""YUV 4:2:0 (planar or NV12) -> RGB24 in plain torch, reproducing what the CPU path gets from
PyAV/libswscale, so GPU-decoded frames (NVDEC hands out NV12) give the CPU path's pixels.

What the CPU path does (PyAV 18 -> ``sws_scale_frame``, same-size yuv420p -> rgb24, x86): the
unscaled ``yuv2rgb`` SIMD converter. Its arithmetic, reproduced here in int32:

- matrix from the frame's tags: BT.709 when tagged so, BT.601 otherwise (untagged, BT.470BG,
  SMPTE 170M); limited range unless the frame is flagged full (JPEG) range;
- coefficients as ``sws_setColorspaceDetails`` derives them from ``ff_yuv2rgb_coeffs``
  (16.16 fixed point, then rounded to 13-bit int16 factors);
- samples promoted to 11 bits (``<< 3``), offsets subtracted, each product taken with
  ``pmulhw`` (``(a * b) >> 16``, floor), the terms summed and saturated to 0..255;
- chroma: nearest, each sample covers a 2x2 block (no interpolation).

Measured against PyAV's own ``frame.to_ndarray(format="rgb24")`` on this x86 machine: identical
(max |d| 0) for untagged, BT.709, full-range and BT.709 full-range frames, noise and gradients,
widths not a multiple of 8 or 2 (tests/test_colour.py). Not reproduced (callers fall back to the
CPU decoder, see ``decoder_choice``): odd frame heights (swscale then takes its scaled path and
interpolates chroma: max |d| 255 on noise), other matrices (BT.2020, SMPTE 240M, FCC), and
non-x86 CPUs, whose swscale converter rounds differently.

Everything here is device-agnostic torch: the tests run it on the CPU, the NVDEC path on CUDA.
"""
from __future__ import annotations

from dataclasses import dataclass

# ff_yuv2rgb_coeffs (libswscale/yuv2rgb.c): crv, cbu, cgu, cgv in 16.16, limited-range chroma.
_SWS_COEFFS = {
    "bt601": (104597, 132201, 25675, 53279),
    "bt709": (117489, 138438, 13975, 34925),
}

# AVColorSpace values (libavutil/pixfmt.h) that swscale converts with each matrix.
AVCOL_SPC_BT709 = 1
AVCOL_SPC_UNSPECIFIED = 2
AVCOL_SPC_BT470BG = 5
AVCOL_SPC_SMPTE170M = 6
_MATRIX_OF_SPC = {
    AVCOL_SPC_BT709: "bt709",
    AVCOL_SPC_UNSPECIFIED: "bt601",
    AVCOL_SPC_BT470BG: "bt601",
    AVCOL_SPC_SMPTE170M: "bt601",
}
AVCOL_RANGE_JPEG = 2  # full range; 0 (unspecified) and 1 (MPEG) are limited


def matrix_of(colorspace: int) -> str | None:
    """The matrix swscale uses for an AVColorSpace value, or None where this module has none."""
    return _MATRIX_OF_SPC.get(int(colorspace or AVCOL_SPC_UNSPECIFIED))


def is_full_range(color_range: int) -> bool:
    return int(color_range or 0) == AVCOL_RANGE_JPEG


def _round16(f: int) -> int:
    """libswscale's roundToInt16: 16.16 -> int16 with rounding, saturated."""
    return max(-32768, min(32767, (f + (1 << 15)) >> 16))


def _trunc_div(a: int, b: int) -> int:
    """C integer division (towards zero), as swscale's int64 maths does."""
    q = abs(a) // b
    return q if a >= 0 else -q


@dataclass(frozen=True)
class SwsCoeffs:
    """The int16 factors swscale's SIMD converter multiplies with (13-bit fixed point)."""

    y_coeff: int
    y_offset: int
    vr: int
    ub: int
    ug: int
    vg: int

    @classmethod
    def of(cls, matrix: str, full_range: bool) -> SwsCoeffs:
        if matrix not in _SWS_COEFFS:
            raise ValueError(f"colour matrix {matrix!r}: only {sorted(_SWS_COEFFS)} are reproduced")
        crv, cbu, cgu, cgv = _SWS_COEFFS[matrix]
        cgu, cgv = -cgu, -cgv
        cy, oy = 1 << 16, 0
        if full_range:
            crv, cbu, cgu, cgv = (_trunc_div(c * 224, 255) for c in (crv, cbu, cgu, cgv))
        else:
            cy, oy = cy * 255 // 219, 16 << 16
        return cls(_round16(cy << 13), _round16(oy << 3), _round16(crv << 13), _round16(cbu << 13),
                   _round16(cgu << 13), _round16(cgv << 13))


def yuv420_to_rgb(y, u, v, matrix: str = "bt601", full_range: bool = False):
    """Planes ``y`` (H, W), ``u``/``v`` (ceil(H/2), ceil(W/2)) uint8 tensors, optionally with
    leading batch dims -> uint8 (..., H, W, 3) RGB, as swscale converts them (see module doc).
    H must be even (odd heights: swscale interpolates chroma; not reproduced)."""
    h, w = y.shape[-2], y.shape[-1]
    if h % 2:
        raise ValueError(f"odd frame height {h}: swscale converts these another way (decode them on the CPU)")
    up = u.repeat_interleave(2, dim=-2).repeat_interleave(2, dim=-1)[..., :h, :w]
    vp = v.repeat_interleave(2, dim=-2).repeat_interleave(2, dim=-1)[..., :h, :w]
    return yuv_to_rgb(y, up, vp, matrix, full_range)


def _terms(c: SwsCoeffs, y, u, v):
    """swscale's per-sample terms from int32 samples (numpy or torch): luma, r from v, g from u,
    g from v, b from u. Each depends on one sample only, so they also tabulate (``rgb_tables``)."""
    up = u * 8 - 1024
    vp = v * 8 - 1024
    luma = ((y * 8 - c.y_offset) * c.y_coeff) >> 16
    return luma, (vp * c.vr) >> 16, (up * c.ug) >> 16, (vp * c.vg) >> 16, (up * c.ub) >> 16


def yuv_to_rgb(y, u, v, matrix: str = "bt601", full_range: bool = False):
    """Same-shape ``y``, ``u``, ``v`` uint8 tensors (chroma already at each pixel: swscale's
    nearest 2x2 sample) -> uint8 (..., 3) RGB with swscale's arithmetic."""
    import torch

    luma, rv, gu, gv, bu = _terms(SwsCoeffs.of(matrix, full_range), *(p.to(torch.int32) for p in (y, u, v)))
    return torch.stack([luma + rv, luma + gu + gv, luma + bu], dim=-1).clamp_(0, 255).to(torch.uint8)


def rgb_tables(matrix: str = "bt601", full_range: bool = False):
    """The five terms of :func:`_terms` for every 8-bit sample value: int32 numpy (5, 256).
    ``r = luma[y] + rv[v]``, ``g = luma[y] + gu[u] + gv[v]``, ``b = luma[y] + bu[u]``, each
    saturated to 0..255: swscale's pixels by table lookups (``crop_taps``)."""
    import numpy as np

    s = np.arange(256, dtype=np.int32)
    return np.stack(_terms(SwsCoeffs.of(matrix, full_range), s, s, s))


def rgb_by_tables(tables, y, u, v):
    """Same-shape uint8 numpy ``y``, ``u``, ``v`` -> int32 (..., 3) RGB in 0..255 through
    :func:`rgb_tables`: swscale's arithmetic, one lookup per term."""
    import numpy as np

    luma, rv, gu, gv, bu = tables
    lum = luma[y]
    out = np.stack([lum + rv[v], lum + gu[u] + gv[v], lum + bu[u]], axis=-1)
    return np.clip(out, 0, 255, out=out)


def nv12_planes(nv12, height: int, width: int):
    """An NV12 surface (..., >= H*3/2 rows, >= W columns; pitch padding allowed) -> y, u, v views."""
    y = nv12[..., :height, :width]
    ch = (height + 1) // 2
    uv = nv12[..., height : height + ch, : 2 * ((width + 1) // 2)]
    uv = uv.reshape(*uv.shape[:-1], -1, 2)
    return y, uv[..., 0], uv[..., 1]


def nv12_to_rgb(nv12, height: int, width: int, matrix: str = "bt601", full_range: bool = False):
    """NV12 (what NVDEC outputs) -> uint8 (..., H, W, 3), same pixels as :func:`yuv420_to_rgb`."""
    y, u, v = nv12_planes(nv12, height, width)
    return yuv420_to_rgb(y, u, v, matrix, full_range)

