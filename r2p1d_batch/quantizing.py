"""quantize(cfg, out_dir): the int8 CPU graph for ``cfg.model.weights``, calibrated and checked on
clips of the user's own manifest (``r2p1d quantize``; docs/int8.md).

manifest -> a seeded sample of videos -> the job's own decode and sampling (decoding/stage.py's
decode_video, the same rows a label run classifies) -> at most ``quantize.clips_per_video`` clips
per video, spread over it -> videos split into calibration and held-out clips (no video in both
where the manifest has two or more) -> classifying/int8.build. No Ray: a sample of tens of clips.
"""
from __future__ import annotations

import logging

import numpy as np

from .classifying import int8
from .classifying.weights import CROP
from .config import Config
from .decoding.stage import decode_video
from .planning.manifest import read_manifest

log = logging.getLogger("r2p1d_batch")


def spread(n: int, k: int) -> np.ndarray:
    """``k`` of ``n`` indices spread evenly over 0..n-1 (all of them when k >= n)."""
    return np.arange(n) if k >= n else np.unique(np.linspace(0, n - 1, k).round().astype(int))


def sample_clips(cfg: Config) -> tuple[np.ndarray, np.ndarray, dict]:
    """(calibration clips, held-out clips, where they came from) from ``cfg.manifest``."""
    q = cfg.quantize
    manifest = read_manifest(cfg.manifest, cfg.storage)
    per = q.clips_per_video
    wanted = -(-q.calibration_clips // per) + -(-q.holdout_clips // per)
    rng = np.random.default_rng(q.seed)
    # Candidates: a seeded sample of rows, several times the videos needed (some may fail).
    picked = rng.choice(manifest.num_rows, min(manifest.num_rows, max(64, 4 * wanted)), replace=False)
    mask = np.zeros(manifest.num_rows, bool)
    mask[picked] = True
    rows = [r for t in manifest.read(mask, ["video_id", "uri", "start_sec", "end_sec"]) for r in t.to_pylist()]
    rows = [rows[i] for i in rng.permutation(len(rows))]
    shape = (cfg.sampling.clip_len, *CROP, 3)
    sets = {"calibration": ([], []), "holdout": ([], [])}  # (clips, video ids)
    target = {"calibration": q.calibration_clips, "holdout": q.holdout_clips}
    skipped: list[str] = []
    for row in rows:
        have = {k: len(v[0]) for k, v in sets.items()}
        if all(have[k] >= target[k] for k in sets):
            break
        # The set furthest from its target takes this video.
        name = min(sets, key=lambda k: have[k] / target[k])
        clips, video = [], None
        for out in decode_video(row, cfg):
            if out["kind"] == "clip":
                clips.append(np.frombuffer(out["frames"], np.uint8).reshape(shape))
            else:
                video = out
        if video["status"] != "ok" or not clips:
            skipped.append(f"{row['uri']}: {video.get('error') or 'no clips'}")
            continue
        take = spread(len(clips), min(per, target[name] - have[name]))
        sets[name][0].extend(clips[i] for i in take)
        sets[name][1].append(row["video_id"])
    cal, hold = sets["calibration"], sets["holdout"]
    shared = False
    if cal[0] and not hold[0] or hold[0] and not cal[0]:
        # One usable video: its clips, alternately (the report says they share a video).
        both = cal[0] or hold[0]
        cal, hold, shared = (both[0::2], cal[1] or hold[1]), (both[1::2], cal[1] or hold[1]), True
    if not cal[0] or not hold[0]:
        first = f" (first: {skipped[0]})" if skipped else ""
        raise int8.Int8Error(f"{cfg.manifest}: no clips could be decoded from the {len(rows)} videos tried{first}")
    if skipped:
        log.warning("quantize: %d video(s) skipped (first: %s)", len(skipped), skipped[0])
    source = {"manifest": cfg.manifest,
              "calibration": {"videos": len(cal[1]), "clips_per_video": per},
              "holdout": {"videos": len(hold[1]), "shares_videos_with_calibration": shared},
              "skipped_videos": len(skipped), "sampling": cfg.sampling.model_dump(mode="json")}
    return np.stack(cal[0]), np.stack(hold[0]), source


def quantize(cfg: Config, out_dir: str, threads: int | None = None) -> int8.Built:
    """Build, measure and write the int8 graph of ``cfg.model.weights`` to ``out_dir``."""
    from .classifying.model import load_model

    calibration, holdout, source = sample_clips(cfg)
    loaded = load_model(cfg.model.weights, cfg.model.seed, cfg.storage)
    log.info("quantize: %d calibration clips (%d videos), %d held-out clips (%d videos), method %s",
             len(calibration), source["calibration"]["videos"], len(holdout), source["holdout"]["videos"],
             cfg.quantize.method)
    return int8.build(loaded.module, loaded.weights_id, calibration, holdout, out_dir, cfg.quantize,
                      storage=cfg.storage, threads=threads, source=source)
