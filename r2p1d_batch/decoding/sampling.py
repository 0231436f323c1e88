"""Clip windows: which instants of a video each clip shows. Pure arithmetic, no decoding.

Times are seconds from the start of the video stream. A clip is ``clip_len`` target times;
the decoder shows, for each target time, the frame on screen at that instant (the last
frame whose timestamp is <= t), which is the right rule for variable frame rate too and
matches torchvision's frame-index resampling on constant-rate video.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

from ..config import SamplingConfig

# Slack when comparing frame timestamps with target times: k/15 and 2k/30 must meet, also
# in containers that round timestamps to milliseconds (Matroska, WebM).
EPS = 1e-3


class ShortVideoError(ValueError):
    """The window holds less than one clip and sampling.short_video is 'error'."""


@dataclass(frozen=True)
class ClipWindow:
    index: int
    times: tuple[float, ...]
    window_end: float  # targets at or past this instant repeat the last frame before it

    @property
    def start(self) -> float:
        return self.times[0]

    @property
    def padded(self) -> int:
        return sum(t >= self.window_end - EPS for t in self.times)


def _frame_times(start: float, clip_len: int, fps: float) -> tuple[float, ...]:
    return tuple(start + i / fps for i in range(clip_len))


def dense_starts(length: float, clip_len: int, fps: float, stride: float) -> list[float]:
    """Offsets of every whole clip that fits in ``length`` seconds, one every ``stride``."""
    span = clip_len / fps
    if length + EPS < span:
        return []
    n = int(math.floor((length - span) / stride + EPS)) + 1
    return [k * stride for k in range(n)]


def uniform_starts(length: float, clip_len: int, fps: float, num_clips: int) -> list[float]:
    """torchvision's evaluation protocol: resample to ``fps``, then ``num_clips`` clip starts
    spread evenly over every possible start (UniformClipSampler's floor(linspace))."""
    resampled = int(math.floor(length * fps + EPS))
    possible = resampled - clip_len + 1
    if possible <= 0:
        return []
    if num_clips == 1:
        idx = [0]
    else:
        idx = [int(math.floor(j * (possible - 1) / (num_clips - 1) + EPS)) for j in range(num_clips)]
    return [i / fps for i in idx]


def zoo_times(length: float, clip_len: int, native_fps: float) -> tuple[float, ...]:
    """qai-hub-models' demo: clip_len frames strided evenly over the whole video, no
    resampling to a fixed fps (frame indices floor(linspace(0, N-1, clip_len)))."""
    n_frames = max(1, int(math.floor(length * native_fps + EPS)))
    if clip_len == 1:
        return (0.0,)
    idx = [int(math.floor(j * (n_frames - 1) / (clip_len - 1) + EPS)) for j in range(clip_len)]
    return tuple(i / native_fps for i in idx)


def resolve_window(
    duration: float, start_sec: Optional[float], end_sec: Optional[float]
) -> tuple[float, float]:
    """The [a, b) part of a video a manifest row asks for, clamped to the video."""
    a = max(0.0, start_sec or 0.0)
    b = duration if end_sec is None else min(end_sec, duration)
    if a >= duration:
        raise ValueError(f"start_sec={start_sec} is past the end of the video ({duration:.3f} s)")
    return a, b


def plan_clips(
    cfg: SamplingConfig,
    duration: float,
    native_fps: Optional[float] = None,
    start_sec: Optional[float] = None,
    end_sec: Optional[float] = None,
) -> list[ClipWindow]:
    """Every clip a video yields under ``cfg``, in order."""
    a, b = resolve_window(duration, start_sec, end_sec)
    length = b - a
    if cfg.mode == "zoo":
        times = zoo_times(length, cfg.clip_len, native_fps or cfg.fps)
        return [ClipWindow(0, tuple(a + t for t in times), b)]
    if cfg.mode == "dense":
        offsets = dense_starts(length, cfg.clip_len, cfg.fps, cfg.stride_sec)
    else:
        offsets = uniform_starts(length, cfg.clip_len, cfg.fps, cfg.num_clips)
    if not offsets:
        if cfg.short_video == "error":
            need = cfg.clip_len / cfg.fps
            raise ShortVideoError(
                f"window of {length:.3f} s is shorter than one clip ({cfg.clip_len} frames at "
                f"{cfg.fps:g} fps = {need:.3f} s); set sampling.short_video=pad to pad it"
            )
        offsets = [0.0]
    return [ClipWindow(k, _frame_times(a + off, cfg.clip_len, cfg.fps), b) for k, off in enumerate(offsets)]


def sampling_id(cfg: SamplingConfig) -> str:
    """A short, stable description of the sampling, stored with every row."""
    if cfg.mode == "dense":
        return f"dense:{cfg.clip_len}@{cfg.fps:g}fps/{cfg.stride_sec:g}s"
    if cfg.mode == "uniform":
        return f"uniform:{cfg.num_clips}x{cfg.clip_len}@{cfg.fps:g}fps"
    return f"zoo:{cfg.clip_len}"
