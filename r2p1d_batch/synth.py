"""Synthetic videos written with PyAV, for tests, the quickstart sample and benchmarks.

Pattern ``flat``: frame i is a flat grey of value ``level(i)`` (plus a corner marker), so
decode and sampling can be checked by value. ``noise``: seeded random pixels. ``moving``: a
bright disc crossing a gradient, cheap to encode and closer to real motion.
"""
from __future__ import annotations

from collections.abc import Sequence
from fractions import Fraction
from pathlib import Path
from typing import Optional

import av
import numpy as np


def level(i: int) -> int:
    """Grey level of frame i: steps of 10, wrapping below 250 so codecs keep them apart."""
    return (i * 10) % 250


def make_video(
    path: Path | str,
    n_frames: int = 30,
    fps: int = 30,
    size: tuple[int, int] = (96, 64),  # (width, height)
    codec: str = "libx264",
    pix_fmt: str = "yuv420p",
    times: Optional[Sequence[float]] = None,  # VFR: explicit frame times in seconds
    rotation: int = 0,
    pattern: str = "flat",  # flat | noise | moving
    seed: int = 0,
    options: Optional[dict] = None,  # encoder options instead of the defaults below (e.g. B-frames)
) -> Path:
    path = Path(path)
    w, h = size
    rng = np.random.default_rng(seed)
    with av.open(str(path), mode="w") as out:
        stream = out.add_stream(codec, rate=fps)
        stream.width, stream.height, stream.pix_fmt = w, h, pix_fmt
        if codec == "libx264":
            lossless = pix_fmt in ("yuv420p", "yuv444p")
            stream.options = {"crf": "0", "preset": "ultrafast", "g": "15"} if lossless else {"preset": "ultrafast"}
        if options is not None:
            stream.options = options
        if times is not None:
            stream.codec_context.time_base = Fraction(1, 1000)
        if rotation:
            stream.set_display_rotation(rotation)
        for i in range(n_frames):
            if pattern == "noise":
                img = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
            elif pattern == "moving":
                img = _moving(i, n_frames, w, h, seed)
            else:
                img = np.full((h, w, 3), level(i), dtype=np.uint8)
                img[: h // 4, : w // 4] = 255 - level(i)  # a marker in the top-left corner
            frame = av.VideoFrame.from_ndarray(img, format="rgb24")
            if times is not None:
                frame.pts = int(round(times[i] * 1000))
                frame.time_base = Fraction(1, 1000)
            for pkt in stream.encode(frame):
                out.mux(pkt)
        for pkt in stream.encode():
            out.mux(pkt)
    return path


def _moving(i: int, n: int, w: int, h: int, seed: int) -> np.ndarray:
    yy, xx = np.mgrid[0:h, 0:w]
    img = np.empty((h, w, 3), np.uint8)
    img[..., 0] = (xx * 255 // max(1, w - 1)).astype(np.uint8)
    img[..., 1] = (yy * 255 // max(1, h - 1)).astype(np.uint8)
    img[..., 2] = (seed * 40) % 256
    cx = int((i / max(1, n - 1)) * (w - 1))
    cy = int(h / 2 + h / 4 * np.sin(i / 5 + seed))
    img[(xx - cx) ** 2 + (yy - cy) ** 2 < (min(w, h) // 6) ** 2] = 255
    return img


def grey_of(clip_frame: np.ndarray) -> int:
    """The flat grey level of a decoded clip frame (read away from the corner marker)."""
    h, w = clip_frame.shape[:2]
    return int(round(float(clip_frame[h // 2 :, w // 2 :].mean())))


def frame_index(clip_frame: np.ndarray) -> int:
    """Invert level() for frames < 25."""
    return int(round(grey_of(clip_frame) / 10.0))


def make_audio_only(path: Path | str, n_frames: int = 10) -> Path:
    """An AAC file with no video stream (a manifest row that must become an error row)."""
    path = Path(path)
    with av.open(str(path), "w") as out:
        stream = out.add_stream("aac", rate=44100)
        for i in range(n_frames):
            frame = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp", layout="mono")
            frame.sample_rate, frame.pts = 44100, i * 1024
            for pkt in stream.encode(frame):
                out.mux(pkt)
        for pkt in stream.encode():
            out.mux(pkt)
    return path


def make_sample(directory: Path | str, videos: int = 4, seconds: float = 3.0, bad: bool = False) -> Path:
    """A small sample collection under ``directory``: ``videos`` moving-disc clips in videos/
    and manifest.parquet (plus a corrupt and a missing file with ``bad``). Returns the manifest."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    vdir = Path(directory) / "videos"
    vdir.mkdir(parents=True, exist_ok=True)
    uris = []
    for i in range(videos):
        path = vdir / f"sample_{i:03d}.mp4"
        make_video(path, n_frames=int(seconds * 30), fps=30, size=(320, 240), pattern="moving", seed=i)
        uris.append(str(path.resolve()))
    if bad:
        (vdir / "corrupt.mp4").write_text("not a video")
        uris += [str((vdir / "corrupt.mp4").resolve()), str((vdir / "missing.mp4").resolve())]
    manifest = Path(directory) / "manifest.parquet"
    pq.write_table(pa.table({"uri": uris, "source": ["synthetic"] * len(uris)}), manifest)
    return manifest
