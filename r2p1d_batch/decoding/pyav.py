"""PyAV decoding: open a source, probe it, and turn clip windows into uint8 clips.

Cost follows the clips asked for, not the video's length: the needed spans are merged, each
span is reached with one keyframe seek (or decoded through when the gap is small), frames
are decoded sequentially, and only the frames a clip shows are converted to RGB and resized.
Dense mode therefore reads each stream once, front to back, and never seeks per clip.
"""
from __future__ import annotations

import bisect
import hashlib
import math
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Optional

import av
import numpy as np
from av.video.reformatter import VideoReformatter

from ..config import DecodeConfig
from .crop_taps import CropTaps, frame_matrix, planes
from .preprocess import FrameTransform
from .sampling import EPS, ClipWindow


class DecodeError(Exception):
    """A video that cannot be labeled; ``kind`` becomes the error_class of its row."""

    kind = "DecodeError"

    def __init__(self, message: str, kind: Optional[str] = None):
        super().__init__(message)
        if kind:
            self.kind = kind


@dataclass
class VideoInfo:
    duration: float  # seconds of the video stream
    duration_from_stream: bool  # False: estimated (container, frame count or a packet scan)
    fps: float
    width: int  # as displayed, after rotation
    height: int
    rotation: int  # degrees counter-clockwise applied to stored frames
    codec: str
    pix_fmt: str
    time_base: Fraction
    start_pts: int


@dataclass
class DecodedClip:
    index: int
    frames: np.ndarray  # uint8 (T, H, W, 3)
    frame_pts: list[int]
    start_sec: float
    end_sec: float
    padded: int
    sha: str = field(init=False)

    def __post_init__(self) -> None:
        self.sha = clip_sha(self.frames)


def clip_sha(frames: np.ndarray) -> str:
    """sha256 of the clip's uint8 bytes in (T, H, W, C) order: proves two inputs identical."""
    return hashlib.sha256(np.ascontiguousarray(frames, dtype=np.uint8).tobytes()).hexdigest()


def _rotation(frame) -> int:
    # PyAV reports the display matrix as degrees counter-clockwise in [-180, 180].
    rot = getattr(frame, "rotation", 0) or 0
    return int(round(rot / 90.0)) * 90 % 360


