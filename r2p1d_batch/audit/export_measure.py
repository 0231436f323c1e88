"""Export the device graph and measure it, in the spirit of the model zoo's export.py: ONNX
Runtime latency on this CPU and agreement with PyTorch eager, or compile + profile on a device
through AI Hub. Each step returns what it measured as a dict (``r2p1d export`` prints it)."""
from __future__ import annotations

import resource
import time
from pathlib import Path


def _peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: KiB


def export_graph(cfg, path: Path) -> tuple[dict, object]:
    """The device graph of ``model.weights`` written to ``path``: (what was exported, the module)."""
    import torch

    from ..classifying.export import export_onnx
    from ..classifying.model import load_model

    loaded = load_model(cfg.model.weights, cfg.model.seed, cfg.storage)
    t0 = time.perf_counter()
    export_onnx(loaded.module, path)
    info = {"onnx": str(path), "weights": loaded.weights_id, "torch": torch.__version__,
            "export_sec": round(time.perf_counter() - t0, 1), "onnx_mib": round(path.stat().st_size / 2**20, 1)}
    return info, loaded.module


def measure_onnxruntime(path: Path, module, runs: int) -> dict:
    """ONNX Runtime latency per clip on this CPU, and agreement with PyTorch eager."""
    import numpy as np
    import onnxruntime as ort
    import torch

    from ..classifying.export import DeviceGraph
    from ..classifying.ort import cpu_session
    from .metrics import compare

    sess = cpu_session(path)
    clip = np.random.default_rng(0).random((1, 3, 16, 112, 112), dtype=np.float32)
    out = sess.run(["class_probs"], {"video": clip})[0]  # warm-up
    times = []
    for _ in range(max(1, runs)):
        t0 = time.perf_counter()
        sess.run(["class_probs"], {"video": clip})
        times.append(1000 * (time.perf_counter() - t0))
    t0 = time.perf_counter()
    with torch.inference_mode():
        ref = DeviceGraph(module).eval()(torch.from_numpy(clip)).numpy()
    torch_ms = 1000 * (time.perf_counter() - t0)
    m = compare(ref, out)
    res = {"backend": "onnxruntime", "runtime": f"onnxruntime-{ort.__version__}-cpu",
           "ms_per_clip_median": round(float(np.median(times)), 1), "ms_per_clip_min": round(min(times), 1),
           "torch_eager_ms_one_clip": round(torch_ms, 1), "max_abs_diff_vs_torch": float(m["max_abs_diff"][0]),
           "psnr_db_vs_torch": float(m["psnr_db"][0]), "peak_rss_mib": round(_peak_rss_mib(), 0)}
    return res


def on_device(path: Path, device: str, runtime: str) -> dict:
    """Compile ``path`` for ``device`` through AI Hub and profile it there: the jobs and their figures."""
    from .hub import HubBackend

    hub = HubBackend(path, device, runtime, profile=True)
    job = hub.compile().get_producer()  # the compile job that made the target model
    res = {"backend": "qai-hub", "device": device, "runtime": runtime, "compile_options": hub.compile_options,
           "compile_job": {"job_id": job.job_id, "url": job.url} if job else {"job_id": None, "url": None},
           "profile": hub.profile()}
    return res
