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
from ..decoding.pyav import DecodeError, VideoSource, clip_sha
from ..decoding.sampling import EPS, ClipWindow, plan_clips
from ..storage import filesystem, fingerprint, is_local

log = logging.getLogger("r2p1d_batch.audit")

OK, SHA_MISMATCH, SOURCE_MISSING, DECODE_ERROR = "ok", "sha_mismatch", "source_missing", "decode_error"
# A clip labeled from NVDEC-decoded pixels, audited where NVDEC is unavailable: its clip_sha cannot
# be reproduced, so the source must be unchanged (fingerprint) and the NVDEC path's arithmetic
# (colour.py, resize, crop, run here on the CPU from the same decoded frames) must be within the
# stated tolerance of the CPU path: OK_TOLERANCE, else PIXELS_OFF.
OK_TOLERANCE, PIXELS_OFF = "ok_tolerance", "pixels_off"
VERIFIED = (OK, OK_TOLERANCE)


@dataclass
class Redecoded:
    status: str  # ok | sha_mismatch | source_missing | decode_error
    error: str = ""
    sha: str = ""  # of the re-decoded clip ("" when none)
    source_fingerprint: str = ""  # the source now
    frames: Optional[np.ndarray] = None  # uint8 (T, H, W, 3), only when verified (status in VERIFIED)
    check: str = "sha"  # how the input was verified: sha | tolerance
    pixel_max_abs: Optional[int] = None  # tolerance check: NVDEC path vs CPU path on this clip
    pixel_mean_abs: Optional[float] = None


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


def _nvdec_reference(path: str, uri: str, decode_cfg: DecodeConfig, sampling, rows: list[dict]) -> dict:
    """The NVDEC path's pixels for ``rows``, computed on the CPU from PyAV's decoded frames:
    {clip index in rows: uint8 clip}. Empty when the stream is not one NVDEC takes."""
    from ..decoding import colour
    from ..decoding.choice import NVDEC, StreamFacts, choose
    from ..decoding.nvdec import CpuNv12Frames, NvdecDecoder

    frames = CpuNv12Frames()
    try:
        with VideoSource(path, uri, decode_cfg) as video:
            facts = StreamFacts.of(video.stream)
            if choose(facts).decoder != NVDEC:
                return {}
            dec = NvdecDecoder(frames=frames, device="cpu")
            clips = dec.clips(path, video, _windows(rows, video, sampling), colour.matrix_of(facts.colorspace),
                              facts.full_range)
            return {c.index: c.frames for c in clips}
    finally:
        frames.close()


def _tolerance_check(row: dict, cpu: np.ndarray, ref: Optional[np.ndarray], fp_now: str,
                     tolerance: tuple[int, float]) -> Redecoded:
    then = row.get("source_fingerprint") or "unknown"
    if then != fp_now:
        return Redecoded(SHA_MISMATCH, f"labeled from NVDEC output; the source changed since labeling "
                                       f"(fingerprint {then} -> {fp_now})", "", fp_now)
    if ref is None:
        return Redecoded(PIXELS_OFF, "labeled from NVDEC output, but the NVDEC path does not take this stream "
                                     "here (decoder_choice): cannot compare", "", fp_now)
    d = np.abs(ref.astype(np.int16) - cpu.astype(np.int16))
    worst, mean = int(d.max()), float(d.mean())
    if worst <= tolerance[0] and mean <= tolerance[1]:
        return Redecoded(OK_TOLERANCE, "", "", fp_now, cpu, "tolerance", worst, mean)
    return Redecoded(PIXELS_OFF, f"NVDEC path vs CPU path on this clip: max |d| {worst} > {tolerance[0]} or mean "
                                 f"{mean:.3f} > {tolerance[1]}", "", fp_now, None, "tolerance", worst, mean)


def redecode_video(rows: list[dict], run: dict, storage=None,
                   tolerance: tuple[int, float] = (3, 0.5)) -> list[Redecoded]:
    """Re-decode ``rows`` (clips of one source, one run) in one pass over the source.

    Clips the run decoded with NVDEC (``decoder`` of their video: nvdec, nvdec+cpu) whose
    clip_sha the CPU path does not reproduce go through the tolerance check (OK_TOLERANCE):
    this machine has no NVDEC to re-create their exact bytes. (Re-decoding with NVDEC itself
    where the audit machine has it is not built: it needs a GPU session to write and test.)"""
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
    nvdec_labeled = "nvdec" in (rows[0].get("decoder") or "")
    try:
        src = path if is_local(uri) else fs.open(path, "rb")
        off: dict[int, np.ndarray] = {}
        with VideoSource(src, uri, decode_cfg) as video:
            for clip in video.clips(_windows(rows, video, sampling)):
                row = rows[clip.index]
                if clip.sha == row["clip_sha"]:
                    out[clip.index] = Redecoded(OK, "", clip.sha, fp_now, clip.frames)
                elif nvdec_labeled:
                    off[clip.index] = clip.frames
                else:
                    out[clip.index] = Redecoded(SHA_MISMATCH, _mismatch(row, clip.sha, fp_now), clip.sha, fp_now)
        if off:
            ref = _nvdec_reference(path, uri, decode_cfg, sampling, rows) if is_local(uri) else {}
            for i, cpu in off.items():
                res = _tolerance_check(rows[i], cpu, ref.get(i), fp_now, tolerance)
                res.sha = res.sha or clip_sha(cpu)
                out[i] = res
        err = f"{uri}: the source ends before this clip (changed since labeling?)"
    except DecodeError as e:
        err = f"{e} ({e.kind})"
    except Exception as e:  # still a per-clip result, never a crash of the whole audit
        err = f"{uri}: {type(e).__name__}: {e}"
    return [r if r is not None else Redecoded(DECODE_ERROR, err, "", fp_now) for r in out]


def redecode(sample: list[dict], runs: dict[str, dict], storage=None,
             tolerance: tuple[int, float] = (3, 0.5)) -> list[Redecoded]:
    """One result per sampled row, in the sample's order; sources are opened once each."""
    results: list[Optional[Redecoded]] = [None] * len(sample)
    order = sorted(range(len(sample)), key=lambda i: (sample[i]["run_id"], sample[i]["uri"]))
    for (run_id, _uri), idx in groupby(order, key=lambda i: (sample[i]["run_id"], sample[i]["uri"])):
        idx = list(idx)
        for i, res in zip(idx, redecode_video([sample[i] for i in idx], runs[run_id], storage, tolerance)):
            results[i] = res
    return results