def _rotate(rgb: np.ndarray, rotation: int) -> np.ndarray:
    return np.ascontiguousarray(np.rot90(rgb, k=rotation // 90)) if rotation else rgb


class VideoSource:
    """One opened video stream. Use as a context manager."""

    def __init__(self, src, uri: str, cfg: DecodeConfig):
        self.uri, self.cfg = uri, cfg
        try:
            self.container = av.open(src, mode="r", metadata_errors="ignore")
        except FileNotFoundError:
            raise DecodeError(f"{uri}: file not found", "NotFound") from None
        except av.error.InvalidDataError as e:
            raise DecodeError(f"{uri}: not a readable media file ({e})", "InvalidData") from None
        except av.error.FFmpegError as e:
            raise DecodeError(f"{uri}: cannot open ({e})", "OpenError") from None
        if not self.container.streams.video:
            kinds = sorted({s.type for s in self.container.streams}) or ["none"]
            self.container.close()
            raise DecodeError(f"{uri}: no video stream (streams: {', '.join(kinds)})", "NoVideoStream")
        self.stream = self.container.streams.video[0]
        cc = self.stream.codec_context
        cc.thread_count = cfg.threads
        cc.thread_type = "AUTO" if cfg.threads != 1 else "SLICE"
        self.transform = FrameTransform.from_preset(cfg.scaler)
        # One reformatter per stream: PyAV's frame.to_ndarray builds a new swscale context per
        # frame (~8 ms at 720p); a shared one caches it. Same pixels.
        self._reformatter = VideoReformatter()
        self._taps: dict[tuple, Optional[CropTaps]] = {}
        self._seen_frame = False
        self.frames_decoded = 0  # frames the decoder output (skip_frames lowers it)
        self.info = self._probe()
        options = dict(cfg.codec_options)
        if cfg.skip_loop_filter_min_side is not None and min(cc.width, cc.height) >= cfg.skip_loop_filter_min_side:
            options["skip_loop_filter"] = "all"
        self.skips_loop_filter = "skip_loop_filter" in options
        if options:
            cc.options = options  # read when the decoder opens, at the first packet

    def __enter__(self) -> VideoSource:
        return self

    def __exit__(self, *exc) -> None:
        self.container.close()

    # -- probing -------------------------------------------------------------------------
    def _probe(self) -> VideoInfo:
        s, cc = self.stream, self.stream.codec_context
        w, h = cc.width, cc.height
        if not w or not h:
            raise DecodeError(f"{self.uri}: video stream has no frame size", "InvalidData")
        if w * h > self.cfg.max_pixels:
            raise DecodeError(
                f"{self.uri}: {w}x{h} frames exceed decode.max_pixels={self.cfg.max_pixels}", "TooLarge"
            )
        tb = s.time_base or Fraction(1, 90000)
        start = s.start_time if s.start_time is not None else 0
        rate = s.average_rate or s.guessed_rate or s.base_rate
        fps = float(rate) if rate else 0.0
        from_stream = bool(s.duration)
        if s.duration:
            duration = float(s.duration * tb)
        elif self.container.duration:
            duration = self.container.duration / av.time_base - max(0.0, float(start * tb))
        elif s.frames and fps:
            duration = s.frames / fps
        else:
            duration = self._scan_duration(tb, start)
        if not duration or duration <= 0 or not math.isfinite(duration):
            raise DecodeError(f"{self.uri}: video stream has no duration and no frames", "NoFrames")
        pix = cc.pix_fmt or (cc.format.name if cc.format else "")
        # Rotation lives in frame side data: known at the first decoded frame (see _frames).
        return VideoInfo(duration, from_stream, fps, w, h, 0, cc.name, pix or "", tb, start)

    def _scan_duration(self, tb: Fraction, start: int) -> float:
        # No duration in the headers (e.g. raw streams): read packet timestamps, no decoding.
        last = None
        for pkt in self.container.demux(self.stream):
            if pkt.pts is not None:
                end = pkt.pts + (pkt.duration or 0)
                last = end if last is None else max(last, end)
        self.container.seek(0)
        return float((last - start) * tb) if last is not None else 0.0

    # -- decoding ------------------------------------------------------------------------
    def _seconds(self, frame, count: int) -> tuple[float, int]:
        pts = frame.pts if frame.pts is not None else frame.dts
        if pts is None:  # no timestamps at all: fall back to the nominal rate
            return count / (self.info.fps or 25.0), -1
        return float((pts - self.info.start_pts) * self.info.time_base), pts

    def _frames(self, seek_to: Optional[float], targets: list[float]) -> Iterator[tuple[float, int, av.VideoFrame]]:
        if seek_to is not None and seek_to > 0:
            target = int(seek_to / self.info.time_base) + self.info.start_pts
            self.container.seek(target, stream=self.stream, backward=True, any_frame=False)
        cc, mode = self.stream.codec_context, self.cfg.skip_frames
        skipper = FrameSkipper(targets, self.info.time_base, self.info.start_pts) if mode == "unused" else None
        count, first_t = 0, None
        try:
            for pkt, known in _lookahead(self.container.demux(self.stream)):
                if mode != "none":
                    # NONREF discards the packet's frame only if no other frame references it:
                    # the frames that are decoded stay bit-exact.
                    skip = mode == "nonref" or skipper.unused(pkt.pts, known, first_t)
                    cc.skip_frame = "NONREF" if skip else "DEFAULT"
                for frame in cc.decode(pkt):
                    if count == 0 and not self._seen_frame:
                        self._on_first_frame(frame)
                    t, pts = self._seconds(frame, count)
                    count += 1
                    self.frames_decoded += 1
                    first_t = t if first_t is None else first_t
                    yield t, pts, frame
        except av.error.FFmpegError as e:
            raise DecodeError(f"{self.uri}: corrupt stream after {count} frames ({e})", "CorruptStream") from None

    def _on_first_frame(self, frame: av.VideoFrame) -> None:
        self._seen_frame = True
        self.info.rotation = _rotation(frame)
        if self.info.rotation in (90, 270):
            self.info.width, self.info.height = self.info.height, self.info.width

    def _pixels(self, frame: av.VideoFrame) -> np.ndarray:
        if self.transform.scaler == "swscale":
            # Fast knob: YUV -> RGB and the resize in one swscale pass at the small size.
            # Not the preset's pixels (swscale filters differently): label agreement is measured.
            h, w = self.transform.resize
            if self.info.rotation in (90, 270):
                h, w = w, h
            small = self._reformatter.reformat(frame, width=w, height=h, format="rgb24", interpolation="BILINEAR")
            return self.transform.crop_only(_rotate(small.to_ndarray(), self.info.rotation))
        taps = self._crop_taps(frame)
        if taps is not None:
            return taps(*planes(frame))
        rgb = self._reformatter.reformat(frame, format="rgb24").to_ndarray()
        return self.transform(_rotate(rgb, self.info.rotation))

    def _crop_taps(self, frame: av.VideoFrame) -> Optional[CropTaps]:
        """The exact path from the pixels the crop reads, where it applies (crop_taps.py)."""
        if not self.cfg.crop_taps or self.transform.scaler != "exact" or self.info.rotation:
            return None
        key = (frame.width, frame.height, frame.format.name, frame.colorspace, frame.color_range)
        if key not in self._taps:
            m = frame_matrix(frame)
            self._taps[key] = None if m is None else CropTaps(frame.height, frame.width, self.transform, *m)
        return self._taps[key]

    def clips(self, windows: list[ClipWindow]) -> Iterator[DecodedClip]:
        """Decode ``windows`` (sorted by start) into clips, streaming, one pass per span."""
        if not windows:
            return
        window_end = windows[0].window_end
        spans = merge_spans(windows, self.cfg.seek_gap_sec)
        pending = deque(windows)
        slots: dict[int, list] = {w.index: [None] * len(w.times) for w in windows}
        emitted = 0
        last_frame = None  # (t, pts, pixels-or-frame) of the most recent usable frame
        for span_start, _span_end, members in spans:
            seek_to = span_start if span_start > self.cfg.seek_gap_sec else None
            targets = sorted((t, w.index, i) for w in members for i, t in enumerate(w.times))
            ti, prev = 0, None
            for t, pts, frame in self._frames(seek_to, [tt[0] for tt in targets]):
                if t >= window_end - EPS:
                    break
                cur = [t, pts, frame]
                # Targets before this frame's timestamp show the previous frame.
                while ti < len(targets) and targets[ti][0] + EPS < t:
                    _assign(slots, targets[ti], prev or cur, self._pixels)
                    ti += 1
                prev = cur
                if ti >= len(targets):
                    break
                for clip in self._ready(pending, slots):
                    emitted += 1
                    yield clip
            tail = prev or last_frame
            if tail is None and ti < len(targets):
                raise DecodeError(f"{self.uri}: no frames decoded", "NoFrames")
            while ti < len(targets):
                # Past the last frame before the window end: the clip is cut short.
                if targets[ti][0] > tail[0] + 2.0 / (self.info.fps or 1.0) + EPS and targets[ti][0] < window_end - EPS:
                    break
                _assign(slots, targets[ti], tail, self._pixels)
                ti += 1
            last_frame = tail
            for clip in self._ready(pending, slots):
                emitted += 1
                yield clip
            if ti < len(targets):
                self._truncated(tail[0], emitted, len(windows))
                return

    def _ready(self, pending: deque, slots: dict) -> Iterator[DecodedClip]:
        while pending and all(s is not None for s in slots[pending[0].index]):
            w = pending.popleft()
            got = slots.pop(w.index)
            frames = np.stack([g[2] for g in got])
            fps = self.info.fps or 25.0
            yield DecodedClip(
                index=w.index,
                frames=frames,
                frame_pts=[int(g[1]) for g in got],
                start_sec=got[0][0],
                end_sec=got[-1][0] + 1.0 / fps,
                padded=w.padded,
            )

    def _truncated(self, last_t: float, emitted: int, planned: int) -> None:
        if self.info.duration_from_stream:
            raise DecodeError(
                f"{self.uri}: stream ends at {last_t:.3f} s but declares {self.info.duration:.3f} s "
                f"({emitted} of {planned} clips decodable): truncated file?",
                "Truncated",
            )


LOOKAHEAD = 16  # packets: more than any codec reorders (H.264's DPB holds at most 16 frames)


def _lookahead(packets) -> Iterator[tuple[av.Packet, list]]:
    """Each packet with the timestamps of the packets around it (LOOKAHEAD either side, in
    decode order): the frame shown after it in presentation order is among them."""
    window: deque = deque()
    for pkt in packets:
        window.append(pkt)
        if len(window) > 2 * LOOKAHEAD:
            window.popleft()
        if len(window) > LOOKAHEAD:
            yield window[-LOOKAHEAD - 1], [p.pts for p in window]
    for i in range(max(0, len(window) - LOOKAHEAD), len(window)):
        yield window[i], [p.pts for p in window]


class FrameSkipper:
    """Which frames of a span no clip shows (decode.skip_frames=unused), from packet timestamps.

    The decode loop shows, at clip time T, the last frame with time <= T + EPS (the first frame
    of the span for earlier T). A frame at t whose next frame is at t_next is therefore shown
    for T in [t - EPS, t_next - EPS). A packet is unused when no target falls there, using the
    next timestamp *known* around it (never earlier than the true next one, so the test can only
    keep a frame, never drop a shown one), and only once an earlier frame has been output (the
    first frame also stands in for the times before it).
    """

    def __init__(self, targets: list[float], time_base: Fraction, start_pts: int):
        self.targets, self.tb, self.start = sorted(targets), time_base, start_pts

    def unused(self, pts: Optional[int], known: list, first_t: Optional[float]) -> bool:
        if pts is None or first_t is None:
            return False
        later = [q for q in known if q is not None and q > pts]
        if not later:
            return False
        t = float((pts - self.start) * self.tb)
        if t <= first_t:
            return False
        t_next = float((min(later) - self.start) * self.tb)
        i = bisect.bisect_left(self.targets, t - EPS)
        return i >= len(self.targets) or self.targets[i] >= t_next - EPS


def _assign(slots: dict, target: tuple, frame_rec: list, pixels) -> None:
    _, index, slot = target
    if not isinstance(frame_rec[2], np.ndarray):
        frame_rec[2] = pixels(frame_rec[2])  # convert once, on first use
    slots[index][slot] = (frame_rec[0], frame_rec[1], frame_rec[2])


def merge_spans(windows: list[ClipWindow], gap: float) -> list[tuple[float, float, list[ClipWindow]]]:
    """Group clip windows into spans decoded in one pass; a new span (a seek) only where the
    next clip starts more than ``gap`` seconds after the previous span ends."""
    spans: list[tuple[float, float, list[ClipWindow]]] = []
    for w in sorted(windows, key=lambda w: w.start):
        lo, hi = w.times[0], w.times[-1]
        if spans and lo <= spans[-1][1] + gap:
            s = spans[-1]
            spans[-1] = (s[0], max(s[1], hi), s[2] + [w])
        else:
            spans.append((lo, hi, [w]))
    return spans
