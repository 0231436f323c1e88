"""Benchmark inputs: synthetic H.264 videos with moving content, generated once and cached.

A 1-minute segment per resolution is encoded with libx264 (default GOP of 250 frames, CRF 23,
like typical camera/web video); longer videos are the segment remuxed N times (packet copy,
shifted timestamps), so a 30-minute 1080p file costs seconds, not an encode.
"""
from __future__ import annotations

import os
from pathlib import Path

import av
import numpy as np

SIZES = {"360p": (640, 360), "720p": (1280, 720), "1080p": (1920, 1080)}
FPS = 30


def cache_dir(root: str | os.PathLike | None = None) -> Path:
    d = Path(root or os.environ.get("R2P1D_BENCH_INPUTS") or Path.home() / ".cache" / "r2p1d_batch" / "bench")
    d.mkdir(parents=True, exist_ok=True)
    return d


def _frame(i: int, w: int, h: int, yy: np.ndarray, xx: np.ndarray) -> np.ndarray:
    # A drifting colour gradient with moving bars and a bouncing box: edges and motion, so the
    # codec does real work and resizing has detail to get wrong.
    r = ((xx + 3 * i) % 256).astype(np.uint8)
    g = ((yy + 2 * i) % 256).astype(np.uint8)
    b = (((xx + yy) // 2 + i) % 256).astype(np.uint8)
    img = np.stack([np.broadcast_to(r, (h, w)), np.broadcast_to(g, (h, w)), np.broadcast_to(b, (h, w))], -1).copy()
    bar = (i * 7) % w
    img[:, bar : bar + max(2, w // 40)] = 255
    bx, by = (i * 5) % max(1, w - w // 6), int((h - h // 5) * abs(np.sin(i / 20.0)))
    img[by : by + h // 5, bx : bx + w // 6] = (i * 13 % 256, 40, 200)
    return img


def make_segment(path: Path, size: tuple[int, int], seconds: float, fps: int = FPS) -> Path:
    w, h = size
    yy, xx = np.mgrid[0:h, 0:w]
    yy, xx = (yy * 256 // h).astype(np.int32), (xx * 256 // w).astype(np.int32)
    tmp = path.with_suffix(".tmp.mp4")
    with av.open(str(tmp), mode="w") as out:
        s = out.add_stream("libx264", rate=fps)
        s.width, s.height, s.pix_fmt = w, h, "yuv420p"
        s.options = {"preset": "veryfast", "crf": "23"}
        for i in range(int(round(seconds * fps))):
            for pkt in s.encode(av.VideoFrame.from_ndarray(_frame(i, w, h, yy, xx), format="rgb24")):
                out.mux(pkt)
        for pkt in s.encode():
            out.mux(pkt)
    tmp.replace(path)
    return path


def repeat(src: Path, dst: Path, times: int) -> Path:
    """``src`` played ``times`` times in a row, by packet copy (no re-encode)."""
    tmp = dst.with_suffix(".tmp.mp4")
    with av.open(str(src)) as inp, av.open(str(tmp), mode="w") as out:
        ist = inp.streams.video[0]
        ost = out.add_stream_from_template(ist)
        packets = [p for p in inp.demux(ist) if p.size]
        end = max(p.pts + (p.duration or 0) for p in packets)
        first = min(p.pts for p in packets)
        span = end - first
        for k in range(times):
            for p in packets:
                p.pts += span if k else 0
                p.dts = None if p.dts is None else p.dts + (span if k else 0)
                p.stream = ost
                out.mux(p)
    tmp.replace(dst)
    return dst


def video(kind: str, seconds: int, root=None) -> Path:
    """Cached ``kind`` (360p/720p/1080p) video of ``seconds`` (a multiple of its segment)."""
    d = cache_dir(root)
    seg_sec = min(seconds, 60)
    seg = d / f"{kind}-{seg_sec}s.mp4"
    if not seg.exists():
        make_segment(seg, SIZES[kind], seg_sec)
    if seconds == seg_sec:
        return seg
    if seconds % seg_sec:
        raise ValueError(f"{seconds} s is not a multiple of the {seg_sec} s segment")
    out = d / f"{kind}-{seconds}s.mp4"
    if not out.exists():
        repeat(seg, out, seconds // seg_sec)
    return out
