"""Decode stage: ours vs the ffmpeg CLI and decord on the same file with the same threads;
sparse sampling vs a full decode; how the fast scalers change pixels and labels."""
from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path
from typing import Optional

import av
import numpy as np

from .. import config as config_mod
from ..decoding.preprocess import FrameTransform, torch_threads
from ..decoding.pyav import VideoSource
from ..decoding.sampling import plan_clips
from .output import ratio


def ffmpeg_cmd(path: str | Path, threads: int, seconds: Optional[float] = None,
               scale: Optional[tuple[int, int]] = None, exe: str = "ffmpeg") -> list[str]:
    """ffmpeg decoding ``path`` to RGB24 frames thrown away: at full size, or scaled to
    ``scale`` (w, h) with swscale bilinear. Decoder and filter threads both ``threads``."""
    cmd = [exe, "-hide_banner", "-nostats", "-loglevel", "error", "-threads", str(threads)]
    if seconds:
        cmd += ["-t", f"{seconds:g}"]
    cmd += ["-i", str(path), "-filter_threads", str(threads)]
    if scale:
        cmd += ["-vf", f"scale={scale[0]}:{scale[1]}:flags=bilinear"]
    return cmd + ["-pix_fmt", "rgb24", "-an", "-f", "null", "-"]


def _frames_in(path: str | Path, seconds: Optional[float]) -> int:
    with av.open(str(path)) as c:
        n = 0
        for pkt in c.demux(c.streams.video[0]):
            if pkt.size and (seconds is None or float(pkt.pts * pkt.time_base) < seconds - 1e-6):
                n += 1
        return n


def ffmpeg_fps(path, threads: int, seconds: Optional[float], scale=None) -> Optional[float]:
    exe = shutil.which("ffmpeg")
    if not exe:
        return None
    n = _frames_in(path, seconds)
    t = time.perf_counter()
    subprocess.run(ffmpeg_cmd(path, threads, seconds, scale, exe), check=True)
    return n / (time.perf_counter() - t)


def ours_fps(path, threads: int, seconds: Optional[float], scaler: str) -> float:
    """Every source frame kept (sampling at the source rate, clips back to back): the same
    work as ffmpeg converting every frame. Source frames per second, clips built and hashed."""
    cfg = config_mod.load(None, [f"decode.scaler={scaler}", f"decode.threads={threads}"])
    FrameTransform.from_preset()  # the preset's imports, once, outside the timing
    # As in a decode worker: one torch thread. Left at the process default, the full-size uint8
    # -> float conversion of the exact path ran on every core, which "1 thread" must not count.
    with torch_threads(1):
        t = time.perf_counter()
        n = 0
        with VideoSource(str(path), str(path), cfg.decode) as v:
            fps = v.info.fps
            sampling = cfg.sampling.model_copy(update={"fps": fps, "stride_sec": cfg.sampling.clip_len / fps})
            for clip in v.clips(plan_clips(sampling, v.info.duration, fps, None, seconds)):
                n += len(clip.frames)
        return n / (time.perf_counter() - t)


def decord_fps(path, threads: int, seconds: Optional[float], size: tuple[int, int]) -> Optional[float]:
    """decord decoding and scaling to ``size`` (w, h) in its reader, then the centre crop."""
    try:
        import decord
    except ImportError:
        return None
    crop = FrameTransform.from_preset()
    t = time.perf_counter()
    vr = decord.VideoReader(str(path), ctx=decord.cpu(0), width=size[0], height=size[1], num_threads=threads)
    total = len(vr) if seconds is None else min(len(vr), int(round(seconds * vr.get_avg_fps())))
    n = 0
    for i in range(0, total, 16):
        batch = vr.get_batch(list(range(i, min(total, i + 16)))).asnumpy()
        np.stack([crop.crop_only(f) for f in batch])
        n += len(batch)
    return n / (time.perf_counter() - t)


REPEATS = 3  # best of 3 for every decoder alike: a shared machine only ever makes a run slower


def best_of(n: int, fps_fn, *args) -> Optional[float]:
    runs = [fps_fn(*args) for _ in range(n)]
    return None if None in runs else max(runs)


