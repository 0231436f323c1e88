"""Thumbnails of clips: the middle frame of each clip, decoded from the source with the job's
own decoder (``VideoSource``: same seek rule, rotation, VFR timing, the run's decode config), at
a display size instead of the model's centre crop. One pass per source.

A source that cannot be read is not an error of the report: each of its clips gets a
``Thumb`` with no image and the reason (not found, access denied, undecodable, ...).
"""
from __future__ import annotations

import base64
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Optional

import numpy as np

from ..config import DecodeConfig
from ..decoding.pyav import DecodeError, VideoSource
from ..decoding.sampling import EPS, ClipWindow
from ..storage import STORAGE_ERRORS, error_kind, filesystem, fingerprint, is_local

THUMB_HEIGHT = 96
MAX_WIDTH = 192


@dataclass
class Thumb:
    data_uri: str = ""  # image/jpeg; "" when the source could not be read
    reason: str = ""  # why there is no image, or a note (source changed since labeling)
    width: int = 0
    height: int = 0


class DisplayTransform:
    """Stands in for the model's resize + centre crop inside ``VideoSource``: the whole frame
    (already rotated), ``THUMB_HEIGHT`` high, aspect kept, area-averaged (a thumbnail needs no
    bit-exactness)."""

    scaler = "cv2"  # never the swscale path: that one resizes to the model's size

    def __call__(self, rgb: np.ndarray) -> np.ndarray:
        import cv2

        h, w = rgb.shape[:2]
        th = min(THUMB_HEIGHT, h)
        tw = max(8, min(MAX_WIDTH, round(th * w / max(1, h))))
        return cv2.resize(np.ascontiguousarray(rgb), (tw, th), interpolation=cv2.INTER_AREA)


def _jpeg(rgb: np.ndarray) -> str:
    import cv2

    ok, buf = cv2.imencode(".jpg", np.ascontiguousarray(rgb[..., ::-1]), [cv2.IMWRITE_JPEG_QUALITY, 82])
    if not ok:
        raise ValueError("JPEG encoding failed")
    return "data:image/jpeg;base64," + base64.b64encode(buf.tobytes()).decode()


def _middle_time(row: dict, video: VideoSource) -> float:
    pts = row.get("frame_pts") or []
    info = video.info
    if pts and min(pts) >= 0:
        return float((pts[len(pts) // 2] - info.start_pts) * info.time_base)
    return (float(row.get("start_sec") or 0.0) + float(row.get("end_sec") or 0.0)) / 2


def source_thumbs(rows: list[dict], decode_cfg: DecodeConfig, storage=None) -> list[Thumb]:
    """Thumbnails of ``rows`` (clips of one source: uri, frame_pts, start_sec, end_sec and
    optionally source_fingerprint), in order. Never raises for a bad source."""
    uri = rows[0]["uri"]
    try:
        fs, path = filesystem(uri, storage)
        st = fs.info(path)
    except FileNotFoundError:
        return [Thumb(reason="source not found (moved or deleted since labeling)") for _ in rows]
    except STORAGE_ERRORS as e:
        kind, msg = error_kind(e, uri)
        return [Thumb(reason=f"cannot read the source: {kind}: {msg}") for _ in rows]
    except Exception as e:
        return [Thumb(reason=f"cannot read the source: {type(e).__name__}: {e}") for _ in rows]
    then = rows[0].get("source_fingerprint")
    note = "source changed since labeling" if then and then != fingerprint(st) else ""
    out: list[Optional[Thumb]] = [None] * len(rows)
    err = "the source ends before this clip"
    try:
        src = nullcontext(path) if is_local(uri) else fs.open(path, "rb")  # ranged reads on S3
        with src as f, VideoSource(f, uri, decode_cfg) as video:
            video.transform = DisplayTransform()
            times = [_middle_time(r, video) for r in rows]
            end = max(times) + 4 * EPS
            windows = sorted((ClipWindow(i, (t,), end) for i, t in enumerate(times)), key=lambda w: w.start)
            for clip in video.clips(windows):
                frame = clip.frames[0]
                out[clip.index] = Thumb(_jpeg(frame), note, frame.shape[1], frame.shape[0])
    except DecodeError as e:
        err = f"cannot decode the source: {e.kind}: {e}"
    except STORAGE_ERRORS as e:
        kind, msg = error_kind(e, uri)
        err = f"cannot read the source: {kind}: {msg}"
    except Exception as e:  # still a placeholder, never a failed report
        err = f"cannot decode the source: {type(e).__name__}: {e}"
    return [t if t is not None else Thumb(reason=err) for t in out]
