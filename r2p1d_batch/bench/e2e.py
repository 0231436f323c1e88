"""End to end: the labeling pipeline (pipeline.run, the code behind jobs/label.py) on a warm
local Ray vs each stage alone at the same resources, and vs a naive sequential loop."""
from __future__ import annotations

import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from .. import config as config_mod
from ..classify import ClipClassifier
from ..decode import VideoSource
from ..preprocess import FrameTransform
from ..sampling import plan_clips
from ..stages import decode_video


def write_manifest(videos: list[Path], path: Path) -> Path:
    pq.write_table(pa.table({"video_id": [f"v{i}" for i in range(len(videos))], "uri": [str(v) for v in videos]}), path)
    return path


def _decode_alone(cfg, videos) -> tuple[float, list[np.ndarray]]:
    clips = []
    t = time.perf_counter()
    for i, v in enumerate(videos):
        for row in decode_video({"video_id": f"v{i}", "uri": str(v)}, cfg):
            if row["kind"] == "clip":
                clips.append(np.frombuffer(row["frames"], np.uint8).reshape(16, 112, 112, 3))
    return time.perf_counter() - t, clips


def _model_alone(cfg, clips) -> float:
    clf = ClipClassifier(cfg.model)
    b = cfg.model.effective_batch_size
    clf(np.stack(clips[:b]))  # warm-up
    t = time.perf_counter()
    for i in range(0, len(clips), b):
        clf(np.stack(clips[i : i + b]))
    return time.perf_counter() - t


def naive_loop(cfg, videos, threads: int) -> tuple[float, int]:
    """Decode every frame of each video to full-size RGB (+ preset resize), then cut the
    clips and run eager PyTorch on all cores."""
    import torch

    from ..model import Normalize, load_model

    torch.set_num_threads(threads)
    net, norm, tf = load_model(cfg.model.weights, 0).module, Normalize(), FrameTransform.from_preset()
    n = 0
    t = time.perf_counter()
    for v in videos:
        with VideoSource(str(v), str(v), cfg.decode) as src:
            info = src.info
            frames = [tf(f.to_ndarray(format="rgb24")) for f in src.container.decode(src.stream)]
        fps = info.fps
        clips = [np.stack([frames[min(len(frames) - 1, int(round(s * fps)))] for s in w.times])
                 for w in plan_clips(cfg.sampling, info.duration, fps)]
        with torch.inference_mode():
            for i in range(0, len(clips), 8):
                torch.softmax(net(norm(torch.from_numpy(np.stack(clips[i : i + 8])))), 1)
        n += len(clips)
    return time.perf_counter() - t, n


def e2e_rows(videos: list[Path], overrides: list[str], naive_threads: int) -> tuple[list[dict], list[str]]:
    import ray

    from ..pipeline import init_ray, run

    with tempfile.TemporaryDirectory(prefix="r2p1d-bench-") as tmp:
        manifest = write_manifest(videos, Path(tmp) / "manifest.parquet")
        cfg = config_mod.load(None, ["ray.progress_bars=false", *overrides], manifest=str(manifest),
                              **{"output.path": str(Path(tmp) / "out")})
        dec_s, clips = _decode_alone(cfg, videos)
        model_s = _model_alone(cfg, clips)
        init_ray(cfg)  # a warm cluster, as with `ray job submit`; actor start-up is counted
        t = time.perf_counter()
        summary = run(cfg)
        e2e_s = time.perf_counter() - t
        ray.shutdown()
    naive_s, naive_n = naive_loop(cfg, videos, naive_threads)
    n = len(clips)
    stage = {"decode (1 task, 1 core)": n / dec_s, f"model ({cfg.model.runtime}, {cfg.model.num_cpus:g} cpu)": n / model_s}
    slowest = min(stage.values())
    rows = [{"what": k, "clips": n, "clips_per_s": v} for k, v in stage.items()]
    rows.append({"what": "pipeline.run (jobs/label.py)", "clips": summary.clips,
                 "clips_per_s": n / e2e_s, "vs_slowest_stage": n / e2e_s / slowest})
    rows.append({"what": f"naive loop (full decode, eager torch, {naive_threads} threads)", "clips": naive_n,
                 "clips_per_s": naive_n / naive_s})
    rows[-2]["vs_naive"] = (n / e2e_s) / (naive_n / naive_s)
    notes = [f"{len(videos)} videos, {n} clips; overrides: {' '.join(overrides) or '(defaults)'}; "
             "e2e time includes actor start-up on an already running local Ray"]
    return rows, notes
