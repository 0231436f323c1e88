"""Cheaper decode: per-core clips/s of each decode lever and combination at each resolution, its
pixels and frame times against the preset-exact path (fidelity.py), whether it is inside the
fidelity budget, and the cost of an hour of video in core-seconds.

Every setting decodes the same video with the default sampling (a 16-frame clip per second at
15 fps) on one thread, clips built and hashed as in a decode task; best of ``repeats``. The
reference row ``codec (CRF 23) vs its source`` is the encoder's own error at the model's size,
what the budget is set against.
"""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from .. import config as config_mod
from ..decoding.fidelity import BUDGET, describe, pixel_figures, shift_figures, within
from ..decoding.preprocess import FrameTransform, torch_threads
from ..decoding.pyav import VideoSource
from ..decoding.sampling import plan_clips
from . import inputs

BEFORE = "exact, whole frame, every frame (before)"
# name -> decode overrides (or a profile in configs/). Order: exact first, then cheaper.
LEVERS: dict[str, list[str] | str] = {
    BEFORE: ["decode.crop_taps=false", "decode.skip_frames=none"],
    "exact (defaults: crop taps, skip unused frames)": [],
    "exact + skip_frames=nonref": ["decode.skip_frames=nonref"],
    "exact + no loop filter": ["decode.skip_loop_filter_min_side=0"],
    "exact + flags2=+fast": ["decode.codec_options={flags2: '+fast'}"],
    "cv2": ["decode.scaler=cv2"],
    "cv2 + no loop filter": ["decode.scaler=cv2", "decode.skip_loop_filter_min_side=0"],
    "cv2 + no loop filter + nonref": ["decode.scaler=cv2", "decode.skip_loop_filter_min_side=0",
                                      "decode.skip_frames=nonref"],
    "swscale": ["decode.scaler=swscale"],
    "configs/cluster.yaml": "cluster.yaml",
}


def _decode(path: Path, setting: list[str] | str):
    cfg = (config_mod.load(config_mod.CONFIG_DIR / setting) if isinstance(setting, str)
           else config_mod.load(None, setting + ["decode.threads=1"]))
    t = time.perf_counter()
    with VideoSource(str(path), str(path), cfg.decode) as v:
        clips = list(v.clips(plan_clips(cfg.sampling, v.info.duration, v.info.fps)))
        info, decoded, noloop = v.info, v.frames_decoded, v.skips_loop_filter
    wall = time.perf_counter() - t
    times = np.array([float((p - info.start_pts) * info.time_base) for c in clips for p in c.frame_pts])
    return wall, np.stack([c.frames for c in clips]), times, info.duration, decoded, noloop


def codec_row(kind: str, path: Path, frames: int = 60) -> dict:
    """The encoder's own error at the model's size: the exact path on decoded frames vs on the
    frames the bench encoded (inputs._frame), for the first ``frames`` frames."""
    import av

    t = FrameTransform.from_preset()
    w, h = inputs.SIZES[kind]
    yy, xx = np.mgrid[0:h, 0:w]
    yy, xx = (yy * 256 // h).astype(np.int32), (xx * 256 // w).astype(np.int32)
    dec, src = [], []
    with av.open(str(path)) as c:
        for i, f in zip(range(frames), c.decode(video=0)):
            dec.append(t(f.to_ndarray(format="rgb24")))
            src.append(t(inputs._frame(i, w, h, yy, xx)))
    return {"video": kind, "setting": "codec (CRF 23) vs its source", **pixel_figures(np.stack(src), np.stack(dec))}


def lever_rows(videos: dict[str, Path], repeats: int) -> tuple[list[dict], list[str]]:
    """Rows for each video (name -> path: the bench's 360p/720p/1080p, or any video file) and
    each setting in LEVERS."""
    rows = []
    with torch_threads(1):  # one decode task's thread, as in the job
        for kind, path in videos.items():
            if kind in inputs.SIZES:  # the bench's own videos: their source frames are known
                rows.append(codec_row(kind, path))
            for warm in ([], ["decode.scaler=cv2"]):  # imports and first-call costs, outside the timing
                _decode(path, warm)
            # Round robin, not one setting's repeats back to back: a slow spell on a shared
            # machine then costs every setting alike instead of one.
            runs: dict[str, list] = {name: [] for name in LEVERS}
            for _ in range(repeats):
                for name, setting in LEVERS.items():
                    runs[name].append(_decode(path, setting))
            _, ref, ref_times, _, _, _ = runs[BEFORE][0]
            before = min(r[0] for r in runs[BEFORE])
            for name, got in runs.items():
                wall = min(r[0] for r in got)
                _, frames, times, duration, decoded, noloop = got[0]
                figs = pixel_figures(ref, frames) | shift_figures(ref_times, times)
                rows.append({"video": kind, "setting": name, "clips_per_s_per_core": len(frames) / wall,
                             "speedup": before / wall, "core_s_per_video_hour": wall / duration * 3600,
                             "frames_decoded": decoded, "loop_filter": "skipped" if noloop else "on", **figs,
                             "in_budget": within(figs)})
    budget = ", ".join(f"{k} {v}" for k, v in describe(BUDGET).items())
    notes = [f"fidelity budget (fidelity.py): {budget}; pixels and frame times vs the first row of each video",
             f"one thread, default sampling (16-frame clips at 15 fps, a clip per second), best of {repeats} "
             "(settings taken in turn); "
             "speedup vs the first row; core_s_per_video_hour = wall / video seconds x 3600",
             "synthetic H.264 (libx264 veryfast, CRF 23, B-frames): moving bars and a box on gradients"]
    return rows, notes
