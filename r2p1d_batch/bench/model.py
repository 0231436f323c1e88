"""Model stage: clips/s per runtime at the configured batch size, max |d| of the logits against
PyTorch eager fp32 on the same clips, and each figure as achieved GFLOP/s and a share of the
measured fp32 matmul peak at the same thread count (roofline.py)."""
from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from .. import config as config_mod
from ..classifying.classifier import ClipClassifier
from ..classifying.model import Normalize, load_model
from .roofline import model_gflop_per_clip, needed_note, sgemm_gflops


@dataclass(frozen=True)
class Timing:
    clips_per_s: float
    batches: int
    seconds: float


def time_batches(fn: Callable[[np.ndarray], np.ndarray], x: np.ndarray, min_seconds: float,
                 min_batches: int) -> tuple[Timing, np.ndarray]:
    """One warm-up call (allocations, cudnn autotune, ORT arena), then calls until both
    ``min_batches`` and ``min_seconds`` are reached: a single 3-second batch is at the mercy of
    whatever else runs on shared cores."""
    out = fn(x)
    n, t = 0, time.perf_counter()
    while n < min_batches or time.perf_counter() - t < min_seconds:
        out = fn(x)
        n += 1
    s = time.perf_counter() - t
    return Timing(n * len(x) / s, n, s), out


def runtime_rows(batch: int, threads: int, min_seconds: float, min_batches: int, weights: str = "random",
                 gpu_only: bool = False) -> tuple[list[dict], list[str]]:
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (batch, 16, 112, 112, 3), dtype=np.uint8)
    loaded = load_model(weights, 0)
    norm = Normalize()
    gflop = model_gflop_per_clip()
    peak = sgemm_gflops(threads)  # first, before any model has warmed the caches or the clock
    torch.set_num_threads(threads)
    rows, ref = [], None

    @torch.inference_mode()
    def eager(clips, net=loaded.module, fmt=None):
        y = norm(torch.from_numpy(clips))
        if fmt is not None:
            y = y.contiguous(memory_format=fmt)
        return net(y).numpy()

    def add(runtime: str, fn, xs=x, batches=min_batches, **extra):
        nonlocal ref
        tm, out = time_batches(fn, xs, min_seconds, batches)
        ref = out if ref is None else ref
        rows.append({"runtime": runtime, "batch": len(xs), "threads": threads, "clips_per_s": tm.clips_per_s,
                     "gflops": tm.clips_per_s * gflop, "pct_of_sgemm_peak": 100 * tm.clips_per_s * gflop / peak,
                     "max_abs_dlogit": float(np.abs(out[: len(ref)].astype(np.float32) - ref).max()),
                     "batches": tm.batches, "seconds": tm.seconds, **extra})

    add("torch-cpu-fp32 (eager)", eager)
    if not gpu_only:
        cl = loaded.module.to(memory_format=torch.channels_last_3d)
        add("torch-cpu-fp32 channels_last_3d", lambda c: eager(c, cl, torch.channels_last_3d))
        loaded.module.to(memory_format=torch.contiguous_format)
        cfg = config_mod.load(None, [f"model.weights={weights}", "model.runtime=onnxruntime", "model.device=cpu",
                                     f"model.num_cpus={threads}"])
        clf = ClipClassifier(cfg.model)
        add(clf.runtime, clf.logits)
        fp32_cps = rows[-1]["clips_per_s"]
        add("onnxruntime-cpu-int8 (QDQ, per-channel, fc fp32)", int8_logits(loaded.module, x, threads))
        rows[-1]["vs_onnxruntime_fp32"] = rows[-1]["clips_per_s"] / fp32_cps
    if torch.cuda.is_available():
        # CUDA rows: achieved GFLOP/s only; the CPU sgemm peak says nothing about a GPU.
        for amp in ("bf16", "fp16", "none"):
            gb = batch if batch > 8 else 64
            cfg = config_mod.load(None, [f"model.weights={weights}", "model.device=cuda", f"model.amp={amp}"])
            clf = ClipClassifier(cfg.model)
            add(clf.runtime + " channels_last_3d", clf.logits, np.resize(x, (gb, *x.shape[1:])), max(min_batches, 10))
            rows[-1].update(threads=None, pct_of_sgemm_peak=None)
    # The ceiling: every core doing nothing but fp32 matmul at the measured peak.
    rows.append({"runtime": f"roofline: fp32 matmul peak ({threads} thread{'s' * (threads > 1)})", "threads": threads,
                 "clips_per_s": peak / gflop, "gflops": peak, "pct_of_sgemm_peak": 100.0})
    base = rows[0]["clips_per_s"]
    for r in rows:
        r["vs_eager"] = r["clips_per_s"] / base
    int8_rows = [r for r in rows if "vs_onnxruntime_fp32" in r]
    notes = [f"{gflop:.1f} GFLOP per clip (2 x multiply-adds of Conv3d + Linear, 16x112x112); gflops = clips_per_s "
             f"x that; sgemm peak = best torch {2048}^3 fp32 matmul at the same threads",
             needed_note(rows[0]["gflops"], peak, threads)]
    if int8_rows:
        notes.append("int8: the graph `r2p1d quantize` builds (classifying/int8.py), calibrated here on the bench's "
                     "random clips with minmax (speed does not depend on the calibration; its agreement does: "
                     "docs/int8.md); gflops and pct_of_sgemm_peak count its int8 work as fp32 flops")
        if any(r["vs_onnxruntime_fp32"] < 1 for r in int8_rows):
            notes.append("int8 is SLOWER than fp32 on this CPU: keep fp32 here (no model.int8)")
    return rows, notes


def int8_logits(module, clips: np.ndarray, threads: int) -> Callable[[np.ndarray], np.ndarray]:
    """The int8 graph of ``module`` (built as `r2p1d quantize` does, calibrated on ``clips``), as
    a logits function on one ONNX Runtime session with ``threads`` threads."""
    import tempfile
    from pathlib import Path

    from ..classifying.export import export_onnx
    from ..classifying.int8 import head_nodes, quantize_graph
    from ..classifying.ort import INPUT_NAME, cpu_session

    with tempfile.TemporaryDirectory(prefix="r2p1d-bench-int8-") as tmp:
        fp32 = export_onnx(module, Path(tmp) / "fp32.onnx", graph="uint8+embedding")
        graph = quantize_graph(fp32, Path(tmp) / "int8.onnx", clips[:4], method="minmax", fp32_nodes=head_nodes(fp32))
        sess = cpu_session(graph, threads)  # the session holds the graph: the file may go
    return lambda c: sess.run(None, {INPUT_NAME: np.ascontiguousarray(c, np.uint8)})[0]
