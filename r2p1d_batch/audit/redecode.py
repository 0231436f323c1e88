"""Step 1b: re-create each sampled clip from its source with the labeling run's decode path
and prove it identical (sha256 of the uint8 clip) before any model sees it.

The frames are chosen by the ``frame_pts`` the run stored: each becomes a target time, and
``VideoSource.clips`` shows the frame on screen at that instant, which is that very frame. So
manifest start/end windows and sampling settings need not be replayed; the pixels still go
through the run's own decode config (scaler, rotation, seek rule).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from itertools import groupby
from typing import Optional

import numpy as np

from ..config import DecodeConfig, SamplingConfig
from ..decode import DecodeError, VideoSource
from ..sampling import EPS, ClipWindow, plan_clips
from ..storage import filesystem, fingerprint, is_local

log = logging.getLogger("r2p1d_batch.audit")

OK, SHA_MISMATCH, SOURCE_MISSING, DECODE_ERROR = "ok", "sha_mismatch", "source_missing", "decode_error"


@dataclass
class Redecoded:
    status: str  # ok | sha_mismatch | source_missing | decode_error
    error: str = ""
    sha: str = ""  # of the re-decoded clip ("" when none)
    source_fingerprint: str = ""  # the source now
    frames: Optional[np.ndarray] = None  # uint8 (T, H, W, 3), only when status == ok


def run_configs(run: dict) -> tuple[DecodeConfig, SamplingConfig]:
    """The decode and sampling config a run recorded (defaults for runs that predate it)."""
    cfg = run.get("config") or {}
    if not cfg:
        log.warning("run %s recorded no config: re-decoding with the default decode config", run.get("run_id"))
    return DecodeConfig.model_validate(cfg.get("decode", {})), SamplingConfig.model_validate(cfg.get("sampling", {}))


def _windows(rows: list[dict], video: VideoSource, sampling: SamplingConfig) -> list[ClipWindow]:
    info = video.info
    times = []
    for row in rows:
        pts = row["frame_pts"] or []
        if pts and min(pts) >= 0:
            times.append(tuple(float((p - info.start_pts) * info.time_base) for p in pts))
        else:  # a stream without timestamps: plan the run's windows again, take clip_index
            plan = plan_clips(sampling, info.duration, info.fps)
            if row["clip_index"] >= len(plan):
                raise DecodeError(f"{row['uri']}: clip {row['clip_index']} is no longer in the video", "Changed")
            times.append(plan[row["clip_index"]].times)
    end = max(max(t) for t in times) + 4 * EPS  # past every target (no padding), stop soon after
    order = sorted(range(len(rows)), key=lambda i: times[i][0])
    return [ClipWindow(i, times[i], end) for i in order]


def _mismatch(row: dict, sha: str, fp_now: str) -> str:
    then = row.get("source_fingerprint") or "unknown"
    why = (f"the source changed since labeling (fingerprint {then} -> {fp_now})" if then != fp_now
           else "the source fingerprint is unchanged, so the decode path differs (library versions?)")
    return f"re-decoded clip differs from the labeled one (sha {sha[:12]} != {row['clip_sha'][:12]}): {why}"


def redecode_video(rows: list[dict], run: dict, storage=None) -> list[Redecoded]:
    """Re-decode ``rows`` (clips of one source, one run) in one pass over the source."""
    uri = rows[0]["uri"]
    decode_cfg, sampling = run_configs(run)
    fs, path = filesystem(uri, storage)
    try:
        st = fs.info(path)
    except FileNotFoundError:
        msg = f"{uri}: source video gone since labeling (not found)"
        return [Redecoded(SOURCE_MISSING, msg) for _ in rows]
    except Exception as e:  # permissions, network: the input cannot be proven
        return [Redecoded(SOURCE_MISSING, f"{uri}: cannot read the source ({type(e).__name__}: {e})") for _ in rows]
    fp_now = fingerprint(st)
    out: list[Optional[Redecoded]] = [None] * len(rows)
    try:
        src = path if is_local(uri) else fs.open(path, "rb")
        with VideoSource(src, uri, decode_cfg) as video:
            for clip in video.clips(_windows(rows, video, sampling)):
                row = rows[clip.index]
                if clip.sha == row["clip_sha"]:
                    out[clip.index] = Redecoded(OK, "", clip.sha, fp_now, clip.frames)
                else:
                    out[clip.index] = Redecoded(SHA_MISMATCH, _mismatch(row, clip.sha, fp_now), clip.sha, fp_now)
        err = f"{uri}: the source ends before this clip (changed since labeling?)"
    except DecodeError as e:
        err = f"{e} ({e.kind})"
    except Exception as e:  # still a per-clip result, never a crash of the whole audit
        err = f"{uri}: {type(e).__name__}: {e}"
    return [r if r is not None else Redecoded(DECODE_ERROR, err, "", fp_now) for r in out]


def redecode(sample: list[dict], runs: dict[str, dict], storage=None) -> list[Redecoded]:
    """One result per sampled row, in the sample's order; sources are opened once each."""
    results: list[Optional[Redecoded]] = [None] * len(sample)
    order = sorted(range(len(sample)), key=lambda i: (sample[i]["run_id"], sample[i]["uri"]))
    for (run_id, _uri), idx in groupby(order, key=lambda i: (sample[i]["run_id"], sample[i]["uri"])):
        idx = list(idx)
        for i, res in zip(idx, redecode_video([sample[i] for i in idx], runs[run_id], storage)):
            results[i] = res
    return results
