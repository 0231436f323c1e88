"""Model stage: clips/s per runtime at the configured batch size, and max |d| of the logits
against PyTorch eager fp32 on the same clips."""
from __future__ import annotations

import time
from typing import Callable

import numpy as np
import torch

from .. import config as config_mod
from ..classify import ClipClassifier
from ..model import Normalize, load_model


def _time(fn: Callable[[np.ndarray], np.ndarray], x: np.ndarray, iters: int) -> tuple[float, np.ndarray]:
    out = fn(x)  # warm-up: allocations, cudnn autotune, ORT arena
    t = time.perf_counter()
    for _ in range(iters):
        out = fn(x)
    return iters * len(x) / (time.perf_counter() - t), out


def runtime_rows(batch: int, threads: int, iters: int, weights: str = "random", gpu_only: bool = False) -> list[dict]:
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (batch, 16, 112, 112, 3), dtype=np.uint8)
    loaded = load_model(weights, 0)
    norm = Normalize()
    torch.set_num_threads(threads)
    rows, ref = [], None

    @torch.inference_mode()
    def eager(clips, net=loaded.module, fmt=None):
        y = norm(torch.from_numpy(clips))
        if fmt is not None:
            y = y.contiguous(memory_format=fmt)
        return net(y).numpy()

    def add(runtime: str, fn, extra=None):
        nonlocal ref
        cps, out = _time(fn, x, iters)
        if ref is None:
            ref = out
        rows.append({"runtime": runtime, "batch": batch, "threads": threads, "clips_per_s": cps,
                     "max_abs_dlogit": float(np.abs(out.astype(np.float32) - ref).max()), **(extra or {})})

    add("torch-cpu-fp32 (eager)", eager)
    if not gpu_only:
        cl = loaded.module.to(memory_format=torch.channels_last_3d)
        add("torch-cpu-fp32 channels_last_3d", lambda c: eager(c, cl, torch.channels_last_3d))
        loaded.module.to(memory_format=torch.contiguous_format)
        cfg = config_mod.load(None, [f"model.weights={weights}", "model.runtime=onnxruntime", "model.device=cpu",
                                     f"model.num_cpus={threads}"])
        clf = ClipClassifier(cfg.model)
        add(clf.runtime, clf.logits)
    if torch.cuda.is_available():
        for amp in ("bf16", "fp16", "none"):
            gb = batch if batch > 8 else 64
            cfg = config_mod.load(None, [f"model.weights={weights}", "model.device=cuda", f"model.amp={amp}"])
            clf = ClipClassifier(cfg.model)
            xg = np.resize(x, (gb, *x.shape[1:]))
            cps, out = _time(clf.logits, xg, max(iters, 10))
            rows.append({"runtime": clf.runtime + " channels_last_3d", "batch": gb, "threads": None, "clips_per_s": cps,
                         "max_abs_dlogit": float(np.abs(out[: len(ref)] - ref).max())})
    base = rows[0]["clips_per_s"]
    for r in rows:
        r["vs_eager"] = r["clips_per_s"] / base
    return rows
