"""End to end: the labeling pipeline (pipeline.label, the code behind `r2p1d label`) on a warm
local Ray vs each stage alone at the same resources, and vs a naive sequential loop."""
from __future__ import annotations

import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from .. import config as config_mod
from ..classifying.classifier import ClipClassifier
from ..decoding.preprocess import FrameTransform
from ..decoding.pyav import VideoSource
from ..decoding.sampling import plan_clips
from ..decoding.stage import decode_video


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


def _model_alone(cfg, clips) -> tuple[float, str]:
    """Seconds for the classifier alone on ``clips`` at the config's resources (runtime,
    round(model.num_cpus) threads, batch size), after one warm-up batch; and what it ran."""
    clf = ClipClassifier(cfg.model)
    b = cfg.model.effective_batch_size
    clf(np.stack(clips[:b]))  # warm-up
    t = time.perf_counter()
    for i in range(0, len(clips), b):
        clf(np.stack(clips[i : i + b]))
    return time.perf_counter() - t, f"{clf.runtime}, {clf.threads} thread{'s' * (clf.threads > 1)}"


def naive_loop(cfg, videos, threads: int) -> tuple[float, int]:
    """Decode every frame of each video to full-size RGB (+ preset resize), then cut the
    clips and run eager PyTorch on all cores."""
    import torch

    from ..classifying.model import Normalize, load_model

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


def pipeline_row(profile: str, n: int, e2e_s: float, summary, decode_cps: float, model_cps: float,
                 naive_cps: float) -> dict:
    """One pipeline.label against its stages alone and the naive loop. Whole-run figures count
    start-up; steady_* use RunSummary.steady_clips_per_sec (clips after the first block over
    first to last arrival at the writer). max_vs_naive bounds vs_naive: a pipeline cannot beat
    its slowest stage, and the naive loop already runs the model, the slowest stage, on all cores."""
    slowest, cps, steady = min(decode_cps, model_cps), n / e2e_s, summary.steady_clips_per_sec
    return {"what": f"pipeline.label [{profile}]", "clips": summary.clips, "clips_per_s": cps,
            "vs_slowest_stage": cps / slowest, "vs_naive": cps / naive_cps, "first_clip_s": summary.first_clip_sec,
            "steady_clips_per_s": steady, "steady_vs_slowest": steady / slowest if steady else None,
            "max_vs_naive": slowest / naive_cps}


def e2e_rows(videos: list[Path], overrides: list[str], profiles: list[Path | None],
             naive_threads: int) -> tuple[list[dict], list[str]]:
    """``profiles``: config files layered on the defaults (None: the defaults alone); each one's
    pipeline is compared with the model stage alone at that profile's resources."""
    import ray

    from ..pipeline import init_ray, label
    from ..planning.sizing import size_to_cluster

    names = [p.name if p else "default" for p in profiles]
    measured = []  # (profile, model alone: seconds and what ran, pipeline seconds, summary)
    with tempfile.TemporaryDirectory(prefix="r2p1d-bench-") as tmp:
        manifest = write_manifest(videos, Path(tmp) / "manifest.parquet")
        cfgs = [config_mod.load(p, ["ray.progress_bars=false", *overrides], manifest=str(manifest),
                                **{"output.path": str(Path(tmp) / f"out-{name}")}) for p, name in zip(profiles, names)]
        dec_s, clips = _decode_alone(cfgs[0], videos)
        for name, cfg in zip(names, cfgs):
            init_ray(cfg)  # a warm cluster, as with `ray job submit`; actor start-up is counted
            # the model alone at the resources the job will give it (sized to this cluster)
            model_s, model_what = _model_alone(size_to_cluster(cfg, ray.cluster_resources())[0], clips)
            t = time.perf_counter()
            summary = label(cfg)
            e2e_s = time.perf_counter() - t
            ray.shutdown()
            measured.append((name, model_s, model_what, e2e_s, summary))
    naive_s, naive_n = naive_loop(cfgs[0], videos, naive_threads)
    n = len(clips)
    decode_cps, naive_cps = n / dec_s, naive_n / naive_s
    rows = [{"what": "decode alone (1 task, 1 core)", "clips": n, "clips_per_s": decode_cps}]
    for name, model_s, model_what, e2e_s, summary in measured:
        rows.append({"what": f"model alone ({model_what}) [{name}]", "clips": n, "clips_per_s": n / model_s})
        rows.append(pipeline_row(name, n, e2e_s, summary, decode_cps, n / model_s, naive_cps))
    rows.append({"what": f"naive loop (full decode, eager torch, {naive_threads} threads)", "clips": naive_n,
                 "clips_per_s": naive_cps})
    notes = [f"{len(videos)} videos, {n} clips; profiles: {', '.join(names)} (configs/); "
             f"overrides: {' '.join(overrides)}",
             "clips_per_s, vs_*: the whole pipeline.label on an already running local Ray, start-up included "
             "(validation, actor start-up, first decode and batch); first_clip_s: run start to the first "
             "clip labeled (the classifier's labeled_at); steady_clips_per_s: clips after the first classifier "
             "batch / (last - first batch), RunSummary.steady_clips_per_sec",
             "slowest stage = min(decode alone, model alone at the profile's runtime and threads; its warm-up "
             "batch excluded); max_vs_naive = slowest stage / naive loop, the most vs_naive can be on this machine"]
    return rows, notes