def throughput_rows(videos: dict[str, Path], threads: int, seconds: Optional[float]) -> tuple[list[dict], list[str]]:
    notes = []
    if not shutil.which("ffmpeg"):
        notes.append("ffmpeg CLI not found: its columns are empty (apt-get install ffmpeg)")
    try:
        import decord  # noqa: F401
    except ImportError:
        notes.append("decord not installed (no wheel for this platform?): its column is empty")
    t = FrameTransform.from_preset()
    small = (t.resize[1], t.resize[0])
    rows = []
    for name, path in videos.items():
        ff_full = best_of(REPEATS, ffmpeg_fps, path, threads, seconds)
        ff_scaled = best_of(REPEATS, ffmpeg_fps, path, threads, seconds, small)
        dec = best_of(REPEATS, decord_fps, path, threads, seconds, small)
        for scaler in ("exact", "cv2", "swscale"):
            fps = best_of(REPEATS, ours_fps, path, threads, seconds, scaler)
            # exact/cv2 convert at full size then resize: ffmpeg's like-for-like is the
            # full-size RGB conversion; swscale scales while converting: ffmpeg's scaled path.
            ff = ff_scaled if scaler == "swscale" else ff_full
            rows.append({
                "video": name, "scaler": scaler, "threads": threads, "ours_fps": fps,
                "ffmpeg_path": "scale+rgb24" if scaler == "swscale" else "rgb24 full size",
                "ffmpeg_fps": ff, "vs_ffmpeg": ratio(fps, ff), "decord_fps": dec, "vs_decord": ratio(fps, dec),
            })
    return rows, notes


def sparse_row(path: Path, num_clips: int = 5) -> dict:
    """``num_clips`` uniform clips (keyframe seek per span, only needed frames converted) vs
    decoding every frame of the video (no conversion at all: a lower bound of any full decode)."""
    cfg = config_mod.load(None, ["sampling.mode=uniform", f"sampling.num_clips={num_clips}"])

    def sparse() -> tuple[float, float, int]:
        t = time.perf_counter()
        with VideoSource(str(path), str(path), cfg.decode) as v:
            duration = v.info.duration
            clips = list(v.clips(plan_clips(cfg.sampling, duration, v.info.fps)))
        return time.perf_counter() - t, duration, len(clips)

    def full() -> tuple[float, int]:
        t = time.perf_counter()
        with av.open(str(path)) as c:
            s = c.streams.video[0]
            s.thread_type, s.codec_context.thread_count = "SLICE", 1
            frames = sum(1 for _ in c.decode(s))
        return time.perf_counter() - t, frames

    (sparse_s, duration, n), (full_s, frames) = (min(f() for _ in range(REPEATS)) for f in (sparse, full))
    return {"video": path.name, "duration_s": duration, "clips": n, "sparse_s": sparse_s,
            "full_decode_s": full_s, "full_frames": frames, "speedup": full_s / sparse_s}


def fidelity_rows(path: Path, n_clips: int, weights: str) -> list[dict]:
    """Pixels and top-1 labels of the fast scalers vs the exact (preset) path on the same clips."""
    from ..classifying.classifier import ClipClassifier

    clf = ClipClassifier(config_mod.load(None, [f"model.weights={weights}", "model.runtime=onnxruntime",
                                                "model.device=cpu", "model.num_cpus=2"]).model)
    got = {}
    for scaler in ("exact", "cv2", "swscale"):
        cfg = config_mod.load(None, [f"decode.scaler={scaler}", "sampling.stride_sec=2"])
        with VideoSource(str(path), str(path), cfg.decode) as v:
            ws = plan_clips(cfg.sampling, v.info.duration, v.info.fps)[:n_clips]
            got[scaler] = np.stack([c.frames for c in v.clips(ws)])
    ref = clf(got["exact"]).topk_ids[:, 0]
    rows = []
    for scaler in ("cv2", "swscale"):
        d = np.abs(got[scaler].astype(np.int16) - got["exact"])
        top1 = clf(got[scaler]).topk_ids[:, 0]
        rows.append({"video": path.name, "scaler": scaler, "clips": len(ref), "mean_abs_px": float(d.mean()),
                     "max_abs_px": int(d.max()), "top1_changed": float((top1 != ref).mean()),
                     "weights": clf.weights_id})
    return rows