def int8_job_rows(videos: list[Path], overrides: list[str]) -> tuple[list[dict], list[str]]:
    """`--config cpu` with and without ``model.int8`` on the same videos, one after the other on
    the same machine: `r2p1d quantize` on the videos' own clips first (its build not counted),
    then each label run on a fresh local Ray, start-up included (as a nightly job pays it)."""
    import ray

    from ..pipeline import label
    from ..quantizing import quantize

    with tempfile.TemporaryDirectory(prefix="r2p1d-bench-int8-") as tmp:
        manifest = write_manifest(videos, Path(tmp) / "manifest.parquet")
        # This section measures speed: the graph's agreement is reported in the notes but does not
        # gate the run (random weights have no margins, so a budget would fail on noise).
        gate_off = ["quantize.min_top1=0", "quantize.min_logits_cosine=-1", "quantize.min_embedding_cosine=-1"]
        base = config_mod.load("cpu", ["ray.progress_bars=false", *overrides, *gate_off], manifest=str(manifest))
        t = time.perf_counter()
        built = quantize(base, str(Path(tmp) / "int8"))
        build_s = time.perf_counter() - t
        rows = []
        for name, extra in (("fp32", []), ("int8", [f"model.int8={Path(tmp) / 'int8'}"])):
            cfg = config_mod.load("cpu", ["ray.progress_bars=false", *overrides, *extra], manifest=str(manifest),
                                  **{"output.path": str(Path(tmp) / f"out-{name}")})
            t = time.perf_counter()
            summary = label(cfg)
            wall = time.perf_counter() - t
            ray.shutdown()
            rows.append({"what": f"pipeline.label [cpu, {name}]", "runtime": summary.runtime, "clips": summary.clips,
                         "clips_per_s": summary.clips / wall, "wall_s": wall, "first_clip_s": summary.first_clip_sec,
                         "steady_clips_per_s": summary.steady_clips_per_sec})
    fp32, q = rows
    q["vs_fp32"] = q["clips_per_s"] / fp32["clips_per_s"]
    if fp32["steady_clips_per_s"] and q["steady_clips_per_s"]:
        q["steady_vs_fp32"] = q["steady_clips_per_s"] / fp32["steady_clips_per_s"]
    a = built.report["agreement"]
    notes = [f"{len(videos)} videos; overrides: {' '.join(overrides)}; the int8 graph built by r2p1d quantize in "
             f"{build_s:.0f} s ({built.report['quantization']['method']}, {built.report['calibration']['clips']} "
             f"calibration clips; held-out agreement top-1 {a['top1']:.3f}, logits cosine {a['logits_cosine']:.5f}"
             + (", random weights: meaningless" if built.report["random_weights"] else "")
             + "; no budget applied here)",
             "clips_per_s: the whole label run on a fresh local Ray, start-up included; "
             "steady: RunSummary.steady_clips_per_sec"]
    if q["vs_fp32"] < 1:
        notes.append("int8 is SLOWER than fp32 on this CPU end to end: keep fp32 here (no model.int8)")
    return rows, notes
